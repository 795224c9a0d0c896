"""Bad and unusual inputs (issue 9, sweep): each case gives the right result or a clear
error, never a traceback or a silently wrong map."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import Affine

from rsvl.backend import api
from rsvl.backend.errors import InputError
from rsvl.backend.io.raster import LayerSpec

FAST = dict(patch_size=5, epochs=2, batch_size=64, device="cpu")
CUSTOM_UTM = CRS.from_wkt(
    'PROJCS["custom utm",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],'
    'PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],PROJECTION["Transverse_Mercator"],'
    'PARAMETER["latitude_of_origin",0],PARAMETER["central_meridian",14.5],PARAMETER["scale_factor",0.9996],'
    'PARAMETER["false_easting",500000],PARAMETER["false_northing",0],UNIT["metre",1]]')


@pytest.fixture(scope="module")
def setup(helpers, tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep") / "scène avec espaces"
    scene = helpers.make_scene(root, size=32, modalities=("hsi", "lidar"))
    layers = [LayerSpec(str(scene.paths["hsi"]), "hsi"), LayerSpec(str(scene.paths["lidar"]), "lidar")]
    model = root / "modèle é.safetensors"
    api.train(layers, str(scene.labels), str(model), **FAST)
    with rasterio.open(scene.paths["hsi"]) as ds:
        hsi, transform = ds.read(), ds.transform
    with rasterio.open(scene.paths["lidar"]) as ds:
        lidar = ds.read()
    return scene, layers, str(model), hsi, lidar, transform, root


def _classify(setup, hsi_path, lidar_path, name):
    _scene, _layers, model, *_rest, root = setup
    out = root / name
    api.classify(model, [LayerSpec(str(hsi_path), "hsi"), LayerSpec(str(lidar_path), "lidar")], str(out), device="cpu")
    with rasterio.open(out) as ds:
        return ds.read(1), ds.transform, ds.crs, ds.dtypes[0]


def test_paths_with_spaces_and_non_ascii_characters(setup):
    scene, layers, model, *_ = setup
    classes, *_ = _classify(setup, layers[0].path, layers[1].path, "classes é ü.tif")
    assert classes.shape == scene.truth.shape and (classes > 0).all()


def test_nan_and_inf_pixels_are_nodata(setup, helpers):
    *_, hsi, lidar, transform, root = setup
    bad = lidar.copy()
    bad[0, 3:5, 3:5] = np.nan
    bad[0, 6, 6] = np.inf
    path = helpers.write_raster(root / "nan.tif", bad, transform, nodata=None)
    classes, *_ = _classify(setup, setup[1][0].path, path, "nan_classes.tif")
    assert (classes[3:5, 3:5] == 0).all() and classes[6, 6] == 0 and classes[10, 10] > 0


@pytest.mark.parametrize("side", [1, 3])
def test_rasters_as_small_as_one_pixel_or_smaller_than_the_patch(setup, helpers, side):
    *_, hsi, lidar, transform, root = setup
    h = helpers.write_raster(root / f"h{side}.tif", hsi[:, :side, :side], transform, nodata=-1)
    v = helpers.write_raster(root / f"l{side}.tif", lidar[:, :side, :side], transform, nodata=-9999.0)
    classes, out_transform, *_ = _classify(setup, h, v, f"small{side}.tif")
    assert classes.shape == (side, side) and out_transform == transform
    assert (classes > 0).all()  # as at any scene edge: a pixel with valid values of its own is classified


def test_rotated_geotransform_and_a_crs_without_epsg_code_are_kept(setup, helpers):
    *_, hsi, lidar, transform, root = setup
    rotated = Affine(10, 2, transform.c, 2, -10, transform.f)
    h = helpers.write_raster(root / "rot_h.tif", hsi, rotated, crs=CUSTOM_UTM, nodata=-1)
    v = helpers.write_raster(root / "rot_l.tif", lidar, rotated, crs=CUSTOM_UTM, nodata=-9999.0)
    classes, out_transform, crs, _ = _classify(setup, h, v, "rotated.tif")
    assert out_transform == rotated and crs == CUSTOM_UTM and crs.to_epsg() is None
    assert (classes > 0).mean() > 0.9


def test_an_all_nodata_input_gives_an_all_nodata_map_and_cannot_train(setup, helpers):
    scene, layers, _model, hsi, lidar, transform, root = setup
    empty = helpers.write_raster(root / "empty.tif", np.full_like(lidar, -9999.0), transform, nodata=-9999.0)
    classes, *_ = _classify(setup, layers[0].path, empty, "empty_classes.tif")
    assert (classes == 0).all()
    with pytest.raises(InputError, match="the lidar input has no valid pixel in any band: check its nodata value"):
        api.train([layers[0], LayerSpec(str(empty), "lidar")], str(scene.labels), str(root / "x.safetensors"), **FAST)


def test_more_than_255_classes_give_a_uint16_map(setup):
    scene, layers, *_rest, transform, root = setup
    codes = (np.arange(32 * 32).reshape(32, 32) % 300 + 1).astype(np.uint16)
    labels = root / "many.tif"
    with rasterio.open(labels, "w", driver="GTiff", width=32, height=32, count=1, dtype="uint16",
                       crs=scene.crs, transform=transform, nodata=0) as dst:
        dst.write(codes, 1)
    model = root / "many.safetensors"
    result = api.train([layers[0]], str(labels), str(model), **FAST, validation_fraction=0.0)
    assert len(result.classes) == 300
    api.classify(str(model), [layers[0]], str(root / "many_c.tif"), device="cpu")
    with rasterio.open(root / "many_c.tif") as ds:
        assert ds.dtypes[0] == "uint16" and ds.read(1).max() > 255


def test_a_constant_uint16_band_near_the_type_limit_trains(setup, helpers):
    scene, _layers, _model, hsi, _lidar, transform, root = setup
    big = helpers.write_raster(root / "big.tif", np.full(hsi.shape, 65000, np.uint16), transform, nodata=None)
    result = api.train([LayerSpec(str(big), "hsi")], str(scene.labels), str(root / "big.safetensors"), **FAST)
    assert result.epochs_run == 2 and np.isfinite(result.history[-1]["train_loss"])


def _polygon_labels(path, scene, cells, crs=None):
    """A GeoPackage of pixel squares: ``cells`` is [(row, col, class name)]."""
    from osgeo import ogr, osr

    t = scene.transform
    srs = osr.SpatialReference()
    srs.ImportFromWkt((crs or scene.crs).to_wkt())
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = ds.CreateLayer("labels", srs, ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("name", ogr.OFTString))
    for row, col, name in cells:
        x0, y0 = t * (col, row)
        x1, y1 = t * (col + 1, row + 1)
        f = ogr.Feature(layer.GetLayerDefn())
        f.SetGeometry(ogr.CreateGeometryFromWkt(f"POLYGON(({x0} {y0},{x1} {y0},{x1} {y1},{x0} {y1},{x0} {y0}))"))
        f.SetField("name", name)
        layer.CreateFeature(f)
    ds = None
    return str(path)


def test_non_ascii_class_names_and_a_class_with_one_sample(setup):
    """Class names outside ASCII survive training and reach the map's category names; a
    class labelled on a single pixel trains (it cannot be validated) and is mapped."""
    scene, layers, *_rest, root = setup
    cells = [(r, c, {1: "eau", 2: "forêt", 3: "bâti", 4: "prairie"}[int(scene.truth[r, c])])
             for r in range(0, 32, 3) for c in range(0, 32, 3) if scene.truth[r, c] != 3]
    r, c = map(int, np.argwhere(scene.truth == 3)[0])
    cells.append((r, c, "bâti"))  # the only sample of its class
    labels = _polygon_labels(root / "accents.gpkg", scene, cells)
    model = root / "accents.safetensors"
    result = api.train(layers, labels, str(model), class_field="name", **FAST)
    assert sorted(c.name for c in result.classes) == ["bâti", "eau", "forêt", "prairie"]
    out = root / "accents.tif"
    api.classify(str(model), layers, str(out), device="cpu")
    from rsvl.backend.io.labels import _category_names

    assert {"bâti", "eau", "forêt", "prairie"} <= set(_category_names(str(out)))


def test_labels_that_cover_no_pixel_of_the_scene_are_an_error(setup):
    scene, layers, *_rest, root = setup
    far = [(r + 5000, c, "water") for r, c in [(0, 0), (1, 1)]] + [(5000, 3, "forest")]
    labels = _polygon_labels(root / "far.gpkg", scene, far)
    from rsvl.backend.errors import RsvlError

    with pytest.raises(RsvlError, match="none of the 3 labelled feature.* lies on the input grid"):
        api.train(layers, labels, str(root / "far.safetensors"), class_field="name", **FAST)
    assert not (root / "far.safetensors").exists()


def test_a_model_for_other_modalities_is_refused_by_name(setup):
    scene, layers, model, *_rest, root = setup
    from rsvl.backend.errors import RsvlError

    with pytest.raises(RsvlError, match="(?i)lidar") as info:
        api.classify(model, [layers[0]], str(root / "other.tif"), device="cpu")
    assert "Traceback" not in str(info.value)
    assert not (root / "other.tif").exists()


def test_the_same_seed_gives_bit_identical_weights_and_maps(setup):
    from safetensors.torch import load_file

    scene, layers, *_rest, root = setup
    maps = []
    for i in range(2):
        path = root / f"seed{i}.safetensors"
        api.train(layers, str(scene.labels), str(path), **FAST, seed=7)
        api.classify(str(path), layers, str(root / f"seed{i}.tif"), device="cpu")
        with rasterio.open(root / f"seed{i}.tif") as ds:
            maps.append(ds.read(1))
    a, b = (load_file(str(root / f"seed{i}.safetensors")) for i in range(2))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert np.array_equal(*maps)
