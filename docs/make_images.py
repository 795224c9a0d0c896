"""Regenerate the screenshots of the docs (docs/images/*.png) from the real desktop QGIS.

Usage: .venv/bin/python docs/make_images.py [--out DIR] [--keep]   (make docs-images)

Trains a small model on the bundled sample scene (resources/sample: a seeded 10 % of the
land-cover labels, CPU, a few epochs), then starts the desktop ``qgis`` on a virtual X
server (Xvfb, a fixed 1600x1000 screen) with a fresh temporary profile and the rsvl plugin
enabled, as tests/test_plugin_desktop.py does, and lets docs/images_session.py load the
scene, run rsvl:classify and rsvl:query from their Processing dialogs and grab the
windows. Writes train-dialog.png, query-dialog.png, toolbox.png, class-map.png,
similarity-map.png and explore-panel.png to DIR (default docs/images); exits non-zero if any is missing.
Works in /tmp/rsvl-docs (a fixed path: it shows in the dialogs, so the images do not change
from run to run; removed at the end unless --keep). Needs ``make install`` (QGIS, Xvfb, the
.venv); takes about half a minute.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "resources" / "sample"
IMAGES = ("train-dialog.png", "query-dialog.png", "toolbox.png", "class-map.png", "similarity-map.png",
          "explore-panel.png")
SCREEN = "1600x1000x24"
TIMEOUT_S = 600
# A fixed working folder: its paths show in the dialogs, and the images stay the same from run to run.
WORK = Path(tempfile.gettempdir()) / "rsvl-docs"
PROFILE_INI = """[PythonPlugins]
rsvl=true

[locale]
overrideFlag=true
userLocale=en_US

[qgis]
checkVersion=false
"""


def train_model(tmp: Path) -> dict:
    """A seeded 10 % of the labels and a model trained on it (CPU, 20 epochs: about 15 s)."""
    from rsvl.backend import api
    from rsvl.backend.io.labels import split_label_raster
    from rsvl.backend.io.raster import LayerSpec

    ms, lidar = str(SAMPLE / "s2_l1c_2015-07-11.tif"), str(SAMPLE / "dem.tif")
    labels = tmp / "train_labels.tif"
    split_label_raster(str(SAMPLE / "lulc.tif"), 0.1, 0, str(labels), str(tmp / "test_labels.tif"))
    model = tmp / "model.safetensors"
    api.train([LayerSpec(ms, "ms"), LayerSpec(lidar, "lidar")], str(labels), str(model), epochs=20, seed=0,
              device="cpu")
    return {"ms": ms, "lidar": lidar, "lulc": str(SAMPLE / "lulc.tif"), "model": str(model)}


def start_xvfb() -> tuple[subprocess.Popen, str]:
    """Xvfb on a free display (``-displayfd``: no race with other virtual X servers)."""
    read, write = os.pipe()
    proc = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", SCREEN, "-nolisten", "tcp"],
                            pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write)
    with os.fdopen(read) as f:
        display = f.readline().strip()
    if not display:
        proc.kill()
        raise RuntimeError("Xvfb did not start")
    return proc, f":{display}"


def run_qgis(tmp: Path, config: dict, display: str) -> subprocess.CompletedProcess:
    profiles = tmp / "profiles"
    ini = profiles / "profiles" / "default" / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True)
    ini.write_text(PROFILE_INI)
    env = {k: v for k, v in os.environ.items()
           if k not in ("QT_QPA_PLATFORM", "QGIS_CUSTOM_CONFIG_PATH", "PYTHONPATH", "RSVL_ALLOW_TRITON")}
    env.update(DISPLAY=display, HOME=str(tmp), PYTHONPATH=sysconfig.get_paths()["purelib"],
               QGIS_PLUGINPATH=str(REPO / ".venv" / "qgis-plugins"), RSVL_DESKTOP_CONFIG=json.dumps(config),
               PYTHONFAULTHANDLER="1")
    cmd = ["qgis", "--profiles-path", str(profiles), "--nologo", "--noversioncheck", "--code",
           str(REPO / "docs" / "images_session.py")]
    return subprocess.run(cmd, env=env, cwd=str(tmp), capture_output=True, text=True, timeout=TIMEOUT_S)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "images"), help="folder of the PNGs (docs/images)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (model, outputs, profile)")
    args = parser.parse_args(argv)
    for tool in ("qgis", "Xvfb"):
        if not shutil.which(tool):
            print(f"make_images: {tool} is missing: run `make install`", file=sys.stderr)
            return 2
    start = time.monotonic()
    lock = open(f"{WORK}.lock", "w")  # held until the process ends
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        print(f"make_images: another run holds {WORK}.lock", file=sys.stderr)
        return 2
    tmp = WORK
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    xvfb = None
    try:
        print("make_images: training a model on 10 % of the sample labels (CPU) …", flush=True)
        config = train_model(tmp)
        config.update(images=str(tmp / "images"), outputs=str(tmp / "outputs"), result=str(tmp / "result.json"))
        os.makedirs(config["images"])
        os.makedirs(config["outputs"])
        print(f"make_images: desktop QGIS on a virtual {SCREEN} screen …", flush=True)
        xvfb, display = start_xvfb()
        try:
            proc = run_qgis(tmp, config, display)
            log, code = proc.stdout + proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as exc:
            log, code = f"{exc.stdout or ''}{exc.stderr or ''}", f"timeout after {TIMEOUT_S} s"
        result = json.loads(Path(config["result"]).read_text()) if Path(config["result"]).exists() else {}
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        missing = []
        for name in IMAGES:
            src = Path(config["images"]) / name
            if src.is_file() and src.stat().st_size > 0:
                shutil.copyfile(src, out / name)
                print(f"   {out / name}  {src.stat().st_size // 1024} KB")
            else:
                missing.append(name)
        if missing or not result.get("finished"):
            tail = log[-3000:] if isinstance(log, str) else ""
            print(f"make_images: QGIS exit {code}; missing: {', '.join(missing) or 'none'}\n"
                  f"{result.get('error') or json.dumps(result, indent=1)}\n{tail}", file=sys.stderr)
            return 1
        print(f"make_images: done in {time.monotonic() - start:.0f} s")
        return 0
    finally:
        if xvfb is not None:
            xvfb.terminate()
            xvfb.wait(10)
        if args.keep:
            print(f"make_images: kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
