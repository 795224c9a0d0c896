"""Window-by-window inference: class maps, confidences and text-similarity rasters.

Two ways to compute a pixel's embedding, with the same result:
- ``dense`` (default): the encoders run fully convolutionally over a window plus a
  halo of ``patch_size // 2`` pixels (:meth:`MMLGNet.embed_dense`), sharing the
  convolutions of neighbouring pixels;
- ``patch``: the reference definition used in training, one P×P patch per pixel.

Outputs are tiled, compressed GeoTIFFs on the reference grid, written window by window
into temporary files that replace the destinations only when the whole scene is done.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import rasterio
from numpy.lib.stride_tricks import sliding_window_view

from .atomic import atomic_path
from .errors import InputError
from .jobs import Job
from .labels import ClassInfo
from .raster import Grid, RasterStack, tile_windows
from .samples import read_window_normalised

log = logging.getLogger("rsvl")
METHODS = ("dense", "patch")


def gtiff_profile(grid: Grid, count: int, dtype: str, nodata) -> dict:
    return {
        "driver": "GTiff", "width": grid.width, "height": grid.height, "count": count, "dtype": dtype,
        "crs": grid.crs, "transform": grid.transform, "nodata": nodata,
        "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate",
        "predictor": 3 if dtype == "float32" else 2, "BIGTIFF": "IF_SAFER",
    }


def class_dtype(classes: Sequence[ClassInfo]) -> str:
    return "uint8" if max(c.code for c in classes) <= 255 else "uint16"


def set_category_names(path: str, classes: Sequence[ClassInfo]) -> None:
    """Category names for the class codes (GDAL keeps them in the .aux.xml sidecar)."""
    from osgeo import gdal

    from .gdal_exceptions import gdal_exceptions

    names = [""] * (max(c.code for c in classes) + 1)
    names[0] = "nodata"
    for c in classes:
        names[c.code] = c.name
    with gdal_exceptions():
        ds = gdal.Open(path, gdal.GA_Update)
        band = ds.GetRasterBand(1)
        band.GetMetadata()  # GDAL 3.6 GTiff loads PAM lazily; load it before changing it
        band.SetCategoryNames(names)
        band.SetDescription("class")
        band = None
        ds.FlushCache()
        ds = None


def embed_window(model, norm: Dict[str, np.ndarray], halo: int, method: str, device, batch_size: int = 4096):
    """(D, h, w) float32 tensor of L2-normalised embeddings for the window's pixels."""
    import torch

    if method == "dense":
        with torch.no_grad():
            x = {m: torch.from_numpy(a).unsqueeze(0).to(device) for m, a in norm.items()}
            return model.embed_dense(x)[0]
    p = 2 * halo + 1
    any_arr = next(iter(norm.values()))
    h, w = any_arr.shape[1] - 2 * halo, any_arr.shape[2] - 2 * halo
    views = {m: sliding_window_view(a, (p, p), axis=(1, 2)) for m, a in norm.items()}  # (B, h, w, P, P)
    rows, cols = np.divmod(np.arange(h * w), w)
    out = []
    with torch.no_grad():
        for s in range(0, h * w, batch_size):
            rr, cc = rows[s:s + batch_size], cols[s:s + batch_size]
            batch = {m: torch.from_numpy(np.ascontiguousarray(v[:, rr, cc].transpose(1, 0, 2, 3))).to(device)
                     for m, v in views.items()}
            out.append(model.embed(batch))
    return torch.cat(out).t().reshape(-1, h, w)


@dataclass
class InferenceOutputs:
    classes_path: Optional[str] = None
    confidence_path: Optional[str] = None
    similarity_path: Optional[str] = None
    pixels: int = 0
    seconds: float = 0.0


def run_inference(
    model, stack: RasterStack, stats, text, *, classes: Sequence[ClassInfo], class_path: Optional[str],
    confidence_path: Optional[str] = None, similarity_path: Optional[str] = None,
    similarity_names: Optional[List[str]] = None, threshold: Optional[float] = None,
    method: str = "dense", tile: int = 256, batch_size: int = 4096, device="cpu", job: Optional[Job] = None,
) -> InferenceOutputs:
    """Classify/score every pixel against the text embeddings ``text`` (K, D).

    class raster: code of the most similar text (0 = nodata: invalid input, or best
    cosine similarity below ``threshold``); confidence: softmax probability of that class
    with the model's temperature; similarity: K float32 bands of cosine similarity."""
    import time

    import torch

    if method not in METHODS:
        raise InputError(f"METHOD must be one of {', '.join(METHODS)} (got {method!r})")
    if tile < 16:
        raise InputError(f"tile size must be at least 16 pixels (got {tile})")
    job = job or Job()
    halo = model.config.patch_size // 2
    text = text.to(device)
    codes = np.asarray([c.code for c in classes], dtype=np.int64)
    scale = float(model.scale().detach())
    windows = list(tile_windows(stack.width, stack.height, tile))
    start = time.perf_counter()
    with contextlib.ExitStack() as ctx:
        dst = {}
        if class_path:
            tmp = ctx.enter_context(atomic_path(class_path))
            dt = class_dtype(classes)
            dst["class"] = ctx.enter_context(rasterio.open(tmp, "w", **gtiff_profile(stack.grid, 1, dt, 0)))
            dst["class"].write_colormap(1, {0: (0, 0, 0, 0), **{c.code: (*c.colour, 255) for c in classes}})
            class_tmp = tmp
        if confidence_path:
            tmp = ctx.enter_context(atomic_path(confidence_path))
            dst["conf"] = ctx.enter_context(rasterio.open(tmp, "w", **gtiff_profile(stack.grid, 1, "float32", math.nan)))
            dst["conf"].set_band_description(1, "confidence (softmax probability of the class)")
        if similarity_path:
            tmp = ctx.enter_context(atomic_path(similarity_path))
            k = text.shape[0]
            dst["sim"] = ctx.enter_context(rasterio.open(tmp, "w", **gtiff_profile(stack.grid, k, "float32", math.nan)))
            for i, name in enumerate(similarity_names or [c.name for c in classes], start=1):
                dst["sim"].set_band_description(i, name)
        for i, window in enumerate(windows):
            job.step(i / len(windows), f"window {i + 1}/{len(windows)}")
            norm, ok = read_window_normalised(stack, window, halo, stats)
            h, w = ok.shape
            if not ok.any():
                emb = None
            else:
                emb = embed_window(model, norm, halo, method, device, batch_size)  # (D, h, w)
            if emb is not None:
                with torch.no_grad():
                    sim = torch.einsum("dhw,kd->khw", emb, text)
                    best, arg = sim.max(0)
                    conf = torch.softmax(scale * sim, dim=0).max(0).values
                sim, best, arg, conf = (t.cpu().numpy() for t in (sim, best, arg, conf))
                keep = ok if threshold is None else (ok & (best >= threshold))
            if "class" in dst:
                out = np.zeros((h, w), dtype=dst["class"].dtypes[0])
                if emb is not None:
                    out[keep] = codes[arg[keep]]
                dst["class"].write(out, 1, window=window)
            if "conf" in dst:
                out = np.full((h, w), np.nan, dtype=np.float32)
                if emb is not None:
                    out[ok] = conf[ok]
                dst["conf"].write(out, 1, window=window)
            if "sim" in dst:
                out = np.full((text.shape[0], h, w), np.nan, dtype=np.float32)
                if emb is not None:
                    out[:, ok] = sim[:, ok]
                dst["sim"].write(out, window=window)
        for d in dst.values():
            d.close()
        if class_path:
            set_category_names(class_tmp, classes)
        job.report(1.0, "inference finished")
    return InferenceOutputs(class_path, confidence_path, similarity_path, stack.width * stack.height,
                            time.perf_counter() - start)
