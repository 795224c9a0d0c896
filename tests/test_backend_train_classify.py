"""Training, classification, model files and labels on synthetic multi-sensor scenes."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import rasterio

from rsvl.backend import api
from rsvl.backend.errors import AlignmentError, CancelledError, LabelError, ModelMismatchError
from rsvl.backend.io.raster import LayerSpec


def _accuracy(pred: np.ndarray, truth: np.ndarray) -> float:
    ok = pred > 0
    return float((pred[ok] == truth[ok]).mean())


def _interior(truth: np.ndarray, radius: int) -> np.ndarray:
    """Pixels whose (2 radius + 1)² neighbourhood holds one class only (away from borders)."""
    from numpy.lib.stride_tricks import sliding_window_view

    padded = np.pad(truth, radius, mode="edge")
    view = sliding_window_view(padded, (2 * radius + 1, 2 * radius + 1))
    return (view == truth[:, :, None, None]).all(axis=(2, 3))


def test_train_and_classify_hsi_lidar(trained_model, shared_scene, tmp_path):
    model_path, result, layers = trained_model
    assert [c.name for c in result.classes] == ["water", "forest", "buildings", "grassland"]
    assert result.validation is not None and result.validation.oa > 0.9
    out = tmp_path / "classes.tif"
    conf = tmp_path / "confidence.tif"
    sim = tmp_path / "similarity.tif"
    res = api.classify(str(model_path), layers, str(out), confidence=str(conf), similarity=str(sim), device="cpu")
    assert res.pixels == shared_scene.truth.size
    with rasterio.open(out) as ds, rasterio.open(shared_scene.paths["hsi"]) as ref:
        pred = ds.read(1)
        assert ds.crs == ref.crs and ds.transform == ref.transform and ds.shape == ref.shape
        assert ds.nodata == 0 and ds.dtypes[0] == "uint8"
        cmap = ds.colormap(1)
        assert cmap[2][:3] == (0, 100, 0)  # forest keeps the label raster's colour
        assert ds.profile["tiled"] and ds.profile["compress"] == "deflate"
    assert _accuracy(pred, shared_scene.truth) > 0.9
    from rsvl.backend.io.labels import _category_names

    assert _category_names(str(out))[1:5] == ["water", "forest", "buildings", "grassland"]
    with rasterio.open(conf) as ds:
        c = ds.read(1)
    with rasterio.open(sim) as ds:
        cosine = ds.read().astype(np.float64)  # (4, H, W), one band per class
    # The confidence is the softmax probability of the chosen class at the model's
    # temperature, recomputed here from the per-class cosine similarities.
    from rsvl.backend.models.modelfile import load_model

    model, _header = load_model(str(model_path))
    logits = float(model.scale().detach()) * cosine
    softmax = np.exp(logits - logits.max(0)) / np.exp(logits - logits.max(0)).sum(0)
    np.testing.assert_allclose(c, softmax.max(0), atol=1e-5)
    np.testing.assert_array_equal(pred, cosine.argmax(0) + 1)
    # It means what a user reads into it: high where the model is right, far from class
    # borders; lower on the borders, where the 5 x 5 patches mix classes (the least sure
    # 2 % of the map lie there more often than border pixels are common: the means of a
    # model this sure differ in the fourth decimal), and lower still where it is wrong.
    correct = pred == shared_scene.truth
    interior = _interior(shared_scene.truth, 2)
    assert np.median(c[interior & correct]) > 0.6  # 4 classes: 0.25 would be a blind guess
    low = c <= np.quantile(c, 0.02)
    assert (~interior[low]).mean() > (~interior).mean() + 0.1
    if (~correct).sum() >= 3:  # a few border pixels are wrong with these fast settings
        assert c[~correct].mean() < c[correct].mean() - 0.05


def test_model_file_roundtrip_and_metadata(trained_model):
    from rsvl.backend.models.modelfile import load_model, read_header

    model_path, result, _layers = trained_model
    header = read_header(str(model_path))
    meta = header.to_json()
    assert meta["format"] == "rsvl-model"
    assert meta["modalities"]["hsi"]["bands"] == 24 and meta["modalities"]["lidar"]["bands"] == 1
    assert meta["modalities"]["hsi"]["band_names"][:2] == ["b0", "b1"]
    assert meta["text_encoder"] == "builtin:all-MiniLM-L6-v2"
    assert meta["prompt_template"] == "the hyperspectral patch of {}"
    assert meta["patch_size"] == 5
    assert len(meta["normalisation"]["hsi"]["mean"]) == 24
    assert meta["training"]["epochs_run"] == result.epochs_run
    assert meta["classes"][0] == {"code": 1, "name": "water", "colour": [0, 0, 255]}
    # The file is plain safetensors: an 8-byte little-endian header length, a JSON header
    # (tensor dtypes, shapes, byte ranges; rsvl's own header in its metadata), then the raw
    # tensor bytes, which fill the rest of the file exactly: there is no room for a pickle.
    raw = model_path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    layout = json.loads(raw[8:8 + n])
    assert json.loads(layout.pop("__metadata__")["rsvl"]) == meta
    itemsize = {"F32": 4, "F64": 8, "I64": 8, "I32": 4, "F16": 2, "BF16": 2, "U8": 1, "BOOL": 1}
    ranges = sorted(tuple(t["data_offsets"]) for t in layout.values())
    assert ranges[0][0] == 0 and all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert 8 + n + ranges[-1][1] == len(raw)
    for t in layout.values():
        assert t["data_offsets"][1] - t["data_offsets"][0] == itemsize[t["dtype"]] * int(np.prod(t["shape"]))
    model, _ = load_model(str(model_path))
    assert model.class_embeddings.shape == (4, 384)
    assert set(layout) == set(model.state_dict())
    assert layout["class_embeddings"]["dtype"] == "F32" and layout["class_embeddings"]["shape"] == [4, 384]


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_a_pickle_renamed_to_safetensors_is_refused_unopened(writer, trained_model, tmp_path):
    """Model files are never unpickled: a pickle (plain, or torch.save's zip of one) named
    .safetensors is refused with a clear error before its payload can run."""
    import pickle

    import torch

    from rsvl.backend.errors import ModelFileError
    from rsvl.backend.models.modelfile import load_model

    model_path, _result, layers = trained_model
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    state = {"weights": torch.zeros(3), "payload": Payload()}
    # The payload is live: unpickling it runs code.
    pickle.loads(pickle.dumps(state))
    assert marker.is_dir()
    marker.rmdir()
    bad = tmp_path / "model.safetensors"
    if writer == "pickle":
        bad.write_bytes(pickle.dumps(state))
    else:
        torch.save(state, str(bad))
    message = re.escape(f"MODEL '{bad}' is not an rsvl model: it looks like ") + r".*\(not loaded: pickles can run code\)"
    with pytest.raises(ModelFileError, match=message):
        load_model(str(bad))
    with pytest.raises(ModelFileError, match=message):
        api.classify(str(bad), layers, str(tmp_path / "c.tif"), device="cpu")
    with pytest.raises(ModelFileError, match=message):
        api.describe_model(str(bad))
    assert not marker.exists() and not (tmp_path / "c.tif").exists()


def test_mismatched_inputs_are_refused(trained_model, scene_factory):
    model_path, _result, layers = trained_model
    other = scene_factory("other", hsi_bands=10)
    bad = [LayerSpec(str(other.paths["hsi"]), "hsi"), layers[1]]
    with pytest.raises(ModelMismatchError, match=r"hsi input has 10 bands but the model was trained on 24"):
        api.classify(str(model_path), bad, str(other.root / "x.tif"), device="cpu")
    with pytest.raises(ModelMismatchError, match=r"LiDAR.*lidar, 1 band\)"):
        api.classify(str(model_path), [layers[0]], str(other.root / "x.tif"), device="cpu")
    assert not (other.root / "x.tif").exists()


def test_nodata_propagates_to_output(trained_model, shared_scene, tmp_path, helpers):
    model_path, _result, layers = trained_model
    with rasterio.open(shared_scene.paths["hsi"]) as ds:
        data = ds.read()
        transform = ds.transform
    data[:, 10:15, 20:30] = -1  # the HSI nodata value
    hsi = helpers.write_raster(tmp_path / "hsi_holes.tif", data, transform, nodata=-1)
    out = tmp_path / "classes.tif"
    api.classify(str(model_path), [LayerSpec(str(hsi), "hsi"), layers[1]], str(out), device="cpu")
    with rasterio.open(out) as ds:
        pred = ds.read(1)
    assert (pred[10:15, 20:30] == 0).all()
    assert (pred[:10] > 0).all() and (pred[15:] > 0).all()


def test_vector_labels_in_another_crs(scene, tmp_path, helpers):
    gpkg = helpers.write_polygons(tmp_path / "labels.gpkg", scene, crs_epsg=4326)
    layers = [LayerSpec(str(scene.paths["ms"]), "ms"), LayerSpec(str(scene.paths["sar"]), "sar")]
    res = api.train(layers, str(gpkg), str(tmp_path / "m.safetensors"), class_field="cover", **helpers.fast)
    assert sorted(c.name for c in res.classes) == sorted(helpers.class_names)
    out = tmp_path / "c.tif"
    api.classify(str(tmp_path / "m.safetensors"), layers, str(out), device="cpu")
    with rasterio.open(out) as ds:
        pred = ds.read(1)
    names = {c.code: c.name for c in res.classes}
    truth_names = np.array(["", *helpers.class_names])[scene.truth]
    pred_names = np.vectorize(names.get)(pred)
    assert (pred_names == truth_names).mean() > 0.85
    # Codes differ (names sorted: buildings=1 …; the truth raster has water=1 …): evaluation
    # matches reference classes by name.
    assert [c.code for c in res.classes if c.name == "water"] == [4]
    truth = helpers.write_labels(tmp_path / "truth.tif", scene.truth, scene.transform)
    ev = api.evaluate(str(out), str(truth))
    assert ev.accuracy.oa == pytest.approx((pred_names == truth_names).mean())


def test_unknown_class_field_and_empty_labels(scene, tmp_path, helpers):
    gpkg = helpers.write_polygons(tmp_path / "labels.gpkg", scene)
    layers = [LayerSpec(str(scene.paths["ms"]), "ms")]
    with pytest.raises(LabelError, match=r"CLASS_FIELD 'landcover' is not a field.*cover"):
        api.train(layers, str(gpkg), str(tmp_path / "m.safetensors"), class_field="landcover", **helpers.fast)
    empty = helpers.write_labels(tmp_path / "empty.tif", np.zeros_like(scene.truth), scene.transform)
    with pytest.raises(LabelError, match="no labelled pixel"):
        api.train(layers, str(empty), str(tmp_path / "m.safetensors"), **helpers.fast)
    assert not (tmp_path / "m.safetensors").exists()


def test_misaligned_layers_are_warped_or_refused(scene, tmp_path, helpers):
    """LiDAR at 20 m in WGS 84 is warped onto the 10 m UTM HSI grid, or refused."""
    from rasterio.warp import calculate_default_transform, reproject

    with rasterio.open(scene.paths["lidar"]) as src:
        transform, w, h = calculate_default_transform(src.crs, "EPSG:4326", src.width // 2, src.height // 2,
                                                      *src.bounds)
        dst = np.full((h, w), -9999, np.float32)
        reproject(rasterio.band(src, 1), dst, dst_transform=transform, dst_crs="EPSG:4326",
                  resampling=rasterio.enums.Resampling.average)
    lidar = helpers.write_raster(tmp_path / "dsm_wgs84.tif", dst, transform, crs="EPSG:4326", nodata=-9999.0)
    layers = [LayerSpec(str(scene.paths["hsi"]), "hsi"), LayerSpec(str(lidar), "lidar")]
    with pytest.raises(AlignmentError, match=r"lidar layer 'dsm_wgs84.tif' is not on the reference grid.*CRS"):
        api.train(layers, str(scene.labels), str(tmp_path / "m.safetensors"), align=False, **helpers.fast)
    res = api.train(layers, str(scene.labels), str(tmp_path / "m.safetensors"), **helpers.fast)
    assert res.validation.oa > 0.85
    out = tmp_path / "c.tif"
    api.classify(str(tmp_path / "m.safetensors"), layers, str(out), device="cpu")
    with rasterio.open(out) as ds, rasterio.open(scene.paths["hsi"]) as ref:
        assert ds.crs == ref.crs and ds.transform == ref.transform and ds.shape == ref.shape
    # The heights the model saw are the original 10 m heights, give or take the 20 m
    # averaging and the 0.5 m noise, two pixels away from class borders (classes differ by
    # 9 to 18 m, but for water and grassland).
    from rsvl.backend.io.raster import RasterStack

    with RasterStack(layers) as stack, rasterio.open(scene.paths["lidar"]) as src:
        data, valid = stack.read(rasterio.windows.Window(0, 0, stack.width, stack.height))
        original = src.read(1)
    inside = valid["lidar"][0] & _interior(scene.truth, 2)
    assert inside.sum() > 0.3 * scene.truth.size
    assert np.median(np.abs(data["lidar"][0] - original)[inside]) < 0.6
    assert np.abs(data["lidar"][0] - original)[inside].max() < 3.0


def test_warped_layers_take_the_values_of_the_reference_grid(scene, tmp_path, helpers):
    """Pixel values after warping, against values known without GDAL: a 5 m linear ramp
    seen on the 10 m grid is the ramp at the 10 m pixel centres; a 10 m layer shifted by
    whole pixels is the same numbers shifted, and nodata where it does not reach."""
    from affine import Affine
    from rasterio.windows import Window

    from rsvl.backend.io.raster import RasterStack

    t = scene.transform  # 10 m, 48 x 48

    def ramp(x, y):
        return 100.0 + 0.3 * (x - t.c) + 0.7 * (t.f - y)

    fine = t * Affine.scale(0.5)  # same origin, 5 m pixels
    cols, rows = np.meshgrid(np.arange(96) + 0.5, np.arange(96) + 0.5)
    x, y = fine * (cols, rows)
    dsm5 = helpers.write_raster(tmp_path / "dsm_5m.tif", ramp(x, y).astype(np.float32), fine, nodata=-9999.0)
    rng = np.random.default_rng(7)
    shifted_values = rng.normal(300.0, 10.0, (50, 50)).astype(np.float32)
    shifted = t * Affine.translation(3, 2)  # starts 3 pixels east, 2 pixels south of the reference
    dsm_shifted = helpers.write_raster(tmp_path / "dsm_shifted.tif", shifted_values, shifted, nodata=-9999.0)
    layers = [LayerSpec(str(scene.paths["hsi"]), "hsi"), LayerSpec(str(dsm5), "lidar"),
              LayerSpec(str(dsm_shifted), "lidar")]
    with RasterStack(layers) as stack:
        assert stack.grid.transform == t and (stack.width, stack.height) == (48, 48)
        data, valid = stack.read(Window(0, 0, 48, 48))
    lidar, ok = data["lidar"], valid["lidar"]
    cols, rows = np.meshgrid(np.arange(48) + 0.5, np.arange(48) + 0.5)
    expected = ramp(*(t * (cols, rows)))
    assert ok[0].all()
    # Bilinear on a plane is exact, away from the edge where the kernel is cut off.
    np.testing.assert_allclose(lidar[0, 1:-1, 1:-1], expected[1:-1, 1:-1], atol=1e-3)
    expected_ok = np.zeros((48, 48), bool)
    expected_ok[2:, 3:] = True
    np.testing.assert_array_equal(ok[1], expected_ok)
    np.testing.assert_array_equal(lidar[1, 2:, 3:], shifted_values[:46, :45])


def test_fusion_of_modalities_beats_each_modality_alone(tmp_path, helpers):
    """On a scene where grassland/forest and roads/buildings differ only in height and
    grassland/roads and forest/buildings only in spectrum, the HSI + LiDAR model is right on
    held-out pixels where HSI alone and LiDAR alone can only guess between two classes."""
    scene = helpers.make_fusion_scene(tmp_path / "fusion")
    test = scene.held_out()
    hsi, lidar = LayerSpec(str(scene.paths["hsi"]), "hsi"), LayerSpec(str(scene.paths["lidar"]), "lidar")
    oa = {}
    for name, layers in (("hsi", [hsi]), ("lidar", [lidar]), ("hsi+lidar", [hsi, lidar])):
        model = tmp_path / f"{name}.safetensors"
        res = api.train(layers, str(scene.labels), str(model), **helpers.fast)
        assert [c.name for c in res.classes] == scene.class_names
        api.classify(str(model), layers, str(tmp_path / f"{name}.tif"), device="cpu")
        with rasterio.open(tmp_path / f"{name}.tif") as ds:
            pred = ds.read(1)
        oa[name] = float((pred[test] == scene.truth[test]).mean())
        if name != "hsi+lidar":
            # A single modality tells the pairs apart it can see: HSI never mistakes
            # vegetation for built-up, LiDAR never mistakes low for tall.
            group = {"hsi": np.array([0, 1, 1, 2, 2]), "lidar": np.array([0, 1, 2, 1, 2])}[name]
            assert (group[pred[test]] == group[scene.truth[test]]).mean() > 0.9, name
    assert oa["hsi+lidar"] > 0.85, oa
    assert max(oa["hsi"], oa["lidar"]) < 0.75, oa  # the scene does need both
    assert oa["hsi+lidar"] > max(oa["hsi"], oa["lidar"]) + 0.2, oa


@pytest.mark.slow
def test_default_settings_learn_the_fusion_scene_and_its_synonyms(tmp_path, helpers):
    """What a user gets without touching a setting (the paper's patch size, learning rate,
    epochs and early stopping): the fusion scene is learnt, and words it was never trained
    on find classes that only the height tells apart from their look-alike."""
    scene = helpers.make_fusion_scene(tmp_path / "fusion")
    test = scene.held_out()
    layers = [LayerSpec(str(scene.paths["hsi"]), "hsi"), LayerSpec(str(scene.paths["lidar"]), "lidar")]
    model = tmp_path / "m.safetensors"
    res = api.train(layers, str(scene.labels), str(model), device="cpu")
    assert res.header["patch_size"] == 11 and res.epochs_run > 1
    api.classify(str(model), layers, str(tmp_path / "c.tif"), device="cpu")
    with rasterio.open(tmp_path / "c.tif") as ds:
        pred = ds.read(1)
    assert (pred[test] == scene.truth[test]).mean() > 0.85
    prompts = {"woodland": ("forest", "grassland"), "houses": ("buildings", "roads")}
    api.query(str(model), layers, list(prompts), str(tmp_path / "q.tif"), device="cpu")
    with rasterio.open(tmp_path / "q.tif") as ds:
        sim = ds.read()
    truth = scene.truth[test]
    for band, (prompt, (meant, look_alike)) in zip(sim, prompts.items()):
        score = band[test]
        meant_code, other_code = scene.class_names.index(meant) + 1, scene.class_names.index(look_alike) + 1
        assert helpers.auc(score, truth == meant_code) > 0.9, prompt
        pair = (truth == meant_code) | (truth == other_code)
        assert helpers.auc(score[pair], truth[pair] == meant_code) > 0.8, prompt  # same spectrum: height decides


def test_training_is_reproducible(scene, tmp_path, helpers):
    layers = [LayerSpec(str(scene.paths["lidar"]), "lidar"), LayerSpec(str(scene.paths["sar"]), "sar")]
    fast = {**helpers.fast, "epochs": 5}
    a = api.train(layers, str(scene.labels), str(tmp_path / "a.safetensors"), **fast)
    b = api.train(layers, str(scene.labels), str(tmp_path / "b.safetensors"), **fast)
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
    from safetensors.torch import load_file

    wa, wb = load_file(str(tmp_path / "a.safetensors")), load_file(str(tmp_path / "b.safetensors"))
    assert all((wa[k] == wb[k]).all() for k in wa)


def test_cancel_during_training_leaves_no_model(scene, tmp_path, helpers):
    calls = {"n": 0}

    def is_cancelled():
        calls["n"] += 1
        return calls["n"] > 20

    out = tmp_path / "m.safetensors"
    with pytest.raises(CancelledError):
        api.train([LayerSpec(str(scene.paths["ms"]), "ms")], str(scene.labels), str(out), is_cancelled=is_cancelled,
                  **helpers.fast)
    assert calls["n"] == 21  # stopped at the first check after the request
    assert not out.exists() and os.listdir(tmp_path) == ["scene"]


def test_cancel_during_classification_leaves_no_raster(trained_model, tmp_path):
    model_path, _result, layers = trained_model
    calls = {"n": 0}

    def is_cancelled():
        calls["n"] += 1
        return calls["n"] > 2

    with pytest.raises(CancelledError):
        api.classify(str(model_path), layers, str(tmp_path / "c.tif"), confidence=str(tmp_path / "p.tif"),
                     tile_size=16, device="cpu", is_cancelled=is_cancelled)
    assert os.listdir(tmp_path) == []


def test_evaluate_against_raster_and_vector(trained_model, shared_scene, tmp_path, helpers):
    model_path, _result, layers = trained_model
    out = tmp_path / "c.tif"
    api.classify(str(model_path), layers, str(out), device="cpu")
    truth = helpers.write_labels(tmp_path / "truth.tif", shared_scene.truth, shared_scene.transform)
    res = api.evaluate(str(out), str(truth), output_json=str(tmp_path / "a.json"), output_csv=str(tmp_path / "a.csv"))
    with rasterio.open(out) as ds:
        pred = ds.read(1)
    assert res.accuracy.oa == pytest.approx(float((pred == shared_scene.truth).mean()))
    assert res.accuracy.matrix.sum() == shared_scene.truth.size
    saved = json.loads((tmp_path / "a.json").read_text())
    assert saved["oa"] == pytest.approx(res.accuracy.oa) and [c["name"] for c in saved["classes"]][0] == "water"
    assert (tmp_path / "a.csv").read_text().splitlines()[0].startswith("reference \\ predicted,water,forest")
    gpkg = helpers.write_polygons(tmp_path / "ref.gpkg", shared_scene)
    vec = api.evaluate(str(out), str(gpkg), class_field="cover")
    assert vec.accuracy.oa > 0.9 and vec.accuracy.matrix.sum() > 0


def test_band_stats_are_streamed_exactly(scene):
    from rsvl.backend.io.raster import RasterStack, compute_band_stats

    with RasterStack([LayerSpec(str(scene.paths["hsi"]), "hsi")]) as stack:
        stats = compute_band_stats(stack, tile=16)
    with rasterio.open(scene.paths["hsi"]) as ds:
        data = ds.read().astype(np.float64)
    np.testing.assert_allclose(stats["hsi"].mean, data.mean(axis=(1, 2)), rtol=1e-9)
    np.testing.assert_allclose(stats["hsi"].std, data.std(axis=(1, 2)), rtol=1e-6)


def test_envi_input_is_read(scene, tmp_path):
    """Real HSI benchmarks often come as ENVI files: GDAL reads them through rasterio."""
    from osgeo import gdal

    envi = tmp_path / "hsi.img"
    gdal.Translate(str(envi), str(scene.paths["hsi"]), format="ENVI")
    from rsvl.backend.io.raster import RasterStack

    with RasterStack([LayerSpec(str(envi), "hsi"), LayerSpec(str(scene.paths["lidar"]), "lidar")]) as stack:
        assert stack.band_counts() == {"hsi": 24, "lidar": 1}
        data, valid = stack.read(rasterio.windows.Window(0, 0, 8, 8), halo=2)
        assert data["hsi"].shape == (24, 12, 12) and not valid["hsi"][:, 0, 0].any() and valid["hsi"][:, 2, 2].all()


def test_alpha_band_and_gdal_masks_mark_nodata(scene, tmp_path, helpers):
    """An RGBA-style alpha band is a mask, not data: it is not counted as a band and
    pixels it hides are nodata in the output."""
    from osgeo import gdal, ogr
    from rasterio.enums import ColorInterp

    from rsvl.backend.io.raster import RasterStack

    with rasterio.open(scene.paths["ms"]) as ds:
        data = ds.read()
    alpha = np.full((1, *data.shape[1:]), 255, dtype=np.float32)
    alpha[0, :6, :6] = 0
    path = helpers.write_raster(tmp_path / "ms_alpha.tif", np.concatenate([data, alpha]), scene.transform)
    with rasterio.open(path, "r+") as ds:
        ds.colorinterp = [ColorInterp.undefined] * 6 + [ColorInterp.alpha]
    before = (gdal.GetUseExceptions(), ogr.GetUseExceptions())
    with RasterStack([LayerSpec(str(path), "ms")]) as stack:
        assert stack.band_counts() == {"ms": 6}
        _data, valid = stack.read(rasterio.windows.Window(0, 0, 10, 10))
    assert not valid["ms"][:, :6, :6].any() and valid["ms"][:, 6:, 6:].all()
    res = api.train([LayerSpec(str(path), "ms")], str(scene.labels), str(tmp_path / "m.safetensors"),
                    **{**helpers.fast, "epochs": 2})
    assert res.header["modalities"]["ms"]["bands"] == 6
    api.classify(str(tmp_path / "m.safetensors"), [LayerSpec(str(path), "ms")], str(tmp_path / "c.tif"), device="cpu")
    with rasterio.open(tmp_path / "c.tif") as ds:
        pred = ds.read(1)
    assert (pred[:6, :6] == 0).all() and (pred[6:, 6:] > 0).all()
    # GDAL's process-wide exception switches are left as they were (QGIS plugins rely on them).
    assert (gdal.GetUseExceptions(), ogr.GetUseExceptions()) == before


def test_windowed_evaluation_equals_whole(trained_model, shared_scene, tmp_path, helpers, monkeypatch):
    model_path, _result, layers = trained_model
    out = tmp_path / "c.tif"
    api.classify(str(model_path), layers, str(out), device="cpu")
    truth = helpers.write_labels(tmp_path / "truth.tif", shared_scene.truth, shared_scene.transform)
    gpkg = helpers.write_polygons(tmp_path / "ref.gpkg", shared_scene)
    whole = [api.evaluate(str(out), str(truth)), api.evaluate(str(out), str(gpkg), class_field="cover")]
    monkeypatch.setattr(api, "EVALUATE_TILE", 7)  # 49 windows, polygons cut by window edges
    windowed = [api.evaluate(str(out), str(truth)), api.evaluate(str(out), str(gpkg), class_field="cover")]
    for a, b in zip(whole, windowed):
        assert np.array_equal(a.accuracy.matrix, b.accuracy.matrix) and a.accuracy.matrix.sum() > 0
        assert a.accuracy.class_names == b.accuracy.class_names


def test_float_label_raster_is_refused_cleanly(scene, tmp_path, helpers):
    floats = helpers.write_raster(tmp_path / "float_labels.tif", scene.truth.astype(np.float32), scene.transform)
    with pytest.raises(LabelError, match="floating point"):
        api.train([LayerSpec(str(scene.paths["ms"]), "ms")], str(floats), str(tmp_path / "m.safetensors"),
                  **helpers.fast)
    assert not (tmp_path / "m.safetensors").exists()
