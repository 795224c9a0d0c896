"""Training samples: normalised patches around labelled pixels, read tile by tile."""

from __future__ import annotations

import logging
from typing import Dict, Tuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..errors import LabelError
from ..io.raster import BandStats, RasterStack, normalise, pixel_validity
from ..io.windows import tile_windows

log = logging.getLogger("rsvl")


def read_window_normalised(stack: RasterStack, window, halo: int, stats: Dict[str, BandStats]):
    """Normalised per-modality arrays for ``window`` plus ``halo`` and the validity of the
    window's own pixels (h, w). Shared by training, per-patch and dense inference so all
    three see exactly the same numbers."""
    data, valid = stack.read(window, halo)
    norm = normalise(data, valid, stats)
    ok = pixel_validity(valid)
    h, w = int(window.height), int(window.width)
    return norm, ok[halo:halo + h, halo:halo + w]


def patches_at(norm: Dict[str, np.ndarray], rows: np.ndarray, cols: np.ndarray, patch_size: int) -> Dict[str, np.ndarray]:
    """Contiguous (N, bands, P, P) patches centred on window pixels (rows, cols) of
    normalised arrays that carry a halo of ``patch_size // 2`` pixels."""
    out = {}
    for m, arr in norm.items():
        view = sliding_window_view(arr, (patch_size, patch_size), axis=(1, 2))  # (B, h, w, P, P)
        out[m] = np.ascontiguousarray(view[:, rows, cols].transpose(1, 0, 2, 3))
    return out


def extract_patches(
    stack: RasterStack, labels, stats: Dict[str, BandStats], patch_size: int, tile: int = 256, job=None,
) -> Tuple[Dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Patches (N, bands, P, P) per modality for every labelled pixel whose own pixel is
    valid, their class codes (N,) and (row, col) positions (N, 2).

    ``labels`` is a window reader on the stack's grid (``read(window)`` → class codes, see
    :func:`rsvl.backend.io.labels.open_labels`); labels and inputs are read tile by tile, and
    only tiles holding labelled pixels are read from the inputs."""
    halo = patch_size // 2
    patches: Dict[str, list] = {m: [] for m in stack.modalities}
    out_codes, out_pos = [], []
    dropped = 0
    windows = list(tile_windows(stack.width, stack.height, tile))
    for i, window in enumerate(windows):
        if job is not None:
            job.step(i / max(len(windows), 1), "extracting training patches")
        sub = labels.read(window)
        if not (sub > 0).any():
            continue
        r0, c0 = int(window.row_off), int(window.col_off)
        rr, cc = np.nonzero(sub > 0)
        norm, ok = read_window_normalised(stack, window, halo, stats)
        keep = ok[rr, cc]
        dropped += int((~keep).sum())
        rr, cc = rr[keep], cc[keep]
        if rr.size == 0:
            continue
        for m, arr in patches_at(norm, rr, cc, patch_size).items():
            patches[m].append(arr)
        out_codes.append(sub[rr, cc])
        out_pos.append(np.stack([rr + r0, cc + c0], axis=1))
    if dropped:
        log.warning("%d labelled pixels lie on nodata in an input layer and were not used", dropped)
    if not out_codes:
        raise LabelError("the training set is empty: no labelled pixel falls on valid data of every input layer")
    return (
        {m: np.concatenate(v) for m, v in patches.items()},
        np.concatenate(out_codes).astype(np.int64),
        np.concatenate(out_pos),
    )


def sample_patches(stack: RasterStack, stats: Dict[str, BandStats], patch_size: int, n: int, seed: int,
                   job=None) -> Dict[str, np.ndarray]:
    """Patches ({modality: (N, bands, P, P)}) at up to ``n`` random pixels valid in every
    layer, drawn uniformly over the scene in one read-once pass (``{}`` when no pixel is
    valid). Unlabelled pixels for self-supervised pretraining and semi-supervised training."""
    halo = patch_size // 2
    rng = np.random.default_rng(seed)
    rate = min(1.0, n / max(stack.width * stack.height, 1) * 1.3)
    out: Dict[str, list] = {m: [] for m in stack.modalities}
    with stack.scan(128, halo) as windows:
        for i, w in enumerate(windows):
            if job is not None:
                job.step(i / len(windows), "sampling patches")
            pick = rng.random((int(w.height), int(w.width))) < rate
            if not pick.any():
                continue
            norm, ok = read_window_normalised(stack, w, halo, stats)
            rows, cols = np.nonzero(pick & ok)
            for m, a in patches_at(norm, rows, cols, patch_size).items():
                out[m].append(a)
    total = sum(a.shape[0] for a in out[next(iter(out))])
    if not total:
        return {}
    keep = rng.permutation(total)[:n]
    return {m: np.concatenate(v)[keep] for m, v in out.items()}
