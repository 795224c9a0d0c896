"""Outputs appear only when complete: write to a temporary sibling, move into place on
success, remove it on failure or cancel."""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterator


def _sidecars(path: str):
    return [path + ".aux.xml", os.path.splitext(path)[0] + ".qml"]


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path in the destination's folder; on success it (and its GDAL
    ``.aux.xml`` sidecar, if any) replaces ``path``; on any exception nothing remains."""
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    stem, ext = os.path.splitext(os.path.basename(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".part{ext}", dir=folder)
    os.close(fd)
    os.unlink(tmp)  # GDAL creates the file itself
    try:
        yield tmp
    except BaseException:
        for p in [tmp, tmp + ".aux.xml"]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
        raise
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp-style private modes are not wanted for outputs
    if os.path.exists(tmp + ".aux.xml"):
        os.replace(tmp + ".aux.xml", path + ".aux.xml")
    elif os.path.exists(path + ".aux.xml"):
        os.unlink(path + ".aux.xml")  # a stale sidecar would describe the old file
    os.replace(tmp, path)
