"""Reading one input layer: :class:`LayerSource` (an opened layer, possibly warped onto the
reference grid: band names, nodata, GDAL's mask kind and validity) and :class:`RowBuffer` (a
whole-scene pass that reads each GDAL block once). :class:`~rsvl.backend.io.raster.RasterStack`
stacks the sources of all inputs."""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
from rasterio.windows import Window


def _band_names(dataset, layer) -> List[str]:
    names = []
    for i, desc in enumerate(dataset.descriptions, start=1):
        names.append(desc if desc else f"{layer.name}:band{i}")
    return names


# Native types whose conversion to float32 is exact: kept as they are in the row buffer
# (half the memory of float32 for 16-bit data); others are converted by GDAL on reading.
_EXACT_IN_FLOAT32 = {"uint8", "int8", "uint16", "int16", "float32"}


def _mask_kind(reader, indexes: Sequence[int]) -> Tuple[str, str]:
    """(type to read in, kind of GDAL mask) of bands ``indexes``: the file's own type where
    it converts exactly to float32, else float32; and the mask: ``none`` (all valid),
    ``dataset`` (one mask for all bands: internal mask, alpha), ``nodata`` (GDAL's mask is
    value != nodata on exact integers: computed from the data, never read) or ``bands``
    (read per band)."""
    from rasterio.enums import MaskFlags

    dtype = reader.dtypes[indexes[0] - 1] if indexes else "float32"
    same = all(reader.dtypes[i - 1] == dtype for i in indexes)
    out_dtype = dtype if same and dtype in _EXACT_IN_FLOAT32 else "float32"
    flags = [set(reader.mask_flag_enums[i - 1]) for i in indexes]
    nd = reader.nodata
    if all(f == {MaskFlags.all_valid} for f in flags):
        return out_dtype, "none"
    if all(MaskFlags.per_dataset in f for f in flags):
        return out_dtype, "dataset"
    if (np.issubdtype(np.dtype(out_dtype), np.integer) and all(f == {MaskFlags.nodata} for f in flags)
            and nd is not None and float(nd).is_integer()
            and np.iinfo(out_dtype).min <= nd <= np.iinfo(out_dtype).max):
        return out_dtype, "nodata"
    return out_dtype, "bands"


class LayerSource:
    """An opened layer, possibly warped onto the reference grid."""

    def __init__(self, layer, dataset, reader, warped: bool):
        """``layer``: the :class:`~rsvl.backend.io.raster.LayerSpec` the user gave."""
        from rasterio.enums import ColorInterp

        self.layer = layer
        self.dataset = dataset
        self.reader = reader
        self.warped = warped
        # An alpha band is a mask, not data (GDAL itself uses it as the mask only for 2- and
        # 4-band images, so rsvl applies it for any band count).
        self.indexes = [i for i, ci in enumerate(dataset.colorinterp, start=1) if ci != ColorInterp.alpha]
        alphas = [i for i, ci in enumerate(dataset.colorinterp, start=1) if ci == ColorInterp.alpha]
        self.alpha = alphas[0] if alphas else None
        if warped and reader.count > dataset.count:
            # The warped VRT's own alpha band (add_alpha): 0 outside the layer's coverage, so a
            # layer without a nodata value is not read as zeros there.
            self.coverage_alpha = reader.count
        else:
            self.coverage_alpha = None
        self.count = len(self.indexes)
        names = _band_names(dataset, layer)
        self.band_names = [names[i - 1] for i in self.indexes]
        self.nodata = layer.nodata if layer.nodata is not None else dataset.nodata
        self.rows: Optional[RowBuffer] = None  # set while the stack is read top to bottom
        self.out_dtype, self.mask = _mask_kind(reader, self.indexes)
        from .bands import band_metadata

        self.positions = list(range(self.count))  # of the bands read, among the layer's data bands
        self.wavelengths, self.declared_bad = band_metadata(dataset, self.indexes)
        if layer.bands is not None:
            if any(not 0 <= p < self.count for p in layer.bands):
                from ..errors import InputError

                raise InputError(f"{layer.modality} layer {layer.name!r} has {self.count} bands; bands "
                                 f"{[p + 1 for p in layer.bands if not 0 <= p < self.count][:5]} were asked for")
            self.keep(layer.bands)

    def keep(self, positions: Sequence[int]) -> None:
        """Read only the bands at ``positions`` (0-based, among the bands read now) from now on."""
        self.indexes = [self.indexes[p] for p in positions]
        self.positions = [self.positions[p] for p in positions]
        self.band_names = [self.band_names[p] for p in positions]
        self.wavelengths = [self.wavelengths[p] for p in positions]
        self.declared_bad = [self.declared_bad[p] for p in positions]
        self.count = len(self.indexes)
        self.out_dtype, self.mask = _mask_kind(self.reader, self.indexes)

    def validity(self, data: np.ndarray, band_mask: Optional[np.ndarray], pixel_mask: Optional[np.ndarray]) -> np.ndarray:
        """Per-band validity of float32 ``data``: finite, not the nodata value, GDAL's mask
        (computed from the data when it is only "value != nodata"), ``band_mask`` (GDAL's
        per-band masks, read only for the ``bands`` kind) and ``pixel_mask`` (per dataset
        mask, alpha, warp coverage: :meth:`pixel_validity`)."""
        valid = np.isfinite(data)
        if self.nodata is not None and not (isinstance(self.nodata, float) and math.isnan(self.nodata)):
            valid &= data != np.float32(self.nodata)
        if self.mask == "nodata" and self.reader.nodata != self.nodata:
            valid &= data != np.float32(self.reader.nodata)  # exact: integers of 16 bits or fewer
        if band_mask is not None:
            valid &= band_mask
        if pixel_mask is not None:
            valid &= pixel_mask[None]
        return valid

    def band_masks(self, window: Window) -> Optional[np.ndarray]:
        """GDAL's per-band masks of ``window`` where they cannot be derived from the data."""
        return self.reader.read_masks(indexes=self.indexes, window=window) > 0 if self.mask == "bands" else None

    def pixel_validity(self, window: Window) -> Optional[np.ndarray]:
        """The (h, w) part of the validity shared by all bands (a per-dataset mask, alpha,
        warp coverage), or None when there is none."""
        pix = None
        if self.mask == "dataset":
            pix = self.reader.read_masks(self.indexes[0], window=window) > 0
        for extra in (self.alpha, self.coverage_alpha):
            if extra is not None:
                a = self.reader.read(extra, window=window) > 0
                pix = a if pix is None else (pix & a)
        return pix

    def read(self, window: Window) -> Tuple[np.ndarray, np.ndarray]:
        """float32 data (bands, h, w) and a per-band validity mask for an in-bounds window."""
        data = self.reader.read(indexes=self.indexes, window=window, out_dtype="float32")
        return data, self.validity(data, self.band_masks(window), self.pixel_validity(window))

    def close(self):
        if self.reader is not self.dataset:
            self.reader.close()
        self.dataset.close()


class RowBuffer:
    """One source's rows for a whole-scene pass, each GDAL block read once.

    Windowed reads that cut through blocks read each block once per window touching it:
    a 512-row tile row is read by every 256-pixel window row overlapping it (halo
    included), a band-interleaved strip by every window across the width. Here a pass
    visits windows column band by column band (:meth:`RasterStack.scan`), top to bottom
    within a band, and each request is served from chunks of whole block rows spanning
    the band plus its halo (at least :attr:`MIN_ROWS` rows, so one-row strips are not
    read a row at a time); a chunk is dropped once the windows have moved below it.

    Memory: the chunks the current window row overlaps, about two block rows of the band
    (in the file's own type where that converts exactly to float32, plus one byte per
    pixel of mask where GDAL's mask is not derived from the data). It depends on the band
    width and the block height, never on the scene size.

    Results equal :meth:`LayerSource.read`: the same float32 values and the same validity
    (finite, not the nodata value, GDAL's mask, alpha and warp coverage)."""

    MIN_ROWS = 64

    def __init__(self, src: LayerSource, halo: int, bands: Sequence[Tuple[int, int]] = ()):
        self.src = src
        reader = src.reader
        block_h, block_w = (max(int(v), 1) for v in reader.block_shapes[0])
        self.chunk_rows = block_h * max(1, -(-self.MIN_ROWS // block_h))
        # Tiled files are read in whole tiles: band edges go out to tile edges. Strips and
        # warped layers are read for the columns the band needs (uncompressed strips are
        # read for exactly those bytes).
        self.block_w = block_w if (not src.warped and block_w < reader.width) else 1
        self.halo = halo
        self.bands = list(bands)
        self.band = -1
        self.cols = (0, reader.width)
        self.chunks: List[Tuple[int, np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]] = []
        self.next_row = 0
        self.out_dtype, self.mask = src.out_dtype, src.mask

    def bytes_per_column(self, tile: int) -> int:
        """Most bytes held per column of the band: the rows a window row spans (plus
        halo) rounded out to chunks, times data, stored masks and alphas per pixel."""
        rows = (-(-(tile + 2 * self.halo) // self.chunk_rows) + 1) * self.chunk_rows
        per_pixel = len(self.src.indexes) * np.dtype(self.out_dtype).itemsize
        per_pixel += len(self.src.indexes) if self.mask == "bands" else 0
        per_pixel += int(self.mask == "dataset") + int(self.src.alpha is not None) + int(self.src.coverage_alpha is not None)
        return rows * per_pixel

    def _band_columns(self, band: int) -> Tuple[int, int]:
        width = self.src.reader.width
        c0, c1 = self.bands[band]
        lo, hi = max(c0 - self.halo, 0), min(c1 + self.halo, width)
        lo -= lo % self.block_w
        hi = min(-(-hi // self.block_w) * self.block_w, width)
        return lo, hi

    def _read_chunk(self) -> None:
        src, reader = self.src, self.src.reader
        row0 = self.next_row
        lo, hi = self.cols
        win = Window(lo, row0, hi - lo, min(self.chunk_rows, reader.height - row0))
        data = reader.read(indexes=src.indexes, window=win, out_dtype=self.out_dtype)
        self.chunks.append((row0, data, src.band_masks(win), src.pixel_validity(win)))
        self.next_row = row0 + int(win.height)

    def read(self, inner: Window, col: int) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        """Data and validity of ``inner`` (a window plus halo, within the raster) for the
        window starting at column ``col``; None when the request goes back up (the caller
        then reads directly)."""
        band = max(i for i, (c0, _) in enumerate(self.bands) if c0 <= col) if col >= self.bands[0][0] else 0
        r0, r1 = int(inner.row_off), int(inner.row_off) + int(inner.height)
        if band != self.band:
            self.band, self.cols, self.chunks, self.next_row = band, self._band_columns(band), [], 0
        first = self.chunks[0][0] if self.chunks else self.next_row
        lo, hi = self.cols
        c0, c1 = int(inner.col_off) - lo, int(inner.col_off) + int(inner.width) - lo
        if r0 < first or c0 < 0 or c1 > hi - lo:
            return None
        while self.chunks and self.chunks[0][0] + self.chunks[0][1].shape[1] <= r0:
            self.chunks.pop(0)  # wholly above the window: later windows of the band start no higher
        if not self.chunks:
            self.next_row = max(self.next_row, r0 - r0 % self.chunk_rows)
        while self.next_row < r1:
            self._read_chunk()
        parts = [c for c in self.chunks if c[0] < r1 and c[0] + c[1].shape[1] > r0]

        def rows(i, k):
            return np.concatenate([p[k][..., max(r0 - p[0], 0):r1 - p[0], c0:c1] for p in parts], axis=i)

        data = rows(1, 1)
        if data.dtype != np.float32:
            data = data.astype(np.float32)
        return data, self.src.validity(data, rows(1, 2) if parts[0][2] is not None else None,
                                       rows(0, 3) if parts[0][3] is not None else None)
