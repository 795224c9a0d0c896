"""Training and reference labels on the reference grid.

Labels come from a class raster (its nodata value, else 0, = unlabelled, or the values of
LABEL_NODATA; category names and colour table, or a legend file beside it, are kept) or from a
vector file (points or polygons, any CRS) with a class field
(string or integer), rasterised onto the reference grid. Each class has an integer
``code`` (the value written in class rasters, never 0), a ``name`` and an RGB colour.

Long module: raster and vector labels share the class model (codes, names, colours, lookup
tables) and one opener that tells them apart; the split of labels into training and test
writes label rasters with the same class tables.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from ..errors import LabelError
from .gdal_exceptions import gdal_exceptions
from .palette import assign_colours
from .raster import Grid, gtiff_profile, missing_file
from .windows import tile_windows

log = logging.getLogger("rsvl")


@dataclass
class ClassInfo:
    code: int
    name: str
    colour: Tuple[int, int, int]

    def to_json(self) -> dict:
        return {"code": self.code, "name": self.name, "colour": list(self.colour)}

    @classmethod
    def from_json(cls, d: dict) -> ClassInfo:
        return cls(int(d["code"]), str(d["name"]), tuple(int(c) for c in d["colour"]))


@dataclass
class LabelMap:
    """Class codes on the reference grid (0 = unlabelled) and the class table."""

    codes: np.ndarray  # (height, width) int32
    classes: List[ClassInfo]
    shift: int = 0  # 1 where 0 is a class: raster value v is code v + 1 (RasterLabels)

    def counts(self) -> dict:
        values, counts = np.unique(self.codes[self.codes > 0], return_counts=True)
        return {int(v): int(c) for v, c in zip(values, counts)}


def set_category_names(path: str, classes: Sequence[ClassInfo]) -> None:
    """Category names for the class codes (GDAL keeps them in the .aux.xml sidecar)."""

    names = [""] * (max(c.code for c in classes) + 1)
    names[0] = "nodata"
    for c in classes:
        names[c.code] = c.name
    write_category_names(path, names)


def write_category_names(path: str, names: Sequence[str]) -> None:
    """Category names, one per code from 0 (GDAL keeps them in the .aux.xml sidecar)."""
    from osgeo import gdal

    with gdal_exceptions():
        ds = gdal.Open(path, gdal.GA_Update)
        band = ds.GetRasterBand(1)
        band.GetMetadata()  # GDAL 3.6 GTiff loads PAM lazily; load it before changing it
        band.SetCategoryNames(names)
        band.SetDescription("class")
        band = None
        ds.FlushCache()
        ds = None


def _category_names(path: str) -> List[str]:
    from osgeo import gdal

    with gdal_exceptions():
        ds = gdal.Open(path)
        band = ds.GetRasterBand(1)
        band.GetMetadata()  # GDAL 3.6 GTiff loads the .aux.xml (PAM) lazily: touch it first
        names = band.GetCategoryNames() or []
        band = None
        ds = None
    return list(names)


class RasterLabels:
    """A class raster on ``grid`` (nearest-neighbour when it must be warped), read window
    by window; ``classes`` lists the codes present with their names and colours, and with
    ``legend`` also the codes the raster's legend names (category names) that no pixel
    holds: a class map's classes are its legend's, predicted or not."""

    def __init__(self, path: str, grid: Grid, tile: int = 2048, legend: bool = False,
                 nodata_values: Optional[Sequence[int]] = None, names_file: Optional[str] = None):
        """``nodata_values``: the values that mean "no label" (LABEL_NODATA; default: the
        raster's nodata value, else 0). When 0 is not among them it is a class, and every
        value v is written as class code v + 1 (0 stays "no label" in rsvl's class maps);
        the names keep the raster's values ("class 0", or the legend's names).
        ``names_file``: class names from a .qml/.clr/text file (see :mod:`.legend`); by
        default such a file beside the raster, else the raster's category names."""
        if missing_file(path):
            raise LabelError(f"label raster {path!r} does not exist")
        self.path, self.grid = path, grid
        self.lut = None
        self._ds = self._reader = rasterio.open(path)
        ds = self._ds
        try:
            if ds.count < 1:
                raise LabelError(f"label raster {path!r} has no band")
            if ds.count > 1:
                raise LabelError(f"label raster {path!r} has {ds.count} bands: a class raster has one band of class "
                                 "codes (an RGB rendering of a map is not one); give the band of codes alone "
                                 "(e.g. gdal_translate -b N)")
            if ds.crs is None:
                raise LabelError(f"label raster {path!r} has no CRS")
            dtype = np.dtype(ds.dtypes[0])
            if dtype.kind == "f":
                raise LabelError(
                    f"label raster {path!r} is floating point ({dtype}): class rasters must hold integer codes"
                )
            self.nodata = ds.nodata
            category = _category_names(path)
            self.no_label = self._no_label(ds, nodata_values, category)
            self.shift = 0 if 0 in self.no_label else 1
            fill = int(self.nodata) if self.nodata is not None and int(self.nodata) in self.no_label else \
                min(self.no_label)
            if grid.differences(Grid.of(ds)):
                # A finer label raster gives each grid pixel the most frequent class among the
                # label pixels it covers (mode; unlabelled pixels do not vote); a coarser or
                # equal one is sampled (nearest). 0 is unlabelled even without a nodata value
                # (GDAL's mode would otherwise turn a winning 0 into 1, next to nodata 0).
                finer = _finer_than(ds, grid)
                self._reader = WarpedVRT(
                    ds, crs=grid.crs, transform=grid.transform, width=grid.width, height=grid.height,
                    resampling=Resampling.mode if finer else Resampling.nearest, src_nodata=fill, nodata=fill,
                )
                if finer:
                    log.info("label raster %s is finer than the input grid: each pixel takes the most frequent "
                             "class of the labelled pixels it covers", os.path.basename(path))
            try:
                colormap = ds.colormap(1)
            except ValueError:
                colormap = {}
            present = set()
            for window in tile_windows(grid.width, grid.height, tile):
                present.update(int(v) for v in np.unique(self._read_raw(window)) if v > 0)
        except Exception:
            self.close()
            raise
        names = dict(enumerate(category))  # by raster value
        from .legend import find_legend, read_legend

        sidecar = names_file or find_legend(path)
        if sidecar:
            entries = read_legend(sidecar)
            names.update({v: name for v, (name, _) in entries.items()})
            colormap = {**colormap, **{v: (*rgb, 255) for v, (_, rgb) in entries.items() if rgb}}
            log.info("class names of %s from %s", os.path.basename(path), os.path.basename(sidecar))
        # legend classes no pixel holds
        self.legend_only = {v + self.shift for v, name in names.items()
                            if legend and v not in self.no_label and v + self.shift > 0 and (name or "").strip()
                            and not (v == 0 and _means_no_label(name))} - present
        codes = sorted(present | self.legend_only)
        _check_code_range(codes, f"label raster {path!r}")
        class_names = [names.get(c - self.shift) or f"class {c - self.shift}" for c in codes]
        table = [colormap.get(c - self.shift) for c in codes]
        colours = assign_colours(class_names, [tuple(t[:3]) if t is not None and any(t[:3]) else None for t in table])
        self.classes = [ClassInfo(c, n, rgb) for c, n, rgb in zip(codes, class_names, colours)]

    def _no_label(self, ds, nodata_values, category: Sequence[str]) -> set:
        """The raster values that mean "no label" (``category``: the raster's category names)."""
        if nodata_values is not None:
            return set(int(v) for v in nodata_values)
        if ds.nodata is None or not float(ds.nodata).is_integer():
            return {0}
        values = {int(ds.nodata)}
        if 0 not in values:
            if category and _means_no_label(category[0]):  # e.g. 0 "unclassified" beside nodata 255
                values.add(0)
            else:
                log.info("label raster %s: its nodata value %d means 'no label', and 0 is a class (LABEL_NODATA "
                         "'%d, 0' makes 0 'no label' too)", os.path.basename(self.path), int(ds.nodata),
                         int(ds.nodata))
        return values

    def _read_raw(self, window) -> np.ndarray:
        raw = self._reader.read(1, window=window).astype(np.int64)
        none = np.isin(raw, list(self.no_label))
        if (raw[~none] < 0).any():
            bad = sorted(set(raw[~none & (raw < 0)].tolist()))
            raise LabelError(f"label raster {self.path!r} has negative values ({', '.join(map(str, bad[:5]))}) that "
                             f"are not declared as 'no label': set LABEL_NODATA (e.g. {bad[0]}) if they mean no "
                             "label, or recode the classes to 1, 2, …")
        codes = raw + self.shift
        codes[none] = 0
        return codes

    def read(self, window) -> np.ndarray:
        """int32 class codes of ``window`` (0 = unlabelled), in matched codes if matched."""
        codes = self._read_raw(window)
        return (self.lut[codes] if self.lut is not None else codes).astype(np.int32)

    def match(self, classes: Sequence[ClassInfo]) -> None:
        """Read codes in the numbering of ``classes`` from now on (see :func:`class_lut`)."""
        self.lut, self.classes, self.matching = class_lut(self.classes, classes)

    def close(self):
        if self._reader is not self._ds:
            self._reader.close()
        self._ds.close()


_NO_LABEL_NAMES = re.compile(r"^\s*(no[ _-]?data|nodata|no[ _-]?label|unlabel+ed|unclassified|background|none|"
                             r"not? classified|void|ignore[d]?)\s*$", re.IGNORECASE)


def _means_no_label(name: Optional[str]) -> bool:
    return bool(name) and bool(_NO_LABEL_NAMES.match(name))


def _finer_than(ds, grid: Grid, factor: float = 1.01) -> bool:
    """Whether the dataset's pixels are smaller than the grid's, measured in the grid's CRS."""
    from rasterio.warp import calculate_default_transform

    if ds.crs == grid.crs:
        src_size = abs(ds.transform.a * ds.transform.e)
    else:
        transform, _, _ = calculate_default_transform(ds.crs, grid.crs, ds.width, ds.height, *ds.bounds)
        src_size = abs(transform.a * transform.e)
    return src_size * factor < abs(grid.transform.a * grid.transform.e)


def read_label_raster(path: str, grid: Grid, nodata_values=None, names_file=None) -> LabelMap:
    """Read a whole class raster onto ``grid`` (``nodata_values``, ``names_file``: see
    :class:`RasterLabels`)."""
    src = RasterLabels(path, grid, nodata_values=nodata_values, names_file=names_file)
    try:
        return LabelMap(src.read(Window(0, 0, grid.width, grid.height)), src.classes, src.shift)
    finally:
        src.close()


def _open_vector(path: str, layer_name: Optional[str]):
    from osgeo import ogr

    if missing_file(path.split("|")[0]):
        raise LabelError(f"vector labels {path!r} does not exist")
    # QGIS style "file.gpkg|layername=LULC"
    if "|layername=" in path:
        path, layer_name = path.split("|layername=", 1)
        layer_name = layer_name.split("|")[0]
    try:
        ds = ogr.Open(path)
    except RuntimeError as exc:
        raise LabelError(f"vector labels {path!r} cannot be read by OGR: {exc}") from exc
    if ds is None:
        raise LabelError(f"vector labels {path!r} cannot be read by OGR")
    layer = ds.GetLayerByName(layer_name) if layer_name else ds.GetLayer(0)
    if layer is None:
        raise LabelError(f"vector labels {path!r} has no layer {layer_name!r}")
    return ds, layer


def class_dtype(classes: Sequence[ClassInfo]) -> str:
    """The pixel type of a class map: 8 bits up to code 255, else 16 (:data:`MAX_CODE`)."""
    return "uint8" if max(c.code for c in classes) <= 255 else "uint16"


MAX_CODE = 65535  # class rasters are 8- or 16-bit: GeoTIFF colour tables and QGIS palettes stop there


def _check_code_range(codes, what: str) -> None:
    big = [int(c) for c in codes if int(c) > MAX_CODE]
    if big:
        raise LabelError(f"{what} has class codes above {MAX_CODE} ({', '.join(map(str, big[:5]))}): class maps are "
                         "16-bit rasters with a colour table; recode the classes to 1…65535 (e.g. with the "
                         "Reclassify by table algorithm)")


def _is_whole_number(value: str) -> bool:
    """Whether a text value is an integer code ("7", " 12 ", "-1", not "1.5" or "x")."""
    try:
        int(value.strip())
    except ValueError:
        return False
    return True


def _looks_numeric(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def vector_labels(path, grid, class_field, layer_name=None, class_name_field=None) -> VectorLabels:
    with gdal_exceptions():
        return _vector_labels(path, grid, class_field, layer_name, class_name_field)


def _vector_labels(path, grid, class_field, layer_name, class_name_field=None) -> VectorLabels:
    """Rasterise points/polygons onto ``grid`` by the values of ``class_field``.

    String values become classes named after them with codes 1..C in sorted order;
    integer values are used as codes (0 and NULL = unlabelled), named after
    ``class_name_field`` when given (else "class N"). Whole numbers in a decimal (Real)
    field, or in a text field whose every value is one ("1", "10"), are integer codes too;
    other decimals are refused.
    """
    from osgeo import ogr, osr

    ds, layer = _open_vector(path, layer_name)
    defn = layer.GetLayerDefn()
    fields = [defn.GetFieldDefn(i).GetName() for i in range(defn.GetFieldCount())]
    if class_field not in fields:
        raise LabelError(
            f"CLASS_FIELD {class_field!r} is not a field of {os.path.basename(path)!r}; fields are: {', '.join(fields)}"
        )
    field_defn = defn.GetFieldDefn(defn.GetFieldIndex(class_field))
    is_real = field_defn.GetType() == ogr.OFTReal
    is_int = field_defn.GetType() in (ogr.OFTInteger, ogr.OFTInteger64) or is_real
    if class_name_field and class_name_field not in fields:
        raise LabelError(f"CLASS_NAME_FIELD {class_name_field!r} is not a field of {os.path.basename(path)!r}; "
                         f"fields are: {', '.join(fields)}")
    names_of = defaultdict(Counter)  # class value -> how often each name goes with it
    fractional = set()

    target = osr.SpatialReference()
    target.ImportFromWkt(grid.crs.to_wkt())
    target.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    source = layer.GetSpatialRef()
    transform = None
    if source is not None:
        source.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        if not source.IsSame(target):
            transform = osr.CoordinateTransformation(source, target)
    else:
        log.warning("vector labels %s have no CRS; assuming the reference grid CRS", path)

    raw: List[Tuple[dict, object]] = []
    skipped = repaired = unrepairable = 0
    for feature in layer:
        geom = feature.GetGeometryRef()
        value = feature.GetField(class_field)
        if is_real and value is not None:
            if not math.isfinite(value) or value != int(value):  # NaN, infinite or not a whole number
                fractional.add(value)
                continue
            value = int(value)
        if geom is None or value is None or (isinstance(value, str) and not value.strip()) or (is_int and int(value) == 0):
            skipped += 1
            continue
        geom = geom.Clone()
        if not geom.IsValid():
            # Self-intersections, bow-ties, unclosed or duplicated rings: GEOS's MakeValid
            # keeps the area the user drew (a bow-tie becomes its two triangles), where the
            # rasteriser would burn whatever its scanline rule makes of the broken ring.
            fixed = geom.MakeValid()
            if fixed is None or fixed.IsEmpty():
                unrepairable += 1
                continue
            geom, repaired = fixed, repaired + 1
        if transform is not None:
            geom.Transform(transform)
        raw.append((json.loads(geom.ExportToJson()), value.strip() if isinstance(value, str) else int(value)))
        if class_name_field:
            name = feature.GetField(class_name_field)
            if name is not None and str(name).strip():
                names_of[raw[-1][1]][str(name).strip()] += 1
    del layer, ds  # close the OGR data source
    base = os.path.basename(path)
    if skipped:
        log.warning("%s: %d feature(s) without geometry or with an empty, NULL%s value in %r were skipped",
                    base, skipped, " or 0" if is_int else "", class_field)
    if repaired:
        log.warning("%s: %d invalid geometrie(s) (self-intersections, bow-ties) were repaired with MakeValid; "
                    "check them (Vector ▸ Geometry Tools ▸ Check Validity)", base, repaired)
    if unrepairable:
        log.warning("%s: %d invalid geometrie(s) could not be repaired and were skipped", base, unrepairable)
    if fractional:
        raise LabelError(f"CLASS_FIELD {class_field!r} of {base!r} holds decimal values that are not whole numbers "
                         f"({', '.join(f'{v:g}' for v in sorted(fractional)[:5])}): class codes must be whole "
                         "numbers (0 = unlabelled); round or recode the field")
    if not is_int and raw and all(_is_whole_number(v) for _, v in raw):
        # A text field of codes ("1", "2", "10"): codes, not names sorted as text ("10" < "2").
        log.info("CLASS_FIELD %r holds whole numbers as text: they are used as class codes (0 = unlabelled)",
                 class_field)
        zero = sum(1 for _, v in raw if int(v) == 0)
        if zero:
            log.warning("%s: %d feature(s) with 0 in %r were skipped (0 = unlabelled)", base, zero, class_field)
        as_codes = defaultdict(Counter)
        for v, c in names_of.items():
            as_codes[int(v)].update(c)
        names_of = as_codes
        raw = [(geom, int(v)) for geom, v in raw if int(v) != 0]
        is_int = True
    if class_name_field and not is_int:
        log.info("CLASS_NAME_FIELD is ignored: CLASS_FIELD %r holds the class names itself", class_field)
    if not is_int and raw:
        numeric = {v for _, v in raw if _looks_numeric(v)}
        if numeric and len(numeric) < len({v for _, v in raw}):
            log.warning("CLASS_FIELD %r mixes numbers (%s) and names: every distinct value is its own class; if "
                        "the numbers are codes of named classes, clean the field first",
                        class_field, ", ".join(sorted(numeric)[:5]))
    if not raw:
        raise LabelError(f"vector labels {os.path.basename(path)!r} has no feature with a value in {class_field!r}")

    values = sorted({v for _, v in raw}, key=lambda v: (str(type(v)), v))
    if is_int:
        if min(values) < 0:
            raise LabelError(f"CLASS_FIELD {class_field!r} has negative values: use 1, 2, … (0 = unlabelled)")
        _check_code_range(values, f"CLASS_FIELD {class_field!r} of {base!r}")
        mapping = {v: int(v) for v in values}
        names = []
        for v in values:
            seen = names_of.get(int(v), Counter())
            if len(seen) > 1:
                log.warning("CLASS_NAME_FIELD %r gives code %d several names (%s): using the most frequent",
                            class_name_field, v, ", ".join(sorted(seen)))
            names.append(seen.most_common(1)[0][0] if seen else f"class {v}")
        out_classes = [ClassInfo(int(v), n, rgb) for v, n, rgb in zip(values, names, assign_colours(names))]
    else:
        mapping = {v: i + 1 for i, v in enumerate(values)}
        out_classes = [ClassInfo(i + 1, str(v), rgb)
                       for i, (v, rgb) in enumerate(zip(values, assign_colours([str(v) for v in values])))]

    return VectorLabels(grid, [(geom, mapping[v]) for geom, v in raw], out_classes,
                        by_name=not is_int or has_names(out_classes))


class VectorLabels:
    """Rasterised points/polygons on ``grid``, window by window."""

    def __init__(self, grid: Grid, shapes, classes: List[ClassInfo], by_name: bool):
        from rasterio.features import bounds

        self.grid, self.classes, self.by_name = grid, classes, by_name
        self.lut = None
        # Polygons that cover no pixel centre (smaller or thinner than a pixel) would vanish:
        # they are burnt into every pixel they touch, before the others, so they never
        # overwrite a larger polygon's pixels.
        small, normal, outside = [], [], 0
        for shape in shapes:
            box = bounds(shape[0])  # (minx, miny, maxx, maxy)
            pixels = self._pixel_count(shape[0], box)
            if pixels is None:
                outside += 1
            elif pixels == 0:
                small.append((shape, box))
            else:
                normal.append((shape, box))
        if small:
            log.info("%d polygon(s) cover no pixel centre (smaller than a pixel): they label the pixels they touch",
                     len(small))
        if outside and not small and not normal:
            raise LabelError(
                f"none of the {outside} labelled feature(s) lies on the input grid: check that the labels and the "
                "input layers show the same place (and that the labels' CRS is right)")
        if outside:
            log.warning("%d feature(s) lie outside the input grid and label nothing", outside)
        self.shapes = [shape for shape, _ in small + normal]
        self.n_small = len(small)
        self.bounds = np.array([box for _, box in small + normal]).reshape(-1, 4)

    def _pixel_count(self, geom, box):
        """Pixel centres a polygon with bounds ``box`` covers on the grid (None: it lies
        outside the grid)."""
        from rasterio.features import rasterize
        from rasterio.windows import from_bounds
        from rasterio.windows import transform as window_transform

        x0, y0, x1, y1 = box
        if geom["type"] not in ("Polygon", "MultiPolygon"):  # points and lines burn the pixels they fall on
            (ax, ay), (bx, by) = self.grid.transform * (0, 0), self.grid.transform * (self.grid.width, self.grid.height)
            outside = x1 < min(ax, bx) or x0 > max(ax, bx) or y1 < min(ay, by) or y0 > max(ay, by)
            return None if outside else 1
        full = Window(0, 0, self.grid.width, self.grid.height)
        w = from_bounds(x0, y0, x1, y1, self.grid.transform)
        col, row = math.floor(w.col_off), math.floor(w.row_off)
        try:
            window = Window(col, row, math.ceil(w.col_off + w.width) - col + 1,
                            math.ceil(w.row_off + w.height) - row + 1).intersection(full)
        except rasterio.errors.WindowError:
            return None
        burnt = rasterize([(geom, 1)], out_shape=(int(window.height), int(window.width)),
                          transform=window_transform(window, self.grid.transform), fill=0, dtype="uint8")
        return int(burnt.sum())

    def read(self, window) -> np.ndarray:
        from rasterio.features import rasterize
        from rasterio.windows import bounds as window_bounds
        from rasterio.windows import transform as window_transform

        left, bottom, right, top = window_bounds(window, self.grid.transform)
        x0, x1 = min(left, right), max(left, right)
        y0, y1 = min(bottom, top), max(bottom, top)
        b = self.bounds
        hit = np.flatnonzero((b[:, 0] <= x1) & (b[:, 2] >= x0) & (b[:, 1] <= y1) & (b[:, 3] >= y0))
        shape = (int(window.height), int(window.width))
        if hit.size == 0:
            return np.zeros(shape, dtype=np.int32)
        transform = window_transform(window, self.grid.transform)
        codes = np.zeros(shape, dtype=np.int32)
        small, normal = hit[hit < self.n_small], hit[hit >= self.n_small]
        if small.size:
            rasterize([self.shapes[i] for i in small], out=codes, transform=transform, all_touched=True)
        if normal.size:
            rasterize([self.shapes[i] for i in normal], out=codes, transform=transform)
        return self.lut[codes].astype(np.int32) if self.lut is not None else codes

    def match(self, classes: Sequence[ClassInfo]) -> None:
        """Read codes in the numbering of ``classes`` from now on (see :func:`class_lut`)."""
        self.lut, self.classes, self.matching = class_lut(self.classes, classes, self.by_name)

    def close(self):
        pass


def has_names(classes: Sequence[ClassInfo]) -> bool:
    """Whether classes carry real names (category names, a text class field), not "class N"."""
    return any(not c.name.startswith("class ") for c in classes)


def class_lut(ref_classes: Sequence[ClassInfo], classes: Sequence[ClassInfo], by_name: bool = True):
    """A look-up table from reference codes to the codes of ``classes`` (a
    classification's classes), the reference classes in those codes, and the rule used
    ("name" or "code").

    When both sides have names (text class field, raster category names) classes are
    matched by name, case-insensitively; otherwise by code. Reference classes that match
    none keep a code of their own, so they count as errors, and are logged."""
    named = by_name and has_names(ref_classes) and has_names(classes)
    by_key = {(c.name.lower() if named else c.code): c for c in classes}
    next_code = max([c.code for c in classes] + [c.code for c in ref_classes]) + 1
    lut = np.zeros(max([0] + [c.code for c in ref_classes]) + 1, dtype=np.int32)
    out_classes, unmatched = [], []
    for c in ref_classes:
        target = by_key.get(c.name.lower() if named else c.code)
        if target is None:
            target = ClassInfo(next_code, c.name, c.colour)
            next_code += 1
            unmatched.append(c.name)
        lut[c.code] = target.code
        out_classes.append(target)
    if unmatched:
        log.warning("reference classes not among the classification's classes (%s): %s — counted as errors",
                    ", ".join(c.name for c in classes), ", ".join(unmatched))
    return lut, out_classes, "name" if named else "code"


def _gdal_opens(path: str, flags: int):
    """The GDAL dataset ``path`` opens as (``gdal.OF_RASTER`` / ``OF_VECTOR``), or None;
    quietly: probing a vector file as a raster is no error worth logging."""
    from osgeo import gdal

    gdal.PushErrorHandler("CPLQuietErrorHandler")
    try:
        with gdal_exceptions():
            return gdal.OpenEx(path, flags)
    except RuntimeError:
        return None
    finally:
        gdal.PopErrorHandler()


def _opens_as_vector(path: str) -> bool:
    from osgeo import gdal

    ds = _gdal_opens(path, gdal.OF_VECTOR)
    return ds is not None and ds.GetLayerCount() > 0


def _opens_as_raster(path: str) -> bool:
    from osgeo import gdal

    ds = _gdal_opens(path, gdal.OF_RASTER)
    return ds is not None and ds.RasterCount > 0 and ds.RasterXSize > 0


def open_labels(path: str, grid: Grid, class_field: Optional[str] = None,
                classes: Optional[Sequence[ClassInfo]] = None, class_name_field: Optional[str] = None,
                nodata_values=None, names_file: Optional[str] = None):
    """A window reader (``read(window)``, ``classes``, ``close()``) for a class raster or
    a vector file, decided by what GDAL/OGR can open it as; with ``classes``, codes are
    expressed in those classes' numbering (see :func:`class_lut`). ``nodata_values``
    (LABEL_NODATA: a list, or text such as ``"-1, 255"``) and ``names_file`` (CLASS_NAMES)
    apply to class rasters (see :class:`RasterLabels`)."""
    from .legend import parse_nodata_values

    nodata_values = parse_nodata_values(nodata_values)
    base = path.split("|")[0]
    if missing_file(base):
        raise LabelError(f"label file {path!r} does not exist")
    if "|" not in path and _opens_as_raster(path):
        src = RasterLabels(path, grid, nodata_values=nodata_values, names_file=names_file)
    elif not _opens_as_vector(base):
        raise LabelError(f"label file {path!r} can be read neither as a raster nor as vector data (damaged, or not a "
                         "GIS file?): give a class raster (e.g. GeoTIFF) or points/polygons (e.g. GeoPackage)")
    elif not class_field:
        raise LabelError(f"CLASS_FIELD is required for vector labels ({os.path.basename(base)!r})")
    else:
        src = vector_labels(path, grid, class_field, class_name_field=class_name_field)
    if classes is not None:
        src.match(classes)
    return src


@dataclass
class SplitResult:
    classes: List[ClassInfo]  # the input's classes (codes, names, colours)
    first: dict  # pixel count per class code in the first map
    second: dict


def split_label_raster(path: str, fraction: float, seed: int, first_path: str, second_path: str,
                       mode: str = "random", block_size: int = 20, buffer: int = 0,
                       progress=None, is_cancelled=None, nodata_values=None,
                       names_file: Optional[str] = None) -> SplitResult:
    """Write a seeded split of a class raster into two class rasters on the same grid (same
    colour table and category names): ``fraction`` of each class's pixels in the first
    (e.g. training), the rest in the second (e.g. test), at random or spatially apart
    (``mode``, ``block_size``, ``buffer``: see :mod:`rsvl.backend.data.splits`).
    ``nodata_values`` and ``names_file`` read the input as training does (LABEL_NODATA,
    CLASS_NAMES: :class:`RasterLabels`); when 0 is a class the outputs hold rsvl's codes
    (value v as v + 1, 0 = no label) with the classes' names and colours."""
    from ..data.splits import split_codes
    from ..runtime.jobs import Job
    from .atomic import atomic_path, check_geotiff, check_outputs
    from .legend import parse_nodata_values

    check_outputs([("OUTPUT_FIRST", first_path, 0), ("OUTPUT_SECOND", second_path, 0)], inputs=[("INPUT", path)])
    check_geotiff([("OUTPUT_FIRST", first_path), ("OUTPUT_SECOND", second_path)])
    job = Job(progress, is_cancelled)
    job.step(0.0, "reading labels")
    with rasterio.open(path) as src:
        grid = Grid.of(src)
        try:
            colormap = src.colormap(1)
        except ValueError:
            colormap = None
    labels = read_label_raster(path, grid, parse_nodata_values(nodata_values), names_file)
    legend = _category_names(path)
    if labels.shift or names_file:  # the outputs' codes and names are rsvl's, not the input's values
        colormap = {0: (0, 0, 0, 0), **{c.code: (*c.colour, 255) for c in labels.classes}}
        legend = []
    job.step(0.3, "splitting")
    first, second = split_codes(labels.codes, fraction, seed, mode, block_size, buffer,
                                names={c.code: c.name for c in labels.classes})
    dtype = class_dtype(labels.classes)
    # The class maps' GeoTIFF profile, whatever the input's format (ENVI, HFA, VRT, …).
    profile = gtiff_profile(grid, 1, dtype, 0)
    for i, (codes, out) in enumerate(((first, first_path), (second, second_path))):
        job.step(0.6 + 0.2 * i, "writing")
        with atomic_path(out) as tmp:
            with rasterio.open(tmp, "w", **profile) as dst:
                dst.write(codes.astype(dtype), 1)
                if colormap:
                    dst.write_colormap(1, colormap)
            if legend:  # the input's whole legend, classes without pixels in this part included
                write_category_names(tmp, legend)
            else:
                set_category_names(tmp, labels.classes)
    job.report(1.0, "split written")
    return SplitResult(labels.classes, {c.code: int((first == c.code).sum()) for c in labels.classes},
                       {c.code: int((second == c.code).sum()) for c in labels.classes})


def prompt_classes(prompts: Sequence[str], model_classes: Sequence[ClassInfo]) -> List[ClassInfo]:
    """Codes 1..N for the prompts, coloured as people read maps: a prompt that names one of
    the model's classes takes that class's colour, others a land-cover lexicon's or a
    qualitative palette's (see :mod:`rsvl.backend.io.palette`)."""
    by_name = {c.name.strip().lower(): tuple(c.colour) for c in model_classes}
    colours = assign_colours(prompts, [by_name.get(p.strip().lower()) for p in prompts])
    return [ClassInfo(i + 1, p, rgb) for i, (p, rgb) in enumerate(zip(prompts, colours))]
