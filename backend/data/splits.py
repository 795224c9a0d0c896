"""Train/test splits of labelled pixels: random, and spatially honest ones.

A random pixel split puts test pixels right next to training pixels, so an 11 × 11 patch
around a test pixel overlaps training pixels and patch models look better than they are
next to per-pixel ones. The spatial modes keep the two sides apart:

- ``random``: ``fraction`` of each class's pixels, drawn at random, in the first map;
  the rest in the second.
- ``checkerboard``: the grid is cut into squares of ``block_size`` pixels coloured like a
  checkerboard; the first map draws ``fraction`` of each class's pixels (as far as they
  exist there) from the dark squares only, the second holds every labelled pixel of the
  light squares.
- ``blocks``: squares of ``block_size`` pixels are taken in a seeded random order into
  the first map until it holds ``fraction`` of the labelled pixels; the other squares
  form the second.

With ``buffer`` > 0, second-map pixels within ``buffer`` pixels (Chebyshev distance) of
any first-map pixel are dropped, so no patch of ``2 · buffer + 1`` pixels around a test
pixel sees a training pixel (``buffer = patch_size // 2``).
"""

from __future__ import annotations

import logging
from typing import Dict, Optional, Tuple

import numpy as np

from ..errors import LabelError

log = logging.getLogger("rsvl")
MODES = ("random", "checkerboard", "blocks")


def _stratified_draw(codes: np.ndarray, allowed: np.ndarray, fraction: float, rng) -> np.ndarray:
    """``fraction`` of each class's labelled pixels (at least one), drawn among ``allowed``."""
    first = np.zeros_like(codes)
    flat, ok = codes.ravel(), allowed.ravel()
    for code in np.unique(flat[flat > 0]):
        total = int((flat == code).sum())
        idx = np.flatnonzero((flat == code) & ok)
        rng.shuffle(idx)
        k = min(idx.size, max(1, int(round(fraction * total))))
        first.ravel()[idx[:k]] = code
    return first


def split_codes(codes: np.ndarray, fraction: float, seed: int, mode: str = "random", block_size: int = 20,
                buffer: int = 0, names: Optional[Dict[int, str]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(first, second) class maps of ``codes`` (0 = unlabelled) split as the module says;
    ``names`` ({code: class name}) name the classes in warnings."""
    if mode not in MODES:
        raise LabelError(f"split MODE must be one of {', '.join(MODES)} (got {mode!r})")
    if not 0 < fraction < 1:
        raise LabelError(f"FRACTION must be between 0 and 1, the share of each class in the first map, e.g. 0.1 "
                         f"(got {fraction})")
    if mode != "random" and block_size < 1:
        raise LabelError(f"BLOCK_SIZE must be at least 1 pixel (got {block_size})")
    if buffer < 0:
        raise LabelError(f"BUFFER must be 0 or more pixels (got {buffer})")
    rng = np.random.default_rng(seed)
    labelled = codes > 0
    if mode != "random":
        rows, cols = np.indices(codes.shape)
    if mode == "random":
        first = _stratified_draw(codes, labelled, fraction, rng)
        second = np.where(labelled & (first == 0), codes, 0)
    elif mode == "checkerboard":
        dark = ((rows // block_size + cols // block_size) % 2) == 0
        first = _stratified_draw(codes, labelled & dark, fraction, rng)
        second = np.where(labelled & ~dark, codes, 0)
    else:
        n_cols = -(-codes.shape[1] // block_size)
        block = (rows // block_size) * n_cols + cols // block_size
        per_block = np.bincount(block[labelled], minlength=int(block.max()) + 1)
        order = rng.permutation(np.flatnonzero(per_block))
        target = fraction * labelled.sum()
        taken = order[:int(np.searchsorted(np.cumsum(per_block[order]), target)) + 1]
        in_first = np.isin(block, taken)
        first = np.where(labelled & in_first, codes, 0)
        second = np.where(labelled & ~in_first, codes, 0)
    if buffer > 0 and (first > 0).any():
        from scipy.ndimage import maximum_filter

        near = maximum_filter((first > 0).astype(np.uint8), size=2 * buffer + 1, mode="constant") > 0
        dropped = int(((second > 0) & near).sum())
        second = np.where(near, 0, second)
        log.info("buffer of %d px: %d second-map pixels next to first-map pixels were dropped", buffer, dropped)
    for name, part in (("first (training)", first), ("second (test)", second)):
        missing = sorted(set(np.unique(codes[labelled]).tolist()) - set(np.unique(part[part > 0]).tolist()))
        if missing:
            which = ", ".join(f"{names[c]} ({c})" if names and names.get(c) else f"code {c}" for c in missing)
            log.warning("the %s map has no pixel of %s with this split: %s", name,
                        "this class" if len(missing) == 1 else "these classes", which)
    return first, second
