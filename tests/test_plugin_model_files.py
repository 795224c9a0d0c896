"""Model files from the shell (issue 9, defects 1 and 3): whatever rsvl:train writes,
classify accepts back; a file that is not a model says what it is; evaluate needs no
OUTPUT_CSV."""

from __future__ import annotations

import os
import pickle
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHIM = REPO / ".venv" / "bin" / "qgis_process"
FAST = ["PATCH_SIZE=5", "EPOCHS=3", "BATCH_SIZE=64", "LEARNING_RATE=0.003", "PATIENCE=3", "DEVICE=cpu"]


def qgis_process(*args, home: Path, cwd: Path):
    env = {k: v for k, v in os.environ.items() if k not in ("QGIS_CUSTOM_CONFIG_PATH", "QGIS_OPTIONS_PATH")}
    return subprocess.run([str(SHIM), *map(str, args)], capture_output=True, text=True, timeout=600, cwd=str(cwd),
                          env={**env, "HOME": str(home)})


class _Evil:
    """Unpickling it creates a file: proof that a pickle was (or was not) loaded."""

    def __init__(self, marker):
        self.marker = Path(marker)

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_any_model_name_train_writes_is_accepted_back(helpers, tmp_path):
    scene = helpers.make_scene(tmp_path / "scene", size=32, modalities=("hsi",))
    inputs = f"INPUT_HSI={scene.paths['hsi']}"
    res = qgis_process("run", "rsvl:train", "--", inputs, f"TRAINING={scene.labels}", *FAST,
                       "OUTPUT_MODEL=model.rsvl", home=tmp_path, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert (tmp_path / "model.rsvl").exists()
    res = qgis_process("run", "rsvl:classify", "--", "MODEL=model.rsvl", inputs, "OUTPUT=classes.tif",
                       home=tmp_path, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    # evaluate with no OUTPUT_CSV: the figures come back, the matrix goes to a temporary file
    res = qgis_process("run", "rsvl:evaluate", "--", "INPUT=classes.tif", f"REFERENCE={scene.labels}",
                       home=tmp_path, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "OA:" in res.stdout and "OUTPUT_CSV:" in res.stdout


def test_a_pickle_named_like_a_model_is_described_and_never_loaded(qgis_app, qgis_processing, qgis_iface, helpers,
                                                                   tmp_path):
    """The same parameter check qgis_process runs (checkParameterValues), in process."""
    import processing
    from qgis.core import QgsApplication, QgsProcessingException

    import rsvl

    plugin = rsvl.classFactory(qgis_iface)
    plugin.initProcessing()
    try:
        assert QgsApplication.processingRegistry().algorithmById("rsvl:classify") is not None
        scene = helpers.make_scene(tmp_path / "scene", size=16, modalities=("hsi",))
        marker = tmp_path / "pwned"
        (tmp_path / "evil.safetensors").write_bytes(pickle.dumps(_Evil(marker)))
        with pytest.raises(QgsProcessingException) as error:
            processing.run("rsvl:classify", {"MODEL": str(tmp_path / "evil.safetensors"),
                                             "INPUT_HSI": [str(scene.paths["hsi"])], "OUTPUT": str(tmp_path / "e.tif")})
        assert "looks like a Python pickle (not loaded" in str(error.value)
        assert not marker.exists() and not (tmp_path / "e.tif").exists()
    finally:
        plugin.unload()
