"""Label rasterisation (issue 13, item 7): finer label rasters by mode, polygons smaller
than a pixel kept, and class names for integer class fields."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin

from rsvl.backend.io.labels import open_labels
from rsvl.backend.io.raster import Grid

UTM = CRS.from_epsg(32633)
X0, Y0 = 465000.0, 5080000.0
GRID = Grid(UTM, from_origin(X0, Y0, 10.0, 10.0), 4, 4)


def _write(path, codes, pixel, nodata=0):
    with rasterio.open(path, "w", driver="GTiff", width=codes.shape[1], height=codes.shape[0], count=1,
                       dtype="uint8", crs=UTM, transform=from_origin(X0, Y0, pixel, pixel), nodata=nodata) as dst:
        dst.write(codes.astype(np.uint8), 1)
    return str(path)


def test_finer_label_raster_takes_the_most_frequent_code(tmp_path):
    # 2 m labels under a 10 m grid: each 10 m pixel is 5 x 5 label pixels.
    fine = np.ones((20, 20), np.uint8)  # mostly class 1 ...
    for r in range(4):
        for c in range(4):
            fine[r * 5 + 1:r * 5 + 4, c * 5 + 1:c * 5 + 4] = 2  # ... with 9 of 25 pixels of class 2 in the middle
    fine[15:20, 15:20] = 0
    fine[15:17, 15:20] = 3  # bottom-right pixel: 10 of 25 labelled, all class 3: unlabelled pixels do not vote
    fine[0:5, 15:20] = 0  # top-right pixel: nothing labelled
    labels = open_labels(_write(tmp_path / "fine.tif", fine, 2.0), GRID)
    try:
        codes = labels.read(rasterio.windows.Window(0, 0, 4, 4))
    finally:
        labels.close()
    expected = np.ones((4, 4), np.int32)
    expected[3, 3], expected[0, 3] = 3, 0
    assert np.array_equal(codes, expected)  # nearest would pick the centre pixel: class 2 almost everywhere


def test_coarser_label_raster_is_sampled(tmp_path):
    coarse = np.array([[1, 2], [3, 4]], np.uint8)  # 20 m
    labels = open_labels(_write(tmp_path / "coarse.tif", coarse, 20.0), GRID)
    try:
        codes = labels.read(rasterio.windows.Window(0, 0, 4, 4))
    finally:
        labels.close()
    assert np.array_equal(codes, np.kron(coarse, np.ones((2, 2), np.uint8)))


def _gpkg(path, features, int_field=False):
    from osgeo import ogr, osr

    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = ds.CreateLayer("labels", srs, ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("code", ogr.OFTInteger if int_field else ogr.OFTString))
    layer.CreateField(ogr.FieldDefn("label", ogr.OFTString))
    for wkt, code, label in features:
        f = ogr.Feature(layer.GetLayerDefn())
        f.SetGeometry(ogr.CreateGeometryFromWkt(wkt))
        f.SetField("code", code)
        f.SetField("label", label)
        layer.CreateFeature(f)
    ds = None
    return str(path)


def _square(x, y, side):
    return f"POLYGON(({x} {y},{x + side} {y},{x + side} {y - side},{x} {y - side},{x} {y}))"


def test_polygons_smaller_than_a_pixel_label_the_pixels_they_touch(tmp_path, caplog):
    path = _gpkg(tmp_path / "small.gpkg", [
        (_square(X0, Y0, 20), "forest", ""),  # 2 x 2 pixels at the top left
        (_square(X0 + 21, Y0 - 31, 3), "water", ""),  # 3 m square in a corner of pixel (row 3, col 2)
        (_square(X0 + 18, Y0 - 1, 3), "water", ""),  # 3 m square touching forest pixels (0, 1) and (0, 2)
        (_square(X0 + 5000, Y0, 10), "water", ""),  # outside the grid
    ])
    with caplog.at_level(logging.INFO, logger="rsvl"):
        labels = open_labels(path, GRID, "code")
    codes = labels.read(rasterio.windows.Window(0, 0, 4, 4))
    water = next(c.code for c in labels.classes if c.name == "water")
    forest = next(c.code for c in labels.classes if c.name == "forest")
    assert codes[3, 2] == water  # a 3 m polygon that covers no pixel centre is not lost
    assert (codes[:2, :2] == forest).all()  # and never overwrites a larger polygon's pixels
    assert codes[0, 2] == water
    assert "2 polygon(s) cover no pixel centre" in caplog.text and "1 feature(s) lie outside" in caplog.text


def test_integer_class_field_takes_names_from_class_name_field(tmp_path, helpers):
    from rsvl.backend import api

    path = _gpkg(tmp_path / "coded.gpkg", [
        (_square(X0, Y0, 20), 7, "Forest"), (_square(X0 + 20, Y0, 20), 3, "Water"),
        (_square(X0, Y0 - 20, 20), 3, "Water"), (_square(X0 + 20, Y0 - 20, 20), 3, "water body")], int_field=True)
    labels = open_labels(path, GRID, "code", class_name_field="label")
    assert [(c.code, c.name) for c in labels.classes] == [(3, "Water"), (7, "Forest")]
    with pytest.raises(Exception, match="CLASS_NAME_FIELD 'nope' is not a field"):
        open_labels(path, GRID, "code", class_name_field="nope")
    # Evaluate matches such a reference by name against a map numbered differently.
    from osgeo import gdal

    classes = np.array([[2, 2, 1, 1], [2, 2, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]], np.uint8)
    mapped = helpers.write_raster(tmp_path / "map.tif", classes, GRID.transform, nodata=0)
    ds = gdal.Open(str(mapped), gdal.GA_Update)
    ds.GetRasterBand(1).SetCategoryNames(["", "water", "forest"])
    ds = None
    res = api.evaluate(str(mapped), path, class_field="code", class_name_field="label")
    assert res.accuracy.matching == "name" and res.accuracy.oa == 1.0


def test_invalid_null_and_mixed_class_values_are_handled_and_reported(tmp_path, caplog):
    bow_tie = f"POLYGON(({X0} {Y0},{X0 + 40} {Y0 - 20},{X0 + 40} {Y0},{X0} {Y0 - 20},{X0} {Y0}))"
    path = _gpkg(tmp_path / "messy.gpkg", [
        (bow_tie, "forest", ""),  # self-intersecting: its two triangles are labelled
        (_square(X0, Y0 - 30, 10), None, ""),  # NULL class: skipped
        (_square(X0 + 30, Y0 - 30, 10), "  ", ""),  # blank class: skipped
        (_square(X0 + 10, Y0 - 30, 10), "7", ""),  # a number among names: its own class, with a warning
    ])
    with caplog.at_level(logging.INFO, logger="rsvl"):
        labels = open_labels(path, GRID, "code")
    assert sorted(c.name for c in labels.classes) == ["7", "forest"]
    codes = labels.read(rasterio.windows.Window(0, 0, 4, 4))
    forest = next(c.code for c in labels.classes if c.name == "forest")
    seven = next(c.code for c in labels.classes if c.name == "7")
    # the pixel centres inside the left and right triangles, not those between them
    assert (codes[:2, [0, 3]] == forest).all() and (codes[:2, 1:3] == 0).all()
    assert codes[3, 1] == seven and codes[3, 0] == 0 and codes[3, 3] == 0
    assert "1 invalid geometrie(s)" in caplog.text and "repaired with MakeValid" in caplog.text
    assert "2 feature(s) without geometry or with an empty, NULL value in 'code' were skipped" in caplog.text
    assert "mixes numbers (7) and names" in caplog.text
