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
from rsvl.backend.evaluation.metrics import accuracy_from_matrix, confusion_matrix
from rsvl.backend.io.raster import LayerSpec


def test_backend_imports_no_qgis_or_qt():
    code = (
        "import sys, rsvl.backend, rsvl.backend.api, rsvl.backend.cli, rsvl.backend.mapping.inference\n"
        "import rsvl.backend.text.encoders\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('qgis', 'PyQt5', 'PyQt6', 'sip'))\n"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_builtin_minilm_is_real_and_cached():
    from rsvl.backend.text import encoders as text

    enc = text.get_text_encoder("minilm")
    assert enc.id == "builtin:all-MiniLM-L6-v2" and enc.dim == 384
    e = enc.encode(["a photo of a forest", "dense forest", "a parking lot"])
    sims = e @ e.t()
    assert sims[0, 1] > sims[0, 2]  # real semantics: forest ~ forest > parking lot
    assert ("builtin:all-MiniLM-L6-v2", "dense forest") in text._CACHE
    assert text.get_text_encoder("") is enc


def test_local_hf_and_open_clip_encoders(tiny_hf_encoder, tiny_open_clip):
    from rsvl.backend.text import encoders as text

    hf = text.get_text_encoder(str(tiny_hf_encoder))
    assert hf.id == f"hf:{tiny_hf_encoder}" and hf.dim == 32
    oc = text.get_text_encoder(str(tiny_open_clip))
    assert oc.id == f"open_clip:{tiny_open_clip}" and oc.dim == 48
    for enc in (hf, oc):
        e = enc.encode(["forest", "water"])
        assert e.shape == (2, enc.dim)
        np.testing.assert_allclose(e.norm(dim=1).numpy(), 1.0, rtol=1e-5)


def test_text_encoder_errors(tmp_path):
    from rsvl.backend.text import encoders as text

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


def _per_patch_similarity(model_path, layers, texts, pixels) -> np.ndarray:
    """(N, K) cosine similarity of the patches around ``pixels`` (row, col) to ``texts``,
    computed without rsvl's raster stack or dense engine: whole-raster rasterio reads, the
    model header's statistics, zeros (the band mean) outside the scene, the model's
    per-patch path and the text encoder named in the header."""
    import torch

    from rsvl.backend.models.modelfile import load_model
    from rsvl.backend.text.encoders import get_text_encoder

    model, header = load_model(str(model_path))
    half = header.config.patch_size // 2
    patches = {}
    for layer in layers:
        with rasterio.open(layer.path) as ds:
            data = ds.read().astype(np.float64)
        stats = header.stats[layer.modality]
        norm = (data - np.array(stats.mean)[:, None, None]) / np.array(stats.std)[:, None, None]
        norm = np.pad(norm, ((0, 0), (half, half), (half, half)))
        patches[layer.modality] = torch.from_numpy(np.stack(
            [norm[:, r:r + 2 * half + 1, c:c + 2 * half + 1] for r, c in pixels]).astype(np.float32))
    with torch.no_grad():
        z = model.embed(patches)
    return (z @ get_text_encoder(header.text_encoder).encode(texts).t()).numpy()


def test_query_writes_one_band_per_prompt(trained_model, shared_scene, tmp_path):
    model_path, _result, layers = trained_model
    prompts = ["open water", "tall trees", "rooftops"]
    sim_path, cls_path = tmp_path / "sim.tif", tmp_path / "q.tif"
    res = api.query(str(model_path), layers, prompts, str(sim_path), output=str(cls_path), device="cpu")
    assert res.texts[0] == "the hyperspectral patch of open water"
    with rasterio.open(sim_path) as ds:
        assert ds.descriptions == tuple(prompts) and ds.count == 3 and ds.dtypes[0] == "float32"
        sim = ds.read()
    # The bands are the cosine similarities of the per-patch definition, corners included.
    pixels = [(0, 0), (47, 47), (0, 30), (23, 0), (12, 17), (30, 40), (40, 5)]
    expected = _per_patch_similarity(model_path, layers, res.texts, pixels)
    got = np.stack([sim[:, r, c] for r, c in pixels])
    np.testing.assert_allclose(got, expected, atol=1e-4)
    with rasterio.open(cls_path) as ds:
        q = ds.read(1)
    np.testing.assert_array_equal(q, sim.argmax(0) + 1)
    # The best prompt is the one a user means: on held-out pixels of water, forest and
    # buildings, "open water", "tall trees" and "rooftops" win where they should (chance: 1/3).
    truth, test = shared_scene.truth, shared_scene.held_out()
    named = test & (truth <= 3)  # grassland has no prompt here
    assert (q[named] == truth[named]).mean() > 0.9
    # A threshold leaves pixels whose best similarity is below it as nodata, and only those.
    best = sim.max(0)
    threshold = float(np.median(best))
    api.query(str(model_path), layers, prompts, str(sim_path), output=str(cls_path), threshold=threshold, device="cpu")
    with rasterio.open(cls_path) as ds:
        q = ds.read(1)
    np.testing.assert_array_equal(q, np.where(best >= threshold, sim.argmax(0) + 1, 0))
    assert 0 < (q == 0).sum() < q.size
    # A threshold above every similarity leaves only nodata.
    api.query(str(model_path), layers, prompts, str(sim_path), output=str(cls_path),
              threshold=float(np.nanmax(sim)) + 1e-3, device="cpu")
    with rasterio.open(cls_path) as ds:
        assert (ds.read(1) == 0).all()


@pytest.mark.parametrize("prompt, class_name", [("lake", "water"), ("woodland", "forest")])
def test_a_query_for_a_synonym_finds_its_class(prompt, class_name, trained_model, shared_scene, tmp_path, helpers):
    """A word the model never saw in training ranks the pixels of the class it means first,
    on pixels it was not trained on."""
    model_path, result, layers = trained_model
    assert prompt not in [c.name for c in result.classes]
    code = next(c.code for c in result.classes if c.name == class_name)
    api.query(str(model_path), layers, [prompt], str(tmp_path / "sim.tif"), device="cpu")
    with rasterio.open(tmp_path / "sim.tif") as ds:
        sim = ds.read(1)
    test = shared_scene.held_out()
    score, truth = sim[test], shared_scene.truth[test]
    positive = truth == code
    assert helpers.auc(score, positive) > 0.9  # chance: 0.5
    k = int(positive.sum()) // 2
    assert positive[np.argsort(-score)[:k]].mean() > 0.9  # top half of its size; chance: about 0.25
    by_class = {c.name: float(score[truth == c.code].mean()) for c in result.classes}
    assert max(by_class, key=by_class.get) == class_name, by_class


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
    assert lines == [f"rsvl: error: --model file '{tmp_path / 'missing.safetensors'}' does not exist"]


def _report_shows(report: str, acc: dict) -> None:
    """The HTML report carries this accuracy's figures and every confusion-matrix count."""
    assert f"<td>{acc['oa']:.4f}</td><td>{acc['aa']:.4f}</td><td>{acc['kappa']:.4f}</td>" in report
    names = [c["name"] for c in acc["classes"]]
    for i, row in enumerate(acc["confusion_matrix"]):
        for j, count in enumerate(row):
            assert f"{names[i]} → {names[j]}: {count}</title>" in report


def _training_report_shows(report: str, header: dict) -> None:
    """The training report carries the figures of the training run in the model header."""
    t = header["training"]
    assert f"{t['n_samples']} ({t['n_train']} training, {t['n_val']} validation)" in report
    assert f"{t['epochs_run']} run, best {t['best_epoch']}" in report
    for c in header["classes"]:
        assert f"{c['name']}</td><td>{t['class_counts'][c['name']]}</td>" in report
    _report_shows(report, t["validation"])


def _evaluated_on(cli_out, acc: dict, pred: np.ndarray, reference: np.ndarray) -> None:
    """``evaluate`` counted the reference's pixels, and only them, as the map has them."""
    assert cli_out.returncode == 0, cli_out.stderr
    labelled = reference > 0
    assert acc["n"] == labelled.sum()
    assert acc["oa"] == pytest.approx((pred[labelled] == reference[labelled]).mean())
    assert cli_out.stdout.startswith(f"OA {acc['oa']:.4f}  AA {acc['aa']:.4f}  kappa {acc['kappa']:.4f}")


def test_cli_classify_and_evaluate_on_held_out_pixels(cli, trained_model, shared_scene, tmp_path, helpers):
    """classify and evaluate from the shell with a trained model, on the pixels it was not
    trained on; the reports carry the figures of this run."""
    from rsvl.backend.evaluation.report import write_training_report

    model_path, result, layers = trained_model
    held_out = shared_scene.held_out()
    reference = np.where(held_out, shared_scene.truth, 0)
    test = helpers.write_labels(tmp_path / "test.tif", reference, shared_scene.transform)
    out = cli("-q", "classify", "-m", model_path, "--hsi", layers[0].path, "--lidar", layers[1].path,
              "-o", tmp_path / "c.tif")
    assert out.returncode == 0, out.stderr
    out = cli("-q", "evaluate", "-c", tmp_path / "c.tif", "-r", test, "--json", tmp_path / "a.json",
              "--report", tmp_path / "e.html")
    acc = json.loads((tmp_path / "a.json").read_text())
    with rasterio.open(tmp_path / "c.tif") as ds:
        pred = ds.read(1)
    _evaluated_on(out, acc, pred, reference)
    assert acc["n"] < shared_scene.truth.size and acc["oa"] > 0.85
    _report_shows((tmp_path / "e.html").read_text(), acc)
    write_training_report(str(tmp_path / "r.html"), result.header, result.validation)
    _training_report_shows((tmp_path / "r.html").read_text(), result.header)


@pytest.mark.slow  # five CLI processes, one of them training
def test_cli_split_train_classify_evaluate(cli, scene, tmp_path, helpers):
    """split a class raster, train on 15 % of the pixels, info, classify, evaluate on the
    other 85 %, all from the shell; the reports carry the figures of this run."""
    truth = helpers.write_labels(tmp_path / "truth.tif", scene.truth, scene.transform)
    out = cli("split", "--labels", truth, "--fraction", "0.15", "--first", tmp_path / "train.tif",
              "--second", tmp_path / "test.tif")
    assert out.returncode == 0, out.stderr
    with rasterio.open(tmp_path / "train.tif") as a, rasterio.open(tmp_path / "test.tif") as b:
        train_codes, test_codes = a.read(1), b.read(1)
    assert out.stdout.splitlines() == [f"{tmp_path / 'train.tif'}: {(train_codes > 0).sum()} pixels",
                                       f"{tmp_path / 'test.tif'}: {(test_codes > 0).sum()} pixels"]
    assert not ((train_codes > 0) & (test_codes > 0)).any() and ((train_codes > 0) | (test_codes > 0)).all()
    model = tmp_path / "m.safetensors"
    trained = cli("-q", "train", "--ms", scene.paths["ms"], "--lidar", scene.paths["lidar"], "--labels",
                  tmp_path / "train.tif", "--output", model, "--report", tmp_path / "r.html",
                  "--patch-size", "5", "--epochs", "15", "--learning-rate", "3e-3", "--device", "cpu")
    assert trained.returncode == 0, trained.stderr
    assert "classes: water, forest, buildings, grassland" in trained.stdout
    out = cli("info", model)
    assert out.returncode == 0, out.stderr
    header = json.loads(out.stdout)
    assert header == api.describe_model(str(model)) and header["modalities"]["ms"]["bands"] == 6
    assert header["training"]["n_samples"] == (train_codes > 0).sum() and header["training"]["epochs_run"] <= 15
    validation = header["training"]["validation"]
    assert f"OA {validation['oa']:.4f}  AA {validation['aa']:.4f}" in trained.stdout
    _training_report_shows((tmp_path / "r.html").read_text(), header)
    out = cli("-q", "classify", "-m", model, "--ms", scene.paths["ms"], "--lidar", scene.paths["lidar"],
              "-o", tmp_path / "c.tif")
    assert out.returncode == 0, out.stderr
    out = cli("-q", "evaluate", "-c", tmp_path / "c.tif", "-r", tmp_path / "test.tif", "--json", tmp_path / "a.json",
              "--report", tmp_path / "e.html")
    acc = json.loads((tmp_path / "a.json").read_text())
    with rasterio.open(tmp_path / "c.tif") as ds:
        pred = ds.read(1)
    _evaluated_on(out, acc, pred, test_codes)
    assert acc["oa"] > 0.8
    _report_shows((tmp_path / "e.html").read_text(), acc)


def test_default_prompt_template_follows_the_inputs(scene, tmp_path, helpers):
    from rsvl.backend.text.encoders import default_template

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
    from rsvl.backend.io.palette import assign_colours, default_colour, lexicon_colour

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


def test_loading_the_text_encoder_prints_no_progress_bar():
    code = "from rsvl.backend.text.encoders import get_text_encoder; print(get_text_encoder('minilm').encode(['x']).shape)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "384" in run.stdout and "Loading weights" not in run.stderr and "it/s" not in run.stderr, run.stderr
