"""Issue 34, as a new user meets it: evaluate, info, checkpoint messages, few-shot figures,
retrieve's modalities, Ctrl-C and the messages of Processing and the CLI. Each test takes the
user's route (Processing, qgis_process or the CLI) and checks what the user would read."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from qgis.core import QgsProcessingFeedback
from rasterio.transform import from_origin

from rsvl.backend.io.labels import ClassInfo, set_category_names

LEGEND = [ClassInfo(1, "cultivated land", (255, 255, 0)), ClassInfo(2, "forest", (0, 100, 0)),
          ClassInfo(3, "water", (0, 0, 255))]
TRANSFORM = from_origin(465000.0, 5080000.0, 10.0, 10.0)


class Feedback(QgsProcessingFeedback):
    def __init__(self):
        super().__init__()
        self.lines = []

    def reportError(self, error, fatalError=False):  # noqa: N802,N803 (QGIS API names)
        self.lines.append(("error", error))

    def pushWarning(self, text):  # noqa: N802 (QGIS API name)
        self.lines.append(("warning", text))

    def pushInfo(self, text):  # noqa: N802 (QGIS API name)
        self.lines.append(("info", text))


def _class_raster(helpers, path, codes, classes=LEGEND):
    path = helpers.write_raster(path, codes.astype(np.uint8), TRANSFORM, nodata=0)
    set_category_names(str(path), classes)
    return path


def test_evaluate_keeps_the_codes_of_a_legend_class_the_map_never_predicts(plugin, helpers, tmp_path, caplog):
    """Item 1: the map's legend names cultivated land (code 1) but no pixel is 1; the
    reference has cultivated land at code 1. The report keeps code 1 and warns of nothing."""
    import processing

    rng = np.random.default_rng(0)
    ref = rng.integers(1, 4, (20, 20))
    pred = np.where(ref == 1, 2, ref)  # cultivated land mapped as forest
    classification = _class_raster(helpers, tmp_path / "map.tif", pred)
    reference = _class_raster(helpers, tmp_path / "ref.tif", ref)
    with caplog.at_level("WARNING", logger="rsvl"):
        res = processing.run("rsvl:evaluate", {"INPUT": str(classification), "REFERENCE": str(reference),
                                               "OUTPUT_JSON": str(tmp_path / "acc.json")})
    figures = json.loads((tmp_path / "acc.json").read_text())
    classes = {c["name"]: c["code"] for c in figures["classes"]}
    assert classes == {"cultivated land": 1, "forest": 2, "water": 3}
    assert not [r for r in caplog.records if "not among" in r.getMessage()]
    assert res["OA"] == pytest.approx((pred == ref).mean())


@pytest.fixture(scope="module")
def fewshot_model(fewshot_scene, tmp_path_factory):
    from rsvl.backend import api
    from rsvl.backend.io.raster import LayerSpec

    root, preset, _ = fewshot_scene
    out = tmp_path_factory.mktemp("fs") / "fewshot.safetensors"
    api.train_fewshot(str(root / "clip.pt"), [LayerSpec(str(root / "rgb.tif"), "ms")], str(root / "labels.tif"),
                      str(out), preset=preset, tile_size=32, stride=16, epochs=5, device="cpu")
    return out


def test_info_describes_a_few_shot_model(cli, fewshot_model, fewshot_scene):
    """Item 2: `rsvl info` on the file rsvl:train FOUNDATION_MODEL=… wrote."""
    res = cli("info", fewshot_model)
    assert res.returncode == 0, res.stderr
    header = json.loads(res.stdout)
    assert header["kind"].startswith("few-shot") and header["checkpoint_found"] is True
    assert header["checkpoint"] == str(fewshot_scene[0] / "clip.pt")
    assert sorted(c["name"] for c in header["classes"]) == ["bare soil", "forest", "water"]


@pytest.mark.parametrize("content, expected", [
    (b"just some notes, not weights\n" * 4, "looks like a text file"),
    (bytes(np.random.default_rng(1).integers(0, 256, 200, dtype=np.uint8)) + b"", "is not a safetensors file"),
])
def test_files_that_are_no_checkpoint_are_described_as_what_they_are(plugin, fewshot_scene, tmp_path, cli, content,
                                                                     expected):
    """Item 3: a text file or 200 junk bytes as MODEL (query, retrieve) or FOUNDATION_MODEL
    (few-shot train): the message names the parameter and says what the file looks like,
    never 'a pickle that holds more than tensors' nor a bare number."""
    import processing
    from qgis.core import QgsProcessingException

    root = fewshot_scene[0]
    bad = tmp_path / "weights.pt"
    bad.write_bytes(content)
    rgb = str(root / "rgb.tif")
    for alg, params, name in (
            ("rsvl:query", {"MODEL": str(bad), "INPUT_MS": [rgb], "PROMPTS": "water",
                            "OUTPUT_SIMILARITY": str(tmp_path / "s.tif")}, "MODEL"),
            ("rsvl:retrieve", {"MODEL": str(bad), "INPUT_MS": [rgb], "QUERY": "water",
                               "OUTPUT": str(tmp_path / "r.gpkg")}, "MODEL"),
            ("rsvl:train", {"FOUNDATION_MODEL": str(bad), "INPUT_MS": [rgb], "TRAINING": str(root / "labels.tif"),
                            "OUTPUT_MODEL": str(tmp_path / "m.safetensors")}, "FOUNDATION_MODEL")):
        with pytest.raises(QgsProcessingException) as err:
            processing.run(alg, params)
        message = str(err.value)
        assert f"{name} '{bad}' is not a pretrained checkpoint" in message and expected in message, (alg, message)
        assert "pickle that holds" not in message
    res = cli("train", "--ms", rgb, "--labels", root / "labels.tif", "-o", tmp_path / "m.safetensors",
              "--foundation-model", bad)
    assert res.returncode == 2 and f"--foundation-model '{bad}' is not a pretrained checkpoint" in res.stderr


def qgis_process(*args, home, cwd):
    import os
    import subprocess
    from pathlib import Path

    shim = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "qgis_process"
    env = {k: v for k, v in os.environ.items() if k not in ("QGIS_CUSTOM_CONFIG_PATH", "QGIS_OPTIONS_PATH")}
    return subprocess.run([str(shim), *map(str, args)], capture_output=True, text=True, timeout=600, cwd=str(cwd),
                          env={**env, "HOME": str(home)})


def test_evaluate_without_output_csv_writes_a_temporary_one(plugin, helpers, tmp_path):
    """Item 5: evaluate without OUTPUT_CSV writes the confusion matrix to a temporary file and
    returns its path (Processing keeps it for the session); `qgis_process --json` returns
    that path, not null (qgis_process deletes its temporary folder on exit, as the help says)."""
    import processing

    ref = np.random.default_rng(0).integers(1, 4, (12, 12))
    classification = _class_raster(helpers, tmp_path / "map.tif", ref)
    res = processing.run("rsvl:evaluate", {"INPUT": str(classification), "REFERENCE": str(classification)})
    with open(res["OUTPUT_CSV"], encoding="utf-8") as f:
        assert "forest" in f.read()
    res = qgis_process("--json", "run", "rsvl:evaluate", "--", f"INPUT={classification}", f"REFERENCE={classification}",
                       home=tmp_path, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    results = json.loads(res.stdout[res.stdout.index("{"):])["results"]
    assert results["OUTPUT_CSV"].endswith("confusion.csv") and results["OA"] == 1.0


def test_few_shot_training_reports_every_validation_figure(plugin, fewshot_scene, tmp_path, cli):
    """Item 6: VALIDATION_AA and VALIDATION_KAPPA of a few-shot head are numbers, OUTPUT_REPORT
    is written (Processing and the CLI's --report), and the figures agree with the report."""
    import math

    import processing

    root, preset, _ = fewshot_scene
    res = processing.run("rsvl:train", {
        "FOUNDATION_MODEL": str(root / "clip.pt"), "PRESET": "open_clip", "OPEN_CLIP_ARCH": preset.split(":", 1)[1],
        "INPUT_MS": [str(root / "rgb.tif")], "TRAINING": str(root / "labels.tif"), "TILE_SIZE": 32, "STRIDE": 16,
        "EPOCHS": 5, "DEVICE": "cpu", "OUTPUT_MODEL": str(tmp_path / "fs.safetensors"),
        "OUTPUT_REPORT": str(tmp_path / "fs.html")})
    for key in ("VALIDATION_OA", "VALIDATION_AA", "VALIDATION_KAPPA"):
        assert not math.isnan(res[key]) and -1 <= res[key] <= 1, key
    html = (tmp_path / "fs.html").read_text(encoding="utf-8")
    assert res["OUTPUT_REPORT"] == str(tmp_path / "fs.html") and "few-shot" in html and f"{res['VALIDATION_AA']:.4f}" in html
    out = cli("train", "--ms", root / "rgb.tif", "--labels", root / "labels.tif", "-o", tmp_path / "cli.safetensors",
              "--foundation-model", root / "clip.pt", "--preset", preset, "--fewshot-tile-size", 32,
              "--fewshot-stride", 16, "--epochs", 5, "--device", "cpu", "--report", tmp_path / "cli.html")
    assert out.returncode == 0, out.stderr
    assert "validation: OA" in out.stdout and (tmp_path / "cli.html").is_file()


def test_retrieve_offers_and_takes_only_ms(cli, tmp_path):
    """Item 9: retrieve's help offers --ms alone, readable; --hsi/--lidar/--sar are refused by
    name instead of being read as MS."""
    res = cli("retrieve", "--help")
    assert "--ms PATH" in res.stdout and "--hsi" not in res.stdout and "--lidar" not in res.stdout
    assert "(ms (or" not in res.stdout
    for flag in ("--hsi", "--lidar", "--sar"):
        res = cli("retrieve", "-m", tmp_path / "x.pt", flag, tmp_path / "a.tif", "-q", "water", "-o", tmp_path / "r.gpkg")
        assert res.returncode == 2
        assert "retrieve takes --ms only" in res.stderr and f"not {flag}" in res.stderr, res.stderr


def test_ctrl_c_in_the_cli_prints_one_line_and_leaves_nothing(helpers, tmp_path):
    """Item 10: SIGINT while training prints one line, exits 130, and leaves no model file
    and no temporary file behind."""
    import os
    import signal
    import subprocess
    import sys
    import time

    scene = helpers.make_scene(tmp_path / "s", size=64, modalities=("hsi",))
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "rsvl.backend", "train", "--hsi", str(scene.paths["hsi"]),
                             "--labels", str(scene.labels), "-o", str(out / "m.safetensors"), "--epochs", "500",
                             "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(10)  # imports done, training under way (500 epochs take minutes)
    assert proc.poll() is None
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1] == (
        "rsvl: interrupted; no half-written output was left behind")
    assert os.listdir(out) == []


def test_messages_say_what_is_allowed_once_in_the_users_words(helpers, tmp_path, cli, fewshot_scene):
    """Item 12: qgis_process says what FRACTION and PROMPTS allow (not QGIS's bare "Incorrect
    parameter value"); evaluate's OA line is printed once; a zero-shot run prints no stray
    'INFO:rsvl:' lines; the CLI names its own options (--first, --prompt); the split's warning
    names the class; counts read '1 band'."""
    rng = np.random.default_rng(0)
    ref = rng.integers(1, 4, (16, 16))
    labels = _class_raster(helpers, tmp_path / "labels.tif", ref)
    res = qgis_process("run", "rsvl:split", "--", f"INPUT={labels}", "FRACTION=1.5", "OUTPUT_FIRST=f.tif",
                       "OUTPUT_SECOND=s.tif", home=tmp_path, cwd=tmp_path)
    assert res.returncode != 0 and "FRACTION must be a number from 0.0001 to 0.9999 (got 1.5)" in res.stdout + res.stderr
    root = fewshot_scene[0]
    res = qgis_process("run", "rsvl:query", "--", f"MODEL={root / 'clip.pt'}", f"INPUT_MS={root / 'rgb.tif'}",
                       "PROMPTS=", "OUTPUT_SIMILARITY=s.tif", home=tmp_path, cwd=tmp_path)
    assert res.returncode != 0 and "PROMPTS is empty: give the prompts" in res.stdout + res.stderr
    res = qgis_process("run", "rsvl:evaluate", "--", f"INPUT={labels}", f"REFERENCE={labels}", home=tmp_path,
                       cwd=tmp_path)
    assert res.returncode == 0 and (res.stdout + res.stderr).count("OA 1.0000") == 1, res.stdout
    res = qgis_process("run", "rsvl:query", "--", f"MODEL={root / 'clip.pt'}", f"INPUT_MS={root / 'rgb.tif'}",
                       "PRESET=open_clip", f"OPEN_CLIP_ARCH=local-dir:{root / 'arch'}", "PROMPTS=water",
                       "TILE_SIZE=32", "DEVICE=cpu", "OUTPUT_SIMILARITY=s.tif", home=tmp_path, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "INFO:rsvl:" not in res.stderr and "INFO:root:" not in res.stderr
    # the CLI: its own option names, class names in the split warning
    res = cli("split", "--labels", labels, "--first", tmp_path / "a.txt", "--second", tmp_path / "b.tif")
    assert res.returncode == 2 and "--first 'a.txt'" in res.stderr.replace(str(tmp_path) + "/", "")
    res = cli("query", "-m", tmp_path / "m.safetensors", "--ms", root / "rgb.tif", "--prompt", " ",
              "--output-similarity", tmp_path / "s.tif")
    assert res.returncode == 2 and "--prompt" in res.stderr and "PROMPTS" not in res.stderr, res.stderr
    single = np.where(ref == 3, 3, np.where(ref == 1, 1, 0))
    single[0, 0] = 2  # one forest pixel: the training map gets it or the test map has none
    few = _class_raster(helpers, tmp_path / "few.tif", single)
    res = cli("split", "--labels", few, "--fraction", 0.5, "--first", tmp_path / "f.tif", "--second", tmp_path / "s.tif")
    assert res.returncode == 0 and "no pixel of this class with this split: forest (2)" in res.stderr, res.stderr
    from rsvl.backend.errors import count

    assert (count(1, "band"), count(3, "band")) == ("1 band", "3 bands")


def test_split_keeps_the_whole_legend(plugin, helpers, tmp_path, cli):
    """Item 11: rsvl:split and the CLI's split write the input's class names (all of them:
    a class with no pixel in a part keeps its name) with its colour table."""
    import processing
    from osgeo import gdal

    legend = ["no data", "cultivated land", "forest", "grassland", "shrubland", "water", "wetlands", "tundra"]
    codes = np.random.default_rng(0).choice([1, 2, 3, 5], (20, 20))
    path = helpers.write_raster(tmp_path / "lulc.tif", codes.astype(np.uint8), TRANSFORM, nodata=0)
    from rsvl.backend.io.labels import write_category_names

    write_category_names(str(path), legend)

    def names(p):
        ds = gdal.Open(str(p))
        band = ds.GetRasterBand(1)
        band.GetMetadata()
        return list(band.GetCategoryNames() or [])

    processing.run("rsvl:split", {"INPUT": str(path), "FRACTION": 0.3, "OUTPUT_FIRST": str(tmp_path / "a.tif"),
                                  "OUTPUT_SECOND": str(tmp_path / "b.tif")})
    res = cli("split", "--labels", path, "--fraction", 0.3, "--first", tmp_path / "c.tif", "--second", tmp_path / "d.tif")
    assert res.returncode == 0, res.stderr
    for out in ("a.tif", "b.tif", "c.tif", "d.tif"):
        assert names(tmp_path / out) == legend, out


def test_a_tile_larger_than_the_scene_is_refused_saying_what_fits(plugin, fewshot_scene, tmp_path, cli):
    """Item 7: TILE_SIZE 1000 on a 96 × 64 scene: query (Processing), retrieve and few-shot
    training (CLI) refuse it, naming the scene's size and the largest tile it allows."""
    import processing
    from qgis.core import QgsProcessingException

    root, preset, _ = fewshot_scene
    arch = preset.split(":", 1)[1]
    expected = "TILE_SIZE 1000 is larger than the scene (96 × 64 pixels): give at most 64"
    with pytest.raises(QgsProcessingException, match=re.escape(expected)):
        processing.run("rsvl:query", {"MODEL": str(root / "clip.pt"), "INPUT_MS": [str(root / "rgb.tif")],
                                      "PRESET": "open_clip", "OPEN_CLIP_ARCH": arch, "PROMPTS": "water",
                                      "TILE_SIZE": 1000, "OUTPUT_SIMILARITY": str(tmp_path / "s.tif")})
    res = cli("retrieve", "-m", root / "clip.pt", "--ms", root / "rgb.tif", "--preset", preset, "-q", "water",
              "--tile-size", 1000, "-o", tmp_path / "r.gpkg")
    assert res.returncode == 2 and "--tile-size 1000 is larger than the scene (96 × 64 pixels)" in res.stderr
    res = cli("train", "--ms", root / "rgb.tif", "--labels", root / "labels.tif", "-o", tmp_path / "m.safetensors",
              "--foundation-model", root / "clip.pt", "--preset", preset, "--fewshot-tile-size", 1000)
    assert res.returncode == 2 and "larger than the scene (96 × 64 pixels): give at most 64" in res.stderr
    assert not list(tmp_path.glob("*.gpkg")) and not list(tmp_path.glob("*.safetensors"))


def test_outputs_are_written_in_the_format_their_name_promises(plugin, fewshot_scene, helpers, tmp_path, cli):
    """Item 4: retrieve writes GeoPackage, GeoJSON or FlatGeobuf by extension and refuses .shp
    and .png; a model named .png and a report named .png are refused before any work."""
    import processing
    from osgeo import ogr
    from qgis.core import QgsProcessingException

    root, preset, _ = fewshot_scene
    arch = preset.split(":", 1)[1]
    common = {"MODEL": str(root / "clip.pt"), "INPUT_MS": [str(root / "rgb.tif")], "PRESET": "open_clip",
              "OPEN_CLIP_ARCH": arch, "QUERY": "water", "TILE_SIZE": 32, "TOP_K": 3, "DEVICE": "cpu"}
    with pytest.raises(QgsProcessingException, match=r"OUTPUT '.*ret\.shp': rsvl writes this layer as GeoPackage"):
        processing.run("rsvl:retrieve", {**common, "OUTPUT": str(tmp_path / "ret.shp")})
    res = processing.run("rsvl:retrieve", {**common, "OUTPUT": str(tmp_path / "ret.geojson")})
    ds = ogr.Open(res["OUTPUT"])
    assert ds.GetDriver().GetName() == "GeoJSON" and ds.GetLayer(0).GetFeatureCount() == 3
    out = cli("retrieve", "-m", root / "clip.pt", "--ms", root / "rgb.tif", "--preset", preset, "-q", "water",
              "--tile-size", 32, "-o", tmp_path / "ret.png")
    assert out.returncode == 2 and "--output" in out.stderr and "ret.png': rsvl writes this layer" in out.stderr
    scene = helpers.make_scene(tmp_path / "s", size=16, modalities=("hsi",))
    train = {"INPUT_HSI": [str(scene.paths["hsi"])], "TRAINING": str(scene.labels), "EPOCHS": 1, "DEVICE": "cpu"}
    with pytest.raises(QgsProcessingException, match=r"OUTPUT_MODEL '.*model\.png': rsvl writes models as safetensors"):
        processing.run("rsvl:train", {**train, "OUTPUT_MODEL": str(tmp_path / "model.png")})
    feedback = Feedback()  # an output refused while preparing is reported in the log (Processing's own wording after)
    with pytest.raises(QgsProcessingException):
        processing.run("rsvl:train", {**train, "OUTPUT_MODEL": str(tmp_path / "m.safetensors"),
                                      "OUTPUT_REPORT": str(tmp_path / "report.png")}, feedback=feedback)
    assert [m for kind, m in feedback.lines if kind == "error" and "report.png': the report is an HTML page" in m]
    assert not list(tmp_path.glob("*.png")) and not (tmp_path / "m.safetensors").exists()


def test_prompt_embeddings_of_a_checkpoint_are_cached_and_their_progress_shown(fewshot_scene, tmp_path,
                                                                                monkeypatch):
    """Also measured in issue 34: 50 templates × 50 prompts were encoded on every query with
    the progress bar still. Prompts are encoded in batches that report progress, cached on
    disk by checkpoint file, preset and templates; a changed checkpoint misses the cache."""
    import shutil

    import open_clip.zero_shot_classifier as zsc
    import torch

    from rsvl.backend.foundation.model import FoundationModel

    monkeypatch.setenv("RSVL_CACHE_DIR", str(tmp_path / "cache"))
    root, preset, _ = fewshot_scene
    shutil.copy(root / "clip.pt", tmp_path / "clip.pt")
    fm = FoundationModel(str(tmp_path / "clip.pt"), preset)
    prompts = [f"land cover {i}" for i in range(20)]
    calls, seen = [], []
    real = zsc.build_zero_shot_classifier

    def counting(model, tokenizer, classnames, *args, **kwargs):
        calls.append(len(classnames))
        return real(model, tokenizer, classnames, *args, **kwargs)

    monkeypatch.setattr(zsc, "build_zero_shot_classifier", counting)
    first = fm.text_embeddings(prompts, progress=lambda f, m: seen.append((f, m)))
    assert sum(calls) == 20 and len(calls) == 3 and len(seen) == 4 and seen[-1][0] == 1.0
    assert "encoding prompts 1-8 of 20" in seen[0][1]
    calls.clear()
    again = fm.text_embeddings(prompts)
    assert calls == [] and torch.equal(first, again)
    assert torch.allclose(first[3], fm.text_embeddings(["land cover 3", "new"])[0])  # mixed: one cached
    assert calls == [1]
    with open(tmp_path / "clip.pt", "ab") as f:  # the checkpoint changes: the cache is not reused
        f.write(b"\0")
    calls.clear()
    fm.text_embeddings(prompts[:2])
    assert calls == [2]


def test_classify_window_side_is_tile_size_as_in_the_cli(plugin, tmp_path):
    """Item 8: Processing's window side is TILE_SIZE, the CLI's --tile-size; a model or script
    saved with BATCH_SIZE still runs, with a deprecation warning, and gives the same map."""
    from pathlib import Path

    import processing
    import rasterio

    data = Path(__file__).parent / "data" / "premove"
    base = {"MODEL": str(data / "model.safetensors"), "INPUT_HSI": [str(data / "hsi.tif")],
            "INPUT_LIDAR": [str(data / "dsm.tif")], "DEVICE": "cpu"}
    from qgis.core import QgsApplication

    classify = QgsApplication.processingRegistry().algorithmById("rsvl:classify")
    assert classify.parameterDefinition("TILE_SIZE").description() == "Window size (pixels per side)"
    assert classify.parameterDefinition("BATCH_SIZE").flags() & classify.parameterDefinition("BATCH_SIZE").FlagHidden
    processing.run("rsvl:classify", {**base, "TILE_SIZE": 16, "OUTPUT": str(tmp_path / "new.tif")})
    feedback = Feedback()
    processing.run("rsvl:classify", {**base, "BATCH_SIZE": 16, "OUTPUT": str(tmp_path / "old.tif")}, feedback=feedback)
    assert [m for kind, m in feedback.lines if kind == "warning" and "BATCH_SIZE is deprecated" in m]
    with rasterio.open(tmp_path / "new.tif") as a, rasterio.open(tmp_path / "old.tif") as b:
        assert (a.read() == b.read()).all()
