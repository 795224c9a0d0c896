"""Multi-sensor raster stack on one reference grid.

Each input layer is a GDAL-readable raster tagged with a modality (hsi, lidar, sar, ms).
Layers whose CRS, resolution or extent differ from the reference grid are warped onto it
with GDAL (rasterio ``WarpedVRT``, bilinear for continuous data), or refused with
:class:`AlignmentError` when alignment is switched off. Reads are always windowed: a
window plus a halo of context pixels, with pixels outside the scene marked invalid.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import threading
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from ..errors import AlignmentError, InputError
from .sources import LayerSource, RowBuffer
from .windows import tile_windows

MODALITIES = ("hsi", "lidar", "sar", "ms")
MODALITY_LABELS = {
    "hsi": "hyperspectral (HSI)",
    "lidar": "LiDAR / elevation",
    "sar": "SAR",
    "ms": "multispectral (MS)",
}


@dataclass
class LayerSpec:
    """One input raster: where it is, what it is, and an optional nodata override."""

    path: str
    modality: str
    nodata: Optional[float] = None
    name: Optional[str] = None
    bands: Optional[Tuple[int, ...]] = None  # the data bands to read (0-based); None: all

    def __post_init__(self):
        self.modality = (self.modality or "").lower()
        if self.modality not in MODALITIES:
            raise InputError(
                f"layer {self.path!r}: modality must be one of {', '.join(MODALITIES)} "
                f"(got {self.modality!r})"
            )
        if self.name is None:
            self.name = os.path.basename(str(self.path))


try:  # what GDAL's read errors arrive as (rasterio wraps some, passes CPLE_* through)
    from rasterio._err import CPLE_BaseError

    READ_ERRORS = (rasterio.errors.RasterioError, rasterio.errors.RasterioIOError, CPLE_BaseError)
except ImportError:  # pragma: no cover - rasterio moved it
    READ_ERRORS = (rasterio.errors.RasterioError, rasterio.errors.RasterioIOError)


def gtiff_profile(grid: Grid, count: int, dtype: str, nodata) -> dict:
    """The profile of every raster rsvl writes on ``grid``: tiled, deflate-compressed GeoTIFF."""
    return {
        "driver": "GTiff", "width": grid.width, "height": grid.height, "count": count, "dtype": dtype,
        "crs": grid.crs, "transform": grid.transform, "nodata": nodata,
        "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate",
        "predictor": 3 if dtype == "float32" else 2, "BIGTIFF": "IF_SAFER",
    }


def missing_file(path: str) -> bool:
    """Whether ``path`` is a plain file path that does not exist. GDAL virtual file systems
    (``/vsizip/…``, ``/vsicurl/…``, ``/vsis3/…``) and connection strings
    (``GPKG:file.gpkg:table``, ``NETCDF:"f.nc":var``) are not files: GDAL opens them and
    names its own problem."""
    if path.startswith("/vsi") or re.match(r"^[A-Za-z][A-Za-z0-9_]+:", path):  # not "C:\\…": one letter
        return False
    return not os.path.exists(path)


def as_layers(layers) -> List[LayerSpec]:
    """LayerSpecs from LayerSpecs or (modality, path) pairs."""
    out = []
    for layer in layers:
        if isinstance(layer, LayerSpec):
            out.append(layer)
        elif isinstance(layer, (tuple, list)) and len(layer) == 2:
            out.append(LayerSpec(path=str(layer[1]), modality=str(layer[0])))
        else:
            raise InputError(f"an input layer must be a LayerSpec or (modality, path), got {layer!r}")
    return out


@dataclass(frozen=True)
class Grid:
    """A raster grid: CRS, affine transform and size in pixels."""

    crs: CRS
    transform: Affine
    width: int
    height: int

    @classmethod
    def of(cls, dataset) -> Grid:
        return cls(dataset.crs, dataset.transform, dataset.width, dataset.height)

    def differences(self, other: Grid) -> List[str]:
        """What differs between two grids, in words (empty when they match)."""
        out = []
        if self.crs != other.crs:
            out.append(f"CRS {other.crs} vs {self.crs}")
        a, b = self.transform, other.transform
        res_a, res_b = (a.a, a.e), (b.a, b.e)
        tol = 1e-6 * max(abs(a.a), abs(a.e))
        if any(abs(x - y) > tol for x, y in zip(res_a, res_b)) or abs(b.b - a.b) > tol or abs(b.d - a.d) > tol:
            out.append(f"resolution {abs(b.a):g} x {abs(b.e):g} vs {abs(a.a):g} x {abs(a.e):g}")
        if abs(a.c - b.c) > tol or abs(a.f - b.f) > tol or (self.width, self.height) != (other.width, other.height):
            out.append(
                f"extent/size {other.width}x{other.height} px at ({b.c:g}, {b.f:g}) "
                f"vs {self.width}x{self.height} px at ({a.c:g}, {a.f:g})"
            )
        return out

    def to_json(self) -> dict:
        return {
            "crs": self.crs.to_wkt() if self.crs else None,
            "transform": list(self.transform)[:6],
            "width": self.width,
            "height": self.height,
        }


# GDAL options for opening input layers. GTIFF_DIRECT_IO: windowed reads of uncompressed GeoTIFFs go straight
# to the file, not through GDAL's block cache (same pixels; a 64-band pixel-interleaved tile would otherwise fill
# the cache, and a capped cache would re-read it for every window). Compressed files ignore it.
READ_OPEN_OPTIONS = {"GTIFF_DIRECT_IO": "YES"}


@contextlib.contextmanager
def gdal_thread_config(options: Dict[str, str]) -> Iterator[None]:
    """Set GDAL configuration options for the calling thread only, restoring them after
    (other threads, e.g. QGIS's renderers, are unaffected)."""
    from osgeo import gdal

    old = {k: gdal.GetThreadLocalConfigOption(k, None) for k in options}
    for k, v in options.items():
        gdal.SetThreadLocalConfigOption(k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            gdal.SetThreadLocalConfigOption(k, v)


class _CacheLimit:
    """Process-wide cap on GDAL's block cache, held while any user needs it; the previous
    size comes back when the last user leaves."""

    lock = threading.Lock()
    users = 0
    saved = 0


@contextlib.contextmanager
def gdal_cache_limit(max_mb: int) -> Iterator[None]:
    """Lower GDAL's raster block cache to at most ``max_mb`` MiB for the duration.

    GDAL's default (5 % of RAM) would fill with input blocks and dirty output blocks over a
    big scene, so peak memory would grow with the scene; a fixed cap keeps it flat."""
    from osgeo import gdal

    with _CacheLimit.lock:
        if _CacheLimit.users == 0:
            _CacheLimit.saved = gdal.GetCacheMax()
            if _CacheLimit.saved > max_mb * 2**20:
                gdal.SetCacheMax(max_mb * 2**20)
        _CacheLimit.users += 1
    try:
        yield
    finally:
        with _CacheLimit.lock:
            _CacheLimit.users -= 1
            if _CacheLimit.users == 0:
                gdal.SetCacheMax(_CacheLimit.saved)


# Memory (MiB) the row buffers of one whole-scene pass may use before the scene is read in
# column bands (see RasterStack.scan); RSVL_READ_BUFFER_MB overrides it.
READ_BUFFER_MB = 512
# A column band spans at least this many blocks of a tiled input, so the blocks read twice
# at band edges (for the halo) stay at most 2 / MIN_BAND_BLOCKS of the input.
MIN_BAND_BLOCKS = 8


def read_buffer_bytes() -> int:
    """The row-buffer budget of a whole-scene pass, in bytes."""
    value = os.environ.get("RSVL_READ_BUFFER_MB", "")
    try:
        return (max(int(value), 1) if value else READ_BUFFER_MB) * 2**20
    except ValueError:
        raise InputError(f"RSVL_READ_BUFFER_MB must be a whole number of MiB (got {value!r})") from None


def _check_overlap(layer: LayerSpec, dataset, grid: Grid, reference: LayerSpec) -> None:
    """Refuse a layer that covers none of the reference grid, naming both extents."""
    from rasterio.warp import transform_bounds

    left, bottom, right, top = transform_bounds(dataset.crs, grid.crs, *dataset.bounds, densify_pts=21)
    g = grid.transform
    xs = sorted((g.c, g.c + g.a * grid.width + g.b * grid.height))
    ys = sorted((g.f, g.f + g.d * grid.width + g.e * grid.height))
    if right <= xs[0] or left >= xs[1] or top <= ys[0] or bottom >= ys[1]:
        raise InputError(
            f"{layer.modality} layer {layer.name!r} does not overlap the reference grid of {reference.name!r}: "
            f"its extent is x {left:.6g}..{right:.6g}, y {bottom:.6g}..{top:.6g}, the reference's x "
            f"{xs[0]:.6g}..{xs[1]:.6g}, y {ys[0]:.6g}..{ys[1]:.6g} (in {grid.crs.to_string()}): check that the "
            "layers show the same place (and that their CRS is right)")


class RasterStack:
    """Co-registered multi-sensor stack on one reference grid.

    ``layers`` may hold several rasters of one modality (e.g. DSM and DTM for lidar):
    their bands are concatenated in the given order. ``reference`` is the index of the
    layer whose grid is used; by default the first HSI layer, else the first MS, SAR,
    then lidar layer.
    """

    def __init__(self, layers: Sequence[LayerSpec], reference: Optional[int] = None, align: bool = True):
        if not layers:
            raise InputError("no input layer given: set at least one of INPUT_HSI, INPUT_LIDAR, INPUT_SAR, INPUT_MS")
        self.layers = list(layers)
        self.align = align
        datasets = []
        try:
            for layer in self.layers:
                if missing_file(str(layer.path)):
                    raise InputError(f"{layer.modality} layer {layer.path!r} does not exist")
                try:
                    with gdal_thread_config(READ_OPEN_OPTIONS):
                        ds = rasterio.open(layer.path)
                except rasterio.errors.RasterioIOError as exc:
                    raise InputError(f"{layer.modality} layer {layer.path!r} cannot be read by GDAL: {exc}") from exc
                datasets.append(ds)
                if ds.crs is None:
                    raise InputError(
                        f"{layer.modality} layer {layer.name!r} has no CRS: assign one (e.g. Raster ▸ Projections ▸ "
                        "Assign Projection) before using it"
                    )
            if reference is None:
                order = {m: i for i, m in enumerate(("hsi", "ms", "sar", "lidar"))}
                reference = min(range(len(self.layers)), key=lambda i: (order[self.layers[i].modality], i))
            if not 0 <= reference < len(self.layers):
                raise InputError(f"reference layer index {reference} is out of range (0..{len(self.layers) - 1})")
            self.reference = reference
            self.grid = Grid.of(datasets[reference])
            self.sources: List[LayerSource] = []
            for layer, ds in zip(self.layers, datasets):
                diffs = self.grid.differences(Grid.of(ds))
                if not diffs:
                    self.sources.append(LayerSource(layer, ds, ds, warped=False))
                    continue
                if not align:
                    raise AlignmentError(
                        f"{layer.modality} layer {layer.name!r} is not on the reference grid of "
                        f"{self.layers[reference].name!r}: {'; '.join(diffs)}. Resample it first or switch "
                        "alignment on"
                    )
                _check_overlap(layer, ds, self.grid, self.layers[reference])
                nodata = layer.nodata if layer.nodata is not None else ds.nodata
                vrt = WarpedVRT(
                    ds,
                    crs=self.grid.crs,
                    transform=self.grid.transform,
                    width=self.grid.width,
                    height=self.grid.height,
                    resampling=Resampling.bilinear,
                    src_nodata=nodata,
                    nodata=nodata,
                    add_alpha=nodata is None,
                )
                self.sources.append(LayerSource(layer, ds, vrt, warped=True))
        except Exception:
            for ds in datasets:
                ds.close()
            raise
        self.modalities: Dict[str, List[LayerSource]] = {}
        for src in self.sources:
            self.modalities.setdefault(src.layer.modality, []).append(src)
        # Canonical modality order, independent of the order the user listed layers in.
        self.modalities = {m: self.modalities[m] for m in MODALITIES if m in self.modalities}

    # -- description -------------------------------------------------------------------
    @property
    def width(self) -> int:
        return self.grid.width

    @property
    def height(self) -> int:
        return self.grid.height

    def band_counts(self) -> Dict[str, int]:
        return {m: sum(s.count for s in srcs) for m, srcs in self.modalities.items()}

    def band_names(self) -> Dict[str, List[str]]:
        return {m: [n for s in srcs for n in s.band_names] for m, srcs in self.modalities.items()}

    def wavelengths(self) -> Dict[str, List[Optional[float]]]:
        """Per modality, each band's wavelength in nm where the data says it (:mod:`.bands`)."""
        return {m: [w for s in srcs for w in s.wavelengths] for m, srcs in self.modalities.items()}

    def declared_bad(self) -> Dict[str, List[bool]]:
        """Per modality, whether the data's metadata declares each band bad (ENVI ``bbl``)."""
        return {m: [b for s in srcs for b in s.declared_bad] for m, srcs in self.modalities.items()}

    def select(self, kept: Dict[str, Sequence[int]]) -> None:
        """Use only the bands at ``kept`` positions (0-based among a modality's bands now,
        its layers' bands in order) of the modalities named; the others stay as they are."""
        for m, positions in kept.items():
            positions = set(positions)
            band = 0
            for src in self.modalities[m]:
                mine = [p - band for p in range(band, band + src.count) if p in positions]
                band += src.count
                if not mine:
                    raise InputError(f"{m} layer {src.layer.name!r} would keep no band: every band of it is empty "
                                     "or declared bad; leave the layer out")
                if len(mine) != src.count:
                    src.keep(mine)
                    i = self.sources.index(src)
                    # the layers say which bands: stacks opened from them (Dask workers) read the same
                    src.layer = self.layers[i] = dataclasses.replace(src.layer, bands=tuple(src.positions))

    # -- reading -----------------------------------------------------------------------
    def read(self, window: Window, halo: int = 0) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
        """Read ``window`` grown by ``halo`` pixels on each side.

        Returns per-modality float32 arrays (bands, h + 2*halo, w + 2*halo) and boolean
        per-band validity masks of the same shape; pixels outside the scene are invalid.
        """
        row0, col0 = int(window.row_off) - halo, int(window.col_off) - halo
        h, w = int(window.height) + 2 * halo, int(window.width) + 2 * halo
        r0, c0 = max(row0, 0), max(col0, 0)
        r1, c1 = min(row0 + h, self.height), min(col0 + w, self.width)
        inner = Window(c0, r0, max(c1 - c0, 0), max(r1 - r0, 0))
        data, valid = {}, {}
        for modality, srcs in self.modalities.items():
            count = sum(s.count for s in srcs)
            arr = np.zeros((count, h, w), dtype=np.float32)
            ok = np.zeros((count, h, w), dtype=bool)
            if inner.width > 0 and inner.height > 0:
                band = 0
                for src in srcs:
                    try:
                        got = src.rows.read(inner, int(window.col_off)) if src.rows is not None else None
                        d, v = got if got is not None else src.read(inner)
                    except READ_ERRORS as exc:  # a damaged or cut-off file, a lost connection
                        raise InputError(f"{src.layer.modality} layer {src.layer.path!r} cannot be read at rows "
                                         f"{r0}–{r1}, columns {c0}–{c1}: {exc} (a truncated or damaged file? check "
                                         "it with gdalinfo -checksum)") from exc
                    sl = (slice(band, band + src.count), slice(r0 - row0, r1 - row0), slice(c0 - col0, c1 - col0))
                    arr[sl] = d
                    ok[sl] = v
                    band += src.count
            data[modality] = arr
            valid[modality] = ok
        return data, valid

    def column_bands(self, tile: int, halo: int = 0) -> List[Tuple[int, int]]:
        """Column ranges a whole-scene pass visits one after the other: the whole width
        when the row buffers of all inputs fit in :func:`read_buffer_bytes`, else bands of a
        multiple of ``tile`` pixels (and of the widest tiled input's block width where
        that fits), at least :data:`MIN_BAND_BLOCKS` blocks wide."""
        per_column = sum(RowBuffer(s, halo).bytes_per_column(tile) for s in self.sources)
        budget = read_buffer_bytes()
        if per_column * self.width <= budget:
            return [(0, self.width)]
        tiled = [int(s.reader.block_shapes[0][1]) for s in self.sources
                 if not s.warped and int(s.reader.block_shapes[0][1]) < s.reader.width]
        block_w = max(tiled, default=1)
        unit = math.lcm(tile, block_w) if math.lcm(tile, block_w) <= max(self.width // 2, tile) else tile
        width = max(budget // per_column - 2 * block_w, MIN_BAND_BLOCKS * block_w, unit)  # halo blocks too
        width = max(width // unit * unit, unit)
        if width >= self.width:
            return [(0, self.width)]
        return [(c, min(c + width, self.width)) for c in range(0, self.width, width)]

    @contextlib.contextmanager
    def scan(self, tile: int, halo: int = 0) -> Iterator[List[Window]]:
        """A whole-scene pass reading each input block once: yields the windows of
        ``tile`` pixels (the same windows as :func:`tile_windows`) in the order to read
        them (column band by column band, row-major within a band) and serves
        :meth:`read` calls with ``halo`` from :class:`RowBuffer` s meanwhile. Reads in
        another order are still right, only read directly."""
        bands = self.column_bands(tile, halo)
        windows = [w for c0, c1 in bands for w in tile_windows(c1, self.height, tile, columns=(c0, c1))]
        for src in self.sources:
            src.rows = RowBuffer(src, halo, bands)
        try:
            yield windows
        finally:
            for src in self.sources:
                src.rows = None

    @contextlib.contextmanager
    def downward(self, window_rows: int) -> Iterator[RasterStack]:
        """Serve reads of windows of up to ``window_rows`` rows that move down the scene
        (row-major, any overlap) from whole block rows read once, when the full-width row
        buffers fit in :func:`read_buffer_bytes`; otherwise reads stay direct."""
        per_column = sum(RowBuffer(s, 0).bytes_per_column(window_rows) for s in self.sources)
        use = per_column * self.width <= read_buffer_bytes()
        if use:
            for src in self.sources:
                src.rows = RowBuffer(src, 0, [(0, self.width)])
        try:
            yield self
        finally:
            if use:
                for src in self.sources:
                    src.rows = None

    def close(self):
        for src in self.sources:
            src.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def pixel_validity(valid: Dict[str, np.ndarray]) -> np.ndarray:
    """A pixel is valid only where every band of every modality is valid."""
    out = None
    for v in valid.values():
        all_bands = v.all(axis=0)
        out = all_bands if out is None else (out & all_bands)
    return out


@dataclass
class BandStats:
    """Per-band mean and standard deviation of one modality, from a streamed pass."""

    mean: List[float] = field(default_factory=list)
    std: List[float] = field(default_factory=list)


def compute_band_stats(stack: RasterStack, tile: int = 512, job=None, empty_ok: bool = False):
    """Mean and std per band over all valid pixels, reading window by window (float64 sums).
    A band without any valid pixel is an error, or with ``empty_ok`` returned: then the
    result is (stats, valid pixel count per band and modality)."""
    sums = {m: np.zeros(c) for m, c in stack.band_counts().items()}
    sq = {m: np.zeros(c) for m, c in stack.band_counts().items()}
    n = {m: np.zeros(c) for m, c in stack.band_counts().items()}
    with stack.scan(tile) as windows:
        for i, window in enumerate(windows):
            if job is not None:
                job.step(i / len(windows), "computing band statistics")
            data, valid = stack.read(window)
            for m, arr in data.items():
                v = valid[m]
                x = np.where(v, arr, 0).astype(np.float64)
                sums[m] += x.sum(axis=(1, 2))
                sq[m] += (x * x).sum(axis=(1, 2))
                n[m] += v.sum(axis=(1, 2))
    stats = {}
    for m in sums:
        if (n[m] == 0).any() and not empty_ok:
            names = stack.band_names()[m]
            empty = [names[i] for i in np.flatnonzero(n[m] == 0)]
            raise InputError(f"{m} layer has bands without any valid pixel: {', '.join(empty[:5])}")
        mean = sums[m] / np.maximum(n[m], 1)
        var = np.maximum(sq[m] / np.maximum(n[m], 1) - mean * mean, 0.0)
        std = np.sqrt(var)
        std[std < 1e-12] = 1.0  # constant band: leave it centred, unscaled
        stats[m] = BandStats(mean.tolist(), std.tolist())
    return (stats, n) if empty_ok else stats


def normalise(data: Dict[str, np.ndarray], valid: Dict[str, np.ndarray], stats: Dict[str, BandStats]) -> Dict[str, np.ndarray]:
    """Standardise each band; invalid values become 0 (the band mean) so context pixels
    that are nodata or outside the scene contribute nothing unusual."""
    out = {}
    for m, arr in data.items():
        mean = np.asarray(stats[m].mean, dtype=np.float32)[:, None, None]
        std = np.asarray(stats[m].std, dtype=np.float32)[:, None, None]
        out[m] = np.where(valid[m], (arr - mean) / std, np.float32(0)).astype(np.float32)
    return out
