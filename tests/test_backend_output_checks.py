"""Outputs that cannot be written are reported before the long work starts (issue 9,
fault sweep): a folder that cannot be created, too little free space."""

from __future__ import annotations

import shutil
from collections import namedtuple

import pytest

from rsvl.backend import api
from rsvl.backend.errors import InputError


def test_an_output_folder_that_cannot_be_created_is_named(trained_model, scene, tmp_path):
    model_path, _result, layers = trained_model
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where a folder would go")
    with pytest.raises(InputError, match=r"OUTPUT: .*not-a-folder' is a file, so the folder .* cannot be created"):
        api.classify(str(model_path), layers, str(blocker / "sub" / "classes.tif"), device="cpu")
    steps = []
    with pytest.raises(InputError, match="OUTPUT_MODEL: .*is a file"):
        api.train(layers, str(scene.labels), str(blocker / "model.safetensors"), epochs=2, device="cpu",
                  progress=lambda f, m: steps.append(m))
    assert steps == []  # refused before reading anything


def test_too_little_free_space_is_reported_before_classifying(trained_model, tmp_path, monkeypatch):
    model_path, _result, layers = trained_model
    usage = namedtuple("usage", "total used free")
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 4096, 4096))  # 4 KiB free
    steps = []
    message = r"OUTPUT, OUTPUT_SIMILARITY: .* has 4.0 KiB free but the output\(s\) may need up to 38.2 KiB"
    with pytest.raises(InputError, match=message):
        api.classify(str(model_path), layers, str(tmp_path / "c.tif"), similarity=str(tmp_path / "s.tif"),
                     device="cpu", tile_size=16, progress=lambda f, m: steps.append(m))
    assert not any("window" in m for m in steps) and not list(tmp_path.iterdir())
    monkeypatch.setattr(shutil, "disk_usage", real)
    api.classify(str(model_path), layers, str(tmp_path / "c.tif"), device="cpu")  # enough room: it runs
    assert (tmp_path / "c.tif").exists()


@pytest.mark.slow  # a 1200 x 1200 scene and two CLI processes
def test_sigkill_while_writing_leaves_no_complete_looking_file(trained_model, shared_scene, tmp_path, helpers):
    """A classify process killed with SIGKILL while its outputs are being written leaves
    the earlier file at the destination untouched and only a hidden ``.part`` file, which
    the next run to that destination removes."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import numpy as np
    import rasterio

    model_path, _result, layers = trained_model
    big = {}
    for m in ("hsi", "lidar"):
        with rasterio.open(shared_scene.paths[m]) as ds:
            data, descriptions = ds.read(), list(ds.descriptions)
        reps = -(-1200 // data.shape[1])  # long enough to be killed while writing
        big[m] = helpers.write_raster(tmp_path / f"{m}.tif", np.tile(data, (1, reps, reps)), shared_scene.transform,
                                      descriptions=descriptions)
    out = tmp_path / "out"
    out.mkdir()
    dest = out / "classes.tif"
    dest.write_bytes(b"an earlier result")
    cmd = [sys.executable, "-m", "rsvl.backend", "-q", "classify", "-m", str(model_path), "--hsi", big["hsi"],
           "--lidar", big["lidar"], "-o", str(dest), "--similarity", str(out / "sim.tif"), "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            parts = [p for p in os.listdir(out) if p.endswith(".part.tif")]
            if parts and sum(os.path.getsize(out / p) for p in parts) > 0:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"classify ended before it could be killed: {proc.stderr.read()!r}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    left = sorted(os.listdir(out))
    assert dest.read_bytes() == b"an earlier result" and not (out / "sim.tif").exists()
    assert left and all(n.startswith(".") and ".part." in n for n in left if n != "classes.tif"), left
    # The next run to the same outputs (on the small scene) removes the orphans.
    res = subprocess.run([layers[0].path if a == big["hsi"] else layers[1].path if a == big["lidar"] else a
                          for a in cmd], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert not [n for n in os.listdir(out) if ".part" in n], os.listdir(out)  # the orphans are gone
    with rasterio.open(dest) as ds:
        assert ds.read(1).shape == data.shape[1:]
