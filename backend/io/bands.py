"""What the bands of an input layer are: wavelengths and bad-band lists read from the data's
metadata the way hyperspectral tools write them, the ``BAD_BANDS`` parameter, and the bands a
model keeps.

Metadata read (per band, first found wins), as GDAL exposes the common conventions:

- wavelength: the band's ``wavelength`` + ``wavelength_units`` items (GDAL's ENVI driver,
  EnMAP-Box), the ``IMAGERY`` domain's ``CENTRAL_WAVELENGTH_UM`` (GDAL ≥ 3.10), the
  dataset's ``ENVI`` domain ``wavelength`` list, and a number with a unit in the band
  description (``"B02 (490 nm)"``, ``"0.45 Micrometers"``). Values come out in nanometres;
  a value without unit is read as micrometres below 20 and nanometres above (EnMAP-Box's rule).
- bad bands: the band's ``bbl`` item, then the dataset's ``ENVI`` domain ``bbl`` list
  (``0`` = bad band, ENVI's meaning).

Bands with no valid pixel in the training layers are found by the statistics pass
(:func:`~rsvl.backend.io.selection.fit_bands`); declared and empty bands are dropped with one
warning, and the model records what it kept (:class:`BandSelection`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError

log = logging.getLogger("rsvl")

_UNITS = {
    "nm": 1.0, "nanometer": 1.0, "nanometers": 1.0, "nanometre": 1.0, "nanometres": 1.0,
    "um": 1e3, "µm": 1e3, "μm": 1e3, "micrometer": 1e3, "micrometers": 1e3, "micrometre": 1e3,
    "micrometres": 1e3, "micron": 1e3, "microns": 1e3, "mu": 1e3, "mm": 1e6, "millimeters": 1e6,
}
_DESCRIPTION = re.compile(r"(\d+(?:\.\d+)?)\s*(nm|nanomet\w*|µm|μm|um|micromet\w*|microns?)\b", re.IGNORECASE)


def _scale(units: Optional[str]) -> Optional[float]:
    """Nanometres per unit, or None for units that are not a length (e.g. wavenumbers)."""
    key = (units or "").strip().lower()
    return _UNITS.get(key) if key and key not in ("unknown", "index") else None


def _to_nm(value: float, units: Optional[str]) -> Optional[float]:
    if units and units.strip().lower() not in ("unknown", "index"):
        scale = _scale(units)
        return None if scale is None else value * scale
    return value * 1e3 if value < 20 else value  # no unit: micrometres or nanometres by magnitude


def _envi_list(text: Optional[str]) -> List[str]:
    """The items of an ENVI header list ``{a, b, c}``."""
    if not text:
        return []
    return [t.strip() for t in text.strip().strip("{}").split(",") if t.strip()]


def _number(text) -> Optional[float]:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


def band_metadata(dataset, indexes: Sequence[int]) -> Tuple[List[Optional[float]], List[bool]]:
    """(wavelength in nm or None, declared bad) of bands ``indexes`` (1-based) of an opened
    rasterio dataset."""
    envi = dataset.tags(ns="ENVI") if "ENVI" in (dataset.tag_namespaces() or []) else {}
    envi_wl = _envi_list(envi.get("wavelength"))
    envi_units = envi.get("wavelength_units") or dataset.tags().get("wavelength_units")
    envi_bbl = _envi_list(envi.get("bbl"))
    wavelengths, bad = [], []
    for i in indexes:
        tags = dataset.tags(i)
        wl = None
        if _number(tags.get("wavelength")) is not None:
            wl = _to_nm(_number(tags["wavelength"]), tags.get("wavelength_units") or envi_units)
        if wl is None and "IMAGERY" in (dataset.tag_namespaces(i) or []):
            um = _number(dataset.tags(i, ns="IMAGERY").get("CENTRAL_WAVELENGTH_UM"))
            wl = None if um is None else um * 1e3
        if wl is None and len(envi_wl) >= i and _number(envi_wl[i - 1]) is not None:
            wl = _to_nm(_number(envi_wl[i - 1]), envi_units)
        if wl is None:
            match = _DESCRIPTION.search(dataset.descriptions[i - 1] or "")
            if match:
                wl = _to_nm(float(match.group(1)), match.group(2))
        wavelengths.append(None if wl is None else round(float(wl), 4))
        flag = _number(tags.get("bbl"))
        if flag is None and len(envi_bbl) >= i:
            flag = _number(envi_bbl[i - 1])
        bad.append(flag is not None and flag == 0)
    return wavelengths, bad


def parse_band_list(text: str, modalities: Dict[str, int], parameter: str = "BAD_BANDS") -> Dict[str, List[int]]:
    """``"130-135, 165"`` or ``"hsi:130-135; ms:10"`` as 0-based band positions per modality
    (bands numbered from 1 within a modality's input, its layers' bands in order). Without a
    modality the numbers are the HSI input's, or the only input's."""
    out: Dict[str, List[int]] = {}
    text = (text or "").strip()
    if not text:
        return out
    for part in re.split(r"[;\n]", text):
        part = part.strip()
        if not part:
            continue
        modality, _, ranges = part.rpartition(":")
        modality = modality.strip().lower()
        if not modality:
            if "hsi" in modalities:
                modality = "hsi"
            elif len(modalities) == 1:
                modality = next(iter(modalities))
            else:
                raise InputError(f"{parameter} {text!r}: say which input the bands are of, e.g. "
                                 f"'{next(iter(modalities))}:{ranges.strip()}' (inputs: {', '.join(modalities)})")
        if modality not in modalities:
            raise InputError(f"{parameter} names {modality!r}, which is not an input here (inputs: "
                             f"{', '.join(modalities)})")
        n = modalities[modality]
        for item in ranges.split(","):
            item = item.strip()
            if not item:
                continue
            m = re.fullmatch(r"(\d+)\s*(?:-\s*(\d+))?", item)
            if not m:
                raise InputError(f"{parameter}: {item!r} is not a band number or range (write e.g. 130-135, 165)")
            lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
            if lo < 1 or hi > n or lo > hi:
                raise InputError(f"{parameter}: {item!r} is outside the {modality} input's bands 1–{n}")
            out.setdefault(modality, []).extend(range(lo - 1, hi))
    return {m: sorted(set(v)) for m, v in out.items()}


def ranges(positions: Sequence[int]) -> str:
    """0-based positions as 1-based band ranges: ``"130–135, 165"``."""
    runs: List[List[int]] = []  # [first, last] of each run of consecutive positions
    for p in sorted(positions):
        if runs and p == runs[-1][1] + 1:
            runs[-1][1] = p
        else:
            runs.append([p, p])
    return ", ".join(f"{a + 1}" if a == b else f"{a + 1}–{b + 1}" for a, b in runs)


@dataclass
class BandSelection:
    """The bands of one modality's input a model uses: how many the input has, which it keeps
    (0-based positions) and their wavelengths (nm, None where unknown)."""

    input_bands: int
    kept: List[int]
    wavelengths: List[Optional[float]] = field(default_factory=list)

    @property
    def dropped(self) -> List[int]:
        return sorted(set(range(self.input_bands)) - set(self.kept))

    def to_json(self) -> dict:
        return {"input_bands": self.input_bands, "kept": [p + 1 for p in self.kept],
                "dropped": [p + 1 for p in self.dropped],
                "wavelengths_nm": self.wavelengths if any(w is not None for w in self.wavelengths) else None}

    @classmethod
    def from_json(cls, d: dict) -> BandSelection:
        kept = [int(p) - 1 for p in d["kept"]]
        return cls(int(d["input_bands"]), kept, list(d.get("wavelengths_nm") or [None] * len(kept)))


def wavelength_problem(trained: Sequence[Optional[float]], given: Sequence[Optional[float]]) -> Optional[str]:
    """What differs between the wavelengths of the trained and the given bands, in words, or
    None (also when either side does not know them)."""
    if len(trained) != len(given) or any(w is None for w in trained) or any(w is None for w in given):
        return None
    t, g = np.asarray(trained, float), np.asarray(given, float)
    spacing = np.abs(np.diff(np.sort(t)))
    spacing = spacing[spacing > 0]
    tol = max(2.0, 0.5 * float(spacing.min())) if spacing.size else 2.0
    far = np.flatnonzero(np.abs(t - g) > tol)
    if not far.size:
        return None
    if np.allclose(np.sort(t), np.sort(g), atol=tol):
        return ("bands are in another order than in training (by wavelength: "
                + "; ".join(f"band {i + 1} is {g[i]:g} nm, was {t[i]:g} nm" for i in far[:5])
                + "): reorder them (e.g. gdal_translate -b …)")
    return ("band wavelengths differ from training (" + "; ".join(
        f"band {i + 1}: {g[i]:g} nm, trained {t[i]:g} nm" for i in far[:5])
        + f"{', …' if far.size > 5 else ''}): another sensor or band set than the model's")
