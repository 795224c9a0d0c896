"""Messy inputs and outputs a user meets: class fields typed as decimals or text, label
rasters that are not class rasters, and output paths that would destroy an input, another
output or a folder. Each works as meant or fails up front with an error naming the
parameter, leaving nothing behind."""

from __future__ import annotations

import os

import numpy as np
import pytest
import rasterio

from rsvl.backend import api
from rsvl.backend.errors import InputError, LabelError
from rsvl.backend.io.raster import Grid, LayerSpec


def _polygons(path, scene, field_type, values, names=None):
    """One small square polygon per value, in the scene's CRS, on pixels of its class."""
    from osgeo import ogr, osr

    srs = osr.SpatialReference()
    srs.ImportFromWkt(scene.crs.to_wkt())
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = ds.CreateLayer("labels", srs, ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("code", field_type))
    layer.CreateField(ogr.FieldDefn("name", ogr.OFTString))
    t = scene.transform
    for i, value in enumerate(values):
        r, c = 4 + 3 * i, 4 + 3 * i
        ring = ogr.Geometry(ogr.wkbLinearRing)
        for dc, dr in ((0, 0), (1, 0), (1, 1), (0, 1), (0, 0)):
            ring.AddPoint_2D(*(t * (c + dc, r + dr)))
        poly = ogr.Geometry(ogr.wkbPolygon)
        poly.AddGeometry(ring)
        f = ogr.Feature(layer.GetLayerDefn())
        f.SetField("code", value)
        if names:
            f.SetField("name", names[i])
        f.SetGeometry(poly)
        layer.CreateFeature(f)
    ds = None
    return str(path)


def _grid(scene):
    with rasterio.open(scene.paths["hsi"]) as ds:
        return Grid.of(ds)


def test_whole_numbers_in_decimal_or_text_class_fields_are_codes(scene, tmp_path):
    from osgeo import ogr

    from rsvl.backend.io.labels import open_labels

    grid = _grid(scene)
    real = _polygons(tmp_path / "real.gpkg", scene, ogr.OFTReal, [1.0, 2.0, 0.0, 10.0],
                     ["water", "forest", "none", "town"])
    labels = open_labels(real, grid, "code", class_name_field="name")
    try:
        assert [(c.code, c.name) for c in labels.classes] == [(1, "water"), (2, "forest"), (10, "town")]
    finally:
        labels.close()
    text = _polygons(tmp_path / "text.gpkg", scene, ogr.OFTString, ["1", "10", "2", "0"],
                     ["water", "town", "forest", "none"])
    labels = open_labels(text, grid, "code", class_name_field="name")
    try:  # codes as given, not 1..N in text order ("10" < "2"); 0 is unlabelled
        assert [(c.code, c.name) for c in labels.classes] == [(1, "water"), (2, "forest"), (10, "town")]
    finally:
        labels.close()
    fractional = _polygons(tmp_path / "frac.gpkg", scene, ogr.OFTReal, [1.0, 2.5])
    with pytest.raises(LabelError, match=r"CLASS_FIELD 'code' of 'frac.gpkg' holds decimal values .*\(2.5\)"):
        open_labels(fractional, grid, "code")
    names = _polygons(tmp_path / "names.gpkg", scene, ogr.OFTString, ["water", "forest"])
    labels = open_labels(names, grid, "code")
    try:  # names stay names
        assert [(c.code, c.name) for c in labels.classes] == [(1, "forest"), (2, "water")]
    finally:
        labels.close()


def test_label_rasters_that_are_not_class_rasters_are_refused(scene, tmp_path):
    from rsvl.backend.io.labels import open_labels

    grid = _grid(scene)
    with rasterio.open(scene.labels) as ds:
        codes, profile = ds.read(1), ds.profile
    rgb = tmp_path / "rgb.tif"
    with rasterio.open(rgb, "w", **{**profile, "count": 3}) as dst:
        dst.write(np.stack([codes] * 3))
    with pytest.raises(LabelError, match="has 3 bands: a class raster has one band"):
        open_labels(str(rgb), grid)
    big = tmp_path / "big.tif"
    wide = codes.astype(np.int32)
    wide[wide == 4] = 70000
    with rasterio.open(big, "w", **{**profile, "dtype": "int32", "nodata": None}) as dst:
        dst.write(wide, 1)
    with pytest.raises(LabelError, match=r"class codes above 65535 \(70000\)"):
        open_labels(str(big), grid)
    with pytest.raises(LabelError, match="above 65535"):
        _split(str(big), tmp_path)
    assert not (tmp_path / "a.tif").exists()


def _split(path, tmp_path, first="a.tif", second="b.tif"):
    from rsvl.backend.io.labels import split_label_raster

    return split_label_raster(path, 0.5, 0, str(tmp_path / first), str(tmp_path / second))


def test_split_writes_geotiffs_from_any_format_and_refuses_colliding_outputs(scene, tmp_path):
    with rasterio.open(scene.labels) as ds:
        codes, profile = ds.read(1), ds.profile
    envi = tmp_path / "labels.envi"
    with rasterio.open(envi, "w", **{**profile, "driver": "ENVI", "nodata": 0}) as dst:
        dst.write(codes, 1)
    _split(str(envi), tmp_path)
    for name in ("a.tif", "b.tif"):
        with rasterio.open(tmp_path / name) as ds:
            assert ds.driver == "GTiff" and ds.crs == profile["crs"] and ds.transform == profile["transform"]
    first, second = rasterio.open(tmp_path / "a.tif").read(1), rasterio.open(tmp_path / "b.tif").read(1)
    assert ((first > 0) | (second > 0)).sum() == (codes > 0).sum() and not ((first > 0) & (second > 0)).any()
    assert not [n for n in os.listdir(tmp_path) if ".part" in n]
    with pytest.raises(InputError, match="OUTPUT_SECOND .* is also OUTPUT_FIRST"):
        _split(str(scene.labels), tmp_path, "same.tif", "same.tif")
    from rsvl.backend.io.labels import split_label_raster

    before = open(scene.labels, "rb").read()
    with pytest.raises(InputError, match="OUTPUT_FIRST .* is also the input INPUT"):
        split_label_raster(str(scene.labels), 0.5, 0, str(scene.labels), str(tmp_path / "x.tif"))
    assert open(scene.labels, "rb").read() == before


def test_outputs_never_overwrite_an_input_another_output_or_a_folder(trained_model, tmp_path):
    from rsvl.backend.io.atomic import atomic_path

    model_path, _result, layers = trained_model
    lidar = layers[1].path
    before = open(lidar, "rb").read()
    with pytest.raises(InputError, match=r"OUTPUT .* is also the input INPUT_LIDAR"):
        api.classify(str(model_path), layers, lidar, device="cpu")
    assert open(lidar, "rb").read() == before
    out = str(tmp_path / "x.tif")
    with pytest.raises(InputError, match="OUTPUT_CONFIDENCE .* is also OUTPUT"):
        api.classify(str(model_path), layers, out, confidence=out, device="cpu")
    with pytest.raises(InputError, match="OUTPUT .* is also OUTPUT_SIMILARITY"):
        api.query(str(model_path), layers, ["water"], out, output=out, device="cpu")
    with pytest.raises(InputError, match="OUTPUT_MODEL: .* is a folder"):
        api.train(layers, str(tmp_path), str(tmp_path), device="cpu")
    with pytest.raises(InputError, match="OUTPUT: .* is a folder"):
        api.classify(str(model_path), layers, str(tmp_path), device="cpu")
    assert not os.path.exists(out)
    # A destination that turns into a folder mid-run: the error, and no hidden .part file.
    target = tmp_path / "became_a_folder"
    with pytest.raises(OSError):
        with atomic_path(str(target)) as tmp:
            open(tmp, "w").write("x")
            (target / "inside").mkdir(parents=True)
    assert sorted(os.listdir(tmp_path)) == ["became_a_folder"]


def test_evaluate_checks_its_outputs_and_inputs_first(trained_model, scene, tmp_path):
    model_path, _result, layers = trained_model
    classes = api.classify(str(model_path), layers, str(tmp_path / "c.tif"), device="cpu").output
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="OUTPUT_CSV: .* is a file"):
        api.evaluate(classes, str(scene.labels), output_json=str(tmp_path / "acc.json"),
                     output_csv=str(blocker / "cm.csv"))
    assert not (tmp_path / "acc.json").exists()
    with pytest.raises(InputError, match="OUTPUT_JSON .* is also the input REFERENCE"):
        api.evaluate(classes, str(scene.labels), output_json=str(scene.labels))
    from osgeo import ogr

    vector_map = _polygons(tmp_path / "map.gpkg", scene, ogr.OFTInteger, [1, 2])
    with pytest.raises(InputError, match="cannot be read as a raster"):
        api.evaluate(vector_map, str(scene.labels))


def test_a_band_empty_here_but_used_by_the_model_is_refused_naming_it(trained_model, tmp_path, helpers):
    """A scene whose product has another empty (bad) band than the training scene's: refused
    before any work, naming the band, with no output left behind (it used to give an
    all-nodata map)."""
    from rsvl.backend.errors import ModelMismatchError

    model_path, _result, layers = trained_model
    holes = helpers.write_nan_band(layers[0].path, tmp_path / "nan_band.tif", 2)
    out = tmp_path / "classes.tif"
    with pytest.raises(ModelMismatchError, match=r"hsi bands nan_band.tif:band3 hold no valid pixel where the other "
                                                 r"bands do, and the model uses them"):
        api.classify(str(model_path), [LayerSpec(str(holes), "hsi"), layers[1]], str(out), device="cpu")
    assert not out.exists()


def test_unreadable_labels_and_bad_nodata_options_are_named(scene, tmp_path, capsys):
    from rsvl.backend.cli import main
    from rsvl.backend.io.labels import open_labels

    junk = tmp_path / "labels.tif"
    junk.write_text("not a raster")
    with pytest.raises(LabelError, match="can be read neither as a raster nor as vector data"):
        open_labels(str(junk), _grid(scene))
    hsi = str(scene.paths["hsi"])
    for option, message in (("hsi=abc", "the value must be a number"),
                            ("lidr=0", "--nodata names lidr, which is not an input of this run")):
        code = main(["classify", "-m", "none.safetensors", "--hsi", hsi, "-o", str(tmp_path / "c.tif"),
                     "--nodata", option])
        assert code == 2 and message in capsys.readouterr().err


def test_raster_outputs_are_geotiffs_by_name_too(trained_model, scene, tmp_path):
    from rsvl.backend.io.labels import split_label_raster

    model_path, _result, layers = trained_model
    with pytest.raises(InputError, match=r"OUTPUT '.*c\.img': rsvl writes GeoTIFF rasters; give the file a \.tif"):
        api.classify(str(model_path), layers, str(tmp_path / "c.img"), device="cpu")
    with pytest.raises(InputError, match="OUTPUT_SIMILARITY .* rsvl writes GeoTIFF"):
        api.query(str(model_path), layers, ["water"], str(tmp_path / "q.png"), device="cpu")
    with pytest.raises(InputError, match="OUTPUT_SECOND .* rsvl writes GeoTIFF"):
        split_label_raster(str(scene.labels), 0.5, 0, str(tmp_path / "a.TIF"), str(tmp_path / "b"))
    assert os.listdir(tmp_path) == ["scene"]  # the fixture's inputs only


def test_reports_are_checked_before_the_work(scene, tmp_path, capsys):
    from rsvl.backend.cli import main

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    model = tmp_path / "m.safetensors"
    code = main(["train", "--hsi", str(scene.paths["hsi"]), "--labels", str(scene.labels), "-o", str(model),
                 "--epochs", "1", "--device", "cpu", "--report", str(blocker / "report.html")])
    assert code == 2 and "--report: " in capsys.readouterr().err and not model.exists()


def test_gdal_virtual_paths_are_inputs_like_files(trained_model, scene, tmp_path):
    """/vsizip/ (and /vsicurl/, /vsis3/, GPKG:…) paths are GDAL's to open, not missing files."""
    import zipfile

    from rsvl.backend.io.raster import missing_file

    model_path, _result, layers = trained_model
    archive = tmp_path / "scene.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for layer in layers:
            z.write(layer.path, os.path.basename(layer.path))
        z.write(scene.labels, "labels.tif")
    zipped = [LayerSpec(f"/vsizip/{archive}/{os.path.basename(layer.path)}", layer.modality) for layer in layers]
    plain = api.classify(str(model_path), layers, str(tmp_path / "plain.tif"), device="cpu").output
    virtual = api.classify(str(model_path), zipped, str(tmp_path / "zip.tif"), device="cpu").output
    assert (rasterio.open(plain).read() == rasterio.open(virtual).read()).all()
    acc = api.evaluate(virtual, f"/vsizip/{archive}/labels.tif").accuracy
    assert acc.oa == api.evaluate(plain, str(scene.labels)).accuracy.oa
    assert missing_file(str(tmp_path / "nope.tif")) and not missing_file("GPKG:x.gpkg:t")
    with pytest.raises(InputError, match="cannot be read by GDAL"):
        api.classify(str(model_path), [LayerSpec(f"/vsizip/{archive}/nope.tif", "hsi"), layers[1]],
                     str(tmp_path / "x.tif"), device="cpu")


def test_vector_labels_are_opened_without_gdal_noise(scene, tmp_path, caplog):
    import logging

    from osgeo import ogr

    from rsvl.backend.io.labels import open_labels

    path = _polygons(tmp_path / "v.gpkg", scene, ogr.OFTInteger, [1, 2])
    with caplog.at_level(logging.DEBUG):
        labels = open_labels(path, _grid(scene), "code")
        labels.close()
    assert [c.code for c in labels.classes] == [1, 2]
    assert not [r for r in caplog.records if "not recognized" in r.getMessage()], caplog.text


def test_a_cut_off_input_is_named_not_a_gdal_traceback(trained_model, tmp_path):
    model_path, _result, layers = trained_model
    with rasterio.open(layers[0].path) as ds:
        profile = ds.profile
    whole = tmp_path / "whole.tif"
    with rasterio.open(whole, "w", **{**profile, "tiled": True, "blockxsize": 16, "blockysize": 16,
                                      "compress": "deflate"}) as dst:
        dst.write(rasterio.open(layers[0].path).read())
    raw = whole.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(raw[: len(raw) // 2])
    out = tmp_path / "classes.tif"
    with pytest.raises(InputError, match=r"hsi layer '.*cut\.tif' cannot be read at rows .*truncated or damaged"):
        api.classify(str(model_path), [LayerSpec(str(cut), "hsi"), layers[1]], str(out), device="cpu")
    assert not out.exists()


def test_points_off_the_grid_are_named_like_polygons(scene, tmp_path):
    from osgeo import ogr, osr

    from rsvl.backend.io.labels import open_labels

    srs = osr.SpatialReference()
    srs.ImportFromWkt(scene.crs.to_wkt())
    path = tmp_path / "points.gpkg"
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = ds.CreateLayer("labels", srs, ogr.wkbPoint)
    layer.CreateField(ogr.FieldDefn("code", ogr.OFTInteger))
    x, y = scene.transform * (0, 0)
    for i, (dx, dy) in enumerate(((-500.0, 0.0), (0.0, 500.0), (10_000.0, -10_000.0))):
        f = ogr.Feature(layer.GetLayerDefn())
        f.SetField("code", i + 1)
        point = ogr.Geometry(ogr.wkbPoint)
        point.AddPoint_2D(x + dx, y + dy)
        f.SetGeometry(point)
        layer.CreateFeature(f)
    ds = None
    with pytest.raises(LabelError, match="none of the 3 labelled feature"):
        open_labels(str(path), _grid(scene), "code")
