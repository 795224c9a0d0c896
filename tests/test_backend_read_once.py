"""Whole-scene passes read each input byte about once (issue 9, item 5).

``RasterStack.scan`` serves whole-scene passes from whole block rows; these tests
check that it returns exactly what direct windowed reads return (values and validity, for
every mask kind GDAL has) and that the bytes read stay near the file size for layouts
where windows cutting through blocks re-read them."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin
from rasterio.windows import Window

from rsvl.backend.io import raster
from rsvl.backend.io.raster import LayerSpec, RasterStack, gdal_cache_limit
from rsvl.backend.io.windows import tile_windows

UTM = CRS.from_epsg(32633)


def _write(path, data, **opts):
    bands, h, w = data.shape
    profile = dict(driver="GTiff", width=w, height=h, count=bands, dtype=data.dtype.name, crs=UTM,
                   transform=from_origin(500000, 5000000, 10, 10))
    mask = opts.pop("mask", None)
    alpha = opts.pop("alpha", False)
    profile.update(opts)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if mask is not None:
            dst.write_mask(mask)
        if alpha:
            dst.colorinterp = [ColorInterp.gray] * (bands - 1) + [ColorInterp.alpha]
    return str(path)


def _cases(tmp_path):
    rng = np.random.default_rng(3)
    h, w = 150, 130
    i16 = rng.integers(-50, 4000, (5, h, w)).astype(np.int16)
    i16[:, 10:20, 30:60] = -9999
    f32 = rng.normal(size=(3, h, w)).astype(np.float32)
    f32[0, 5, 5], f32[1, 7, 9], f32[2, 100, 100] = np.nan, np.inf, -1.0
    f64 = rng.normal(size=(2, h, w)) * 1e3
    u8 = rng.integers(0, 255, (4, h, w)).astype(np.uint8)
    u8[3] = np.where(rng.random((h, w)) < 0.2, 0, 255)  # alpha band
    mask = np.where(rng.random((h, w)) < 0.1, 0, 255).astype(np.uint8)
    return {
        "int16 pixel striped, nodata": [_write(tmp_path / "a.tif", i16, nodata=-9999, interleave="pixel")],
        "int16 band tiled deflate, nodata": [_write(tmp_path / "b.tif", i16, nodata=-9999, interleave="band", tiled=True,
                                                    blockxsize=32, blockysize=32, compress="deflate")],
        "int16, fractional nodata": [_write(tmp_path / "c.tif", i16, nodata=2.5)],
        "float32 NaN/inf, nodata -1": [_write(tmp_path / "d.tif", f32, nodata=-1.0, tiled=True, blockxsize=48,
                                              blockysize=48)],
        "float64, no nodata": [_write(tmp_path / "e.tif", f64)],
        "uint8 internal mask": [_write(tmp_path / "f.tif", u8[:3], mask=mask, tiled=True, blockxsize=16,
                                       blockysize=16)],
        "uint8 alpha band": [_write(tmp_path / "g.tif", u8, alpha=True, photometric="RGB")],
        "two layers, one warped": [
            _write(tmp_path / "h.tif", i16[:2], nodata=-9999),
            _write(tmp_path / "i.tif", f32[:1, ::2, ::2],
                   **{"transform": from_origin(500003, 4999997, 20, 20)}),
        ],
    }


@pytest.mark.parametrize("tile,halo,budget", [(32, 3, None), (64, 0, None), (40, 7, None), (32, 3, 1), (16, 5, 1)])
def test_scan_reads_equal_direct_reads(tmp_path, monkeypatch, tile, halo, budget):
    if budget is not None:  # a tiny buffer budget: the pass goes in column bands
        monkeypatch.setattr(raster, "read_buffer_bytes", lambda: budget)
    banded = []
    for name, paths in _cases(tmp_path).items():
        specs = [LayerSpec(p, "hsi" if i == 0 else "lidar") for i, p in enumerate(paths)]
        with RasterStack(specs) as stack:
            with stack.scan(tile, halo) as windows:
                expected = tile_windows(stack.width, stack.height, tile)
                assert sorted(map(Window.flatten, windows)) == sorted(map(Window.flatten, expected))
                if len(stack.column_bands(tile, halo)) > 1:
                    banded.append(name)
                buffered = [stack.read(w, halo) for w in windows]
                again = stack.read(windows[0], halo)  # going back up: read directly
            direct = [stack.read(w, halo) for w in windows]
        for (d0, v0), (d1, v1) in zip(direct + [direct[0]], buffered + [again]):
            for m in d0:
                np.testing.assert_array_equal(v0[m], v1[m], err_msg=name)
                np.testing.assert_array_equal(np.where(v0[m], d0[m], 0), np.where(v1[m], d1[m], 0), err_msg=name)
                assert d1[m].dtype == np.float32
    if budget is None:
        assert not banded
    else:  # tiled inputs keep bands of at least MIN_BAND_BLOCKS tiles: wider than these scenes
        assert {"int16 pixel striped, nodata", "float64, no nodata", "two layers, one warped"} <= set(banded)


def test_direct_reads_equal_gdal_masks(tmp_path):
    """Direct reads derive GDAL's nodata mask from the data and read a per-dataset mask
    once (reading per-band masks of a pixel-interleaved file decodes it once per band);
    the validity must still be exactly GDAL's: its masks, alpha, NaN/inf and nodata."""
    for name, paths in _cases(tmp_path).items():
        if len(paths) > 1:
            continue  # warped: covered by the scan test and the warp tests
        with rasterio.open(paths[0]) as ds:
            alpha = [i for i, ci in enumerate(ds.colorinterp, start=1) if ci == ColorInterp.alpha]
            indexes = [i for i in range(1, ds.count + 1) if i not in alpha]
            data = ds.read(indexes, out_dtype="float32")
            expected = (ds.read_masks(indexes) > 0) & np.isfinite(data)
            if ds.nodata is not None:
                expected &= data != np.float32(ds.nodata)
            if alpha:
                expected &= (ds.read(alpha[0]) > 0)[None]
        with RasterStack([LayerSpec(paths[0], "hsi")]) as stack:
            window = Window(7, 3, stack.width - 20, stack.height - 9)
            got, valid = stack.read(window)
        sl = (slice(None), slice(3, 3 + window.height), slice(7, 7 + window.width))
        np.testing.assert_array_equal(valid["hsi"], expected[sl], err_msg=name)
        np.testing.assert_array_equal(got["hsi"][valid["hsi"]], data[sl][expected[sl]], err_msg=name)
        assert (~valid["hsi"]).any() or "no nodata" in name, name + ": the case should have invalid pixels"


def _rchar() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("rchar"):
                return int(line.split()[1])
    raise AssertionError("no rchar")


@pytest.mark.parametrize("layout,budget", [
    (dict(interleave="band"), None),
    (dict(interleave="pixel", tiled=True, blockxsize=128, blockysize=128), None),
    (dict(interleave="band", tiled=True, blockxsize=64, blockysize=64, compress="deflate"), None),
    (dict(interleave="pixel", tiled=True, blockxsize=64, blockysize=64), 2**20),  # in column bands
])
def test_whole_scene_pass_reads_each_byte_once(tmp_path, monkeypatch, layout, budget):
    if budget is not None:
        monkeypatch.setattr(raster, "read_buffer_bytes", lambda: budget)
    data = np.random.default_rng(0).integers(0, 3000, (16, 600, 600)).astype(np.int16)
    path = _write(tmp_path / "scene.tif", data, **layout)
    size = (tmp_path / "scene.tif").stat().st_size
    with RasterStack([LayerSpec(path, "hsi")]) as stack, gdal_cache_limit(1):
        before = _rchar()
        for w in tile_windows(stack.width, stack.height, 64):
            stack.read(w, 5)
        direct = (_rchar() - before) / size
        with stack.scan(64, 5) as windows:
            assert (len(stack.column_bands(64, 5)) > 1) == (budget is not None)
            before = _rchar()
            for w in windows:
                stack.read(w, 5)
            once = (_rchar() - before) / size
    assert once <= (1.3 if budget else 1.2), f"read {once:.2f}× the file size in one pass (direct windowed reads: {direct:.2f}×)"
    assert direct > 1.3, "the layout should make direct windowed reads re-read blocks (else the test proves nothing)"
