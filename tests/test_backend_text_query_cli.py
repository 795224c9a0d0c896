"""Text encoders, open-vocabulary queries, metrics, the CLI and the no-QGIS rule."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import rasterio

from rsvl.backend import api
from rsvl.backend.errors import TextEncoderError
from rsvl.backend.metrics import accuracy_from_matrix, confusion_matrix
from rsvl.backend.raster import LayerSpec


def test_backend_imports_no_qgis_or_qt():
    code = (
        "import sys, rsvl.backend, rsvl.backend.api, rsvl.backend.cli, rsvl.backend.inference, rsvl.backend.text\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('qgis', 'PyQt5', 'PyQt6', 'sip'))\n"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_builtin_minilm_is_real_and_cached():
    from rsvl.backend import text

    enc = text.get_text_encoder("minilm")
    assert enc.id == "builtin:all-MiniLM-L6-v2" and enc.dim == 384
    e = enc.encode(["a photo of a forest", "dense forest", "a parking lot"])
    sims = e @ e.t()
    assert sims[0, 1] > sims[0, 2]  # real semantics: forest ~ forest > parking lot
    assert ("builtin:all-MiniLM-L6-v2", "dense forest") in text._CACHE
    assert text.get_text_encoder("") is enc


def test_local_hf_and_open_clip_encoders(tiny_hf_encoder, tiny_open_clip):
    from rsvl.backend import text

    hf = text.get_text_encoder(str(tiny_hf_encoder))
    assert hf.id == f"hf:{tiny_hf_encoder}" and hf.dim == 32
    oc = text.get_text_encoder(str(tiny_open_clip))
    assert oc.id == f"open_clip:{tiny_open_clip}" and oc.dim == 48
    for enc in (hf, oc):
        e = enc.encode(["forest", "water"])
        assert e.shape == (2, enc.dim)
        np.testing.assert_allclose(e.norm(dim=1).numpy(), 1.0, rtol=1e-5)


def test_text_encoder_errors(tmp_path):
    from rsvl.backend import text

    with pytest.raises(TextEncoderError, match="not a local model"):
        text.get_text_encoder("sentence-transformers/all-MiniLM-L6-v2")
    with pytest.raises(TextEncoderError, match="neither a Hugging Face model"):
        text.get_text_encoder(str(tmp_path))


def test_train_with_a_local_hf_encoder(scene, tmp_path, tiny_hf_encoder, helpers):
    layers = [LayerSpec(str(scene.paths["hsi"]), "hsi")]
    res = api.train(layers, str(scene.labels), str(tmp_path / "m.safetensors"), text_encoder=str(tiny_hf_encoder),
                    **{**helpers.fast, "epochs": 3})
    meta = api.describe_model(str(tmp_path / "m.safetensors"))
    assert meta["text_encoder"] == f"hf:{tiny_hf_encoder}" and meta["architecture"]["embed_dim"] == 32
    assert res.epochs_run == 3


def test_query_writes_one_band_per_prompt(trained_model, tmp_path):
    model_path, _result, layers = trained_model
    prompts = ["open water", "tall trees", "rooftops"]
    sim_path, cls_path = tmp_path / "sim.tif", tmp_path / "q.tif"
    res = api.query(str(model_path), layers, prompts, str(sim_path), output=str(cls_path), device="cpu")
    assert res.texts[0] == "the hyperspectral patch of open water"
    with rasterio.open(sim_path) as ds:
        assert ds.descriptions == tuple(prompts) and ds.count == 3 and ds.dtypes[0] == "float32"
        sim = ds.read()
    assert np.nanmin(sim) >= -1.0001 and np.nanmax(sim) <= 1.0001
    with rasterio.open(cls_path) as ds:
        q = ds.read(1)
    np.testing.assert_array_equal(q, sim.argmax(0) + 1)
    # A threshold above every similarity leaves only nodata.
    api.query(str(model_path), layers, prompts, str(sim_path), output=str(cls_path),
              threshold=float(np.nanmax(sim)) + 1e-3, device="cpu")
    with rasterio.open(cls_path) as ds:
        assert (ds.read(1) == 0).all()


def test_metrics_by_hand():
    ref = np.array([1, 1, 1, 1, 2, 2, 3, 3, 3, 3])
    pred = np.array([1, 1, 1, 2, 2, 2, 3, 3, 1, 1])
    m = confusion_matrix(ref, pred, [1, 2, 3])
    assert m.tolist() == [[3, 1, 0], [0, 2, 0], [2, 0, 2]]
    acc = accuracy_from_matrix(m, [1, 2, 3], ["a", "b", "c"])
    assert acc.oa == pytest.approx(0.7)
    assert acc.aa == pytest.approx((0.75 + 1.0 + 0.5) / 3)
    pe = (4 * 5 + 2 * 3 + 4 * 2) / 100
    assert acc.kappa == pytest.approx((0.7 - pe) / (1 - pe))
    assert acc.per_class_iou == pytest.approx([3 / 6, 2 / 3, 2 / 4])
    assert acc.miou == pytest.approx((0.5 + 2 / 3 + 0.5) / 3)


def test_cli_help_lists_commands(cli):
    out = cli("--help")
    assert out.returncode == 0
    for command in ("train", "classify", "query", "evaluate", "info", "demo"):
        assert command in out.stdout


def test_cli_bad_input_is_one_line(cli, tmp_path):
    out = cli("-q", "classify", "--model", tmp_path / "missing.safetensors", "--hsi", tmp_path / "x.tif",
              "--output", tmp_path / "o.tif")
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines == [f"rsvl: error: MODEL file '{tmp_path / 'missing.safetensors'}' does not exist"]


def test_cli_train_classify_evaluate(cli, scene, tmp_path):
    model = tmp_path / "m.safetensors"
    out = cli("-q", "train", "--ms", scene.paths["ms"], "--lidar", scene.paths["lidar"], "--labels", scene.labels,
              "--output", model, "--report", tmp_path / "r.html",
              "--patch-size", "5", "--epochs", "15", "--learning-rate", "3e-3", "--device", "cpu")
    assert out.returncode == 0, out.stderr
    assert "classes: water, forest, buildings, grassland" in out.stdout
    out = cli("-q", "classify", "-m", model, "--ms", scene.paths["ms"], "--lidar", scene.paths["lidar"],
              "-o", tmp_path / "c.tif")
    assert out.returncode == 0, out.stderr
    assert "Training loss per epoch" in (tmp_path / "r.html").read_text()
    out = cli("-q", "evaluate", "-c", tmp_path / "c.tif", "-r", scene.labels, "--json", tmp_path / "a.json",
              "--report", tmp_path / "e.html")
    assert out.returncode == 0 and out.stdout.startswith("OA ")
    assert "confusion matrix" in (tmp_path / "e.html").read_text()
    assert json.loads((tmp_path / "a.json").read_text())["oa"] > 0.8
    out = cli("info", model)
    assert json.loads(out.stdout)["modalities"]["ms"]["bands"] == 6


def test_default_prompt_template_follows_the_inputs(scene, tmp_path, helpers):
    from rsvl.backend.text import default_template

    assert default_template({"ms", "lidar"}) == "a multispectral satellite image of {}"
    assert default_template({"hsi", "ms"}) == "the hyperspectral patch of {}"  # the MMLGNet paper's
    assert default_template({"sar"}) == "a SAR image of {}"
    assert default_template({"lidar"}) == "an elevation model of {}"
    # A model trained on MS + LiDAR without a template stores the MS one and prompts with it.
    layers = [LayerSpec(str(scene.paths["ms"]), "ms"), LayerSpec(str(scene.paths["lidar"]), "lidar")]
    out = tmp_path / "ms.safetensors"
    api.train(layers, str(scene.labels), str(out), **{**helpers.fast, "epochs": 2})
    header = api.describe_model(str(out))
    assert header["prompt_template"] == "a multispectral satellite image of {}"
    res = api.query(str(out), layers, ["open water"], str(tmp_path / "sim.tif"), device="cpu")
    assert res.texts == ["a multispectral satellite image of open water"]


def test_map_colours_people_read_naturally():
    from rsvl.backend.palette import assign_colours, default_colour, lexicon_colour

    water, forest, crops = lexicon_colour("water"), lexicon_colour("forest"), lexicon_colour("crops")
    assert lexicon_colour("Broadleaf forests") == forest and lexicon_colour("built-up area") == lexicon_colour("urban")
    assert lexicon_colour("Flooded fields") != crops and lexicon_colour("cultivated land") == crops
    assert lexicon_colour("schrubland") == lexicon_colour("shrubs") and lexicon_colour("zzz") is None
    assert water[2] > max(water[:2]) and forest[1] > max(forest[0], forest[2])  # blue, green
    # A given colour wins; no two names share one; unknown names take the palette in order.
    colours = assign_colours(["lake", "river", "forest", "alpha", "beta"], [None, None, (1, 2, 3), None, None])
    assert colours[0] == water and colours[2] == (1, 2, 3)
    assert len(set(colours)) == 5 and colours[1] == default_colour(0) and colours[3:] == [default_colour(1),
                                                                                          default_colour(2)]
