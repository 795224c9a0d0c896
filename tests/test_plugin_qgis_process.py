"""The shell face: `qgis_process` through the shim runs rsvl algorithms and the Model
Designer chain tests/data/rsvl_chain.model3 (train → classify → evaluate) headless."""

from __future__ import annotations

import csv
import os
import subprocess
from pathlib import Path

import pytest
import rasterio

REPO = Path(__file__).resolve().parent.parent
SHIM = REPO / ".venv" / "bin" / "qgis_process"
CHAIN = REPO / "tests" / "data" / "rsvl_chain.model3"


def qgis_process(*args, home: Path, cwd: Path):
    env = {k: v for k, v in os.environ.items() if k not in ("QGIS_CUSTOM_CONFIG_PATH", "QGIS_OPTIONS_PATH")}
    return subprocess.run([str(SHIM), *map(str, args)], capture_output=True, text=True, timeout=600, cwd=str(cwd),
                          env={**env, "HOME": str(home)})


@pytest.fixture(scope="module")
def chain(helpers, tmp_path_factory):
    root = tmp_path_factory.mktemp("chain")
    scene = helpers.make_scene(root / "scene", modalities=("hsi", "lidar"))
    truth = helpers.write_labels(root / "truth.tif", scene.truth, scene.transform)
    out = root / "out"
    res = qgis_process("run", CHAIN, "--", f"hsi={scene.paths['hsi']}", f"lidar={scene.paths['lidar']}",
                       f"labels={scene.labels}", f"reference={truth}", f"train:model={out / 'model.safetensors'}",
                       f"classify:classes={out / 'classes.tif'}", f"evaluate:confusion={out / 'confusion.csv'}",
                       home=root, cwd=root)
    return scene, out, res, root


def test_model3_chain_runs_headless(chain):
    scene, out, res, _ = chain
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (out / "model.safetensors").exists()
    with rasterio.open(out / "classes.tif") as ds, rasterio.open(scene.paths["hsi"]) as ref:
        assert ds.crs == ref.crs and ds.transform == ref.transform
    rows = list(csv.reader((out / "confusion.csv").open()))
    figures = {r[0]: float(r[1]) for r in rows if r and r[0] in ("oa", "aa", "kappa", "miou")}
    assert figures["oa"] > 0.85 and figures["kappa"] > 0.8
    assert rows[0][1:5] == ["water", "forest", "buildings", "grassland"]


def test_help_and_run_classify_from_the_shell(chain, tmp_path):
    scene, out, _res, root = chain
    res = qgis_process("help", "rsvl:classify", home=root, cwd=tmp_path)
    assert res.returncode == 0
    for param in ("MODEL", "INPUT_HSI", "INPUT_LIDAR", "OUTPUT", "OUTPUT_CONFIDENCE", "BATCH_SIZE", "DEVICE"):
        assert f"{param}:" in res.stdout
    res = qgis_process("run", "rsvl:classify", "--", f"MODEL={out / 'model.safetensors'}",
                       f"INPUT_HSI={scene.paths['hsi']}", f"INPUT_LIDAR={scene.paths['lidar']}", "OUTPUT=shell.tif",
                       home=root, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "shell.tif").exists() and (tmp_path / "shell.qml").exists()
    # A model that needs LiDAR refuses a call without it, naming what is missing.
    res = qgis_process("run", "rsvl:classify", "--", f"MODEL={out / 'model.safetensors'}",
                       f"INPUT_HSI={scene.paths['hsi']}", "OUTPUT=bad.tif", home=root, cwd=tmp_path)
    assert res.returncode != 0 and "lidar" in (res.stdout + res.stderr)
    assert not (tmp_path / "bad.tif").exists()
