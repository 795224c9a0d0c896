"""Desktop QGIS with OpenGL (Mesa) loaded survives training, querying and classifying
through the plugin's dialogs.

qgis_process and pytest-qgis run offscreen and never load Mesa, so they cannot see the
crash of issue 14 (triton's LLVM against Mesa's LLVM). This test starts the real `qgis`
binary under a virtual X server (xvfb-run, installed by `make install`), with the plugin
enabled in a fresh profile, and lets tests/desktop_session.py drive it.

Two variants: with the triton package installed in the venv (as `make install` leaves
it), and with `import triton` made impossible: a `triton` package first on the path that
kills the process with SIGSEGV when imported inside QGIS (as the real one does next to
Mesa) and raises ImportError elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"
SAMPLE = REPO / "resources" / "sample"
POISON = '''import os, signal, sys
if "qgis.core" in sys.modules:
    with open(os.environ["RSVL_TRITON_MARKER"], "a") as f:
        f.write("triton imported inside QGIS\\n")
    os.kill(os.getpid(), signal.SIGSEGV)
raise ImportError("triton cannot be loaded here (test poison)")
'''


def _site_packages() -> str:
    out = subprocess.run([str(VENV_BIN / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def run_desktop_session(tmp_path: Path, script: str, config: dict, python_path=None, extra_env=None):
    """Run ``qgis --code tests/<script>`` under Xvfb with a fresh profile (rsvl enabled) and
    ``config`` as RSVL_DESKTOP_CONFIG; (result JSON, log tail) once it finished cleanly."""
    for tool in ("qgis", "xvfb-run"):
        assert shutil.which(tool), f"{tool} is missing: run `make install`"
    profiles = tmp_path / "profiles"
    ini = profiles / "profiles" / "default" / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True, exist_ok=True)
    ini.write_text("[PythonPlugins]\nrsvl=true\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("QT_QPA_PLATFORM", "QGIS_CUSTOM_CONFIG_PATH", "PYTHONPATH", "RSVL_ALLOW_TRITON")}
    env.update(HOME=str(tmp_path), PYTHONPATH=os.pathsep.join(python_path or [_site_packages()]),
               RSVL_DESKTOP_CONFIG=json.dumps(config), QGIS_PLUGINPATH=str(REPO / ".venv" / "qgis-plugins"),
               PYTHONFAULTHANDLER="1", **(extra_env or {}))
    cmd = ["xvfb-run", "-a", "-s", "-screen 0 1600x1000x24", "qgis", "--profiles-path", str(profiles), "--nologo",
           "--noversioncheck", "--code", str(REPO / "tests" / script)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    log = (proc.stdout + proc.stderr)[-4000:]
    assert Path(config["result"]).exists(), f"QGIS died before the session started (exit {proc.returncode}):\n{log}"
    result = json.loads(Path(config["result"]).read_text())
    assert result.get("finished"), f"QGIS died or the session failed (exit {proc.returncode}): " \
                                   f"{result.get('error') or json.dumps(result, indent=1)}\n{log}"
    assert proc.returncode == 0, log
    return result, log


def test_desktop_explore_panel_from_prompts_to_training(tmp_path):
    """The rsvl Explore panel driven as a user does (tests/desktop_explore_session.py): the
    view embedded in a task, two prompts typed, a pixel clicked, training polygons saved and
    trained on; the panel's map equals rsvl:query's."""
    import numpy as np
    import rasterio

    from rsvl.backend import api
    from rsvl.backend.io.labels import split_label_raster
    from rsvl.backend.io.raster import LayerSpec

    labels = tmp_path / "train.tif"
    split_label_raster(str(SAMPLE / "lulc.tif"), 0.2, 0, str(labels), str(tmp_path / "test.tif"))
    ms, lidar = str(SAMPLE / "s2_l1c_2015-07-11.tif"), str(SAMPLE / "dem.tif")
    layers = [LayerSpec(ms, "ms"), LayerSpec(lidar, "lidar")]
    model = tmp_path / "model.safetensors"
    api.train(layers, str(labels), str(model), epochs=3, patch_size=5, device="cpu")
    with rasterio.open(SAMPLE / "lulc.tif") as ds:  # a pixel of artificial surface to click
        lulc, transform = ds.read(1), ds.transform
    names = {n: i for i, n in enumerate(ds_names(SAMPLE / "lulc.tif"))}
    rows, cols = np.nonzero(lulc == names.get("artificial surface", 5))
    x, y = transform * (int(cols[len(cols) // 2]) + 0.5, int(rows[len(rows) // 2]) + 0.5)
    config = {"ms": ms, "lidar": lidar, "model": str(model), "prompts": ["forest", "built-up area"],
              "export": str(tmp_path / "forest.tif"), "labels": str(tmp_path / "explore.gpkg"),
              "click": [x, y], "click_class": "like the clicked roof", "trained": str(tmp_path / "trained.safetensors"),
              "screenshot": str(tmp_path / "explore-panel.png"), "result": str(tmp_path / "result.json")}
    result, log = run_desktop_session(tmp_path, "desktop_explore_session.py", config)
    steps = result["steps"]
    assert steps["layers"] == {"ms": "s2", "lidar": "dem"}, steps["layers"]
    assert steps["embed"]["step"] == 1 and "embedded in" in steps["embed"]["status"], steps["embed"]
    assert [p["layer"] for p in steps["prompts"]] == ["rsvl: forest", "rsvl: built-up area"], steps["prompts"]
    assert all(p["in_project"] for p in steps["prompts"])
    assert "polygon(s) of 'forest' added" in steps["prompts"][0]["saved"], steps["prompts"][0]
    assert steps["click"]["kind"] == "click" and steps["click"]["max"] > 0.99, steps["click"]
    assert "polygon(s) of 'like the clicked roof' added" in steps["click"]["saved"], steps["click"]
    assert steps["train"]["ok"], steps["train"]["log"]
    from rsvl.backend.models.modelfile import read_header

    assert sorted(c.name for c in read_header(config["trained"]).classes) == ["forest", "like the clicked roof"]
    # the panel's map is rsvl:query's
    api.query(str(model), layers, ["forest"], output_similarity=str(tmp_path / "query.tif"), device="cpu")
    r0, c0, h, w = steps["embed"]["window"]
    with rasterio.open(tmp_path / "query.tif") as q, rasterio.open(config["export"]) as e:
        ref, got = q.read(1)[r0:r0 + h, c0:c0 + w], e.read(1)
    assert np.array_equal(np.isnan(ref), np.isnan(got)) and np.nanmax(np.abs(ref - got)) < 2e-3
    assert Path(config["screenshot"]).stat().st_size > 10_000


def ds_names(path) -> list:
    from osgeo import gdal

    ds = gdal.Open(str(path))
    band = ds.GetRasterBand(1)
    band.GetMetadata()
    return list(band.GetCategoryNames() or [])


@pytest.mark.parametrize("triton", ["installed", "unloadable"])
def test_desktop_qgis_with_mesa_trains_queries_and_classifies(tmp_path, triton):
    from rsvl.backend import api
    from rsvl.backend.io.labels import split_label_raster
    from rsvl.backend.io.raster import LayerSpec

    labels = tmp_path / "train.tif"
    split_label_raster(str(SAMPLE / "lulc.tif"), 0.2, 0, str(labels), str(tmp_path / "test.tif"))
    ms, lidar = str(SAMPLE / "s2_l1c_2015-07-11.tif"), str(SAMPLE / "dem.tif")
    pretrained = tmp_path / "pretrained.safetensors"
    api.train([LayerSpec(ms, "ms"), LayerSpec(lidar, "lidar")], str(labels), str(pretrained), epochs=2, patch_size=5,
              device="cpu")
    out = tmp_path / "out"
    out.mkdir()
    config = {
        "ms": ms, "lidar": lidar, "labels": str(labels), "pretrained": str(pretrained),
        "model": str(out / "model.safetensors"), "report": str(out / "report.html"),
        "similarity": str(out / "similarity.tif"), "best": str(out / "best.tif"),
        "similarity2": str(out / "similarity2.tif"),
        "classes": str(out / "classes.tif"), "result": str(tmp_path / "result.json"),
    }
    python_path = [_site_packages()]
    marker = tmp_path / "triton_marker.txt"
    if triton == "unloadable":
        (tmp_path / "poison" / "triton").mkdir(parents=True)
        (tmp_path / "poison" / "triton" / "__init__.py").write_text(POISON)
        python_path.insert(0, str(tmp_path / "poison"))
    result, _log = run_desktop_session(tmp_path, "desktop_session.py", config, python_path,
                                       {"RSVL_TRITON_MARKER": str(marker)})
    assert not marker.exists(), "rsvl imported triton inside QGIS"
    # The crash condition is present: desktop QGIS loaded Mesa (and its LLVM) for OpenGL.
    assert result["mesa_llvm_loaded"], "Mesa's LLVM was not loaded: this test would not see the crash"
    assert result["plugin_loaded"]
    steps = result["steps"]
    assert steps["train"]["ok"] and steps["train"]["model_exists"], steps["train"]
    assert "model saved to" in steps["train"]["messages"][-1]
    for name in ("query", "classify", "query_new_model"):
        assert steps[name]["ok"], steps[name]["log"]
    for key in ("similarity", "best", "classes", "report", "similarity2"):
        assert Path(config[key]).stat().st_size > 0, key
    # Results land in the project, styled with the class palette.
    assert steps["classify"]["layer"] and steps["classify"]["layer"]["renderer"] == "paletted", steps["classify"]
    assert steps["query"]["layer"] and steps["query"]["layer"]["renderer"] == "paletted", steps["query"]
    # Neither triton nor transformers was loaded into QGIS; classify and query do not load
    # torch._dynamo either (training does: torch's own optimiser imports it).
    before, end = result["modules_after_classify_query"], result["modules_at_end"]
    assert before["torch"] is True and before["torch._dynamo"] is False, before
    for state in (before, end):
        assert state["triton"] in ("blocked", False), state
        assert state["transformers"] is False and state["open_clip"] is False, state
