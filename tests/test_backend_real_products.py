"""Real sensor products as users have them (issue 30): hyperspectral bad bands (empty bands,
ENVI ``bbl``, the BAD_BANDS parameter), wavelengths read from the data and checked on
classifying, label rasters that code "no label" as -1 or 255 with 0 a class, and class names
from sidecar files. Every fixture is made here, small."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio

from rsvl.backend import api
from rsvl.backend.errors import InputError, LabelError, ModelMismatchError
from rsvl.backend.io.raster import LayerSpec, RasterStack

QUICK = dict(patch_size=3, epochs=3, batch_size=64, learning_rate=3e-3, seed=0, device="cpu")


def _header(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["rsvl"])


def _write_envi(path, data, wavelengths_nm=None, bbl=None, units="Nanometers", transform=None, crs=None):
    """An ENVI .img/.hdr cube (GDAL's ENVI driver), its header extended with wavelengths and bbl."""
    with rasterio.open(path, "w", driver="ENVI", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype.name, crs=crs, transform=transform, nodata=-1) as dst:
        dst.write(data)
    hdr = str(path)[:-4] + ".hdr"
    with open(hdr, "a") as f:
        if wavelengths_nm is not None:
            f.write(f"wavelength units = {units}\nwavelength = {{{', '.join(f'{w:g}' for w in wavelengths_nm)}}}\n")
        if bbl is not None:
            f.write(f"bbl = {{{', '.join(str(int(b)) for b in bbl)}}}\n")
    return path


@pytest.fixture(scope="module")
def hsi_scene(helpers, tmp_path_factory):
    return helpers.make_scene(tmp_path_factory.mktemp("real") / "scene", size=32, hsi_bands=12,
                              modalities=("hsi",), label_fraction=0.3)


def _with_empty_bands(src, out, bands, helpers):
    with rasterio.open(src) as ds:
        data, transform = ds.read(), ds.transform
    data[list(bands)] = -1  # the file's nodata: empty everywhere, like EnMAP's water-vapour bands
    return helpers.write_raster(out, data, transform, nodata=-1, descriptions=[f"b{i}" for i in range(data.shape[0])])


@pytest.fixture(scope="module")
def empty_band_model(hsi_scene, helpers, tmp_path_factory):
    root = tmp_path_factory.mktemp("empty")
    cube = _with_empty_bands(hsi_scene.paths["hsi"], root / "hsi_bad.tif", (6, 7, 8), helpers)
    model = root / "model.safetensors"
    api.train([LayerSpec(str(cube), "hsi")], str(hsi_scene.labels), str(model), **QUICK)
    return model, cube, root


def test_empty_bands_are_dropped_named_recorded_and_selected_on_classifying(empty_band_model, hsi_scene, caplog):
    model, cube, root = empty_band_model
    header = _header(model)
    selection = header["modalities"]["hsi"]["selection"]
    assert selection["input_bands"] == 12 and selection["kept"] == [1, 2, 3, 4, 5, 6, 10, 11, 12]
    assert selection["dropped"] == [7, 8, 9]  # named in the model file (rsvl info MODEL)
    assert header["architecture"]["bands"]["hsi"] == 9 and header["format_version"] == 4
    assert header["modalities"]["hsi"]["band_names"] == [f"b{i}" for i in (0, 1, 2, 3, 4, 5, 9, 10, 11)]
    # the product as shared (the same empty bands) and the same product without them both classify
    for i, layer in enumerate((cube, hsi_scene.paths["hsi"])):
        caplog.clear()
        with caplog.at_level("INFO", logger="rsvl"):
            res = api.classify(str(model), [LayerSpec(str(layer), "hsi")], str(root / f"c{i}.tif"), device="cpu")
        assert res.pixels == 32 * 32
        assert "using the 9 bands the model kept of 12 (dropped: 7–9)" in caplog.text
    with rasterio.open(root / "c0.tif") as a, rasterio.open(root / "c1.tif") as b:
        assert (a.read(1) > 0).all() and (a.read(1) == b.read(1)).mean() > 0.9


def test_the_training_warning_names_the_dropped_bands(hsi_scene, helpers, tmp_path, caplog):
    cube = _with_empty_bands(hsi_scene.paths["hsi"], tmp_path / "hsi_bad.tif", (0, 11), helpers)
    with caplog.at_level("WARNING", logger="rsvl"):
        api.train([LayerSpec(str(cube), "hsi")], str(hsi_scene.labels), str(tmp_path / "m.safetensors"),
                  **{**QUICK, "epochs": 1})
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "dropped" in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    assert "2 bands of 12 dropped (2 bands without any valid pixel): bands 1, 12 (b0, b11)" in warnings[0]


def test_other_empty_bands_or_another_band_count_are_refused(empty_band_model, hsi_scene, helpers, tmp_path):
    model, _cube, _root = empty_band_model
    other = _with_empty_bands(hsi_scene.paths["hsi"], tmp_path / "other_bad.tif", (2,), helpers)
    out = tmp_path / "c.tif"
    with pytest.raises(ModelMismatchError, match=r"hsi bands b2 hold no valid pixel where the other bands do"):
        api.classify(str(model), [LayerSpec(str(other), "hsi")], str(out), device="cpu")
    with rasterio.open(hsi_scene.paths["hsi"]) as ds:
        ten = helpers.write_raster(tmp_path / "ten.tif", ds.read()[:10], ds.transform, nodata=-1)
    with pytest.raises(ModelMismatchError, match=r"hsi input has 10 bands but the model was trained on 9 of a "
                                                 r"12-band input \(dropped: 7–9\)"):
        api.classify(str(model), [LayerSpec(str(ten), "hsi")], str(out), device="cpu")
    assert not out.exists()


def test_envi_bbl_and_wavelengths_are_honoured_and_checked(hsi_scene, tmp_path):
    with rasterio.open(hsi_scene.paths["hsi"]) as ds:
        data, transform, crs = ds.read(), ds.transform, ds.crs
    wl = np.linspace(450, 2400, 12)
    bbl = [1] * 12
    bbl[4] = bbl[5] = 0  # declared bad, though they hold data
    cube = _write_envi(tmp_path / "cube.img", data, wl / 1000, bbl, units="Micrometers", transform=transform, crs=crs)
    with RasterStack([LayerSpec(str(cube), "hsi")]) as stack:
        assert stack.wavelengths()["hsi"] == pytest.approx(list(wl), abs=0.01)
        assert stack.declared_bad()["hsi"] == [b == 0 for b in bbl]
    model = tmp_path / "m.safetensors"
    api.train([LayerSpec(str(cube), "hsi")], str(hsi_scene.labels), str(model), **{**QUICK, "epochs": 1})
    selection = _header(model)["modalities"]["hsi"]["selection"]
    assert selection["kept"] == [1, 2, 3, 4, 7, 8, 9, 10, 11, 12]
    assert selection["wavelengths_nm"] == pytest.approx([w for i, w in enumerate(wl) if i not in (4, 5)], abs=0.01)
    api.classify(str(model), [LayerSpec(str(cube), "hsi")], str(tmp_path / "ok.tif"), device="cpu")
    # another sensor's wavelengths: refused (FORCE warns instead)
    shifted = _write_envi(tmp_path / "shifted.img", data, (wl + 100) / 1000, bbl, units="Micrometers",
                          transform=transform, crs=crs)
    with pytest.raises(ModelMismatchError, match=r"band wavelengths differ from training \(band 1: 550 nm, trained "
                                                 r"450 nm"):
        api.classify(str(model), [LayerSpec(str(shifted), "hsi")], str(tmp_path / "c.tif"), device="cpu")
    api.classify(str(model), [LayerSpec(str(shifted), "hsi")], str(tmp_path / "forced.tif"), device="cpu",
                 force=True)
    # bands the model uses declared bad in this product: refused
    other_bbl = [1] * 12
    other_bbl[0] = 0
    other = _write_envi(tmp_path / "other.img", data, wl / 1000, other_bbl, units="Micrometers",
                        transform=transform, crs=crs)
    with pytest.raises(ModelMismatchError, match=r"declares bands 1 bad \(bbl metadata\), and the model uses them"):
        api.classify(str(model), [LayerSpec(str(other), "hsi")], str(tmp_path / "c.tif"), device="cpu")


def test_wavelengths_from_band_descriptions_and_units(tmp_path, helpers):
    from rasterio.transform import from_origin

    data = np.ones((4, 8, 8), np.float32)
    path = helpers.write_raster(tmp_path / "s2.tif", data, from_origin(0, 80, 10, 10),
                                descriptions=["B02 (490 nm)", "0.56 Micrometers", "red", "B8A 865nm"])
    with RasterStack([LayerSpec(str(path), "ms")]) as stack:
        assert stack.wavelengths()["ms"] == [490.0, 560.0, None, 865.0]


def test_bad_bands_parameter(hsi_scene, tmp_path):
    from rsvl.backend.io.bands import parse_band_list

    assert parse_band_list("130-135, 140", {"hsi": 224, "lidar": 1}) == {"hsi": [129, 130, 131, 132, 133, 134, 139]}
    assert parse_band_list("ms:1; sar: 2", {"ms": 4, "sar": 2}) == {"ms": [0], "sar": [1]}
    for text, message in (("3", "say which input the bands are of"), ("hsi:0-2", "outside the hsi input's bands"),
                          ("lidar:1", "names 'lidar', which is not an input here"), ("1-x", "not a band number")):
        with pytest.raises(InputError, match=message):
            parse_band_list(text, {"ms": 4, "sar": 2} if text == "3" else {"hsi": 12})
    model = tmp_path / "m.safetensors"
    api.train([LayerSpec(str(hsi_scene.paths["hsi"]), "hsi")], str(hsi_scene.labels), str(model),
              **{**QUICK, "epochs": 1}, bad_bands="2-3")
    assert _header(model)["modalities"]["hsi"]["selection"]["kept"] == [1, 4, 5, 6, 7, 8, 9, 10, 11, 12]


def _int_labels(path, values, transform, nodata, dtype):
    with rasterio.open(path, "w", driver="GTiff", width=values.shape[1], height=values.shape[0], count=1,
                       dtype=dtype, crs="EPSG:32633", transform=transform, nodata=nodata) as dst:
        dst.write(values.astype(dtype), 1)
    return path


def test_labels_with_minus_one_no_data_and_zero_a_class(hsi_scene, tmp_path):
    with rasterio.open(hsi_scene.labels) as ds:
        codes, transform = ds.read(1).astype(np.int16), ds.transform
    raw = np.where(codes > 0, codes - 1, -1)  # Sen1Floods11-style: -1 no data, 0 a class
    layers = [LayerSpec(str(hsi_scene.paths["hsi"]), "hsi")]
    undeclared = _int_labels(tmp_path / "undeclared.tif", raw, transform, None, "int16")
    with pytest.raises(LabelError, match=r"negative values \(-1\) that are not declared as 'no label': set "
                                         r"LABEL_NODATA \(e.g. -1\)"):
        api.train(layers, str(undeclared), str(tmp_path / "m.safetensors"), **QUICK)
    declared = _int_labels(tmp_path / "declared.tif", raw, transform, -1, "int16")
    for labels, options in ((undeclared, {"label_nodata": "-1"}), (declared, {})):
        res = api.train(layers, str(labels), str(tmp_path / "m.safetensors"), **{**QUICK, "epochs": 1}, **options)
        assert [(c.code, c.name) for c in res.classes] == [(1, "class 0"), (2, "class 1"), (3, "class 2"),
                                                           (4, "class 3")]
    # evaluation reads the reference the same way: the map's code v + 1 is the reference's value v
    out = tmp_path / "map.tif"
    api.classify(str(tmp_path / "m.safetensors"), layers, str(out), device="cpu")
    truth = _int_labels(tmp_path / "truth.tif", hsi_scene.truth.astype(np.int16) - 1, transform, None, "int16")
    with pytest.raises(LabelError, match="LABEL_NODATA"):
        api.evaluate(str(out), str(undeclared))
    res = api.evaluate(str(out), str(truth), label_nodata="-1")
    assert res.accuracy.class_names == ["class 0", "class 1", "class 2", "class 3"]
    assert sum(res.accuracy.support) == 32 * 32 and res.accuracy.oa > 0.5


def test_labels_with_255_no_data_and_names_from_a_csv_sidecar(hsi_scene, tmp_path):
    with rasterio.open(hsi_scene.labels) as ds:
        codes, transform = ds.read(1), ds.transform
    raw = np.where(codes > 0, codes - 1, 255).astype(np.uint8)
    labels = _int_labels(tmp_path / "lc.tif", raw, transform, 255, "uint8")
    (tmp_path / "lc.csv").write_text("code,name\n0,water\n1,forest\n2,buildings\n3,grassland\n")
    res = api.train([LayerSpec(str(hsi_scene.paths["hsi"]), "hsi")], str(labels), str(tmp_path / "m.safetensors"),
                    **{**QUICK, "epochs": 1})
    assert [(c.code, c.name) for c in res.classes] == [(1, "water"), (2, "forest"), (3, "buildings"),
                                                       (4, "grassland")]
    # no nodata declared: 255 is a class unless LABEL_NODATA says otherwise; "255, 0" makes 0 no label too
    plain = _int_labels(tmp_path / "plain.tif", raw, transform, None, "uint8")
    res = api.train([LayerSpec(str(hsi_scene.paths["hsi"]), "hsi")], str(plain), str(tmp_path / "m2.safetensors"),
                    **{**QUICK, "epochs": 1}, label_nodata="255, 0")
    assert [c.code for c in res.classes] == [1, 2, 3]


def test_class_names_from_qml_clr_and_text(tmp_path):
    from rsvl.backend.io.legend import find_legend, parse_nodata_values, read_legend

    (tmp_path / "a.qml").write_text(
        '<qgis><pipe><rasterrenderer type="paletted" band="1"><colorPalette>'
        '<paletteEntry value="1" label="roof" color="#e60000" alpha="255"/>'
        '<paletteEntry value="2" label="pavement" color="#9c9c9c" alpha="255"/>'
        '</colorPalette></rasterrenderer></pipe></qgis>')
    assert read_legend(str(tmp_path / "a.qml")) == {1: ("roof", (230, 0, 0)), 2: ("pavement", (156, 156, 156))}
    (tmp_path / "b.clr").write_text("1 230 0 0 roof\n2 156 156 156 low vegetation\n")
    assert read_legend(str(tmp_path / "b.clr"))[2] == ("low vegetation", (156, 156, 156))
    (tmp_path / "c.txt").write_text("1 roof\n2 pavement\n3 low vegetation\n")  # EnMAP-Box's CLASSES.txt style
    assert read_legend(str(tmp_path / "c.txt"))[3] == ("low vegetation", None)
    (tmp_path / "d.csv").write_text("value;label;colour\n5;water;#0000ff\n")
    assert read_legend(str(tmp_path / "d.csv")) == {5: ("water", (0, 0, 255))}
    (tmp_path / "e.txt").write_text("nothing here\n")
    with pytest.raises(LabelError, match="names no class"):
        read_legend(str(tmp_path / "e.txt"))
    (tmp_path / "a.tif").write_bytes(b"")
    assert find_legend(str(tmp_path / "a.tif")) == str(tmp_path / "a.qml")
    assert parse_nodata_values("-1, 255") == [-1, 255] and parse_nodata_values("") is None
    with pytest.raises(LabelError, match="LABEL_NODATA '1.5'"):
        parse_nodata_values("1.5")


def test_cli_takes_bad_bands_and_label_nodata(hsi_scene, helpers, tmp_path, cli):
    cube = _with_empty_bands(hsi_scene.paths["hsi"], tmp_path / "hsi_bad.tif", (3,), helpers)
    with rasterio.open(hsi_scene.labels) as ds:
        codes, transform = ds.read(1).astype(np.int16), ds.transform
    labels = _int_labels(tmp_path / "lab.tif", np.where(codes > 0, codes - 1, -1), transform, None, "int16")
    model = tmp_path / "m.safetensors"
    res = cli("train", "--hsi", str(cube), "--labels", str(labels), "-o", str(model), "--epochs", "1",
              "--patch-size", "3", "--device", "cpu", "--bad-bands", "1", "--label-nodata", "-1")
    assert res.returncode == 0, res.stderr
    assert "2 bands of 12 dropped (1 band declared bad (metadata or BAD_BANDS); 1 band without any valid pixel): " \
           "bands 1, 4" in res.stderr
    assert _header(model)["modalities"]["hsi"]["selection"]["kept"] == [2, 3, 5, 6, 7, 8, 9, 10, 11, 12]
    res = cli("train", "--hsi", str(cube), "--labels", str(labels), "-o", str(model), "--epochs", "1",
              "--device", "cpu")
    assert res.returncode != 0 and "set --label-nodata (e.g. -1)" in res.stderr, res.stderr


def test_split_reads_labels_with_minus_one_no_data_and_names(hsi_scene, tmp_path, cli):
    """rsvl:split with LABEL_NODATA and CLASS_NAMES: the outputs hold rsvl's codes (v + 1),
    named and coloured, and train on them as on the input."""
    from rsvl.backend.io.labels import RasterLabels, split_label_raster
    from rsvl.backend.io.raster import Grid

    with rasterio.open(hsi_scene.labels) as ds:
        codes, transform = ds.read(1).astype(np.int16), ds.transform
    raw = _int_labels(tmp_path / "raw.tif", np.where(codes > 0, codes - 1, -1), transform, None, "int16")
    (tmp_path / "names.txt").write_text("0 water\n1 forest\n2 buildings\n3 grassland\n")
    res = split_label_raster(str(raw), 0.5, 0, str(tmp_path / "a.tif"), str(tmp_path / "b.tif"),
                             nodata_values="-1", names_file=str(tmp_path / "names.txt"))
    assert [(c.code, c.name) for c in res.classes] == [(1, "water"), (2, "forest"), (3, "buildings"), (4, "grassland")]
    with rasterio.open(tmp_path / "a.tif") as a, rasterio.open(tmp_path / "b.tif") as b:
        first, second = a.read(1), b.read(1)
        grid = Grid.of(a)
    assert set(np.unique(first)) <= {0, 1, 2, 3, 4} and ((first > 0) | (second > 0)).sum() == (codes > 0).sum()
    assert np.array_equal(np.maximum(first, second)[codes > 0], codes[codes > 0])
    labels = RasterLabels(str(tmp_path / "a.tif"), grid)
    try:
        assert [c.name for c in labels.classes] == ["water", "forest", "buildings", "grassland"]
    finally:
        labels.close()
    out = cli("split", "--labels", raw, "--fraction", "0.5", "--first", tmp_path / "c.tif", "--second",
              tmp_path / "d.tif", "--label-nodata", "-1")
    assert out.returncode == 0, out.stderr
