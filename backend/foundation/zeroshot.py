"""Zero-shot scene maps (:func:`zeroshot_map`): windows of ``tile`` pixels every ``stride`` pixels (the last row
and column moved in to end at the edge) are resized to the model input, encoded in batches, and scored against
the prompt embeddings (template ensembles); a pixel's score is the mean over the windows covering it, per window
(``tile``) or per 16-pixel patch token (``token``). Nodata input pixels are filled with the band means
(normalised zero) for the model and are nodata in every output."""

from __future__ import annotations

import logging
import math
import os
import re
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError, count
from ..io.windows import WindowScores, as_boxes, check_scene_fits, check_tiling, tile_windows
from .bands import Preprocessor, select_bands, value_scale
from .model import FoundationModel

log = logging.getLogger("rsvl")


def _resize(batch, size: int):
    if batch.shape[-1] == size and batch.shape[-2] == size:
        return batch
    return F.interpolate(batch, size=(size, size), mode="bicubic", align_corners=False, antialias=True)


def multi_label(scores: np.ndarray) -> np.ndarray:
    """Llama3-MS-CLIP's multi-label rule: prompt k is present where its score exceeds the
    mean score of the other prompts. ``scores`` (K, …) → bool (K, …)."""
    k = scores.shape[0]
    if k < 2:
        raise InputError("MULTI_LABEL needs at least two prompts (a prompt is present where its score exceeds the "
                         "mean of the others)")
    total = scores.sum(axis=0, keepdims=True)
    others = (total - scores) / (k - 1)
    return scores > others


# -- scene passes -----------------------------------------------------------------------------
@dataclass
class ZeroShotSetup:
    model: FoundationModel
    stack: object  # RasterStack
    band_index: List[int]  # indexes into the stack's one modality
    modality: str
    prep: Preprocessor


def open_scene(model: FoundationModel, layers, bands: Optional[str], scale: str, offset: float, reference=None):
    """The input stack, the preset's bands in it and the preprocessing, checked."""
    from ..io.raster import RasterStack

    stack = RasterStack(layers, reference=reference)
    try:
        if len(stack.modalities) != 1:
            raise InputError(f"{model.preset.name} takes one multispectral (or RGB) input: give the layers as "
                             f"INPUT_MS (or INPUT_RGB) only (got {', '.join(stack.modalities)})")
        modality = next(iter(stack.modalities))
        index = select_bands(_band_labels(stack, modality), model.preset, bands)
        dtypes = [s.dataset.dtypes[i - 1] for s in stack.sources for i in s.indexes]
        dtypes = [dtypes[i] for i in index]
        sample = _sample_values(stack, modality, index)
        factor = value_scale(scale, dtypes, sample)
        eight_bit = model.preset.rgb and all(d == "uint8" for d in dtypes) and str(scale).strip().lower() in ("", "auto")
        if eight_bit:
            log.info("an 8-bit RGB raster: values taken as 0..255")
        return ZeroShotSetup(model, stack, index, modality, Preprocessor(model.preset, factor, float(offset or 0.0),
                                                                           eight_bit))
    except Exception:
        stack.close()
        raise


def _band_labels(stack, modality: str) -> List[str]:
    """Band names to look for band codes in: the description, else the file name of a
    one-band layer (B02.jp2 …)."""
    out = []
    for src in stack.modalities[modality]:
        for name in src.band_names:
            if re.search(r":band\d+$", name) and src.count == 1:
                out.append(os.path.splitext(os.path.basename(str(src.layer.path)))[0])
            else:
                out.append(name)
    return out


def _sample_values(stack, modality: str, index: List[int], side: int = 256) -> Optional[np.ndarray]:
    """A decimated read of the selected bands (valid values only) for VALUE_SCALE=auto."""
    values = []
    band = 0
    for src in stack.modalities[modality]:
        sel = [i - band for i in index if band <= i < band + src.count]
        band += src.count
        if not sel:
            continue
        ds = src.dataset
        shape = (len(sel), min(side, ds.height), min(side, ds.width))
        data = ds.read([src.indexes[i] for i in sel], out_shape=shape, masked=True).astype("float64")
        values.append(np.asarray(data.compressed()))
    return np.concatenate(values) if values else None


def _read_window(setup: ZeroShotSetup, box) -> Tuple[np.ndarray, np.ndarray]:
    from rasterio.windows import Window

    r, c, h, w = box
    data, valid = setup.stack.read(Window(c, r, w, h))
    arr = data[setup.modality][setup.band_index]
    ok = valid[setup.modality][setup.band_index].all(axis=0)
    return arr, ok


def score_windows(setup: ZeroShotSetup, text, boxes, *, tokens: bool, batch_size: int, job) -> WindowScores:
    """Encode every window with a valid pixel, in batches, and score it against ``text``."""
    fm = setup.model
    scores = WindowScores(text.shape[0])
    pending: List[Tuple[tuple, np.ndarray, float]] = []

    def flush():
        if not pending:
            return
        batch = torch.from_numpy(np.stack([x for _, x, _ in pending])).to(fm.device)
        batch = _resize(batch, fm.image_size)
        while True:
            try:
                emb = fm.encode(batch, tokens=tokens)
                break
            except torch.cuda.OutOfMemoryError:
                if batch.shape[0] == 1:
                    raise InputError("the GPU ran out of memory with one window: set DEVICE to cpu") from None
                half = batch.shape[0] // 2
                log.warning("the GPU ran out of memory: encoding %d windows at a time", half)
                emb = torch.cat([fm.encode(batch[:half], tokens=tokens), fm.encode(batch[half:], tokens=tokens)])
                break
        if tokens:
            grid = torch.einsum("nhwd,kd->nkhw", emb, text)
        else:
            grid = (emb @ text.t())[:, :, None, None]
        for (box, _, frac), g in zip(pending, grid.cpu().numpy()):
            scores.add(box, g, frac)
        pending.clear()

    rows = max((b[2] for b in boxes), default=1)
    with setup.stack.downward(rows):  # overlapping windows: each input block read once
        for i, box in enumerate(boxes):
            job.step(i / max(len(boxes), 1), f"window {i + 1}/{len(boxes)}")
            arr, ok = _read_window(setup, box)
            if not ok.any():
                continue
            pending.append((box, setup.prep(arr, ok), float(ok.mean())))
            if len(pending) >= batch_size:
                flush()
        flush()
    return scores


def _scan_blocks(setup: ZeroShotSetup, scores: WindowScores, job, tile: int = 256):
    """(window, validity, mean scores, counts) of each output block, row-major."""
    stack = setup.stack
    with stack.scan(tile) as blocks:
        for i, block in enumerate(blocks):
            job.step(i / max(len(blocks), 1), "writing")
            data, valid = stack.read(block)
            ok = valid[setup.modality][setup.band_index].all(axis=0)
            mean, count = scores.stitch(int(block.row_off), int(block.col_off), int(block.height), int(block.width))
            yield block, ok & (count > 0), mean


def write_maps(setup: ZeroShotSetup, scores: WindowScores, classes, names: Sequence[str], *,
               output_similarity: Optional[str] = None, output: Optional[str] = None,
               confidence: Optional[str] = None, logit_scale: float = 100.0, multi_label_output: bool = False,
               threshold: Optional[float] = None, job=None) -> None:
    """Write the stitched per-pixel scores, block by block, into the requested outputs:
    cosine similarity per class/prompt (float32, band names), the best class (codes of
    ``classes``, colour table, category names), its softmax probability (``confidence``),
    or one 0/1 band per prompt (``multi_label_output``). Atomic: all or nothing."""
    import contextlib

    import rasterio

    from ..io.atomic import atomic_path
    from ..io.labels import set_category_names
    from ..mapping.inference import class_dtype, gtiff_profile
    from ..runtime.jobs import Job

    job = job or Job()
    stack = setup.stack
    k = len(names)
    codes = np.asarray([c.code for c in classes], dtype=np.int64)
    with contextlib.ExitStack() as ctx:
        dst = {}
        if output_similarity:
            tmp = ctx.enter_context(atomic_path(output_similarity))
            dst["sim"] = ctx.enter_context(rasterio.open(tmp, "w", **gtiff_profile(stack.grid, k, "float32", math.nan)))
            for i, name in enumerate(names, start=1):
                dst["sim"].set_band_description(i, name)
        if output and multi_label_output:
            tmp = ctx.enter_context(atomic_path(output))
            dst["ml"] = ctx.enter_context(rasterio.open(tmp, "w", **gtiff_profile(stack.grid, k, "uint8", 255)))
            for i, name in enumerate(names, start=1):
                dst["ml"].set_band_description(i, f"{name} (1 = present)")
        elif output:
            class_tmp = ctx.enter_context(atomic_path(output))
            dst["cls"] = ctx.enter_context(rasterio.open(class_tmp, "w", **gtiff_profile(stack.grid, 1,
                                                                                        class_dtype(classes), 0)))
            dst["cls"].write_colormap(1, {0: (0, 0, 0, 0), **{c.code: (*c.colour, 255) for c in classes}})
        if confidence:
            tmp = ctx.enter_context(atomic_path(confidence))
            dst["conf"] = ctx.enter_context(rasterio.open(tmp, "w", **gtiff_profile(stack.grid, 1, "float32",
                                                                                     math.nan)))
            dst["conf"].set_band_description(1, "confidence (softmax probability of the class)")
        for block, ok, mean in _scan_blocks(setup, scores, job):
            if "sim" in dst:
                dst["sim"].write(np.where(ok[None], mean, np.float32(np.nan)).astype(np.float32), window=block)
            if "ml" in dst:
                dst["ml"].write(np.where(ok[None], multi_label(mean), 255).astype(np.uint8), window=block)
            if "cls" in dst:
                best, arg = mean.max(axis=0), mean.argmax(axis=0)
                keep = ok if threshold is None else (ok & (best >= threshold))
                dst["cls"].write(np.where(keep, codes[arg], 0).astype(dst["cls"].dtypes[0]), 1, window=block)
            if "conf" in dst:
                z = logit_scale * (mean - mean.max(axis=0, keepdims=True))
                p = 1.0 / np.exp(z).sum(axis=0)
                dst["conf"].write(np.where(ok, p, np.float32(np.nan)).astype(np.float32), 1, window=block)
        for d in dst.values():
            d.close()
        if "cls" in dst:
            set_category_names(class_tmp, classes)


def choose_vit_precision(precision, fm: FoundationModel, setup: ZeroShotSetup, boxes, text, device, probe: int = 8):
    """PRECISION for a checkpoint's image tower (:func:`rsvl.backend.runtime.precision.choose`),
    its check :meth:`FoundationModel.check_precision` on the first ``probe`` windows with valid
    pixels against the prompts ``text`` (None: the embeddings' cosine alone); the tower is cast
    when reduced precision is chosen. Returns the :class:`~rsvl.backend.runtime.precision.Choice`."""
    from ..runtime.precision import choose

    def check(dtype):
        batch = []
        for box in boxes:
            arr, ok = _read_window(setup, box)
            if ok.any():
                batch.append(setup.prep(arr, ok))
            if len(batch) >= probe:
                break
        if not batch:
            return True, "no valid window to probe"
        x = _resize(torch.from_numpy(np.stack(batch)).to(fm.device), fm.image_size)
        return fm.check_precision(dtype, x, text)

    choice = choose(precision, device, check=check)
    fm.use_precision(choice.dtype)
    return choice


def open_for_scene(checkpoint: str, preset, device: str, layers, *, tile_size: Optional[int], stride: Optional[int],
                   bands: Optional[str], scale: str, offset: float, reference=None, job=None,
                   stride_default: str = "half"):
    """(model, scene setup, tile, stride, torch device): the checkpoint loaded on the
    resolved device, the input stack opened and checked, the tiling validated (``stride``
    None: half a tile, or the tile with ``stride_default="tile"``)."""
    from ..io.raster import as_layers
    from ..runtime.device import resolve_device

    dev = resolve_device(device)
    if job is not None:
        job.step(0.0, "loading the foundation model")
    fm = FoundationModel(checkpoint, preset, dev)
    tile = tile_size or fm.image_size
    stride = check_tiling(tile, stride or (tile if stride_default == "tile" else None))
    setup = open_scene(fm, as_layers(layers), bands, scale, offset, reference)
    try:
        check_scene_fits(tile, setup.stack.width, setup.stack.height, given=bool(tile_size))
    except InputError:
        setup.stack.close()
        raise
    return fm, setup, tile, stride, dev


@dataclass
class ZeroShotResult:
    similarity: Optional[str]
    output: Optional[str]
    prompts: List[str]
    preset: str
    windows: int
    seconds: float
    multi_label: bool
    classes: list


def zeroshot_map(
    checkpoint: str, layers, prompts: Sequence[str], *, output_similarity: Optional[str] = None,
    output: Optional[str] = None, preset: str = "auto", templates: Optional[Sequence[str]] = None,
    tile_size: Optional[int] = None, stride: Optional[int] = None, resolution: str = "tile",
    multi_label_output: bool = False, threshold: Optional[float] = None, bands: Optional[str] = None,
    scale: str = "auto", offset: float = 0.0, batch_size: int = 8, device: str = "auto", reference=None,
    progress=None, is_cancelled=None, precision: str = "auto",
) -> ZeroShotResult:
    """Map a scene from text alone with a pretrained vision-language checkpoint: one
    cosine-similarity band per prompt (``output_similarity``) and the styled best-prompt map
    (``output``; with ``multi_label_output`` one 0/1 band per prompt instead)."""


    from ..io.atomic import check_outputs
    from ..io.labels import prompt_classes
    from ..runtime.jobs import Job

    prompts = [p.strip() for p in prompts if p and p.strip()]
    if not prompts:
        raise InputError("PROMPTS is empty: give at least one text prompt, one per line")
    if not (output_similarity or output):
        raise InputError("give OUTPUT_SIMILARITY or OUTPUT")
    if resolution not in ("tile", "token"):
        raise InputError(f"RESOLUTION must be tile or token (got {resolution!r})")
    if threshold is not None and not -1.0 <= threshold <= 1.0:
        raise InputError(f"THRESHOLD is a cosine similarity in [-1, 1] (got {threshold})")
    if multi_label_output and len(prompts) < 2:
        multi_label(np.zeros((1, 1)))  # raises the clear error
    job = Job(progress, is_cancelled)
    start = time.perf_counter()
    fm, setup, tile, stride, dev = open_for_scene(checkpoint, preset, device, layers, tile_size=tile_size,
                                                  stride=stride, bands=bands, scale=scale, offset=offset,
                                                  reference=reference, job=job)
    k = len(prompts)
    classes = prompt_classes(prompts, [])
    with setup.stack as stack:
        pixels = stack.width * stack.height
        check_outputs([("OUTPUT_SIMILARITY", output_similarity, pixels * 4 * k),
                       ("OUTPUT", output, pixels * (k if multi_label_output else 1))])
        job.step(0.02, "encoding prompts")
        text = fm.text_embeddings(prompts, templates, progress=job.span(0.02, 0.05).step).to(dev)
        boxes = as_boxes(tile_windows(stack.width, stack.height, tile, stride, edge="shift"))
        choose_vit_precision(precision, fm, setup, boxes, text, dev)
        scores = score_windows(setup, text, boxes, tokens=resolution == "token", batch_size=batch_size,
                               job=job.span(0.05, 0.9))
        write_maps(setup, scores, classes, prompts, output_similarity=output_similarity, output=output,
                   multi_label_output=multi_label_output, threshold=threshold, job=job.span(0.9, 1.0))
        job.report(1.0, "done")
    seconds = time.perf_counter() - start
    log.info("zero-shot map: %s of %d px (stride %d, %s) in %.1f s with %s", count(len(scores.boxes), "window"), tile,
             stride, resolution, seconds, fm.preset.name)
    return ZeroShotResult(output_similarity, output, prompts, fm.preset.name, len(scores.boxes), seconds,
                          multi_label_output, classes)
