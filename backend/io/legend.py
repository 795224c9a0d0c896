"""Class names (and colours) for the codes of a label raster, from the files users already
have beside it: a QGIS style (``.qml``, paletted or discrete pseudocolour), a colour map
(``.clr``: ``code r g b [name]``), or a text/CSV list of ``code,name[,#rrggbb]`` lines
(also ``code name`` or ``code;name`` or tab-separated). Category names stored with the raster
(GDAL's ``.aux.xml``) are read by :mod:`.labels` itself; a sidecar fills or overrides them.

Also: the ``LABEL_NODATA`` values (:func:`parse_nodata_values`).
"""

from __future__ import annotations

import csv
import os
import re
import xml.etree.ElementTree as ET
from typing import Dict, List, Optional, Tuple

from ..errors import LabelError

Entry = Tuple[str, Optional[Tuple[int, int, int]]]  # name, colour
SIDECARS = (".qml", ".clr", ".csv", ".txt")


def _hex(text: str) -> Optional[Tuple[int, int, int]]:
    m = re.fullmatch(r"#?([0-9a-fA-F]{6})(?:[0-9a-fA-F]{2})?", (text or "").strip())
    if not m:
        return None
    v = m.group(1)
    return int(v[0:2], 16), int(v[2:4], 16), int(v[4:6], 16)


def _qml(path: str) -> Dict[int, Entry]:
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise LabelError(f"CLASS_NAMES {path!r} is not a readable QGIS style (.qml): {exc}") from exc
    out = {}
    for tag in ("paletteEntry", "item"):  # paletted renderer; discrete pseudocolour shader
        for e in root.iter(tag):
            value = e.get("value")
            try:
                code = int(float(value))
            except (TypeError, ValueError):
                continue
            if float(value) != code:
                continue
            out[code] = ((e.get("label") or "").strip() or f"class {code}", _hex(e.get("color", "")))
        if out:
            break
    return out


def _clr(path: str) -> Dict[int, Entry]:
    out = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 4 or not re.fullmatch(r"-?\d+", parts[0]) or line.lstrip().startswith("#"):
                continue
            try:
                rgb = tuple(int(float(p)) for p in parts[1:4])
            except ValueError:
                continue
            name = " ".join(parts[4:]).strip() or f"class {int(parts[0])}"
            out[int(parts[0])] = (name, rgb)
    return out


def _table(path: str) -> Dict[int, Entry]:
    out = {}
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        text = f.read()
    sample = text[:4096]
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if any(d in sample for d in ",;\t"):
        delimiter = next(d for d in (",", ";", "\t") if d in sample)
        rows = list(csv.reader(lines, delimiter=delimiter))
    else:  # "1 roof", "3 low vegetation"
        rows = [line.strip().split(None, 1) for line in lines]
    for row in rows:
        row = [c.strip() for c in row]
        if len(row) < 2 or not re.fullmatch(r"-?\d+", row[0]):
            continue  # a header line, or not a class line
        out[int(row[0])] = (row[1] or f"class {row[0]}", _hex(row[2]) if len(row) > 2 else None)
    return out


def read_legend(path: str) -> Dict[int, Entry]:
    """{code: (name, colour or None)} from a .qml, .clr or text/CSV file; an error names
    the file when it holds no class line."""
    if not os.path.isfile(path):
        raise LabelError(f"CLASS_NAMES file {path!r} does not exist")
    ext = os.path.splitext(path)[1].lower()
    legend = _qml(path) if ext == ".qml" else _clr(path) if ext == ".clr" else _table(path)
    if not legend:
        raise LabelError(f"CLASS_NAMES {path!r} names no class: expected a QGIS paletted style (.qml), a .clr colour "
                         "map or lines of 'code,name'")
    return legend


def find_legend(raster_path: str) -> Optional[str]:
    """A sidecar beside ``raster_path`` with the same name (``labels.qml``, ``labels.tif.qml``,
    ``labels.clr``, ``labels.csv``, ``labels.txt``) that reads as a legend, or None."""
    stem = os.path.splitext(raster_path)[0]
    for base in (stem, raster_path):
        for ext in SIDECARS:
            candidate = base + ext
            if os.path.isfile(candidate):
                try:
                    read_legend(candidate)
                except (LabelError, OSError, UnicodeError):
                    continue
                return candidate
    return None


def parse_nodata_values(text, parameter: str = "LABEL_NODATA") -> Optional[List[int]]:
    """``"-1"``, ``"255"``, ``"-1, 255"`` (or a number, or a list) as whole numbers; None for
    empty (the default)."""
    if text is None:
        return None
    if isinstance(text, (int, float)):
        items = [text]
    elif isinstance(text, (list, tuple)):
        items = list(text)
    else:
        items = [t for t in re.split(r"[,;\s]+", str(text).strip()) if t]
    if not items:
        return None
    values = []
    for item in items:
        try:
            value = float(item)
        except (TypeError, ValueError):
            raise LabelError(f"{parameter} {text!r}: {item!r} is not a number (write e.g. -1 or 255 or '-1, 255')") \
                from None
        if not value.is_integer():
            raise LabelError(f"{parameter} {text!r}: label values are whole numbers ({item!r} is not)")
        values.append(int(value))
    return sorted(set(values))
