"""Training, classification, model files and labels on synthetic multi-sensor scenes."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import rasterio

from rsvl.backend import api
from rsvl.backend.errors import AlignmentError, CancelledError, LabelError, ModelMismatchError
from rsvl.backend.raster import LayerSpec


def _accuracy(pred: np.ndarray, truth: np.ndarray) -> float:
    ok = pred > 0
    return float((pred[ok] == truth[ok]).mean())


def test_train_and_classify_hsi_lidar(trained_model, shared_scene, tmp_path):
    model_path, result, layers = trained_model
    assert [c.name for c in result.classes] == ["water", "forest", "buildings", "grassland"]
    assert result.validation is not None and result.validation.oa > 0.9
    out = tmp_path / "classes.tif"
    conf = tmp_path / "confidence.tif"
    res = api.classify(str(model_path), layers, str(out), confidence=str(conf), device="cpu")
    assert res.pixels == shared_scene.truth.size
    with rasterio.open(out) as ds, rasterio.open(shared_scene.paths["hsi"]) as ref:
        pred = ds.read(1)
        assert ds.crs == ref.crs and ds.transform == ref.transform and ds.shape == ref.shape
        assert ds.nodata == 0 and ds.dtypes[0] == "uint8"
        cmap = ds.colormap(1)
        assert cmap[2][:3] == (0, 100, 0)  # forest keeps the label raster's colour
        assert ds.profile["tiled"] and ds.profile["compress"] == "deflate"
    assert _accuracy(pred, shared_scene.truth) > 0.9
    from rsvl.backend.labels import _category_names

    assert _category_names(str(out))[1:5] == ["water", "forest", "buildings", "grassland"]
    with rasterio.open(conf) as ds:
        c = ds.read(1)
    assert np.nanmin(c) > 0.25 and np.nanmax(c) <= 1.0


def test_model_file_roundtrip_and_metadata(trained_model):
    from rsvl.backend.modelfile import load_model, read_header

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
    with open(model_path, "rb") as f:
        assert b"pickle" not in f.read(4096)
    model, _ = load_model(str(model_path))
    assert model.class_embeddings.shape == (4, 384)


def test_mismatched_inputs_are_refused(trained_model, scene_factory):
    model_path, _result, layers = trained_model
    other = scene_factory("other", hsi_bands=10)
    bad = [LayerSpec(str(other.paths["hsi"]), "hsi"), layers[1]]
    with pytest.raises(ModelMismatchError, match=r"hsi input has 10 bands but the model was trained on 24"):
        api.classify(str(model_path), bad, str(other.root / "x.tif"), device="cpu")
    with pytest.raises(ModelMismatchError, match=r"LiDAR.*lidar, 1 bands"):
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
    from rsvl.backend.raster import RasterStack, compute_band_stats

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
    from rsvl.backend.raster import RasterStack

    with RasterStack([LayerSpec(str(envi), "hsi"), LayerSpec(str(scene.paths["lidar"]), "lidar")]) as stack:
        assert stack.band_counts() == {"hsi": 24, "lidar": 1}
        data, valid = stack.read(rasterio.windows.Window(0, 0, 8, 8), halo=2)
        assert data["hsi"].shape == (24, 12, 12) and not valid["hsi"][:, 0, 0].any() and valid["hsi"][:, 2, 2].all()


def test_alpha_band_and_gdal_masks_mark_nodata(scene, tmp_path, helpers):
    """An RGBA-style alpha band is a mask, not data: it is not counted as a band and
    pixels it hides are nodata in the output."""
    from osgeo import gdal, ogr
    from rasterio.enums import ColorInterp

    from rsvl.backend.raster import RasterStack

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
