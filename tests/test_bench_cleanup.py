"""An interrupted `make bench` leaves no generated scene behind (issue 9, defect 6)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_bench_removes_its_scenes(tmp_path, sig):
    proc = subprocess.Popen([sys.executable, str(REPO / "bench" / "run.py"), "--small", "300", "--large", "3000",
                             "--workdir", str(tmp_path), "--out", str(tmp_path / "out.json")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while not list(tmp_path.glob("*/*.tif")):  # the scenes are being written
            assert proc.poll() is None and time.monotonic() < deadline, "the bench never wrote its scenes"
            time.sleep(0.2)
        proc.send_signal(sig)
        proc.wait(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert not [p for p in tmp_path.iterdir() if p.is_dir()], "the generated scenes were left behind"
    assert not (tmp_path / "out.json").exists()
