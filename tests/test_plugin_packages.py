"""Missing packages in QGIS: the same clear message from a Processing run, a Model Designer
chain and qgis_process (never a traceback); the installer dialog; the message-bar offer."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from qgis.core import QgsApplication, QgsProcessingException, QgsProcessingFeedback, QgsSettings

from rsvl.backend.runtime import dependencies

REPO = Path(__file__).resolve().parent.parent
CHAIN = REPO / "tests" / "data" / "rsvl_chain.model3"


@pytest.fixture(autouse=True)
def settings_restored(monkeypatch):
    """rsvl's settings, sys.path and the active packages folder as they were before each test
    (pytest-qgis keeps its QGIS settings between runs)."""
    keys = ("rsvl/packages_folder", "rsvl/installer_offered")
    saved = {k: QgsSettings().value(k) for k in keys}
    for k in keys:
        QgsSettings().remove(k)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(dependencies, "_active_folder", dependencies._active_folder)
    yield
    for k, v in saved.items():
        QgsSettings().remove(k) if v is None else QgsSettings().setValue(k, v)


@pytest.fixture
def torch_too_old(tmp_path, monkeypatch):
    """The runtime list asks for a torch newer than any: what an old PyTorch in QGIS looks like."""
    req = tmp_path / "requirements"
    req.mkdir()
    for group, (file, _title) in dependencies.GROUPS.items():
        text = (Path(dependencies.REQUIREMENTS_DIR) / file).read_text()
        if group == "runtime":
            text = text.replace("torch>=2.2  # import: torch", "torch>=999  # import: torch")
        (req / file).write_text(text)
    monkeypatch.setattr(dependencies, "REQUIREMENTS_DIR", str(req))
    import torch

    return f"torch {torch.__version__.split('+')[0]} (too old; rsvl needs >=999)"


def expected_first_line(algorithm: str, described: str) -> str:
    return (f"rsvl:{algorithm} needs Python packages that this Python ({dependencies.python_executable()}) does not "
            f"have: {described}.")


class Collect(QgsProcessingFeedback):
    def __init__(self):
        super().__init__()
        self.errors = []

    def reportError(self, error, fatalError=False):  # noqa: N802,N803 (QGIS API names)
        self.errors.append(error)


def test_processing_run_names_the_missing_package(plugin, torch_too_old, helpers, tmp_path):
    import processing

    scene = helpers.make_scene(tmp_path / "scene", modalities=("ms",))
    params = {"INPUT_MS": [str(scene.paths["ms"])], "TRAINING": str(scene.labels),
              "OUTPUT_MODEL": str(tmp_path / "model.safetensors")}
    alg = QgsApplication.processingRegistry().createAlgorithmById("rsvl:train")
    ok, message = alg.checkParameterValues(params, processing.tools.dataobjects.createContext())
    assert not ok
    assert message.splitlines()[0] == expected_first_line("train", torch_too_old)
    assert "Plugins ▸ rsvl ▸ Install dependencies…" in message
    with pytest.raises(QgsProcessingException) as err:
        processing.run("rsvl:train", params, feedback=QgsProcessingFeedback())
    assert expected_first_line("train", torch_too_old) in str(err.value)
    assert not (tmp_path / "model.safetensors").exists()
    # An algorithm that needs no PyTorch still runs.
    out = processing.run("rsvl:split", {"INPUT": str(scene.labels), "FRACTION": 0.5,
                                        "OUTPUT_FIRST": str(tmp_path / "a.tif"), "OUTPUT_SECOND": str(tmp_path / "b.tif")})
    assert Path(out["OUTPUT_FIRST"]).exists()


def test_model_designer_chain_fails_early_with_the_same_words(plugin, torch_too_old, helpers, tmp_path):
    import processing
    from qgis.core import QgsProcessingModelAlgorithm

    model = QgsProcessingModelAlgorithm()
    assert model.fromFile(str(CHAIN))
    scene = helpers.make_scene(tmp_path / "scene", modalities=("hsi", "lidar"))
    out = tmp_path / "out"
    feedback = Collect()
    with pytest.raises(QgsProcessingException) as err:
        processing.run(model, {"hsi": str(scene.paths["hsi"]), "lidar": str(scene.paths["lidar"]),
                               "labels": str(scene.labels), "reference": str(scene.labels),
                               "train:model": str(out / "model.safetensors"), "classify:classes": str(out / "c.tif"),
                               "evaluate:confusion": str(out / "confusion.csv")}, feedback=feedback)
    text = str(err.value) + "\n".join(feedback.errors)
    assert expected_first_line("train", torch_too_old) in text
    assert not (out / "model.safetensors").exists()


def test_qgis_process_without_torch_says_what_to_install(helpers, tmp_path):
    """qgis_process on the system Python (no .venv on any path), as a user who installed the ZIP has it."""
    binary = "/usr/bin/qgis_process.bin"
    if not os.path.exists(binary):
        pytest.skip("QGIS's qgis_process.bin is not installed")
    if subprocess.run(["/usr/bin/python3", "-c", "import torch"], capture_output=True).returncode == 0:
        pytest.skip("the system Python has torch")
    scene = helpers.make_scene(tmp_path / "scene", modalities=("ms",))
    profiles = tmp_path / "home" / ".local" / "share" / "QGIS" / "QGIS3" / "profiles" / "default"
    (profiles / "QGIS").mkdir(parents=True)
    (profiles / "QGIS" / "QGIS3.ini").write_text("[PythonPlugins]\nrsvl=true\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "QGIS_CUSTOM_CONFIG_PATH", "RSVL_PACKAGES")}
    env.update(HOME=str(tmp_path / "home"), QT_QPA_PLATFORM="offscreen", QGIS_PLUGINPATH=str(REPO / ".venv" / "qgis-plugins"),
               XDG_RUNTIME_DIR=str(tmp_path / "xdg"))
    proc = subprocess.run([binary, "run", "rsvl:train", "--", f"INPUT_MS={scene.paths['ms']}",
                           f"TRAINING={scene.labels}", f"OUTPUT_MODEL={tmp_path / 'model.safetensors'}"],
                          capture_output=True, text=True, env=env, timeout=300)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "rsvl:train needs Python packages that this Python (/usr/bin/python3" in text, text[-3000:]
    assert "torch (missing; rsvl needs >=2.2)" in text and "Traceback" not in text
    assert not (tmp_path / "model.safetensors").exists()


def test_installer_dialog_lists_packages_and_installs_offline(plugin, torch_too_old, helpers, tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    req = Path(dependencies.REQUIREMENTS_DIR)
    (req / "baselines.txt").write_text("rsvltoy>=1  # import: rsvltoy\n")
    wheels = tmp_path / "wheelhouse"
    helpers.make_wheel(wheels, "rsvltoy", "1.0")
    helpers.make_wheel(wheels, "torch", "999.0")  # stands in for the real build in this test
    dialog = plugin.open_installer()
    rows = {r["Package"]: r for r in dialog.rows()}
    assert rows["torch"]["Status"] == "too old" and rows["torch"]["Wanted"] == ">=999"
    assert rows["rsvltoy"]["Found"] == "missing" and rows["rsvltoy"]["Group"] == "optional: random-forest baseline"
    assert rows["numpy"]["Status"] == "ok"
    folder = tmp_path / "profile" / "rsvl" / "python3"
    dialog.folder.setFilePath(str(folder))
    dialog.source.setCurrentIndex(1)
    dialog.wheelhouse.setFilePath(str(wheels))
    dialog.optional["baselines"].setChecked(True)
    task = dialog.start_install()
    assert task is not None and not dialog.install_button.isEnabled()
    end = time.monotonic() + 120
    while dialog.install_button.isEnabled() is False and time.monotonic() < end:
        QgsApplication.processEvents()
        time.sleep(0.05)
    assert "Installed 2 packages" in dialog.status.text(), dialog.log.toPlainText()[-2000:]
    # torch was imported by this process before: the dialog says a restart is needed.
    assert "Restart QGIS: torch is already loaded" in dialog.status.text()
    assert (folder / "rsvltoy").is_dir() and sys.path[0] == str(folder)
    assert {r["Package"]: r for r in dialog.rows()}["rsvltoy"]["Status"] == "ok"
    assert "pip" in dialog.log.toPlainText() and "Successfully installed" in dialog.log.toPlainText()
    assert QgsSettings().value("rsvl/packages_folder") == str(folder)
    dialog.close()


def test_message_bar_offers_the_installer_once(plugin, torch_too_old, qgis_iface):
    item = plugin.offer_installer()
    assert item is not None and "needs Python packages" in item.text()
    assert plugin.offer_installer() is None  # once per profile
    qgis_iface.messageBar().popWidget(item)
