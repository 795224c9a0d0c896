"""Windows over a raster grid: the one tiler (classify, query, zero-shot maps, retrieval, label
and sample reads all cut the scene with :func:`tile_windows`) and the one stitcher that averages
overlapping per-window scores back onto the grid (:class:`WindowScores`)."""

from __future__ import annotations

import logging
from typing import List, Optional, Sequence, Tuple

import numpy as np
from rasterio.windows import Window

from ..errors import InputError

log = logging.getLogger("rsvl")

EDGES = ("clip", "shift")


def window_starts(size: int, tile: int, stride: int) -> List[int]:
    """Window starts along one axis for ``edge="shift"``: every ``stride`` pixels, the last one
    moved in to end at the edge; one window (the whole axis) when it is not longer than ``tile``."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] + tile < size:
        starts.append(size - tile)
    return starts


def _axis(lo: int, hi: int, tile: int, stride: int, edge: str) -> List[Tuple[int, int]]:
    """(start, length) of the windows along one axis between ``lo`` and ``hi``."""
    if edge == "clip":
        return [(s, min(tile, hi - s)) for s in range(lo, hi, stride)]
    return [(lo + s, min(tile, hi - lo)) for s in window_starts(hi - lo, tile, stride)]


def tile_windows(width: int, height: int, tile: int, stride: Optional[int] = None, *, edge: str = "clip",
                 columns: Optional[Tuple[int, int]] = None) -> List[Window]:
    """Row-major windows of ``tile`` pixels every ``stride`` pixels (default ``tile``: no overlap).

    ``edge="clip"``: the last row and column of windows is cut at the scene's edge (what
    classify, query and plain reads use: with ``stride == tile`` each pixel is in one window).
    ``edge="shift"``: the last one is moved in to end at the edge, so every window has the
    full size ``min(tile, side)`` (zero-shot maps and retrieval resize windows to the model input).
    ``columns=(c0, c1)``: only the columns ``c0`` to ``c1`` (one column band of
    :meth:`~rsvl.backend.io.raster.RasterStack.scan`)."""
    if edge not in EDGES:
        raise ValueError(f"edge must be one of {EDGES} (got {edge!r})")
    stride = stride or tile
    c0, c1 = columns or (0, width)
    cols = _axis(c0, c1, tile, stride, edge)
    return [Window(c, r, w, h) for r, h in _axis(0, height, tile, stride, edge) for c, w in cols]


def as_boxes(windows: Sequence[Window]) -> List[Tuple[int, int, int, int]]:
    """(row, col, height, width) of each window: the boxes :class:`WindowScores` stitches."""
    return [(int(w.row_off), int(w.col_off), int(w.height), int(w.width)) for w in windows]


def check_tiling(tile: int, stride: Optional[int]) -> int:
    if tile < 16:
        raise InputError(f"TILE_SIZE must be at least 16 pixels (got {tile})")
    stride = stride or max(tile // 2, 1)
    if not 1 <= stride <= tile:
        raise InputError(f"STRIDE must be between 1 and TILE_SIZE ({tile}) pixels (got {stride}): larger strides "
                         "would leave pixels without a window")
    return stride


def check_scene_fits(tile: int, width: int, height: int, given: bool = True) -> None:
    """A window of ``tile`` pixels must fit in the scene: a larger one would be cut to the
    scene (one window, every pixel the same embedding). Refused when the user gave the size
    (``given``), logged when it is the model's default input size."""
    side = min(width, height)
    if tile <= side:
        return
    if given:
        raise InputError(f"TILE_SIZE {tile} is larger than the scene ({width} × {height} pixels): give at most {side} "
                         "(windows smaller than the scene, so that its parts get their own scores), or 0 for the "
                         "model's input size")
    log.warning("the scene (%d × %d pixels) is smaller than the model's input (%d px): its windows are cut to %d px and "
                "resized up; give a smaller TILE_SIZE for finer maps", width, height, tile, side)


class WindowScores:
    """Per-window score grids (K, gh, gw) and their footprints, stitched into per-pixel
    means: a pixel's score is the mean of the scores of the windows (or, per token, the
    window cells) covering it."""

    def __init__(self, k: int):
        self.k = k
        self.boxes: List[Tuple[int, int, int, int]] = []
        self.grids: List[np.ndarray] = []
        self.valid: List[float] = []  # fraction of valid pixels of each window

    def add(self, box, grid: np.ndarray, valid_fraction: float = 1.0) -> None:
        self.boxes.append(box)
        self.grids.append(grid.astype(np.float32))
        self.valid.append(float(valid_fraction))

    def stitch(self, row0: int, col0: int, h: int, w: int) -> Tuple[np.ndarray, np.ndarray]:
        """(K, h, w) mean scores and (h, w) window counts of a block of the scene."""
        total = np.zeros((self.k, h, w), np.float64)
        count = np.zeros((h, w), np.int32)
        boxes = np.asarray(self.boxes, dtype=np.int64).reshape(-1, 4)
        if boxes.size:
            hit = np.flatnonzero((boxes[:, 0] < row0 + h) & (boxes[:, 0] + boxes[:, 2] > row0)
                                 & (boxes[:, 1] < col0 + w) & (boxes[:, 1] + boxes[:, 3] > col0))
        else:
            hit = []
        for i in hit:
            r, c, wh, ww = (int(v) for v in boxes[i])
            grid = self.grids[i]
            y0, y1 = max(r, row0), min(r + wh, row0 + h)
            x0, x1 = max(c, col0), min(c + ww, col0 + w)
            cy = (np.arange(y0, y1) - r) * grid.shape[1] // wh
            cx = (np.arange(x0, x1) - c) * grid.shape[2] // ww
            total[:, y0 - row0:y1 - row0, x0 - col0:x1 - col0] += grid[:, cy][:, :, cx]
            count[y0 - row0:y1 - row0, x0 - col0:x1 - col0] += 1
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = (total / np.maximum(count, 1)).astype(np.float32)
        return mean, count
