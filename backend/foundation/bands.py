"""Inputs of a pretrained image tower: :func:`select_bands` picks the preset's bands from band descriptions, from
the band count of a 13-band L1C or 12-band L2A stack, or from an explicit BANDS list; :func:`value_scale` decides
how raster values become digital numbers; :class:`Preprocessor` turns windows into model inputs."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

from ..errors import InputError
from .presets import RGB_DN_WHITE, S2_L1C, S2_L2A, Preset

log = logging.getLogger("rsvl")


# -- bands and values -----------------------------------------------------------------------
_BAND = re.compile(r"(?<![A-Za-z0-9])B0?(\d{1,2}A?)(?![0-9A-Za-z])", re.IGNORECASE)


def sentinel2_band(name: str) -> Optional[str]:
    """'B02' for 'B2', 'b02', 'S2_B02_10m', 'T32TQM_20200101T102021_B02' …; None if no band code."""
    found = _BAND.findall(name or "")
    if not found:
        return None
    code = found[-1].upper()
    if code.endswith("A"):  # B8A: Sentinel-2's narrow NIR band keeps its one digit
        return f"B{int(code[:-1])}A"
    return f"B{int(code):02d}"


def select_bands(names: Sequence[str], preset: Preset, bands: Optional[str] = None) -> List[int]:
    """0-based indexes of the preset's bands among the input bands ``names``: from BANDS
    (band codes or 1-based numbers, comma-separated), else from band codes found in the
    names (descriptions, or file names for one-band layers), else from the band count
    (13 = Sentinel-2 L1C, 12 = L2A; 3 for an RGB model = an RGB raster, in R, G, B order)."""
    count = len(names)
    expected = ", ".join(preset.bands)
    if bands and bands.strip():
        items = [b.strip() for b in bands.split(",") if b.strip()]
        if len(items) != preset.channels:
            raise InputError(f"BANDS names {len(items)} band(s); {preset.name} takes {preset.channels}: {expected}")
        out = []
        codes = [sentinel2_band(n) for n in names]
        for item in items:
            if item.isdigit():
                i = int(item) - 1
                if not 0 <= i < count:
                    raise InputError(f"BANDS: band {item} does not exist (the input has {count} band{'s' if count != 1 else ''})")
            else:
                code = sentinel2_band(item) or item
                if code not in codes:
                    raise InputError(f"BANDS: no input band is named {item!r} (bands: {', '.join(names)})")
                i = codes.index(code)
            out.append(i)
        return out
    codes = [sentinel2_band(n) for n in names]
    if all(b in codes for b in preset.bands):
        return [codes.index(b) for b in preset.bands]
    if preset.rgb and count == 3:
        return [0, 1, 2]
    for order, what in ((S2_L1C, "13-band L1C"), (S2_L2A, "12-band L2A")):
        if count == len(order):
            log.info("bands taken as a Sentinel-2 %s stack (%s) by their count", what, ", ".join(order))
            return [order.index(b) for b in preset.bands]
    named = [c for c in codes if c]
    raise InputError(
        f"{preset.name} takes Sentinel-2 bands {expected}"
        + (" (or a 3-band RGB raster)" if preset.rgb else "")
        + f"; the input has {count} band(s)" + (f" named {', '.join(named)}" if named else "")
        + ": give a 13-band L1C or 12-band L2A stack, name the bands in their descriptions, or set BANDS")


def value_scale(value_scale: str, dtypes: Sequence[str], sample: Optional[np.ndarray]) -> float:
    """Factor from raster values to digital numbers (reflectance × 10000). ``auto``:
    integer rasters as they are; float rasters whose valid values lie within reflectance
    range (99th percentile ≤ 2) × 10000 (logged); other floats as they are."""
    text = str(value_scale if value_scale is not None else "auto").strip().lower()
    if text not in ("", "auto"):
        try:
            factor = float(text)
        except ValueError:
            raise InputError(f"VALUE_SCALE must be 'auto' or a number (got {value_scale!r})") from None
        if not factor > 0:
            raise InputError(f"VALUE_SCALE must be positive (got {value_scale!r})")
        return factor
    if all(np.issubdtype(np.dtype(d), np.integer) for d in dtypes):
        return 1.0
    if sample is not None:
        v = sample[np.isfinite(sample)]
        if v.size and float(np.percentile(np.abs(v), 99)) <= 2.0:
            log.info("VALUE_SCALE=auto: float values within reflectance range, multiplied by 10000 to digital numbers")
            return 10000.0
    return 1.0


@dataclass
class Preprocessor:
    """Raster values of the selected bands → the image tower's input values."""

    preset: Preset
    scale: float = 1.0  # raster value × scale = digital number
    offset: float = 0.0  # subtracted after scaling (L2A's +1000 from processing baseline 04.00)
    eight_bit: bool = False  # an RGB raster already in 0..255 (uint8): no DN mapping

    def __call__(self, data: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """(C, h, w) float32 values and (h, w) validity → (C, h, w) float32 model input;
        invalid pixels are 0 (the band mean after normalisation)."""
        p = self.preset
        mean = np.asarray(p.mean, np.float32)[:, None, None]
        std = np.asarray(p.std, np.float32)[:, None, None]
        if p.scaling == "dn":
            x = data.astype(np.float32) * np.float32(self.scale) - np.float32(self.offset)
        elif self.eight_bit:
            x = np.clip(data, 0, 255).astype(np.uint8).astype(np.float32) / np.float32(255)
        else:
            dn = data.astype(np.float32) * np.float32(self.scale) - np.float32(self.offset)
            x = np.clip(dn / np.float32(RGB_DN_WHITE) * np.float32(255), 0, 255).astype(np.uint8)
            x = x.astype(np.float32) / np.float32(255)
        out = (x - mean) / std
        return np.where(valid[None], out, np.float32(0)).astype(np.float32)
