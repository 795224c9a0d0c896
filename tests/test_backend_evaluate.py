"""Evaluation figures users can trust (issue 13): class matching by name only when both
sides have names, and pixels a map leaves unclassified counted as errors."""

from __future__ import annotations

import csv
import json

import numpy as np
from rasterio.transform import from_origin

from rsvl.backend import api

T = from_origin(465000.0, 5080000.0, 10.0, 10.0)


def _truth(size=20):
    truth = np.zeros((size, size), np.uint8)
    for code in range(1, 5):
        truth[(code - 1) * 5:code * 5] = code
    return truth


def test_unnamed_map_is_matched_to_a_named_reference_by_code(tmp_path, helpers, caplog):
    truth = _truth()
    reference = helpers.write_labels(tmp_path / "reference.tif", truth, T)  # named: water, forest, …
    plain = helpers.write_raster(tmp_path / "plain.tif", truth, T, nodata=0)  # codes only, "class N"
    with caplog.at_level("INFO", logger="rsvl"):
        res = api.evaluate(str(plain), str(reference), output_json=str(tmp_path / "acc.json"))
    assert res.accuracy.oa == 1.0 and res.accuracy.kappa == 1.0
    assert res.accuracy.matching == "code" and "matched to the map's by code" in caplog.text
    assert json.loads((tmp_path / "acc.json").read_text())["matching"] == "code"
    # Both named: matched by name, whatever the codes (the map numbers its classes the other way round).
    from osgeo import gdal

    named = helpers.write_raster(tmp_path / "named.tif", np.where(truth > 0, 5 - truth, 0), T, nodata=0)
    ds = gdal.Open(str(named), gdal.GA_Update)
    ds.GetRasterBand(1).SetCategoryNames(["", "grassland", "buildings", "forest", "water"])
    ds = None
    res = api.evaluate(str(named), str(reference))
    assert res.accuracy.matching == "name" and res.accuracy.oa == 1.0


def test_unclassified_pixels_count_as_errors(tmp_path, helpers):
    truth = _truth()
    reference = helpers.write_labels(tmp_path / "reference.tif", truth, T)
    mapped = truth.copy()
    mapped[0:5, :10] = 0  # the map abstains on half of class 1 (e.g. below a query's threshold)
    mapped[5:6, :] = 1  # and gets one row of class 2 wrong
    classes = helpers.write_labels(tmp_path / "classes.tif", mapped, T)
    res = api.evaluate(str(classes), str(reference), output_csv=str(tmp_path / "cm.csv"),
                       output_json=str(tmp_path / "acc.json"))
    acc = res.accuracy
    n = truth.size
    assert acc.n_unclassified == 50 and int(acc.matrix.sum()) == n
    assert np.isclose(acc.oa, (n - 50 - 20) / n)  # abstentions are errors, not left out
    assert np.isclose(acc.coverage, (n - 50) / n)
    assert np.isclose(acc.per_class_accuracy[acc.class_names.index("water")], 0.5)
    rows = list(csv.reader((tmp_path / "cm.csv").open()))
    assert "unclassified" in rows[0]
    figures = json.loads((tmp_path / "acc.json").read_text())
    assert figures["n_unclassified"] == 50 and np.isclose(figures["coverage"], acc.coverage)
    assert "coverage" in acc.summary()


def test_baselines_are_computed_on_the_same_split(scene, tmp_path, cli):
    import rasterio

    from rsvl.backend.evaluation.baselines import run_baselines
    from rsvl.backend.io.labels import split_label_raster
    from rsvl.backend.io.raster import LayerSpec

    train, test = tmp_path / "train.tif", tmp_path / "test.tif"
    split_label_raster(str(scene.labels), 0.3, 0, str(train), str(test))
    layers = [LayerSpec(str(scene.paths["hsi"]), "hsi"), LayerSpec(str(scene.paths["lidar"]), "lidar")]
    results = {b.name: b.accuracy for b in run_baselines(layers, str(train), str(test))}
    assert list(results) == ["majority", "nearest centroid", "1-NN", "random forest"]
    with rasterio.open(test) as ds:
        codes = ds.read(1)
    counts = np.bincount(codes[codes > 0])
    with rasterio.open(train) as ds:
        majority = np.bincount(ds.read(1)[ds.read(1) > 0]).argmax()
    assert np.isclose(results["majority"].oa, counts[majority] / counts.sum())  # exactly the share
    assert int(results["1-NN"].matrix.sum()) == counts.sum()
    # The synthetic classes are separable per pixel: every real baseline beats the majority.
    for name in ("nearest centroid", "1-NN", "random forest"):
        assert results[name].oa > results["majority"].oa + 0.3, name
    (tmp_path / "acc.json").write_text(json.dumps({"oa": 0.5, "aa": 0.25, "kappa": 0.125}))
    out = cli("baselines", "--hsi", scene.paths["hsi"], "--lidar", scene.paths["lidar"], "--train", train,
              "--test", test, "--compare", tmp_path / "acc.json")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[1].split()[-3:] == ["0.500", "0.250", "0.125"] and "random forest" in lines[-1]


def test_forest_baselines_with_texture_features_and_another_date(shared_scene, tmp_path, helpers):
    """The 7x7 mean/std forest runs on the same split; test pixels can come from other
    layers (another date), standardised with the training scene's statistics or their own."""
    import rasterio

    from rsvl.backend.data.augment import shift_scene
    from rsvl.backend.evaluation.baselines import run_baselines
    from rsvl.backend.io.labels import split_label_raster
    from rsvl.backend.io.raster import LayerSpec

    layers = [LayerSpec(str(shared_scene.paths["hsi"]), "hsi"), LayerSpec(str(shared_scene.paths["lidar"]), "lidar")]
    truth = helpers.write_labels(tmp_path / "truth.tif", shared_scene.truth, shared_scene.transform)
    train, test = str(tmp_path / "train.tif"), str(tmp_path / "test.tif")
    split_label_raster(str(truth), 0.2, 0, train, test)
    with rasterio.open(shared_scene.paths["hsi"]) as ds:
        data, t, nodata = ds.read(), ds.transform, ds.nodata
    shifted = helpers.write_raster(tmp_path / "shift.tif", shift_scene(data, [3.0] * data.shape[0],
                                                                       [50.0] * data.shape[0], nodata), t,
                                   nodata=nodata)
    other = [LayerSpec(str(shifted), "hsi"), layers[1]]
    same = {b.name: b.accuracy.oa for b in run_baselines(layers, train, test, methods=["random forest",
                                                                                      "random forest 7x7"])}
    assert same["random forest"] > 0.8 and same["random forest 7x7"] > 0.8
    scene = {b.name: b.accuracy.oa for b in run_baselines(layers, train, test, methods=["random forest"],
                                                          test_layers=other, normalize="scene")}
    model = {b.name: b.accuracy.oa for b in run_baselines(layers, train, test, methods=["random forest"],
                                                          test_layers=other, normalize="model")}
    assert abs(scene["random forest"] - same["random forest"]) < 0.02  # a gain and offset are standardised away
    assert model["random forest"] < scene["random forest"] - 0.1  # the training statistics do not remove them
