"""Which bands of the input layers a model uses: :func:`fit_bands` drops the bad and empty
bands of the training layers (with their statistics), :func:`apply_selection` takes the same
bands from the layers a model is applied to and refuses layers whose bands are not those
(see :mod:`.bands` for the metadata read)."""

from __future__ import annotations

import logging
import re
from typing import Dict, List

import numpy as np
from rasterio.windows import Window

from ..errors import InputError, ModelMismatchError, count
from .bands import BandSelection, parse_band_list, ranges, wavelength_problem
from .raster import compute_band_stats

log = logging.getLogger("rsvl")


def fit_bands(stack, bad_bands: str = "", job=None):
    """The bands of the training layers to use, and their statistics: declared bad bands (the
    data's metadata and ``bad_bands``, see :func:`parse_band_list`) and bands with no valid
    pixel are dropped from ``stack`` with one warning per modality. Returns (stats per
    modality, :class:`BandSelection` per modality)."""
    inputs = stack.band_counts()
    names = stack.band_names()
    declared = {m: [p for p, b in enumerate(stack.declared_bad()[m]) if b] for m in inputs}
    for m, positions in parse_band_list(bad_bands, inputs).items():
        declared[m] = sorted(set(declared[m]) | set(positions))
    for m, positions in declared.items():
        if len(positions) == inputs[m]:
            raise InputError(f"every band of the {m} input is declared bad (metadata bbl or BAD_BANDS): nothing left")
    kept = {m: [p for p in range(n) if p not in set(declared[m])] for m, n in inputs.items()}
    stack.select({m: k for m, k in kept.items() if len(k) != inputs[m]})
    stats, counts = compute_band_stats(stack, job=job, empty_ok=True)
    empty_names = {}
    for m, n in counts.items():
        empty = np.flatnonzero(n == 0).tolist()
        if len(empty) == len(n):
            raise InputError(f"the {m} input has no valid pixel in any band: check its nodata value and extent")
        if empty:
            empty_names[m] = [stack.band_names()[m][i] for i in empty]
            keep_here = [i for i in range(len(n)) if i not in set(empty)]
            stats[m].mean = [stats[m].mean[i] for i in keep_here]
            stats[m].std = [stats[m].std[i] for i in keep_here]
            kept[m] = [kept[m][i] for i in keep_here]
            stack.select({m: keep_here})
    selection = {}
    for m, n in inputs.items():
        wl = stack.wavelengths()[m]
        selection[m] = BandSelection(n, kept[m], wl)
        dropped = selection[m].dropped
        if not dropped:
            continue
        why = []
        if declared[m]:
            why.append(f"{count(len(declared[m]), 'band')} declared bad (metadata or BAD_BANDS)")
        if m in empty_names:
            why.append(f"{count(len(empty_names[m]), 'band')} without any valid pixel")
        shown = [names[m][p] for p in dropped if not re.search(r":band\d+$", names[m][p])]
        named = f" ({', '.join(shown[:8])}{', …' if len(shown) > 8 else ''})" if shown else ""
        log.warning("%s input: %s of %d dropped (%s): bands %s%s; the model keeps %d and selects the same "
                    "bands from the layers it classifies", m, count(len(dropped), "band"), n, "; ".join(why),
                    ranges(dropped), named, len(kept[m]))
    return stats, selection


def apply_selection(stack, selections: Dict[str, BandSelection], force: bool = False) -> None:
    """Select from ``stack`` the bands a model was trained on (its :class:`BandSelection`),
    and refuse inputs whose bands are not those: another band count, other wavelengths
    (beyond half the band spacing, or 2 nm), bands the model uses declared bad or empty
    here. A layer that already lacks exactly the dropped bands is taken as it is."""
    given = stack.band_counts()
    choose = {}
    for m, sel in selections.items():
        if m not in given:
            continue  # the model's count check names the missing input
        if sel.dropped and given[m] == sel.input_bands:
            choose[m] = sel.kept
            log.info("%s input: using the %d bands the model kept of %d (dropped: %s)", m, len(sel.kept),
                     sel.input_bands, ranges(sel.dropped))
        elif sel.dropped and given[m] == len(sel.kept):
            log.info("%s input has the %d bands the model kept (the %d it dropped are not in it)", m, given[m],
                     len(sel.dropped))
        elif given[m] != sel.input_bands:
            extra = f" of a {sel.input_bands}-band input (dropped: {ranges(sel.dropped)})" if sel.dropped else ""
            raise ModelMismatchError(f"inputs do not match the model: {m} input has {count(given[m], 'band')} but the "
                                     f"model was trained on {len(sel.kept)}{extra}: give the same product type as in "
                                     "training")
    declared = stack.declared_bad()
    for m in selections:
        if m not in given:
            continue
        used = set(choose.get(m, range(given[m])))
        bad = [p for p, b in enumerate(declared[m]) if b and p in used]
        if bad:
            raise ModelMismatchError(
                f"inputs do not match the model: the {m} input declares bands {ranges(bad)} bad (bbl metadata), "
                "and the model uses them: this product has other bad bands than the training one; train on layers "
                "with the same bad bands (or declare them with BAD_BANDS when training)")
    stack.select(choose)
    for m, sel in selections.items():
        if m not in given:
            continue
        problem = wavelength_problem(sel.wavelengths, stack.wavelengths()[m])
        if problem:
            if not force:
                raise ModelMismatchError(f"inputs do not match the model: {m} {problem} (FORCE accepts them anyway)")
            log.warning("%s %s", m, problem)
    empty = probe_empty_bands(stack)
    for m, positions in empty.items():
        if positions:
            names = [stack.band_names()[m][p] for p in positions]
            raise ModelMismatchError(
                f"inputs do not match the model: {m} bands {', '.join(names[:8])} hold no valid pixel where the "
                "other bands do, and the model uses them: this product has other empty (bad) bands than the "
                "training one; train on layers with the same bad bands (or drop these with BAD_BANDS when training)")


def probe_empty_bands(stack, windows: int = 4, size: int = 64) -> Dict[str, List[int]]:
    """Per modality, the bands (positions) of ``stack`` with no valid pixel in a sample of ``windows`` ²
    small windows spread over the scene where most bands of the modality are valid: an
    empty (bad) band, found without reading the whole scene."""
    size = min(size, stack.width, stack.height)
    rows = sorted({int(r) for r in np.linspace(0, stack.height - size, windows)})
    cols = sorted({int(c) for c in np.linspace(0, stack.width - size, windows)})
    seen = {m: np.zeros(c, bool) for m, c in stack.band_counts().items()}
    good = {m: 0 for m in seen}
    for r in rows:
        for c in cols:
            _data, valid = stack.read(Window(c, r, size, size))
            for m, v in valid.items():
                mostly = v.sum(axis=0) * 2 > v.shape[0]
                good[m] += int(mostly.sum())
                seen[m] |= v[:, mostly].any(axis=1)
    return {m: (np.flatnonzero(~seen[m]).tolist() if good[m] >= 32 else []) for m in seen}
