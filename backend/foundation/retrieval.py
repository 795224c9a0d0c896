"""Tile retrieval (:func:`retrieve`): the scene's tiles ranked by cosine similarity to a text, written as
polygons; :func:`average_precision_at_k` is the mAP@K the paper reports."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError
from ..io.windows import as_boxes, tile_windows
from .zeroshot import open_for_scene, score_windows

log = logging.getLogger("rsvl")


def average_precision_at_k(scores: Sequence[float], relevant: Sequence[bool], k: int = 100) -> float:
    """AP@k of one query: items ranked by ``scores`` (descending); the mean over the top k
    of precision@i at each relevant item, divided by min(k, number of relevant items)."""
    scores = np.asarray(scores, np.float64)
    relevant = np.asarray(relevant, bool)
    n_rel = int(relevant.sum())
    if n_rel == 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")[:k]
    hits = relevant[order]
    precision = np.cumsum(hits) / np.arange(1, hits.size + 1)
    return float((precision * hits).sum() / min(k, n_rel))


def mean_average_precision_at_k(scores: np.ndarray, relevant: np.ndarray, k: int = 100) -> float:
    """mAP@k over queries: ``scores`` and ``relevant`` are (queries, items)."""
    return float(np.mean([average_precision_at_k(s, r, k) for s, r in zip(scores, relevant)]))


@dataclass
class RetrieveResult:
    output: str
    query: str
    preset: str
    ranked: List[Tuple[int, float, Tuple[int, int, int, int]]]  # (rank, score, (row, col, h, w))
    windows: int
    seconds: float


def retrieve(
    checkpoint: str, layers, query: str, output: str, *, top_k: int = 20, preset: str = "auto",
    templates: Optional[Sequence[str]] = None, tile_size: Optional[int] = None, stride: Optional[int] = None,
    min_valid: float = 0.5, bands: Optional[str] = None, scale: str = "auto", offset: float = 0.0,
    batch_size: int = 8, device: str = "auto", reference=None, progress=None, is_cancelled=None,
    precision: str = "auto",
) -> RetrieveResult:
    """The TOP_K tiles of a scene most similar to a text query, as polygons (GeoPackage)
    with ``rank`` and ``score`` (cosine similarity) fields. Tiles are ``tile_size`` pixels
    every ``stride`` (default: the tile size, no overlap); tiles with less than
    ``min_valid`` valid pixels are left out."""
    from ..io.atomic import VECTOR_DRIVERS, atomic_path, check_extension, check_outputs
    from ..runtime.jobs import Job

    query = (query or "").strip()
    if not query:
        raise InputError("QUERY is empty: give the text to search for")
    if top_k < 1:
        raise InputError(f"TOP_K must be at least 1 (got {top_k})")
    if not output:
        raise InputError("OUTPUT is required")
    job = Job(progress, is_cancelled)
    start = time.perf_counter()
    fm, setup, tile, stride, dev = open_for_scene(checkpoint, preset, device, layers, tile_size=tile_size,
                                                  stride=stride, bands=bands, scale=scale, offset=offset,
                                                  reference=reference, job=job, stride_default="tile")
    with setup.stack as stack:
        check_extension("OUTPUT", output, "vector")
        check_outputs([("OUTPUT", output, 1 << 20)])
        text = fm.text_embeddings([query], templates).to(dev)
        boxes = as_boxes(tile_windows(stack.width, stack.height, tile, stride, edge="shift"))
        from .zeroshot import choose_vit_precision

        choose_vit_precision(precision, fm, setup, boxes, text, dev)
        scores = score_windows(setup, text, boxes, tokens=False, batch_size=batch_size, job=job.span(0.05, 0.95))
        # Tiles mostly of nodata (scene edges, clouds masked out) are not ranked.
        kept = [(float(g[0, 0, 0]), box) for box, g, frac in zip(scores.boxes, scores.grids, scores.valid)
                if frac >= min_valid]
        kept.sort(key=lambda t: -t[0])
        ranked = [(i + 1, s, box) for i, (s, box) in enumerate(kept[:top_k])]
        grid = stack.grid
        with atomic_path(output) as tmp:
            _write_tiles(tmp, grid, ranked, query, VECTOR_DRIVERS[os.path.splitext(output)[1].lower()])
    seconds = time.perf_counter() - start
    return RetrieveResult(output, query, fm.preset.name, ranked, len(scores.boxes), seconds)


def _write_tiles(path: str, grid, ranked, query: str, driver_name: str = "GPKG") -> None:
    """Tile footprints as polygons in the scene's CRS (rotated grids included), in the OGR
    format ``driver_name``."""
    from osgeo import ogr, osr

    from ..io.gdal_exceptions import gdal_exceptions

    with gdal_exceptions():
        driver = ogr.GetDriverByName(driver_name)
        ds = driver.CreateDataSource(path)
        srs = osr.SpatialReference()
        srs.ImportFromWkt(grid.crs.to_wkt())
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        layer = ds.CreateLayer("tiles", srs, ogr.wkbPolygon)
        for name, kind in (("rank", ogr.OFTInteger), ("score", ogr.OFTReal), ("query", ogr.OFTString),
                           ("row", ogr.OFTInteger), ("col", ogr.OFTInteger), ("size", ogr.OFTInteger)):
            layer.CreateField(ogr.FieldDefn(name, kind))
        t = grid.transform
        for rank, score, (r, c, h, w) in ranked:
            corners = [t * (c, r), t * (c + w, r), t * (c + w, r + h), t * (c, r + h), t * (c, r)]
            ring = ogr.Geometry(ogr.wkbLinearRing)
            for x, y in corners:
                ring.AddPoint_2D(float(x), float(y))
            poly = ogr.Geometry(ogr.wkbPolygon)
            poly.AddGeometry(ring)
            f = ogr.Feature(layer.GetLayerDefn())
            f.SetGeometry(poly)
            f.SetField("rank", int(rank))
            f.SetField("score", float(score))
            f.SetField("query", query)
            f.SetField("row", int(r))
            f.SetField("col", int(c))
            f.SetField("size", int(max(h, w)))
            layer.CreateFeature(f)
        ds = None
