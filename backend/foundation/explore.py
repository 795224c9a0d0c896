"""Explore with a pretrained vision-language checkpoint (Llama3-MS-CLIP, RemoteCLIP, …): the
:class:`~rsvl.backend.mapping.explore.Explorer` interface over ``rsvl:query``'s zero-shot
tiling.

``rsvl:query`` scores a checkpoint window by window (``TILE_SIZE``, ``STRIDE`` over the whole
scene) and gives each pixel the mean score of the windows (or, with ``RESOLUTION=token``, the
token cells) covering it. A score is a dot product, so that mean is the dot product of the
text with the mean of the covering windows' embeddings. :meth:`CheckpointExplorer.embed`
encodes the scene's windows that touch the view and stores one such mean embedding per set
of pixels covered by the same windows (cells of about a stride square), each pixel pointing
to its cell: prompts then give ``rsvl:query``'s numbers, and the view costs a few hundred
vectors instead of one per pixel.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from typing import List, Optional, Sequence

import numpy as np
import torch

from ..errors import InputError, count
from ..io.windows import as_boxes, tile_windows
from ..mapping.explore import MAX_PIXELS, EmbeddingCache, Explorer, View, _fingerprint
from ..runtime.jobs import Job

log = logging.getLogger("rsvl")


class CheckpointExplorer(Explorer):
    """A pretrained checkpoint and its layers, opened once (:func:`rsvl.backend.api.open_explorer`)."""

    kind = "checkpoint"

    def __init__(self, checkpoint: str, layers, *, preset="auto", templates=None, tile_size=None, stride=None,
                 resolution: str = "tile", bands=None, scale="auto", offset=0.0, device="auto", reference=None,
                 cache: Optional[EmbeddingCache] = None, precision: str = "auto"):
        from .zeroshot import choose_vit_precision, open_for_scene

        if resolution not in ("tile", "token"):
            raise InputError(f"RESOLUTION must be tile or token (got {resolution!r})")
        self.fm, self.setup, self.tile, self.stride, self.device = open_for_scene(
            checkpoint, preset, device, layers, tile_size=tile_size, stride=stride, bands=bands, scale=scale,
            offset=offset, reference=reference)
        self.stack = self.setup.stack
        try:  # the layers stay open only for an explorer that exists
            boxes = as_boxes(tile_windows(self.stack.width, self.stack.height, self.tile, self.stride, edge="shift"))
            self.precision = choose_vit_precision(precision, self.fm, self.setup, boxes, None, self.device).name
            self.templates, self.tokens = templates, resolution == "token"
            self.cache = cache if cache is not None else EmbeddingCache()
            self.model_path = checkpoint
            self._texts = {}
            self._lock = threading.Lock()
            layer_key = [(s.layer.modality, str(s.layer.path), s.layer.nodata) for s in self.stack.sources]
            self._base = hashlib.sha256(json.dumps([_fingerprint(checkpoint), self.fm.preset.name, layer_key,
                                                    self.tile, self.stride, resolution, bands, scale, offset,
                                                    reference, self.precision],
                                                   default=str).encode()).hexdigest()[:24]
        except BaseException:
            self.stack.close()
            raise

    def embed(self, extent: Optional[Sequence[float]] = None, max_pixels: int = MAX_PIXELS, progress=None,
              is_cancelled=None) -> View:
        from .zeroshot import _read_window, _resize

        window, step, key, view = self.lookup(extent, max_pixels)
        if view is not None:
            return view
        job = Job(progress, is_cancelled)
        start = time.perf_counter()
        r0, c0, h, w = window
        stack = self.stack
        boxes = as_boxes(tile_windows(stack.width, stack.height, self.tile, self.stride, edge="shift"))
        boxes = [b for b in boxes if b[0] < r0 + h and b[0] + b[2] > r0 and b[1] < c0 + w and b[1] + b[3] > c0]
        rows = np.arange(r0, r0 + h, step)
        cols = np.arange(c0, c0 + w, step)
        ok = np.zeros((rows.size, cols.size), bool)
        embs: List[np.ndarray] = []  # per encoded window: (D,) or (g, g, D)
        kept: List[tuple] = []
        batch, pending = 8, []

        def flush():
            if not pending:
                return
            x = _resize(torch.from_numpy(np.stack([p for _, p in pending])).to(self.fm.device), self.fm.image_size)
            out = self.fm.encode(x, tokens=self.tokens).cpu().numpy().astype(np.float32)
            for (box, _), e in zip(pending, out):
                kept.append(box)
                embs.append(e)
            pending.clear()

        with self._lock, stack.downward(max((b[2] for b in boxes), default=1)):
            for i, box in enumerate(boxes):
                job.step(i / max(len(boxes), 1), f"embedding the view: window {i + 1}/{len(boxes)}")
                arr, valid = _read_window(self.setup, box)
                if not valid.any():
                    continue
                pending.append((box, self.setup.prep(arr, valid)))
                if len(pending) >= batch:
                    flush()
            flush()
            # the pixels rsvl:query maps: valid input under at least one encoded window
            from rasterio.windows import Window

            data, valid = stack.read(Window(c0, r0, w, h))
            ok = valid[self.setup.modality][self.setup.band_index].all(axis=0)[::step, ::step]
        job.check()
        # Each pixel's cells: the windows (and token cells) covering it, summed as random keys.
        rng = np.random.default_rng(0)
        signature = np.zeros(ok.shape, np.uint64)
        covered = np.zeros(ok.shape, np.int32)
        parts = []  # (window number, view rows it covers, view columns it covers)
        for i, (r, c, bh, bw) in enumerate(kept):
            ys = np.flatnonzero((rows >= r) & (rows < r + bh))
            xs = np.flatnonzero((cols >= c) & (cols < c + bw))
            if not ys.size or not xs.size:
                continue
            if self.tokens:
                g = embs[i].shape[0]
                cy, cx = (rows[ys] - r) * g // bh, (cols[xs] - c) * embs[i].shape[1] // bw
                keys = rng.integers(1, 2**62, size=(g, embs[i].shape[1]), dtype=np.uint64)
                signature[np.ix_(ys, xs)] += keys[np.ix_(cy, cx)]
            else:
                signature[np.ix_(ys, xs)] += np.uint64(rng.integers(1, 2**62, dtype=np.uint64))
            covered[np.ix_(ys, xs)] += 1
            parts.append((i, ys, xs))
        ok &= covered > 0
        index = np.full(ok.shape, -1, np.int32)
        if ok.any():
            uniq, first, inverse = np.unique(signature[ok], return_index=True, return_inverse=True)
            index[ok] = inverse
            reps = np.argwhere(ok)[first]  # one pixel per cell
            dim = embs[0].shape[-1]
            total = np.zeros((uniq.size, dim), np.float64)
            n = np.zeros(uniq.size, np.int64)
            rep_y, rep_x = reps[:, 0], reps[:, 1]
            for i, ys, xs in parts:
                inside_y = np.isin(rep_y, ys)
                inside_x = np.isin(rep_x, xs)
                hit = np.flatnonzero(inside_y & inside_x)
                if not hit.size:
                    continue
                if self.tokens:
                    gy = (rows[rep_y[hit]] - kept[i][0]) * embs[i].shape[0] // kept[i][2]
                    gx = (cols[rep_x[hit]] - kept[i][1]) * embs[i].shape[1] // kept[i][3]
                    total[hit] += embs[i][gy, gx]
                else:
                    total[hit] += embs[i]
                n[hit] += 1
            emb = torch.from_numpy((total / np.maximum(n, 1)[:, None]).astype(np.float32)).to(torch.float16)
        else:
            raise InputError("no pixel of the view is valid in the input (all nodata there): pan to the data")
        view = View(key, self.view_grid(window, step, rows.size, cols.size), window, step, index, emb,
                    time.perf_counter() - start, self.coarse_note(window, step, max_pixels, "mapped"), {"unit": False})
        self.cache.put(view)
        log.info("explore: %s of %s embedded into %s for a %d x %d px view in %.2f s", count(len(kept), "window"),
                 self.fm.preset.name, count(int(emb.shape[0]), "cell"), cols.size, rows.size, view.seconds)
        return view

    def text(self, prompts: Sequence[str], use_template: bool = True) -> torch.Tensor:
        """(K, D) prompt embeddings with the checkpoint's template ensemble (rsvl:query's)."""
        prompts = [p.strip() for p in prompts if p and p.strip()]
        if not prompts:
            raise InputError("type a prompt first")
        missing = [p for p in dict.fromkeys(prompts) if p not in self._texts]
        if missing:
            for p, e in zip(missing, self.fm.text_embeddings(missing, self.templates if use_template else ["{}"])):
                self._texts[p] = e.float().cpu()
        return torch.stack([self._texts[p] for p in prompts])

    def text_space(self, text: torch.Tensor) -> torch.Tensor:
        return text  # the checkpoint's own text space
