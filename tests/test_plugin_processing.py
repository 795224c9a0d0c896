"""The rsvl Processing algorithms in a real QGIS (pytest-qgis): outputs, styling,
cancel, parameter errors, the background QgsTask and the menu action."""

from __future__ import annotations

import os
import re
import time

import numpy as np
import pytest
import rasterio
from qgis.core import (
    QgsApplication,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProject,
    QgsRasterLayer,
)
from qgis.PyQt.QtCore import QCoreApplication

FAST = {"PATCH_SIZE": 5, "EPOCHS": 25, "LEARNING_RATE": 3e-3, "BATCH_SIZE": 64, "PATIENCE": 10, "DEVICE": "cpu"}


def run(alg, params, feedback=None):
    import processing

    return processing.run(alg, params, feedback=feedback or QgsProcessingFeedback())


@pytest.fixture(scope="module")
def scene(helpers, tmp_path_factory):
    """Synthetic HSI + LiDAR scene; the HSI has a nodata hole; polygon labels in WGS 84."""
    root = tmp_path_factory.mktemp("proc")
    s = helpers.make_scene(root / "scene", modalities=("hsi", "lidar"))
    with rasterio.open(s.paths["hsi"]) as ds:
        data = ds.read()
    data[:, 30:34, 5:12] = -1
    s.paths["hsi_holes"] = helpers.write_raster(root / "hsi_holes.tif", data, s.transform, nodata=-1)
    s.polygons = helpers.write_polygons(root / "labels.gpkg", s)
    return s


@pytest.fixture(scope="module")
def trained(plugin, scene, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    params = {"INPUT_HSI": [str(scene.paths["hsi"])], "INPUT_LIDAR": [str(scene.paths["lidar"])],
              "TRAINING": str(scene.polygons), "CLASS_FIELD": "cover", **FAST,
              "OUTPUT_MODEL": str(out / "model.safetensors"), "OUTPUT_REPORT": str(out / "report.html")}
    return run("rsvl:train", params), out


_INPUTS = ["INPUT_HSI", "INPUT_LIDAR", "INPUT_SAR", "INPUT_MS", "NODATA_HSI", "NODATA_LIDAR", "NODATA_SAR",
           "NODATA_MS", "REFERENCE_GRID"]
_CHECKPOINT = ["PRESET", "OPEN_CLIP_ARCH", "TEMPLATES", "TILE_SIZE", "STRIDE", "BANDS", "VALUE_SCALE", "OFFSET"]
# Each algorithm's parameters and outputs, by exact name (qgis_process, saved models and
# scripts call them so: a rename breaks them).
PARAMETERS = {
    "train": _INPUTS + ["TRAINING", "CLASS_FIELD", "CLASS_NAME_FIELD", "PROMPT_TEMPLATE", "TEXT_ENCODER", "PATCH_SIZE",
                        "EPOCHS", "BATCH_SIZE", "LEARNING_RATE", "VALIDATION_FRACTION", "PATIENCE", "MEMBERS", "LOSS",
                        "DEVICE", "PRECISION", "SEED", "AUGMENT", "BALANCED", "SEMI_SUPERVISED", "OUTPUT_MODEL", "OUTPUT_REPORT",
                        "BAD_BANDS", "LABEL_NODATA", "CLASS_NAMES", "RECIPE", "BAND_GROUPS", "PRETRAINED", "FOUNDATION_MODEL",
                        *_CHECKPOINT, "RESOLUTION"],
    "classify": ["MODEL", *_INPUTS, "OUTPUT", "OUTPUT_CONFIDENCE", "TILE_SIZE", "BATCH_SIZE", "FORCE", "DEVICE",
                 "NORMALIZE", "PRECISION", "DASK_SCHEDULER"],
    "query": ["MODEL", *_INPUTS, "INPUT_RGB", "PROMPTS", "USE_TEMPLATE", "THRESHOLD", "OUTPUT_SIMILARITY", "OUTPUT",
              "FORCE", "DEVICE", "NORMALIZE", "PRECISION", *_CHECKPOINT, "RESOLUTION", "MULTI_LABEL", "DASK_SCHEDULER"],
    "retrieve": ["MODEL", "INPUT_MS", "INPUT_RGB", "QUERY", "TOP_K", "OUTPUT", "DEVICE", "PRECISION", *_CHECKPOINT],
    "evaluate": ["INPUT", "REFERENCE", "CLASS_FIELD", "CLASS_NAME_FIELD", "LABEL_NODATA", "CLASS_NAMES", "OUTPUT_CSV",
                 "OUTPUT_JSON", "OUTPUT_REPORT"],
    "split": ["INPUT", "FRACTION", "MODE", "BLOCK_SIZE", "BUFFER", "SEED", "LABEL_NODATA", "CLASS_NAMES",
              "OUTPUT_FIRST", "OUTPUT_SECOND"],
    "pretrain": [*_INPUTS, "PATCH_SIZE", "SAMPLES", "EPOCHS", "BATCH_SIZE", "LEARNING_RATE", "SEED", "DEVICE", "OUTPUT"],
}
OUTPUTS = {
    "train": {"OUTPUT_MODEL": "outputFile", "OUTPUT_REPORT": "outputHtml", "VALIDATION_OA": "outputNumber",
              "VALIDATION_AA": "outputNumber", "VALIDATION_KAPPA": "outputNumber", "EPOCHS_RUN": "outputNumber"},
    "classify": {"OUTPUT": "outputRaster", "OUTPUT_CONFIDENCE": "outputRaster"},
    "query": {"OUTPUT_SIMILARITY": "outputRaster", "OUTPUT": "outputRaster"},
    "retrieve": {"OUTPUT": "outputVector"},
    "evaluate": {"OUTPUT_CSV": "outputFile", "OUTPUT_JSON": "outputFile", "OUTPUT_REPORT": "outputHtml",
                 "OA": "outputNumber", "AA": "outputNumber", "KAPPA": "outputNumber", "MIOU": "outputNumber",
                 "COVERAGE": "outputNumber"},
    "split": {"OUTPUT_FIRST": "outputRaster", "OUTPUT_SECOND": "outputRaster"},
    "pretrain": {"OUTPUT": "outputFile", "FINAL_LOSS": "outputNumber"},
}
# The outputs each help panel names (a whole name: OUTPUT is not the OUTPUT in OUTPUT_MODEL).
HELP_OUTPUTS = {
    "train": {"OUTPUT_MODEL", "VALIDATION_OA"}, "classify": {"OUTPUT", "OUTPUT_CONFIDENCE"},
    "query": {"OUTPUT_SIMILARITY", "OUTPUT"}, "retrieve": {"OUTPUT"},
    "evaluate": {"OUTPUT_CSV", "OUTPUT_JSON", "OUTPUT_REPORT", "OA", "AA", "KAPPA", "MIOU", "COVERAGE"},
    "split": {"OUTPUT_FIRST", "OUTPUT_SECOND"}, "pretrain": {"OUTPUT"},
}


def _names_in(text):
    """The whole upper-case names in ``text`` (``OUTPUT_MODEL`` is one name, not ``OUTPUT``)."""
    return set(re.findall(r"(?<![A-Za-z0-9_])[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*(?![A-Za-z0-9_*])", text))


def test_algorithms_are_registered_with_their_exact_parameters_outputs_and_help(plugin):
    registry = QgsApplication.processingRegistry()
    for name in PARAMETERS:
        alg = registry.algorithmById(f"rsvl:{name}")
        assert alg is not None and alg.name() == name
        params = [p.name() for p in alg.parameterDefinitions()]
        assert len(params) == len(set(params)) and set(params) == set(PARAMETERS[name]), \
            (name, sorted(set(params) - set(PARAMETERS[name])), sorted(set(PARAMETERS[name]) - set(params)))
        outputs = {o.name(): o.type() for o in alg.outputDefinitions()}
        assert outputs == OUTPUTS[name], (name, outputs)
        destinations = {p.name() for p in alg.parameterDefinitions() if p.isDestination()}
        assert destinations == {k for k, v in outputs.items() if v != "outputNumber"}, name
        help_text = alg.shortHelpString()
        # short: what it does, inputs, outputs, one tip and the docs link; no benchmark figures
        assert len(help_text) < 1200 and alg.helpUrl() in help_text, name
        assert all(f"<b>{part}</b>" in help_text for part in ("Inputs", "Outputs", "Tip")), name
        assert not re.search(r"\bOA [0-9]|0\.[0-9]{3}", help_text), name
        assert _names_in(help_text) & set(outputs) == HELP_OUTPUTS[name], (name, _names_in(help_text))
        # The multi-word names the help gives are this algorithm's parameters or outputs (one
        # renamed without its help would be left here).
        multi = {n for n in _names_in(help_text) if "_" in n}
        assert multi <= set(params) | set(outputs), (name, multi - set(params) - set(outputs))
        for param in alg.parameterDefinitions():  # a tooltip, but for deprecated hidden ones
            hidden = param.flags() & param.FlagHidden
            assert param.help() or hidden, (name, param.name())
        assert not alg.flags() & alg.FlagNoThreading  # runs in Processing's background thread


def test_toolbox_shows_algorithms_directly_under_rsvl(plugin):
    from qgis.gui import QgsProcessingToolboxModel

    model = QgsProcessingToolboxModel(None, QgsApplication.processingRegistry())
    provider = model.indexForProvider("rsvl")
    children = [model.index(row, 0, provider) for row in range(model.rowCount(provider))]
    # Not rsvl ▸ rsvl ▸ …: every child of the provider is an algorithm, none a group.
    assert sorted(model.algorithmForIndex(c).id() for c in children if model.algorithmForIndex(c)) == \
        ["rsvl:classify", "rsvl:evaluate", "rsvl:pretrain", "rsvl:query", "rsvl:retrieve", "rsvl:split",
         "rsvl:train"]
    assert len(children) == 7


def test_outputs_worth_keeping_are_not_temporary(plugin):
    registry = QgsApplication.processingRegistry()
    train = registry.createAlgorithmById("rsvl:train")
    model = train.parameterDefinition("OUTPUT_MODEL")
    default = model.defaultValue()
    assert default and os.path.isabs(default) and default.endswith(".safetensors")
    assert os.path.join(os.path.expanduser("~"), "rsvl", "models") == os.path.dirname(default)
    assert train.parameterDefinition("PROMPT_TEMPLATE").defaultValue() in (None, "")
    for alg_id, key in (("rsvl:train", "OUTPUT_REPORT"), ("rsvl:evaluate", "OUTPUT_REPORT"),
                        ("rsvl:classify", "OUTPUT_CONFIDENCE")):
        alg = registry.createAlgorithmById(alg_id)
        p = alg.parameterDefinition(key)
        assert p.flags() & p.FlagOptional and not p.createByDefault(), (alg_id, key)
    query = registry.createAlgorithmById("rsvl:query")
    assert "best-prompt" in query.parameterDefinition("THRESHOLD").description()
    assert query.parameterDefinition("OUTPUT").description() == "Best prompt"


def test_train_outputs_model_report_and_numbers(trained):
    result, out = trained
    assert result["OUTPUT_MODEL"] == str(out / "model.safetensors") and os.path.exists(result["OUTPUT_MODEL"])
    assert result["VALIDATION_OA"] > 0.8 and result["VALIDATION_KAPPA"] > 0.7
    assert 1 <= result["EPOCHS_RUN"] <= 25
    report = (out / "report.html").read_text()
    assert report.count("<svg") >= 3 and "Training loss per epoch" in report and "Confusion matrix" in report
    assert "forest" in report and "the hyperspectral patch of {}" in report


def test_classify_styled_on_input_grid_with_nodata(trained, scene, tmp_path):
    result, out = trained
    res = run("rsvl:classify", {"MODEL": result["OUTPUT_MODEL"], "INPUT_HSI": [str(scene.paths["hsi_holes"])],
                                "INPUT_LIDAR": [str(scene.paths["lidar"])], "OUTPUT": str(tmp_path / "classes.tif"),
                                "OUTPUT_CONFIDENCE": str(tmp_path / "conf.tif"), "DEVICE": "cpu"})
    assert res["OUTPUT"] == str(tmp_path / "classes.tif") and os.path.exists(res["OUTPUT_CONFIDENCE"])
    with rasterio.open(res["OUTPUT"]) as ds, rasterio.open(scene.paths["hsi"]) as ref:
        assert ds.crs == ref.crs and ds.transform == ref.transform
        pred = ds.read(1)
        cmap = ds.colormap(1)
    assert (pred[30:34, 5:12] == 0).all() and (pred[:30] > 0).all()
    # Classes were sorted by name (vector labels): buildings, forest, grassland, water.
    from rsvl.backend.models.modelfile import read_header

    classes = read_header(result["OUTPUT_MODEL"]).classes
    assert [c.name for c in classes] == ["buildings", "forest", "grassland", "water"]
    for c in classes:
        assert cmap[c.code][:3] == tuple(c.colour)
    # The .qml beside the file styles the layer when QGIS opens it.
    assert (tmp_path / "classes.qml").exists()
    layer = QgsRasterLayer(res["OUTPUT"], "classes", "gdal")
    layer.loadDefaultStyle()
    renderer = layer.renderer()
    assert renderer.type() == "paletted"
    assert [(k.value, k.label) for k in renderer.classes()] == [(c.code, c.name) for c in classes]
    names = {c.code: c.name for c in classes}
    truth = np.array(["", "water", "forest", "buildings", "grassland"])[scene.truth]
    ok = pred > 0
    assert (np.vectorize(names.get)(pred[ok]) == truth[ok]).mean() > 0.85


def test_real_product_conventions_through_processing(plugin, scene, tmp_path, helpers):
    """Empty bands left out and selected again, BAD_BANDS, and labels with -1 no data and 0 a
    class (LABEL_NODATA), named by a CLASS_NAMES file, through the Processing algorithms."""
    import json

    from safetensors import safe_open

    with rasterio.open(scene.paths["hsi"]) as ds:
        data = ds.read()
    data[[4, 5]] = -1  # empty everywhere
    cube = helpers.write_raster(tmp_path / "cube.tif", data, scene.transform, nodata=-1)
    with rasterio.open(scene.labels) as ds:
        codes = ds.read(1).astype(np.int16)
    labels = helpers.write_raster(tmp_path / "lab.tif", np.where(codes > 0, codes - 1, -1).astype(np.int16),
                                  scene.transform)
    names = tmp_path / "names.csv"
    names.write_text("0,water\n1,forest\n2,buildings\n3,grassland\n")
    res = run("rsvl:train", {"INPUT_HSI": [str(cube)], "TRAINING": str(labels), **FAST, "EPOCHS": 2,
                             "BAD_BANDS": "1", "LABEL_NODATA": "-1", "CLASS_NAMES": str(names),
                             "OUTPUT_MODEL": str(tmp_path / "m.safetensors")})
    with safe_open(res["OUTPUT_MODEL"], framework="pt") as f:
        header = json.loads(f.metadata()["rsvl"])
    assert header["modalities"]["hsi"]["selection"]["kept"] == [2, 3, 4, 7] + list(range(8, 25))
    assert [c["name"] for c in header["classes"]] == ["water", "forest", "buildings", "grassland"]
    out = run("rsvl:classify", {"MODEL": res["OUTPUT_MODEL"], "INPUT_HSI": [str(cube)],
                                "OUTPUT": str(tmp_path / "c.tif"), "DEVICE": "cpu"})
    truth = helpers.write_raster(tmp_path / "truth.tif", (scene.truth.astype(np.int16) - 1), scene.transform)
    ev = run("rsvl:evaluate", {"INPUT": out["OUTPUT"], "REFERENCE": str(truth), "LABEL_NODATA": "-1",
                               "CLASS_NAMES": str(names), "OUTPUT_CSV": str(tmp_path / "m.csv")})
    assert ev["COVERAGE"] == 1.0 and ev["OA"] > 0.5


def test_classify_and_query_on_a_dask_scheduler_give_the_in_process_files(trained, scene, tmp_path):
    """DASK_SCHEDULER: the address of a running scheduler (here a LocalCluster of two thread
    workers in this process); the maps equal the in-process ones; ``local`` is refused
    inside QGIS with what to do instead."""
    pytest.importorskip("distributed")
    from distributed import LocalCluster

    result, _ = trained
    inputs = {"MODEL": result["OUTPUT_MODEL"], "INPUT_HSI": [str(scene.paths["hsi_holes"])],
              "INPUT_LIDAR": [str(scene.paths["lidar"])], "DEVICE": "cpu", "TILE_SIZE": 32}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        address = cluster.scheduler_address
        for alg, extra in (("rsvl:classify", {}), ("rsvl:query", {"PROMPTS": "open water\nconifer forest"})):
            outputs = {"OUTPUT": "classes"} if alg == "rsvl:classify" else {"OUTPUT": "best", "OUTPUT_SIMILARITY": "sim"}
            here = {k: str(tmp_path / f"{v}_here.tif") for k, v in outputs.items()}
            there = {k: str(tmp_path / f"{v}_dask.tif") for k, v in outputs.items()}
            run(alg, {**inputs, **extra, **here})
            res = run(alg, {**inputs, **extra, **there, "DASK_SCHEDULER": address})
            for key in outputs:
                assert res[key] == there[key]
                with rasterio.open(here[key]) as a, rasterio.open(there[key]) as b:
                    assert str(a.profile) == str(b.profile) and a.descriptions == b.descriptions  # nodata may be NaN
                    assert np.array_equal(a.read(), b.read(), equal_nan=True)
                    if key == "OUTPUT":
                        assert a.colormap(1) == b.colormap(1)
    with pytest.raises(QgsProcessingException, match="running Dask scheduler"):
        run("rsvl:classify", {**inputs, "OUTPUT": str(tmp_path / "local.tif"), "DASK_SCHEDULER": "local:2"})
    assert not (tmp_path / "local.tif").exists()


def test_query_band_descriptions_are_the_prompts(trained, scene, tmp_path):
    result, _ = trained
    res = run("rsvl:query", {"MODEL": result["OUTPUT_MODEL"], "INPUT_HSI": [str(scene.paths["hsi"])],
                             "INPUT_LIDAR": [str(scene.paths["lidar"])], "PROMPTS": "open water\nconifer forest\n\n",
                             "OUTPUT_SIMILARITY": str(tmp_path / "sim.tif"), "OUTPUT": str(tmp_path / "best.tif"),
                             "DEVICE": "cpu"})
    with rasterio.open(res["OUTPUT_SIMILARITY"]) as ds:
        assert ds.descriptions == ("open water", "conifer forest")
    layer = QgsRasterLayer(res["OUTPUT"], "best", "gdal")
    layer.loadDefaultStyle()
    assert [k.label for k in layer.renderer().classes()] == ["open water", "conifer forest"]


def test_evaluate_outputs_figures_and_report(trained, scene, tmp_path, helpers):
    result, _ = trained
    run("rsvl:classify", {"MODEL": result["OUTPUT_MODEL"], "INPUT_HSI": [str(scene.paths["hsi"])],
                          "INPUT_LIDAR": [str(scene.paths["lidar"])], "OUTPUT": str(tmp_path / "c.tif"), "DEVICE": "cpu"})
    # Reference: the true classes on the pixels the training polygons do not cover (held out).
    from rasterio.windows import Window

    from rsvl.backend.io.labels import open_labels
    from rsvl.backend.io.raster import Grid

    with rasterio.open(scene.paths["hsi"]) as ds:
        grid = Grid.of(ds)
    polygons = open_labels(str(scene.polygons), grid, "cover")
    trained_on = polygons.read(Window(0, 0, grid.width, grid.height)) > 0
    held_out = np.where(trained_on, 0, scene.truth)
    reference = helpers.write_labels(tmp_path / "held_out.tif", held_out, scene.transform)
    res = run("rsvl:evaluate", {"INPUT": str(tmp_path / "c.tif"), "REFERENCE": str(reference),
                                "OUTPUT_CSV": str(tmp_path / "cm.csv"), "OUTPUT_JSON": str(tmp_path / "a.json"),
                                "OUTPUT_REPORT": str(tmp_path / "a.html")})
    with rasterio.open(tmp_path / "c.tif") as ds:
        predicted = ds.read(1)
    from rsvl.backend.models.modelfile import read_header

    name_of = {c.code: c.name for c in read_header(result["OUTPUT_MODEL"]).classes}
    truth_names = np.array(["", *helpers.class_names])[held_out[held_out > 0]]
    predicted_names = np.array([name_of.get(int(v), "") for v in predicted[held_out > 0]])
    assert np.isclose(res["OA"], (truth_names == predicted_names).mean())  # matched by name, as computed here
    assert res["OA"] > 0.85 and 0 < res["KAPPA"] <= 1 and 0 < res["MIOU"] <= 1 and res["AA"] > 0.8
    assert res["COVERAGE"] == 1.0
    cm = (tmp_path / "cm.csv").read_text()
    assert cm.startswith("reference \\ predicted,buildings,forest,grassland,water")  # the map's codes
    assert f"{int((held_out > 0).sum())}" in cm.splitlines()[5]  # the total row counts the held-out pixels
    report = (tmp_path / "a.html").read_text()
    assert "<svg" in report and f"{res['OA']:.4f}" in report


class CancelAfter(QgsProcessingFeedback):
    def __init__(self, percent):
        super().__init__()
        self.percent = percent
        self.progress_seen = []
        self.progressChanged.connect(self._check)

    def _check(self, value):
        self.progress_seen.append(value)
        if value >= self.percent:
            self.cancel()


def test_cancel_during_training_raises_and_leaves_no_output(plugin, scene, tmp_path):
    feedback = CancelAfter(40)
    params = {"INPUT_HSI": [str(scene.paths["hsi"])], "TRAINING": str(scene.labels), **FAST, "EPOCHS": 200,
              "PATIENCE": 200, "OUTPUT_MODEL": str(tmp_path / "m.safetensors"),
              "OUTPUT_REPORT": str(tmp_path / "r.html")}
    with pytest.raises(QgsProcessingException, match="[Cc]ancel"):
        run("rsvl:train", params, feedback)
    assert max(feedback.progress_seen) < 60  # stopped within a batch of the request
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("case", ["no_input", "band_count", "class_field", "empty", "even_patch"])
def test_bad_parameters_name_the_parameter(case, trained, scene, tmp_path, helpers):
    result, _ = trained
    train = {"INPUT_HSI": [str(scene.paths["hsi"])], "TRAINING": str(scene.polygons), "CLASS_FIELD": "cover",
             **FAST, "OUTPUT_MODEL": str(tmp_path / "m.safetensors")}
    if case == "no_input":
        del train["INPUT_HSI"]
        alg, params, pattern = "rsvl:train", train, "INPUT_HSI, INPUT_LIDAR, INPUT_SAR or INPUT_MS"
    elif case == "band_count":
        other = helpers.make_scene(tmp_path / "other", size=24, hsi_bands=7, modalities=("hsi", "lidar"))
        alg, pattern = "rsvl:classify", "hsi input has 7 bands but the model was trained on 24"
        params = {"MODEL": result["OUTPUT_MODEL"], "INPUT_HSI": [str(other.paths["hsi"])],
                  "INPUT_LIDAR": [str(other.paths["lidar"])], "OUTPUT": str(tmp_path / "c.tif")}
    elif case == "class_field":
        train["CLASS_FIELD"] = "landuse"
        alg, params, pattern = "rsvl:train", train, "CLASS_FIELD"
    elif case == "empty":
        empty = helpers.write_labels(tmp_path / "empty.tif", np.zeros_like(scene.truth), scene.transform)
        train.update(TRAINING=str(empty), CLASS_FIELD=None)
        alg, params, pattern = "rsvl:train", train, "no labelled pixel"
    else:
        train["PATCH_SIZE"] = 6
        alg, params, pattern = "rsvl:train", train, "PATCH_SIZE must be odd"
    with pytest.raises(QgsProcessingException, match=pattern):
        run(alg, params)
    assert not (tmp_path / "m.safetensors").exists() and not (tmp_path / "c.tif").exists()


def _watch(task):
    """Record the task's end from its signals (QGIS deletes the C++ task afterwards)."""
    state = {"end": None}
    task.taskCompleted.connect(lambda: state.update(end="completed"))
    task.taskTerminated.connect(lambda: state.update(end="terminated"))
    return state


def _wait(state, timeout=120):
    start = time.time()
    while state["end"] is None and time.time() - start < timeout:
        QCoreApplication.processEvents()
        time.sleep(0.01)
    return state["end"]


def test_background_task_classifies_and_loads_a_styled_layer(plugin, trained, scene, tmp_path, qgis_iface):
    from rsvl.backend import api
    from rsvl.backend.io.raster import LayerSpec
    from rsvl.plugin.tasks import BackendJobTask

    result, _ = trained
    kwargs = dict(model_path=result["OUTPUT_MODEL"], output=str(tmp_path / "bg.tif"), tile_size=16, device="cpu",
                  layers=[LayerSpec(str(scene.paths["hsi"]), "hsi"), LayerSpec(str(scene.paths["lidar"]), "lidar")])
    task = BackendJobTask("rsvl classify", api.classify, kwargs, qgis_iface)
    seen = []
    task.progressChanged.connect(seen.append)
    state = _watch(task)
    plugin.tasks.start(task)
    assert _wait(state) == "completed"
    assert max(seen) > 50 and len(seen) > 3
    assert task.layer is not None and task.layer.renderer().type() == "paletted"
    assert QgsProject.instance().mapLayer(task.layer.id()) is not None
    assert any("added to the project" in m for m in task.messages)
    assert task not in plugin.tasks.tasks
    QgsProject.instance().removeMapLayer(task.layer.id())


def test_background_training_can_be_cancelled(plugin, scene, tmp_path, qgis_iface):
    from rsvl.backend import api
    from rsvl.backend.io.raster import LayerSpec
    from rsvl.plugin.tasks import BackendJobTask

    kwargs = dict(layers=[LayerSpec(str(scene.paths["hsi"]), "hsi")], labels=str(scene.labels),
                  output_model=str(tmp_path / "m.safetensors"), patch_size=5, epochs=500, patience=500,
                  device="cpu")
    task = BackendJobTask("rsvl train", api.train, kwargs, qgis_iface)
    seen = []
    task.progressChanged.connect(seen.append)
    state = _watch(task)
    plugin.tasks.start(task)
    start = time.time()
    while (not seen or max(seen) < 25) and time.time() - start < 60:
        QCoreApplication.processEvents()
        time.sleep(0.01)
    task.cancel()
    assert _wait(state) == "terminated"
    assert os.listdir(tmp_path) == [] and "cancelled" in task.messages[-1]


def test_menu_action_trains_in_a_background_task(plugin, scene, tmp_path, qgis_iface, monkeypatch):
    from qgis.gui import QgsBrowserGuiModel

    browser = QgsBrowserGuiModel()
    monkeypatch.setattr(qgis_iface, "browserModel", lambda: browser, raising=False)
    assert [a.text() for a in plugin.actions] == ["Train in background…", "Explore…", "Install dependencies…"]
    dialog = plugin.open_train_in_background()
    assert dialog.algorithm().id() == "rsvl:train" and dialog.isVisible()
    model = tmp_path / "bg.safetensors"
    # Layers picked from the project, as a user does in the dialog.
    from qgis.core import QgsVectorLayer

    hsi = QgsRasterLayer(str(scene.paths["hsi"]), "hsi", "gdal")
    labels = QgsVectorLayer(str(scene.polygons), "labels", "ogr")
    QgsProject.instance().addMapLayers([hsi, labels])
    dialog.setParameters({"INPUT_HSI": [hsi], "TRAINING": labels, "CLASS_FIELD": "cover", **FAST, "EPOCHS": 3,
                          "OUTPUT_MODEL": str(model), "OUTPUT_REPORT": str(tmp_path / "bg.html")})
    dialog.runAlgorithm()
    assert not dialog.isVisible()
    task = plugin.tasks.tasks[-1]
    state = _watch(task)
    assert _wait(state) == "completed"
    assert model.exists() and "model saved to" in task.messages[-1]
    assert "Training loss per epoch" in (tmp_path / "bg.html").read_text()
    QgsProject.instance().removeMapLayers([hsi.id(), labels.id()])


def test_training_from_a_memory_layer(plugin, scene, tmp_path):
    """Layers that are not files (memory, filtered) are copied for the backend to read."""
    from qgis.core import QgsFeatureRequest, QgsVectorLayer

    source = QgsVectorLayer(str(scene.polygons), "labels", "ogr")
    memory = source.materialize(QgsFeatureRequest())
    assert memory.providerType() == "memory" and memory.featureCount() == source.featureCount()
    QgsProject.instance().addMapLayer(memory)
    res = run("rsvl:train", {"INPUT_HSI": [str(scene.paths["hsi"])], "TRAINING": memory, "CLASS_FIELD": "cover",
                             **FAST, "EPOCHS": 3, "OUTPUT_MODEL": str(tmp_path / "m.safetensors")})
    assert os.path.exists(res["OUTPUT_MODEL"]) and res["EPOCHS_RUN"] == 3
    QgsProject.instance().removeMapLayer(memory.id())


def test_vector_layers_ogr_would_misread_are_copied(plugin, scene, tmp_path):
    """A filter, or a CRS assigned in QGIS to a file without one, is honoured by handing
    the backend a copy."""
    from osgeo import ogr
    from qgis.core import QgsCoordinateReferenceSystem, QgsVectorLayer

    from rsvl.plugin.algorithms.base import vector_path

    layer = QgsVectorLayer(str(scene.polygons), "labels", "ogr")
    assert vector_path(layer, "TRAINING") == layer.source()
    filtered = QgsVectorLayer(str(scene.polygons), "labels", "ogr")
    filtered.setSubsetString("cover = 'water'")
    copied = vector_path(filtered, "TRAINING")
    assert copied.endswith(".gpkg") and ogr.Open(copied).GetLayer(0).GetFeatureCount() == 3
    shp = tmp_path / "no_crs.shp"
    ds = ogr.GetDriverByName("ESRI Shapefile").CreateDataSource(str(shp))
    lyr = ds.CreateLayer("no_crs", None, ogr.wkbPoint)
    lyr.CreateField(ogr.FieldDefn("cover", ogr.OFTString))
    f = ogr.Feature(lyr.GetLayerDefn())
    f.SetField("cover", "water")
    f.SetGeometry(ogr.CreateGeometryFromWkt("POINT (15 45.9)"))
    lyr.CreateFeature(f)
    ds = None
    no_crs = QgsVectorLayer(str(shp), "no_crs", "ogr")
    no_crs.setCrs(QgsCoordinateReferenceSystem("EPSG:4326"))
    copied = vector_path(no_crs, "TRAINING")
    assert copied != no_crs.source()
    assert "4326" in ogr.Open(copied).GetLayer(0).GetSpatialRef().ExportToWkt()


def test_run_in_a_background_task_loads_styled_outputs(plugin, trained, scene, tmp_path):
    """As the Processing dialog runs it: a QgsProcessingAlgRunnerTask (processAlgorithm in a
    worker thread with its own context) with outputs to open in the project afterwards."""
    from qgis.core import QgsProcessingAlgRunnerTask, QgsProcessingContext, QgsProcessingOutputLayerDefinition

    result, _ = trained
    project = QgsProject.instance()
    context = QgsProcessingContext()
    context.setProject(project)
    feedback = QgsProcessingFeedback()
    outputs = {"OUTPUT": str(tmp_path / "best.tif"), "OUTPUT_SIMILARITY": str(tmp_path / "similarity.tif")}
    params = {"MODEL": result["OUTPUT_MODEL"], "INPUT_HSI": [str(scene.paths["hsi"])],
              "INPUT_LIDAR": [str(scene.paths["lidar"])], "PROMPTS": "forest\ngreenhouses\nflooded fields\nmoon crater",
              "DEVICE": "cpu", **{k: QgsProcessingOutputLayerDefinition(v, project) for k, v in outputs.items()}}
    alg = QgsApplication.processingRegistry().createAlgorithmById("rsvl:query")
    task = QgsProcessingAlgRunnerTask(alg, params, context, feedback)
    done = {}
    task.executed.connect(lambda ok, results: done.update(ok=ok, results=results))
    QgsApplication.taskManager().addTask(task)
    deadline = time.monotonic() + 120
    while not done and time.monotonic() < deadline:
        QCoreApplication.processEvents()
        time.sleep(0.02)
    assert done.get("ok"), done
    # Both outputs are still registered for loading once the thread's context is merged back,
    # and the best-prompt map carries its paletted style.
    for path in outputs.values():
        assert context.willLoadLayerOnCompletion(path), path
    details = context.layerToLoadOnCompletionDetails(outputs["OUTPUT"])
    assert details.postProcessor() is not None
    layer = QgsRasterLayer(outputs["OUTPUT"], "best", "gdal")
    details.postProcessor().postProcessLayer(layer, context, feedback)
    assert layer.renderer().type() == "paletted"
    colours = {c.label: c.color.getRgb()[:3] for c in layer.renderer().classes()}
    from rsvl.backend.io.palette import default_colour, lexicon_colour
    from rsvl.backend.models.modelfile import read_header

    forest = next(c for c in read_header(result["OUTPUT_MODEL"]).classes if c.name == "forest")
    assert colours["forest"] == tuple(forest.colour)  # the model's class colour
    assert colours["greenhouses"] == lexicon_colour("greenhouse")  # the colour the words suggest
    assert colours["flooded fields"] == lexicon_colour("flood") != lexicon_colour("fields")
    assert colours["moon crater"] == default_colour(0)  # unknown words: the qualitative palette


def test_split_algorithm_writes_styled_spatial_split(plugin, scene, tmp_path):
    first, second = str(tmp_path / "train.tif"), str(tmp_path / "test.tif")
    res = run("rsvl:split", {"INPUT": str(scene.labels), "FRACTION": 0.3, "MODE": "blocks", "BLOCK_SIZE": 8, "BUFFER": 2,
                             "OUTPUT_FIRST": first, "OUTPUT_SECOND": second})
    assert res == {"OUTPUT_FIRST": first, "OUTPUT_SECOND": second}
    with rasterio.open(first) as a, rasterio.open(second) as b, rasterio.open(scene.labels) as ref:
        fa, fb, codes = a.read(1), b.read(1), ref.read(1)
    assert (fa > 0).any() and (fb > 0).any() and not ((fa > 0) & (fb > 0)).any()
    assert ((fa > 0) | (fb > 0)).sum() < (codes > 0).sum()  # the buffer dropped test pixels next to training
    fr, fc = np.nonzero(fa)
    sr, sc = np.nonzero(fb)
    assert np.maximum(np.abs(sr[:, None] - fr[None]), np.abs(sc[:, None] - fc[None])).min() > 2
    layer = QgsRasterLayer(first, "train", "gdal")
    assert layer.renderer().type() == "paletted"  # the .qml beside it, with the input's classes
    assert {c.label for c in layer.renderer().classes()} == {"water", "forest", "buildings", "grassland"}


def test_nodata_override_and_reference_grid_parameters(trained, scene, tmp_path, helpers):
    """NODATA_<MODALITY> declares a fill value the file does not; REFERENCE_GRID picks the
    grid the outputs take; a reference modality without a layer is a clear error."""
    result, _ = trained
    with rasterio.open(scene.paths["hsi_holes"]) as ds:
        data = ds.read()
    undeclared = str(helpers.write_raster(tmp_path / "hsi_fill.tif", data, scene.transform, nodata=None))
    with rasterio.open(scene.paths["lidar"]) as ds:
        lidar = ds.read()
    coarse_t = scene.transform * scene.transform.scale(2, 2)
    coarse = str(helpers.write_raster(tmp_path / "lidar_coarse.tif", lidar[:, ::2, ::2], coarse_t))
    base = {"MODEL": result["OUTPUT_MODEL"], "INPUT_HSI": [undeclared], "INPUT_LIDAR": [coarse], "DEVICE": "cpu",
            "FORCE": True}
    plain = run("rsvl:classify", {**base, "OUTPUT": str(tmp_path / "plain.tif")})
    fixed = run("rsvl:classify", {**base, "NODATA_HSI": -1, "OUTPUT": str(tmp_path / "fixed.tif")})
    coarse_out = run("rsvl:classify", {**base, "NODATA_HSI": -1, "REFERENCE_GRID": 2,
                                       "OUTPUT": str(tmp_path / "coarse.tif")})
    with rasterio.open(plain["OUTPUT"]) as p, rasterio.open(fixed["OUTPUT"]) as f, \
            rasterio.open(coarse_out["OUTPUT"]) as c:
        assert (p.read(1)[30:34, 5:12] > 0).all()  # -1 read as data without the override
        assert (f.read(1)[30:34, 5:12] == 0).all() and (f.read(1)[:30] > 0).all()
        assert f.transform == scene.transform and c.transform == coarse_t and c.width == f.width // 2
    with pytest.raises(QgsProcessingException, match="REFERENCE_GRID .*INPUT_SAR is empty"):
        run("rsvl:classify", {**base, "REFERENCE_GRID": 3, "OUTPUT": str(tmp_path / "none.tif")})
    assert not (tmp_path / "none.tif").exists()


def test_few_shot_training_from_processing(plugin, tmp_path):
    """FOUNDATION_MODEL in rsvl:train adapts a (tiny, random) checkpoint; rsvl:classify
    uses the resulting model file like any other."""
    import json

    import torch
    from rasterio.transform import from_origin

    from rsvl.backend.foundation.checkpoint import build_model
    from rsvl.backend.foundation.presets import get_preset

    (tmp_path / "arch").mkdir()
    cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16,
                                           "head_width": 32},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "arch" / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    preset = f"open_clip:local-dir:{tmp_path / 'arch'}"
    torch.manual_seed(0)
    torch.save(build_model(get_preset(preset)).state_dict(), tmp_path / "clip.pt")
    truth = np.ones((48, 64), np.uint8)
    truth[:, 32:] = 2
    rng = np.random.default_rng(0)
    rgb = np.clip(np.where(truth == 1, 40, 200)[None] + rng.normal(0, 8, (3, 48, 64)), 0, 255).astype(np.uint8)
    common = dict(driver="GTiff", width=64, height=48, crs="EPSG:32633", transform=from_origin(0, 480, 10, 10))
    with rasterio.open(tmp_path / "rgb.tif", "w", count=3, dtype="uint8", **common) as dst:
        dst.write(rgb)
    with rasterio.open(tmp_path / "labels.tif", "w", count=1, dtype="uint8", nodata=0, **common) as dst:
        dst.write(np.where(rng.random((48, 64)) < 0.3, truth, 0).astype(np.uint8), 1)
    res = run("rsvl:train", {"INPUT_MS": [str(tmp_path / "rgb.tif")], "TRAINING": str(tmp_path / "labels.tif"),
                             "FOUNDATION_MODEL": str(tmp_path / "clip.pt"), "PRESET": preset, "TILE_SIZE": 32,
                             "STRIDE": 16, "EPOCHS": 60, "DEVICE": "cpu", "OUTPUT_MODEL": str(tmp_path / "m.safetensors")})
    assert res["VALIDATION_OA"] >= 0.9
    out = run("rsvl:classify", {"MODEL": res["OUTPUT_MODEL"], "INPUT_MS": [str(tmp_path / "rgb.tif")], "DEVICE": "cpu",
                                "OUTPUT": str(tmp_path / "classes.tif")})
    with rasterio.open(out["OUTPUT"]) as ds:
        pred = ds.read(1)
    assert (pred[:, 4:28] == 1).mean() > 0.9 and (pred[:, 36:60] == 2).mean() > 0.9


def test_pretrain_then_train_with_pretrained_from_processing(plugin, scene, tmp_path):
    layers = {"INPUT_HSI": [str(scene.paths["hsi"])], "INPUT_LIDAR": [str(scene.paths["lidar"])]}
    pre = run("rsvl:pretrain", {**layers, "PATCH_SIZE": 5, "SAMPLES": 600, "EPOCHS": 3, "BATCH_SIZE": 64,
                                "DEVICE": "cpu", "OUTPUT": str(tmp_path / "enc.safetensors")})
    assert os.path.exists(pre["OUTPUT"]) and pre["FINAL_LOSS"] < 0
    res = run("rsvl:train", {**layers, "TRAINING": str(scene.polygons), "CLASS_FIELD": "cover", **FAST,
                             "PRETRAINED": pre["OUTPUT"], "OUTPUT_MODEL": str(tmp_path / "m.safetensors")})
    from rsvl.backend.models.modelfile import read_header

    assert read_header(res["OUTPUT_MODEL"]).training["pretrained"] == pre["OUTPUT"]
    assert res["VALIDATION_OA"] > 0.7


def test_band_group_recipe_from_processing(plugin, scene, tmp_path):
    res = run("rsvl:train", {"INPUT_HSI": [str(scene.paths["hsi"])], "INPUT_LIDAR": [str(scene.paths["lidar"])],
                             "TRAINING": str(scene.polygons), "CLASS_FIELD": "cover", **FAST, "RECIPE": "band-groups",
                             "OUTPUT_MODEL": str(tmp_path / "g.safetensors")})
    from rsvl.backend.models.modelfile import read_header

    header = read_header(res["OUTPUT_MODEL"])
    assert header.training["recipe"] == "band-groups" and len(header.config.groups["hsi"]) == 4
    assert res["VALIDATION_OA"] > 0.7


def test_semi_supervised_training_from_processing(plugin, scene, tmp_path):
    res = run("rsvl:train", {"INPUT_HSI": [str(scene.paths["hsi"])], "INPUT_LIDAR": [str(scene.paths["lidar"])],
                             "TRAINING": str(scene.polygons), "CLASS_FIELD": "cover", **FAST, "SEMI_SUPERVISED": True,
                             "OUTPUT_MODEL": str(tmp_path / "s.safetensors")})
    from rsvl.backend.models.modelfile import read_header

    training = read_header(res["OUTPUT_MODEL"]).training
    assert training["semi_supervised"] is True and training["recipe"] == "spectral-spatial"
    assert training["unlabelled_pixels"] > 0 and training["pseudo_labelled"] is not None
    assert res["VALIDATION_OA"] > 0.7
    with pytest.raises(QgsProcessingException, match="SEMI_SUPERVISED needs a recipe with a weight average"):
        run("rsvl:train", {"INPUT_HSI": [str(scene.paths["hsi"])], "TRAINING": str(scene.polygons),
                           "CLASS_FIELD": "cover", **FAST, "SEMI_SUPERVISED": True, "RECIPE": "mmlgnet",
                           "OUTPUT_MODEL": str(tmp_path / "m.safetensors")})


class Recorder(QgsProcessingFeedback):
    def __init__(self):
        super().__init__()
        self.warnings, self.errors = [], []

    def pushWarning(self, message):
        self.warnings.append(message)
        super().pushWarning(message)

    def reportError(self, message, fatalError=False):
        self.errors.append(message)
        super().reportError(message, fatalError)


def test_backend_warnings_reach_the_log_as_warnings(plugin, scene, tmp_path, helpers):
    """A class with two labelled pixels: rsvl:train warns in the Processing log (shown as a
    warning, not as an error) and still trains."""
    with rasterio.open(scene.labels) as ds:
        few = ds.read(1)
    few.flat[np.flatnonzero(few.ravel() == 3)[2:]] = 0
    labels = helpers.write_labels(tmp_path / "few.tif", few, scene.transform)
    feedback = Recorder()
    params = {"INPUT_HSI": [str(scene.paths["hsi"])], "TRAINING": str(labels), **FAST, "EPOCHS": 2,
              "OUTPUT_MODEL": str(tmp_path / "m.safetensors")}
    run("rsvl:train", params, feedback)
    assert os.path.exists(tmp_path / "m.safetensors")
    assert [w for w in feedback.warnings if "(2) labelled pixel(s) only" in w], feedback.warnings
    assert not [e for e in feedback.errors if "labelled pixel(s) only" in e]


def test_members_trains_an_ensemble_that_classify_reads(plugin, scene, tmp_path):
    from rsvl.backend.models.modelfile import read_header

    params = {"INPUT_HSI": [str(scene.paths["hsi"])], "TRAINING": str(scene.labels), **FAST, "EPOCHS": 2,
              "MEMBERS": 2, "OUTPUT_MODEL": str(tmp_path / "ens.safetensors"),
              "OUTPUT_REPORT": str(tmp_path / "report.html")}
    result = run("rsvl:train", params)
    header = read_header(result["OUTPUT_MODEL"])
    assert header.members == 2 and header.training["member_seeds"] == [0, 1000]
    assert "2 members (seeds 0, 1000)" in open(result["OUTPUT_REPORT"], encoding="utf-8").read()
    res = run("rsvl:classify", {"MODEL": result["OUTPUT_MODEL"], "INPUT_HSI": [str(scene.paths["hsi"])],
                                "OUTPUT": str(tmp_path / "classes.tif")})
    with rasterio.open(res["OUTPUT"]) as ds:
        assert set(np.unique(ds.read(1))) <= {c.code for c in header.classes} | {0}


def test_raster_outputs_are_geotiffs_and_never_an_input(trained, scene, tmp_path):
    result, _out = trained
    alg = QgsApplication.processingRegistry().algorithmById("rsvl:classify")
    assert alg.provider().supportedOutputRasterLayerExtensions() == ["tif"]
    params = {"MODEL": result["OUTPUT_MODEL"], "INPUT_HSI": [str(scene.paths["hsi"])],
              "INPUT_LIDAR": [str(scene.paths["lidar"])], "DEVICE": "cpu"}
    with pytest.raises(QgsProcessingException):  # QGIS's own check, or rsvl's
        run("rsvl:classify", {**params, "OUTPUT": str(tmp_path / "c.img")})
    assert not (tmp_path / "c.img").exists()
    before = open(scene.paths["lidar"], "rb").read()
    with pytest.raises(QgsProcessingException, match="is also the input INPUT_LIDAR"):
        run("rsvl:classify", {**params, "OUTPUT": str(scene.paths["lidar"])})
    assert open(scene.paths["lidar"], "rb").read() == before
