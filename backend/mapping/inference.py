"""Window-by-window inference: class maps, confidences and text-similarity rasters.

Two ways to compute a pixel's embedding, with the same result:
- ``dense`` (default): the encoders run fully convolutionally over a window plus a
  halo of ``patch_size // 2`` pixels (:meth:`MMLGNet.embed_dense`), sharing the
  convolutions of neighbouring pixels;
- ``patch``: the reference definition used in training, one P×P patch per pixel.

Streaming: windows are processed in a pipeline of three threads. A reader thread reads
and normalises the next window (plus halo) while torch computes the current one on all
its CPU threads, and a writer thread compresses and writes the previous window's
outputs. At most one window waits at each stage and GDAL's block cache is capped
(:data:`GDAL_CACHE_MB`), so peak memory does not depend on the scene height. Inputs are
read in whole block rows, each block once (:meth:`RasterStack.scan`): the row buffers
hold about two block rows of each input, and scenes too wide for
:func:`~rsvl.backend.io.raster.read_buffer_bytes` are visited in column bands.

Outputs are tiled, compressed GeoTIFFs on the reference grid, written window by window
into temporary files that replace the destinations only when the whole scene is done;
a cancelled or failed run leaves no file behind.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import rasterio
import torch

from ..data.samples import patches_at, read_window_normalised
from ..errors import InputError
from ..io.atomic import atomic_path, check_outputs
from ..io.labels import ClassInfo, class_dtype, set_category_names
from ..io.raster import Grid, RasterStack, gdal_cache_limit, gtiff_profile
from ..runtime.jobs import Job

log = logging.getLogger("rsvl")
METHODS = ("dense", "patch")
GDAL_CACHE_MB = 128  # GDAL block cache cap (MiB) while a scene is classified
MIN_COMPUTE_TILE = 8  # smallest sub-tile (dense) or batch (per-patch) after CUDA out-of-memory retries


def embed_patches(model, norm: Dict[str, np.ndarray], halo: int, device, batch_size: int = 4096):
    """(D, h, w) L2-normalised embeddings of the window's pixels by the per-patch
    definition used in training (the reference for the dense engine)."""
    any_arr = next(iter(norm.values()))
    h, w = any_arr.shape[1] - 2 * halo, any_arr.shape[2] - 2 * halo
    rows, cols = np.divmod(np.arange(h * w), w)
    out = []
    with torch.no_grad():
        for s in range(0, h * w, batch_size):
            batch = patches_at(norm, rows[s:s + batch_size], cols[s:s + batch_size], 2 * halo + 1)
            out.append(model.embed({m: torch.from_numpy(a).to(device) for m, a in batch.items()}))
    return torch.cat(out).t().reshape(-1, h, w)


@dataclass
class InferenceOutputs:
    classes_path: Optional[str] = None
    confidence_path: Optional[str] = None
    similarity_path: Optional[str] = None
    pixels: int = 0
    seconds: float = 0.0


@dataclass
class WindowResult:
    """One window's results, handed from the compute step to the writer (a thread here, or
    over the network from a cluster worker: :mod:`rsvl.backend.mapping.cluster`)."""

    window: object
    ok: np.ndarray  # (h, w) valid input pixels
    arg: Optional[np.ndarray] = None  # (h, w) index of the most similar text
    best: Optional[np.ndarray] = None  # (h, w) its cosine similarity
    conf: Optional[np.ndarray] = None  # (h, w) softmax probability of that text
    sim: Optional[np.ndarray] = None  # (K, h, w) cosine similarities


def _write_window(dst: dict, s: WindowResult, codes: np.ndarray, threshold: Optional[float], k: int) -> None:
    """Write one window of every requested output; nodata where the input is invalid."""
    h, w = s.ok.shape
    scored = s.arg is not None
    if "class" in dst:
        out = np.zeros((h, w), dtype=dst["class"].dtypes[0])
        if scored:
            keep = s.ok if threshold is None else (s.ok & (s.best >= threshold))
            out[keep] = codes[s.arg[keep]]
        dst["class"].write(out, 1, window=s.window)
    if "conf" in dst:
        out = np.full((h, w), np.nan, dtype=np.float32)
        if scored:
            out[s.ok] = s.conf[s.ok]
        dst["conf"].write(out, 1, window=s.window)
    if "sim" in dst:
        out = np.full((k, h, w), np.nan, dtype=np.float32)
        if scored:
            out[:, s.ok] = s.sim[:, s.ok]
        dst["sim"].write(out, window=s.window)


class WindowScorer:
    """The compute step of inference: a window's normalised inputs (plus halo) → its
    :class:`WindowResult`. One implementation for the in-process pipeline and the cluster
    workers, so both give the same numbers. ``embedder``: a prepared
    :class:`~rsvl.backend.models.dense.DenseEmbedder` to reuse (workers keep one per model)."""

    def __init__(self, model, text, *, method: str = "dense", batch_size: int = 4096, device="cpu",
                 confidence: bool = False, similarity: bool = False, embedder=None, dtype=torch.float32):
        from ..models.dense import dense_embedder

        if method not in METHODS:
            raise InputError(f"METHOD must be one of {', '.join(METHODS)} (got {method!r})")
        self.model = model
        self.halo = model.config.patch_size // 2
        self.text = model.text_space(text.to(device))  # an ensemble's: repeated per member
        self.batch_size = batch_size
        self.device = device
        self.confidence, self.similarity = confidence, similarity
        self.scale = float(model.scale().detach())
        self.embedder = None if method != "dense" else (embedder or dense_embedder(model, device, dtype=dtype))

    def __call__(self, window, norm: Dict[str, np.ndarray], ok: np.ndarray) -> WindowResult:
        scores = WindowResult(window, ok)
        if not ok.any():
            return scores
        with torch.no_grad():
            while True:
                try:
                    if self.embedder is not None:
                        sim = self.embedder.similarity(norm, self.text)  # (K, h, w)
                    else:
                        emb = embed_patches(self.model, norm, self.halo, self.device, self.batch_size)  # (D, h, w)
                        sim = torch.einsum("dhw,kd->khw", emb, self.text)
                    break
                except torch.cuda.OutOfMemoryError:
                    self.batch_size = _smaller_batch(self.embedder, self.batch_size)
            best, arg = sim.max(0)
            scores.best, scores.arg = best.cpu().numpy(), arg.cpu().numpy()
            if self.confidence:
                scores.conf = torch.softmax(self.scale * sim, dim=0).max(0).values.cpu().numpy()
            if self.similarity:
                scores.sim = sim.cpu().numpy()
        return scores


class OutputRasters:
    """The class, confidence and similarity GeoTIFFs of one inference run, on ``grid``.

    Entering opens them as temporary files (:func:`~rsvl.backend.io.atomic.atomic_path`) with
    the colour table and band descriptions; :meth:`write` takes windows in any order;
    :meth:`finish` closes them and embeds the class names; leaving the ``with`` block
    moves them into place, or removes them when an exception (a cancel) ends it."""

    def __init__(self, grid: Grid, classes: Sequence[ClassInfo], *, class_path: Optional[str],
                 confidence_path: Optional[str] = None, similarity_path: Optional[str] = None,
                 similarity_names: Optional[List[str]] = None, threshold: Optional[float] = None, k: int = 0):
        self.grid, self.classes = grid, list(classes)
        self.class_path, self.confidence_path, self.similarity_path = class_path, confidence_path, similarity_path
        self.similarity_names = similarity_names or [c.name for c in self.classes]
        self.threshold, self.k = threshold, k
        self.codes = np.asarray([c.code for c in self.classes], dtype=np.int64)
        self.dst: dict = {}
        self._class_tmp: Optional[str] = None
        self._ctx = contextlib.ExitStack()

    def check(self) -> None:
        """Before the long work: the folders are writable and have room (:func:`check_outputs`)."""
        pixels = self.grid.width * self.grid.height
        check_outputs([("OUTPUT", self.class_path, pixels * np.dtype(class_dtype(self.classes)).itemsize),
                       ("OUTPUT_CONFIDENCE", self.confidence_path, pixels * 4),
                       ("OUTPUT_SIMILARITY", self.similarity_path, pixels * 4 * self.k)])

    def __enter__(self) -> OutputRasters:
        ctx, grid, dst = self._ctx.__enter__(), self.grid, self.dst
        try:
            if self.class_path:
                tmp = ctx.enter_context(atomic_path(self.class_path))
                dt = class_dtype(self.classes)
                dst["class"] = ctx.enter_context(rasterio.open(tmp, "w", **gtiff_profile(grid, 1, dt, 0)))
                dst["class"].write_colormap(1, {0: (0, 0, 0, 0), **{c.code: (*c.colour, 255) for c in self.classes}})
                self._class_tmp = tmp
            if self.confidence_path:
                tmp = ctx.enter_context(atomic_path(self.confidence_path))
                dst["conf"] = ctx.enter_context(rasterio.open(tmp, "w", **gtiff_profile(grid, 1, "float32", math.nan)))
                dst["conf"].set_band_description(1, "confidence (softmax probability of the class)")
            if self.similarity_path:
                tmp = ctx.enter_context(atomic_path(self.similarity_path))
                dst["sim"] = ctx.enter_context(rasterio.open(tmp, "w", **gtiff_profile(grid, self.k, "float32", math.nan)))
                for i, name in enumerate(self.similarity_names, start=1):
                    dst["sim"].set_band_description(i, name)
        except BaseException:
            self._ctx.__exit__(*sys.exc_info())
            raise
        return self

    @property
    def confidence(self) -> bool:
        return "conf" in self.dst

    @property
    def similarity(self) -> bool:
        return "sim" in self.dst

    def write(self, scores: WindowResult) -> None:
        _write_window(self.dst, scores, self.codes, self.threshold, self.k)

    def finish(self) -> None:
        for d in self.dst.values():
            d.close()
        if self._class_tmp:
            set_category_names(self._class_tmp, self.classes)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def _smaller_batch(embedder, batch_size: int) -> int:
    """After CUDA ran out of memory: halve the dense engine's sub-tile (or the per-patch
    batch) and say so; past the smallest size, a clear error. Sub-tiles and batches change
    no result beyond float rounding."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if embedder is not None:
        if embedder.compute_tile <= MIN_COMPUTE_TILE:
            raise InputError("the GPU ran out of memory even with the smallest sub-tile: set DEVICE to cpu, "
                             "or free GPU memory (other programs, other rsvl runs)")
        embedder.compute_tile //= 2
        log.warning("the GPU ran out of memory: retrying with %d-pixel sub-tiles", embedder.compute_tile)
        return batch_size
    if batch_size <= MIN_COMPUTE_TILE:
        raise InputError("the GPU ran out of memory even with the smallest batch: set DEVICE to cpu, "
                         "or free GPU memory (other programs, other rsvl runs)")
    log.warning("the GPU ran out of memory: retrying with batches of %d patches", batch_size // 2)
    return batch_size // 2


def _no_valid_pixel(stack: RasterStack) -> str:
    """Why no pixel could be classified: the band that is empty everywhere (one more pass
    over the inputs, only here), else the layers' disjoint valid areas. A warning, not an
    error: an all-nodata tile in a batch of tiles gives an all-nodata map, as it should."""
    from ..io.raster import compute_band_stats

    try:
        compute_band_stats(stack)
    except InputError as exc:
        return (f"no pixel could be classified, the map is all nodata: {exc} (all nodata or NaN); check the layer "
                "and its NODATA value")
    return ("no pixel could be classified, the map is all nodata: no pixel is valid in every input layer at once "
            "(their valid areas or nodata masks do not overlap); check the layers' extents and NODATA values")


def dense_agreement(model, stack: RasterStack, stats, text, device, dtype, side: int = 128):
    """(ok, in words): the dense engine in ``dtype`` against float32 on a probe window of
    ``side`` pixels at the scene's centre (see :func:`rsvl.backend.runtime.precision.agreement`)."""
    from rasterio.windows import Window

    from ..models.dense import dense_embedder
    from ..runtime.precision import agreement

    h, w = min(side, stack.height), min(side, stack.width)
    window = Window((stack.width - w) // 2, (stack.height - h) // 2, w, h)
    norm, ok = read_window_normalised(stack, window, model.config.patch_size // 2, stats)
    t = model.text_space(text.to(device))
    reference = dense_embedder(model, device).similarity(norm, t)[:, torch.from_numpy(ok)]
    reduced = dense_embedder(model, device, dtype=dtype).similarity(norm, t)[:, torch.from_numpy(ok)]
    return agreement(reference.cpu().numpy(), reduced.cpu().numpy(), float(model.scale().detach()))


def run_inference(
    model, stack: RasterStack, stats, text, *, classes: Sequence[ClassInfo], class_path: Optional[str],
    confidence_path: Optional[str] = None, similarity_path: Optional[str] = None,
    similarity_names: Optional[List[str]] = None, threshold: Optional[float] = None,
    method: str = "dense", tile: int = 256, batch_size: int = 4096, device="cpu", job: Optional[Job] = None,
    dtype=torch.float32,
) -> InferenceOutputs:
    """Classify/score every pixel against the text embeddings ``text`` (K, D).

    class raster: code of the most similar text (0 = nodata: invalid input, or best
    cosine similarity below ``threshold``); confidence: softmax probability of that class
    with the model's temperature; similarity: K float32 bands of cosine similarity. ``dtype``:
    the dense engine's convolutions (:mod:`rsvl.backend.runtime.precision`)."""
    if tile < 16:
        raise InputError(f"tile size must be at least 16 pixels (got {tile})")
    job = job or Job()
    halo = model.config.patch_size // 2
    outputs = OutputRasters(stack.grid, classes, class_path=class_path, confidence_path=confidence_path,
                            similarity_path=similarity_path, similarity_names=similarity_names, threshold=threshold,
                            k=text.shape[0])
    scorer = WindowScorer(model, text, method=method, batch_size=batch_size, device=device,
                          confidence=bool(confidence_path), similarity=bool(similarity_path), dtype=dtype)
    outputs.check()
    start = time.perf_counter()
    with contextlib.ExitStack() as ctx:
        ctx.enter_context(gdal_cache_limit(GDAL_CACHE_MB))
        windows = ctx.enter_context(stack.scan(tile, halo))  # the order that reads each input block once
        ctx.enter_context(outputs)
        # Entered after the outputs, so they finish (and stop touching the datasets)
        # before the datasets are closed or the temporary files removed.
        reader = ctx.enter_context(ThreadPoolExecutor(1, thread_name_prefix="rsvl-read"))
        writer = ctx.enter_context(ThreadPoolExecutor(1, thread_name_prefix="rsvl-write"))
        next_read: Optional[Future] = reader.submit(read_window_normalised, stack, windows[0], halo, stats)
        pending_write: Optional[Future] = None
        valid = 0
        for i, window in enumerate(windows):
            job.step(i / len(windows), f"window {i + 1}/{len(windows)}")
            norm, ok = next_read.result()
            next_read = (reader.submit(read_window_normalised, stack, windows[i + 1], halo, stats)
                         if i + 1 < len(windows) else None)
            scores = scorer(window, norm, ok)
            valid += int(ok.sum())
            del norm
            if pending_write is not None:
                pending_write.result()  # at most one window waits for the writer
            pending_write = writer.submit(outputs.write, scores)
        pending_write.result()
        if not valid:  # an empty map (an all-nodata tile of a batch, or a mistake): say why
            log.warning("%s", _no_valid_pixel(stack))
        outputs.finish()
        job.report(1.0, "inference finished")
    seconds = time.perf_counter() - start
    pixels = stack.width * stack.height
    log.info("inference: %d pixels in %.1f s (%.0f pixels/s, %s)", pixels, seconds, pixels / max(seconds, 1e-9), method)
    return InferenceOutputs(class_path, confidence_path, similarity_path, pixels, seconds)
