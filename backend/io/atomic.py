"""Outputs appear only when complete: write to a temporary sibling, move into place on
success, remove it on failure or cancel."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from typing import Dict, Iterator, Optional, Sequence, Tuple

from ..errors import InputError


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
    _remove_orphans(folder, stem, ext)
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.rsvl-{os.getpid()}-", suffix=f".part{ext}", dir=folder)
    os.close(fd)
    os.unlink(tmp)  # GDAL creates the file itself
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp-style private modes are not wanted for outputs
        if os.path.exists(tmp + ".aux.xml"):
            os.replace(tmp + ".aux.xml", path + ".aux.xml")
        elif os.path.exists(path + ".aux.xml"):
            os.unlink(path + ".aux.xml")  # a stale sidecar would describe the old file
        os.replace(tmp, path)
    except BaseException:  # the work failed, or moving it into place did (``path`` became a folder)
        for p in [tmp, tmp + ".aux.xml"]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
        raise

def _remove_orphans(folder: str, stem: str, ext: str) -> None:
    """Remove temporary files of this destination left by rsvl processes that were killed
    (SIGKILL, power loss) before they could clean up: hidden ``.part`` files whose writing
    process no longer exists. Those of live processes are left alone."""
    pattern = re.compile(rf"^\.{re.escape(stem)}\.rsvl-(\d+)-[^/]*\.part{re.escape(ext)}(\.aux\.xml)?$")
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        m = pattern.match(name)
        if not m or _alive(int(m.group(1))):
            continue
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(folder, name))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


GEOTIFF = (".tif", ".tiff")


def check_geotiff(outputs: Sequence[Tuple[str, str]]) -> None:
    """Raster outputs are GeoTIFFs: refuse another extension (``(parameter, path)``) rather
    than write a GeoTIFF under a name that promises another format."""
    for parameter, path in outputs:
        if path and os.path.splitext(path)[1].lower() not in GEOTIFF:
            raise InputError(f"{parameter} {path!r}: rsvl writes GeoTIFF rasters; give the file a .tif name (convert "
                             "it afterwards with gdal_translate or Raster ▸ Conversion ▸ Translate if needed)")


MODEL_EXTENSIONS = (".safetensors", ".rsvl")
REPORT_EXTENSIONS = (".html", ".htm")
# Vector outputs rsvl writes, by extension: single-file formats (a Shapefile is several files,
# which one atomic move cannot put in place together).
VECTOR_DRIVERS = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".json": "GeoJSON", ".fgb": "FlatGeobuf"}


def check_extension(parameter: str, path: Optional[str], kind: str) -> None:
    """Refuse an output name that promises another format than rsvl writes there: a model
    (``kind="model"``: safetensors, .safetensors or .rsvl), an HTML report (``"report"``) or
    a vector layer (``"vector"``: GeoPackage, GeoJSON or FlatGeobuf, by extension)."""
    if not path or os.path.isdir(path):  # a folder: check_outputs says so
        return
    ext = os.path.splitext(path)[1].lower()
    if kind == "model" and ext not in MODEL_EXTENSIONS:
        raise InputError(f"{parameter} {path!r}: rsvl writes models as safetensors files; name it .safetensors (or "
                         ".rsvl)")
    if kind == "report" and ext not in REPORT_EXTENSIONS:
        raise InputError(f"{parameter} {path!r}: the report is an HTML page; name it .html")
    if kind == "vector" and ext not in VECTOR_DRIVERS:
        raise InputError(f"{parameter} {path!r}: rsvl writes this layer as GeoPackage (.gpkg), GeoJSON (.geojson) "
                         f"or FlatGeobuf (.fgb), chosen by the extension; {ext or 'no extension'} is none of them"
                         + (" (a Shapefile is several files: convert the .gpkg afterwards if needed)"
                            if ext == ".shp" else ""))


def check_outputs(outputs: Sequence[Tuple[str, str, int]], inputs: Sequence[Tuple[str, str]] = ()) -> None:
    """Before the long work starts: every output folder can be created and written, and the
    file system of each has room for the outputs (``(parameter, path, estimated bytes)``;
    an uncompressed upper bound); no output is a folder, another output or one of
    ``inputs`` (``(parameter, path)``). Raises :class:`InputError` naming the parameters."""
    need: Dict[int, list] = {}
    taken: Dict[str, str] = {}
    for parameter, path in inputs:
        if path and os.path.isfile(path):
            taken.setdefault(os.path.realpath(path), f"the input {parameter}")
    for parameter, path, size in outputs:
        if not path:
            continue
        if os.path.isdir(path):
            raise InputError(f"{parameter}: {path!r} is a folder; give a file name in it")
        real = os.path.realpath(path)
        if real in taken:
            raise InputError(f"{parameter} {path!r} is also {taken[real]}: writing it would destroy that; "
                             "choose another output path")
        taken[real] = parameter
        folder = os.path.dirname(os.path.abspath(path))
        existing = folder
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            raise InputError(f"{parameter}: {existing!r} is a file, so the folder {folder!r} cannot be created; "
                             "choose another output path")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise InputError(f"{parameter}: the folder {existing!r} is not writable; choose another output path")
        entry = need.setdefault(os.stat(existing).st_dev, [existing, 0, []])
        entry[1] += int(size)
        entry[2].append(parameter)
    for folder, size, parameters in need.values():
        free = shutil.disk_usage(folder).free
        if free < size:
            raise InputError(
                f"{', '.join(parameters)}: {folder!r} has {_size(free)} free but the output(s) may need up to "
                f"{_size(size)}; free some space or write them to another disk")


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
