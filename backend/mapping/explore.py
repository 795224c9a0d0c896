"""Explore a scene: embed a view once, then answer each prompt or clicked pixel with one
matrix–vector product (the rsvl Explore panel, and ``rsvl explore`` on the command line).

An :class:`Explorer` holds an rsvl model and its input layers, opened and checked once as
``rsvl:query`` does (band selection, band order, pixel size, overlap). :meth:`Explorer.embed`
computes the embeddings of a view — a rectangle of the reference grid — with the dense
engine in its sub-tiles (the same numbers ``rsvl:query`` compares with text; the next window
is read while one is computed, each input block once): at the layers' native
resolution while the view holds at most ``max_pixels`` pixels, else every ``step``-th pixel
(a coarser grid, said in :attr:`View.note`). Only valid pixels are kept, L2-normalised, in
float16 (2·D bytes per pixel plus a 4-byte index: 772 bytes for D = 384; cosine
similarities move by about 1e-4 from float32). :class:`EmbeddingCache` keeps views by
(model file, layers, window, step) within a memory budget (least recently used first out;
a view larger than the budget is not kept) and optionally on disk, so panning back or
asking again costs nothing.

Then :meth:`Explorer.prompts` scores text prompts (their embeddings cached per text) and
:meth:`Explorer.similar_to` the mean embedding of clicked pixels or a drawn area: cosine
similarity maps on the view's grid, NaN where an input is nodata. :func:`write_similarity`
writes them as GeoTIFFs like ``rsvl:query``'s, and :func:`mask_polygons` with
:func:`add_training_polygons` turns the area above a threshold into training polygons for
``rsvl:train``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from affine import Affine

from ..errors import InputError, count
from ..io.raster import Grid, RasterStack, gtiff_profile
from ..runtime.jobs import Job

log = logging.getLogger("rsvl")
MAX_PIXELS = 4_000_000  # a view embedded at native resolution up to this many pixels
CACHE_BYTES = 4 * 2**30  # memory the cached views may take
READ_TILE = 256  # native pixels per side of the windows a view is read in


@dataclass
class View:
    """The embeddings of one view: ``grid`` is the view's own grid (its pixels are every
    ``step``-th pixel of the reference grid from ``window``'s corner, ``step`` times as
    large); ``index`` (h, w) gives each pixel's row in ``emb`` (N, D), or -1 where an input
    is nodata."""

    key: str
    grid: Grid
    window: Tuple[int, int, int, int]  # row, col, height, width on the reference grid (native pixels)
    step: int
    index: np.ndarray
    emb: torch.Tensor
    seconds: float = 0.0
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return int(self.emb.numel() * self.emb.element_size() + self.index.nbytes)

    @property
    def shape(self) -> Tuple[int, int]:
        return self.index.shape

    def scatter(self, values: torch.Tensor) -> np.ndarray:
        """(K, N) or (N,) per-valid-pixel values as (K, h, w) float32, NaN at nodata."""
        v = values.reshape(-1, self.emb.shape[0]).float().cpu().numpy()
        out = np.full((v.shape[0], *self.index.shape), np.nan, np.float32)
        ok = self.index >= 0
        out[:, ok] = v[:, self.index[ok]]
        return out

    def pixel_of(self, x: float, y: float) -> Tuple[int, int]:
        """(row, col) of the view pixel at map coordinates (x, y) of the grid's CRS."""
        col, row = ~self.grid.transform * (x, y)
        return int(math.floor(row)), int(math.floor(col))


class EmbeddingCache:
    """Views by key, in memory within ``budget`` bytes (least recently used out first; a
    view larger than the budget is never kept) and, with ``folder``, on disk as safetensors
    files (read back on a miss)."""

    def __init__(self, budget: int = CACHE_BYTES, folder: Optional[str] = None):
        self.budget, self.folder = int(budget), folder
        self.views: OrderedDict[str, View] = OrderedDict()
        self.lock = threading.Lock()
        self.hits = self.misses = 0

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for v in self.views.values())

    def get(self, key: str) -> Optional[View]:
        with self.lock:
            view = self.views.get(key)
            if view is not None:
                self.views.move_to_end(key)
                self.hits += 1
                return view
        view = self._load(key)
        with self.lock:
            if view is None:
                self.misses += 1
                return None
            self.hits += 1
        self._keep(view)
        return view

    def put(self, view: View) -> None:
        self._keep(view)
        if self.folder:
            self._save(view)

    def _keep(self, view: View) -> None:
        with self.lock:
            self.views.pop(view.key, None)
            if view.nbytes > self.budget:
                log.info("explore: a view of %.0f MB is larger than the cache (%.0f MB): not kept",
                         view.nbytes / 2**20, self.budget / 2**20)
                return
            while self.views and self.nbytes + view.nbytes > self.budget:
                self.views.popitem(last=False)
            self.views[view.key] = view

    def clear(self) -> None:
        with self.lock:
            self.views.clear()

    def _path(self, key: str) -> str:
        return os.path.join(self.folder, f"view-{key}.safetensors")

    def _save(self, view: View) -> None:
        from safetensors.torch import save_file

        from ..io.atomic import atomic_path

        meta = {"grid": json.dumps(view.grid.to_json()), "window": json.dumps(list(view.window)),
                "step": str(view.step), "note": view.note, "extra": json.dumps(view.extra)}
        try:
            os.makedirs(self.folder, exist_ok=True)
            with atomic_path(self._path(view.key)) as tmp:
                save_file({"emb": view.emb.contiguous(), "index": torch.from_numpy(view.index)}, tmp, metadata=meta)
        except OSError as exc:
            log.warning("explore: the embedding cache folder %s cannot be written (%s): views stay in memory",
                        self.folder, exc)

    def _load(self, key: str) -> Optional[View]:
        if not self.folder or not os.path.isfile(self._path(key)):
            return None
        from rasterio.crs import CRS
        from safetensors import safe_open

        try:
            with safe_open(self._path(key), framework="pt") as f:
                meta = f.metadata()
                emb, index = f.get_tensor("emb"), f.get_tensor("index").numpy()
        except Exception as exc:  # noqa: BLE001 (a damaged cache file is recomputed)
            log.info("explore: cached view %s unreadable (%s): computed again", key, exc)
            return None
        g = json.loads(meta["grid"])
        grid = Grid(CRS.from_wkt(g["crs"]) if g["crs"] else None, Affine(*g["transform"]), g["width"], g["height"])
        return View(key, grid, tuple(json.loads(meta["window"])), int(meta["step"]), index, emb, 0.0, meta["note"],
                    json.loads(meta.get("extra") or "{}"))


def cache_dir() -> str:
    """Where views are kept on disk when asked: $RSVL_CACHE_DIR/explore, else
    $XDG_CACHE_HOME/rsvl/explore, else ~/.cache/rsvl/explore (beside the text cache)."""
    from ..text.encoders import text_cache_dir

    return os.path.join(os.path.dirname(text_cache_dir()), "explore")


def _fingerprint(path: str) -> str:
    st = os.stat(path)
    return f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}"


class Explorer:
    """An rsvl model and its layers, opened once, for views, prompts and clicks. Open one
    with :func:`rsvl.backend.api.open_explorer`."""

    kind = "rsvl"

    def __init__(self, model, header, stack: RasterStack, device, model_path: str, stats,
                 cache: Optional[EmbeddingCache] = None, dtype=torch.float32):
        from ..models.dense import dense_embedder

        self.model, self.header, self.stack, self.device = model, header, stack, device
        self.model_path, self.stats = model_path, stats
        self.cache = cache if cache is not None else EmbeddingCache()
        self.embedder = dense_embedder(model, device, dtype=dtype)  # PRECISION (runtime/precision.py)
        self.halo = model.config.patch_size // 2
        self._texts: Dict[str, torch.Tensor] = {}
        self._encoder = None
        self._lock = threading.Lock()  # one embedding pass at a time: GDAL datasets are not shared between threads
        layers = [(layer.modality, os.path.abspath(str(layer.path)), layer.nodata, layer.bands) for layer in stack.layers]
        self._base = hashlib.sha256(json.dumps([_fingerprint(model_path), layers, stack.reference,
                                                stack.align, str(dtype)], default=str).encode()).hexdigest()[:24]

    @property
    def grid(self) -> Grid:
        return self.stack.grid

    def window_of(self, extent: Optional[Sequence[float]] = None) -> Tuple[int, int, int, int]:
        """(row, col, height, width) of the reference-grid pixels inside ``extent`` (xmin,
        ymin, xmax, ymax in the grid's CRS; None: the whole scene), clipped to the scene."""
        g = self.grid
        if extent is None:
            return 0, 0, g.height, g.width
        xmin, ymin, xmax, ymax = (float(v) for v in extent)
        if not (xmax > xmin and ymax > ymin):
            raise InputError(f"the view's extent must have xmax > xmin and ymax > ymin (got {list(extent)})")
        inv = ~g.transform
        corners = [inv * (x, y) for x in (xmin, xmax) for y in (ymin, ymax)]
        cols, rows = [c for c, _ in corners], [r for _, r in corners]
        c0, c1 = max(int(math.floor(min(cols) + 1e-9)), 0), min(int(math.ceil(max(cols) - 1e-9)), g.width)
        r0, r1 = max(int(math.floor(min(rows) + 1e-9)), 0), min(int(math.ceil(max(rows) - 1e-9)), g.height)
        if c1 <= c0 or r1 <= r0:
            raise InputError("the view does not overlap the input layers: pan to them (or zoom out)")
        return r0, c0, r1 - r0, c1 - c0

    @staticmethod
    def step_for(window: Tuple[int, int, int, int], max_pixels: int) -> int:
        """1 while the window has at most ``max_pixels`` pixels, else the smallest step that
        brings it under."""
        pixels = window[2] * window[3]
        return 1 if pixels <= max_pixels else int(math.ceil(math.sqrt(pixels / max(max_pixels, 1))))

    def view_grid(self, window, step: int, height: int, width: int) -> Grid:
        """The grid of a view: every ``step``-th pixel of the reference grid from ``window``'s corner."""
        return Grid(self.grid.crs, self.grid.transform * Affine.translation(window[1], window[0]) * Affine.scale(step),
                    width, height)

    def lookup(self, extent, max_pixels: int):
        """(window, step, cache key, the cached view or None) of the view of ``extent``; a
        cached view comes with ``seconds`` 0 (no time spent; the arrays are shared)."""
        window = self.window_of(extent)
        step = self.step_for(window, max_pixels)
        key = hashlib.sha256(f"{self._base}|{window}|{step}".encode()).hexdigest()[:32]
        view = self.cache.get(key)
        return window, step, key, (dataclasses.replace(view, seconds=0.0) if view is not None else None)

    @staticmethod
    def coarse_note(window, step: int, max_pixels: int, done: str = "embedded") -> str:
        """What a view coarser than its layers says to the user ('' at native resolution)."""
        if step == 1:
            return ""
        return (f"the view has {window[2] * window[3] / 1e6:.2f} Mpx, more than the budget of {max_pixels / 1e6:.2f} "
                f"Mpx: one pixel in {step} along each axis is {done} ({step} x the pixel size); zoom in for the native "
                "resolution")

    def embed(self, extent: Optional[Sequence[float]] = None, max_pixels: int = MAX_PIXELS, progress=None,
              is_cancelled=None) -> View:
        """The embeddings of the view (from the cache when it has them: then ``seconds`` is 0)."""
        from rasterio.windows import Window

        from ..data.samples import read_window_normalised

        window, step, key, view = self.lookup(extent, max_pixels)
        if view is not None:
            return view
        job = Job(progress, is_cancelled)
        start = time.perf_counter()
        r0, c0, h, w = window
        oh, ow = -(-h // step), -(-w // step)
        index = np.full((oh, ow), -1, np.int64)
        chunks: List[torch.Tensor] = []
        n = 0
        tile = max(READ_TILE // step, 1) * step
        sub = max(self.embedder.compute_tile // step, 1) * step  # the dense engine's sub-tiles, on the step grid
        boxes = [(r, c) for r in range(0, h, tile) for c in range(0, w, tile)]
        halo = self.halo

        def read(box):
            r, c = box
            return read_window_normalised(self.stack, Window(c0 + c, r0 + r, min(tile, w - c), min(tile, h - r)), halo,
                                          self.stats)

        with self._lock, self.stack.downward(tile + 2 * halo), \
                ThreadPoolExecutor(1, thread_name_prefix="rsvl-explore-read") as reader:
            pending = reader.submit(read, boxes[0]) if boxes else None
            for i, (r, c) in enumerate(boxes):  # the next window is read while this one is computed
                job.step(i / len(boxes), f"embedding the view: window {i + 1}/{len(boxes)}")
                norm, ok = pending.result()
                pending = reader.submit(read, boxes[i + 1]) if i + 1 < len(boxes) else None
                th, tw = ok.shape
                for sr in range(0, th, sub):
                    for sc in range(0, tw, sub):
                        sh, sw = min(sub, th - sr), min(sub, tw - sc)
                        keep = ok[sr:sr + sh:step, sc:sc + sw:step]
                        if not keep.any():
                            continue
                        x = {m: torch.from_numpy(norm[m][None, :, sr:sr + sh + 2 * halo, sc:sc + sw + 2 * halo])
                             for m in self.embedder.modalities}
                        # (D, sh, sw) in channels-last memory: as (sh, sw, D) without a copy
                        emb = self.embedder.embed(x)[0].permute(1, 2, 0)[::step, ::step]
                        vecs = emb[torch.from_numpy(keep)].to(torch.float16).cpu()  # (n, D), row-major
                        rr, cc = (r + sr) // step, (c + sc) // step
                        index[rr:rr + keep.shape[0], cc:cc + keep.shape[1]][keep] = np.arange(n, n + vecs.shape[0])
                        chunks.append(vecs)
                        n += vecs.shape[0]
        job.check()
        dim = self.header.config.embed_dim
        emb = torch.cat(chunks) if chunks else torch.zeros((0, dim), dtype=torch.float16)
        view = View(key, self.view_grid(window, step, oh, ow), window, step, index.astype(np.int32), emb,
                    time.perf_counter() - start, self.coarse_note(window, step, max_pixels))
        self.cache.put(view)
        log.info("explore: embedded %s (%d x %d px, step %d) in %.2f s (%.0f px/s)", count(n, "valid pixel"), ow, oh,
                 step, view.seconds, oh * ow / max(view.seconds, 1e-9))
        return view

    def text(self, prompts: Sequence[str], use_template: bool = True) -> torch.Tensor:
        """(K, D) float32 L2-normalised embeddings of the prompts (with the model's prompt
        template, as rsvl:query's USE_TEMPLATE), each text encoded once per explorer."""
        from ..text.encoders import apply_template, get_text_encoder

        prompts = [p.strip() for p in prompts if p and p.strip()]
        if not prompts:
            raise InputError("type a prompt first")
        texts = apply_template(self.header.prompt_template, prompts) if use_template else prompts
        missing = [t for t in dict.fromkeys(texts) if t not in self._texts]
        if missing:
            if self._encoder is None:
                self._encoder = get_text_encoder(self.header.text_encoder)
                if self._encoder.dim != self.header.config.embed_dim:
                    raise InputError(f"text encoder {self._encoder.id} gives {self._encoder.dim}-d embeddings, the "
                                     f"model expects {self.header.config.embed_dim}")
            for t, e in zip(missing, self._encoder.encode(missing)):
                self._texts[t] = e.float().cpu()
        return torch.stack([self._texts[t] for t in texts])

    def text_space(self, text: torch.Tensor) -> torch.Tensor:
        """Text embeddings in the space the view's embeddings live in (an ensemble's joint
        space: :meth:`Ensemble.text_space`), as rsvl:query compares them."""
        return self.model.text_space(text)

    def prompts(self, view: View, prompts: Sequence[str], use_template: bool = True) -> np.ndarray:
        """(K, h, w) cosine similarity of the view's pixels to each prompt, NaN at nodata."""
        text = self.text_space(self.text(prompts, use_template)).to(torch.float16)
        return view.scatter((view.emb @ text.t()).t())  # (K, N) -> (K, h, w)

    def similar_to(self, view: View, pixels: Optional[Sequence[Tuple[int, int]]] = None,
                   mask: Optional[np.ndarray] = None) -> np.ndarray:
        """(h, w) cosine similarity of every pixel of the view to the mean embedding of the
        given view pixels (row, col) or of the valid pixels under ``mask`` (a drawn area)."""
        chosen = np.zeros(view.shape, bool)
        for r, c in pixels or ():
            if 0 <= r < view.shape[0] and 0 <= c < view.shape[1]:
                chosen[r, c] = True
        if mask is not None:
            chosen |= mask.astype(bool)
        rows = view.index[chosen & (view.index >= 0)]
        if rows.size == 0:
            raise InputError("no valid pixel there: click inside the layers, where no input is nodata")
        target = torch.nn.functional.normalize(view.emb[torch.from_numpy(rows.astype(np.int64))].float().mean(0), dim=0)
        sims = view.emb @ target.to(torch.float16)
        if not view.extra.get("unit", True):  # a checkpoint's cells: mean embeddings, not unit vectors
            sims = sims.float() / view.emb.float().norm(dim=1).clamp_min(1e-12)
        return view.scatter(sims)[0]

    def close(self) -> None:
        self.stack.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_similarity(view: View, sims: np.ndarray, names: Sequence[str], path: str, compress: bool = True) -> str:
    """(K, h, w) similarities on the view's grid as a float32 GeoTIFF (NaN nodata, one band
    per name), written atomically; ``compress=False`` for the panel's temporary layers."""
    import rasterio

    from ..io.atomic import atomic_path

    profile = gtiff_profile(view.grid, sims.shape[0], "float32", math.nan)
    if not compress:
        profile.update(compress=None, predictor=None)
        profile = {k: v for k, v in profile.items() if v is not None}
    with atomic_path(path) as tmp:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(sims.astype(np.float32))
            for i, name in enumerate(names, start=1):
                dst.set_band_description(i, name)
    return path


def mask_polygons(view: View, mask: np.ndarray, area=None) -> List[object]:
    """The polygons (OGR geometries, in the view grid's CRS) of the pixels where ``mask`` is
    true, cut to ``area`` (an OGR geometry in the same CRS) when given."""
    from osgeo import ogr
    from rasterio import features

    polys = [ogr.CreateGeometryFromJson(json.dumps(geom))
             for geom, value in features.shapes(mask.astype(np.uint8), mask=mask.astype(bool),
                                                transform=view.grid.transform) if value]
    if area is not None:
        polys = [p.Intersection(area) for p in polys]
        polys = [p for p in polys if p is not None and not p.IsEmpty() and p.GetArea() > 0]
    return polys


def add_training_polygons(path: str, polygons, class_name: str, crs, layer: str = "labels",
                          field_name: str = "class") -> int:
    """Append ``polygons`` (OGR geometries, in ``crs``) with ``class_name`` in ``field_name`` to a
    GeoPackage layer (created if needed) that rsvl:train takes with CLASS_FIELD
    ``field_name``. Returns the number of features added."""
    from osgeo import ogr, osr

    from ..io.gdal_exceptions import gdal_exceptions

    if not class_name.strip():
        raise InputError("give the class name the polygons are labelled with")
    if not path.lower().endswith(".gpkg"):
        raise InputError(f"training polygons go into a GeoPackage (.gpkg), not {os.path.basename(path)!r}")
    with gdal_exceptions():
        exists = os.path.exists(path)
        ds = ogr.Open(path, 1) if exists else ogr.GetDriverByName("GPKG").CreateDataSource(path)
        lyr = ds.GetLayerByName(layer)
        srs = osr.SpatialReference()
        srs.ImportFromWkt(crs.to_wkt())
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        if lyr is None:
            lyr = ds.CreateLayer(layer, srs, ogr.wkbMultiPolygon)
            lyr.CreateField(ogr.FieldDefn(field_name, ogr.OFTString))
        else:
            have = lyr.GetSpatialRef()
            if have is not None and not have.IsSame(srs):
                raise InputError(f"layer {layer!r} of {os.path.basename(path)!r} is in another CRS than the view: "
                                 "use another file or layer")
            if lyr.GetLayerDefn().GetFieldIndex(field_name) < 0:
                lyr.CreateField(ogr.FieldDefn(field_name, ogr.OFTString))
        lyr.StartTransaction()
        added = 0
        for p in polygons:
            feat = ogr.Feature(lyr.GetLayerDefn())
            feat.SetField(field_name, class_name.strip())
            feat.SetGeometry(ogr.ForceToMultiPolygon(p.Clone()))
            lyr.CreateFeature(feat)
            added += 1
        lyr.CommitTransaction()
        ds = None
    return added
