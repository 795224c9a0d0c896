"""The fast dense engine equals the reference paths; streamed inference keeps outputs
atomic when a window fails; GDAL settings used for streaming give the same pixels and are
undone afterwards."""

from __future__ import annotations

import os

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from rsvl.backend.models.dense import DenseEmbedder


def _per_patch(model, window, h, w, p):
    patches = {m: x[0].unfold(1, p, 1).unfold(2, p, 1).permute(1, 2, 0, 3, 4).reshape(h * w, x.shape[1], p, p)
               for m, x in window.items()}
    with torch.no_grad():
        return model.embed(patches).t().reshape(-1, h, w)


@pytest.mark.parametrize("patch_size", [3, 7, 11])
def test_folded_dense_engine_equals_reference_and_per_patch(patch_size, random_model):
    model = random_model({"hsi": 6, "lidar": 1, "sar": 2}, patch_size)
    halo = patch_size // 2
    h, w = 19, 26
    g = torch.Generator().manual_seed(2)
    window = {m: torch.randn(1, b, h + 2 * halo, w + 2 * halo, generator=g) for m, b in model.config.bands.items()}
    fast = DenseEmbedder(model).embed(window)[0]
    with torch.no_grad():
        reference = model.embed_dense(window)[0]
    per_patch = _per_patch(model, window, h, w, patch_size)
    assert fast.shape == per_patch.shape == (24, h, w)
    assert (fast - reference).abs().max() <= 1e-5
    assert (fast - per_patch).abs().max() <= 1e-5
    logits_f = model.logits(fast.flatten(1).t())
    logits_p = model.logits(per_patch.flatten(1).t())
    assert (logits_f - logits_p).abs().max() <= 1e-4
    assert torch.equal(logits_f.argmax(1), logits_p.argmax(1))


@pytest.mark.parametrize("compute_tile", [3, 16, 64])
def test_similarity_in_sub_tiles_equals_whole_window(compute_tile, random_model):
    """Sub-tiles slice their halo from the window in memory: every pixel sees its own
    patch whatever the sub-tile size, odd sizes and ragged last tiles included."""
    model = random_model({"hsi": 5, "lidar": 1}, 7)
    h, w = 23, 30
    rng = np.random.default_rng(3)
    norm = {m: rng.standard_normal((b, h + 6, w + 6)).astype(np.float32) for m, b in model.config.bands.items()}
    text = model.class_embeddings
    sim = DenseEmbedder(model, compute_tile=compute_tile).similarity(norm, text)
    per_patch = _per_patch(model, {m: torch.from_numpy(a)[None] for m, a in norm.items()}, h, w, 7)
    expected = torch.einsum("dhw,kd->khw", per_patch, text)
    assert sim.shape == (5, h, w)
    assert (sim - expected).abs().max() <= 1e-5
    assert torch.equal(sim.argmax(0), expected.argmax(0))


def test_dense_engine_refuses_a_model_in_training_mode(random_model):
    model = random_model({"hsi": 4}, 5).train()
    with pytest.raises(ValueError, match="eval mode"):
        DenseEmbedder(model)


def _small_scene(tmp_path, helpers, size=(40, 33)):
    from rsvl.backend.io.labels import ClassInfo
    from rsvl.backend.io.raster import BandStats, LayerSpec

    rng = np.random.default_rng(0)
    t = from_origin(500000, 5000000, 1, 1)
    h, w = size
    (tmp_path / "in").mkdir()
    hsi = helpers.write_raster(tmp_path / "in" / "h.tif", rng.normal(100, 20, (6, h, w)).astype(np.float32), t)
    lidar = helpers.write_raster(tmp_path / "in" / "l.tif", rng.normal(5, 2, (1, h, w)).astype(np.float32), t)
    layers = [LayerSpec(str(hsi), "hsi"), LayerSpec(str(lidar), "lidar")]
    stats = {"hsi": BandStats([100.0] * 6, [20.0] * 6), "lidar": BandStats([5.0], [2.0])}
    classes = [ClassInfo(i + 1, f"c{i}", (i, i, i)) for i in range(5)]
    return layers, stats, classes


@pytest.mark.parametrize("stage", ["read", "write"])
def test_a_failing_window_leaves_no_output(tmp_path, helpers, monkeypatch, stage, random_model):
    """An error in the reader or the writer thread surfaces in the caller, and the
    temporary outputs of the interrupted run are removed."""
    from rsvl.backend.io.raster import RasterStack
    from rsvl.backend.mapping import inference

    layers, stats, classes = _small_scene(tmp_path, helpers)
    model = random_model({"hsi": 6, "lidar": 1}, 5)
    calls = {"n": 0}
    original = inference.read_window_normalised if stage == "read" else inference._write_window

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(f"disk gone while trying to {stage}")
        return original(*args, **kwargs)

    monkeypatch.setattr(inference, "read_window_normalised" if stage == "read" else "_write_window", failing)
    out = tmp_path / "out"
    out.mkdir()
    with RasterStack(layers) as stack, pytest.raises(OSError, match=f"trying to {stage}"):
        inference.run_inference(model, stack, stats, model.class_embeddings, classes=classes,
                                class_path=str(out / "c.tif"), confidence_path=str(out / "p.tif"),
                                similarity_path=str(out / "s.tif"), tile=16)
    assert os.listdir(out) == []


def test_streamed_outputs_do_not_depend_on_the_tile_size(tmp_path, helpers, random_model):
    from rsvl.backend.io.raster import RasterStack
    from rsvl.backend.mapping.inference import run_inference

    layers, stats, classes = _small_scene(tmp_path, helpers)
    model = random_model({"hsi": 6, "lidar": 1}, 5)
    outs = []
    for tile in (16, 24, 512):
        with RasterStack(layers) as stack:
            run_inference(model, stack, stats, model.class_embeddings, classes=classes,
                          class_path=str(tmp_path / f"c{tile}.tif"), confidence_path=str(tmp_path / f"p{tile}.tif"),
                          tile=tile)
        with rasterio.open(tmp_path / f"c{tile}.tif") as c, rasterio.open(tmp_path / f"p{tile}.tif") as p:
            outs.append((c.read(1), p.read(1)))
    assert (outs[0][0] > 0).all()
    for c, p in outs[1:]:
        assert np.array_equal(c, outs[0][0])
        np.testing.assert_allclose(p, outs[0][1], atol=1e-6)


def test_gdal_cache_limit_lowers_and_restores():
    from osgeo import gdal

    from rsvl.backend.io.raster import gdal_cache_limit

    before = gdal.GetCacheMax()
    gdal.SetCacheMax(512 * 2**20)
    try:
        with gdal_cache_limit(64):
            assert gdal.GetCacheMax() == 64 * 2**20
            with gdal_cache_limit(64):  # a second, concurrent user
                assert gdal.GetCacheMax() == 64 * 2**20
            assert gdal.GetCacheMax() == 64 * 2**20
        assert gdal.GetCacheMax() == 512 * 2**20
        gdal.SetCacheMax(32 * 2**20)
        with gdal_cache_limit(64):  # never raised
            assert gdal.GetCacheMax() == 32 * 2**20
    finally:
        gdal.SetCacheMax(before)


@pytest.mark.parametrize("compress", [None, "deflate"])
def test_direct_io_reads_the_same_pixels(tmp_path, compress, monkeypatch):
    """Input layers are opened with GTIFF_DIRECT_IO: windowed reads of uncompressed
    GeoTIFFs bypass GDAL's block cache (so the cache does not fill with input tiles), and
    windows with halos, at edges, give the file's exact values either way."""
    from osgeo import gdal
    from rasterio.windows import Window

    from rsvl.backend.io import raster
    from rsvl.backend.io.raster import LayerSpec, RasterStack

    rng = np.random.default_rng(5)
    data = rng.integers(-100, 4000, (9, 70, 61), dtype=np.int16)
    path = tmp_path / "pix.tif"
    profile = dict(driver="GTiff", width=61, height=70, count=9, dtype="int16", crs="EPSG:32633",
                   transform=from_origin(0, 70, 1, 1), tiled=True, blockxsize=32, blockysize=32, interleave="pixel")
    if compress:
        profile["compress"] = compress
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
    opened_with = []
    real_open = rasterio.open

    def recording_open(*args, **kwargs):
        opened_with.append(gdal.GetConfigOption("GTIFF_DIRECT_IO"))  # this thread's value wins
        return real_open(*args, **kwargs)

    monkeypatch.setattr(raster.rasterio, "open", recording_open)
    windows = (Window(0, 0, 16, 16), Window(20, 33, 25, 19), Window(48, 60, 13, 10))

    def read_all():
        """Reads the windows; returns the growth of GDAL's block cache (bytes) meanwhile."""
        before = gdal.GetCacheUsed()
        with RasterStack([LayerSpec(str(path), "hsi")]) as stack:
            for window in windows:
                arrays, valid = stack.read(window, halo=4)
                r0, c0 = int(window.row_off) - 4, int(window.col_off) - 4
                expected = np.zeros((9, int(window.height) + 8, int(window.width) + 8), np.float32)
                rr = slice(max(r0, 0), min(r0 + expected.shape[1], 70))
                cc = slice(max(c0, 0), min(c0 + expected.shape[2], 61))
                expected[:, rr.start - r0:rr.stop - r0, cc.start - c0:cc.stop - c0] = data[:, rr, cc]
                np.testing.assert_array_equal(arrays["hsi"], expected)
                assert valid["hsi"].sum() == 9 * (rr.stop - rr.start) * (cc.stop - cc.start)
            return gdal.GetCacheUsed() - before

    direct = read_all()
    assert opened_with == ["YES"]
    assert gdal.GetConfigOption("GTIFF_DIRECT_IO") is None  # set only while opening, in this thread
    monkeypatch.setattr(raster, "READ_OPEN_OPTIONS", {})  # the same reads through the block cache
    cached = read_all()
    assert opened_with == ["YES", None]
    tile_bytes = 9 * 32 * 32 * 2  # one pixel-interleaved tile, all bands
    if compress:
        assert direct == cached >= tile_bytes  # GDAL ignores direct I/O for compressed files
    else:
        assert direct <= cached - 4 * tile_bytes  # the tiles the windows touch stayed out of the cache


@pytest.mark.parametrize("method", ["dense", "patch"])
def test_gpu_out_of_memory_retries_smaller_with_a_warning(tmp_path, helpers, monkeypatch, caplog, method, random_model):
    """CUDA running out of memory (simulated: no GPU here) halves the sub-tile or batch
    and retries with a warning, giving the same map; at the smallest size it is a clear
    error naming what to do, and no output is left."""
    import logging

    import torch

    from rsvl.backend.errors import InputError
    from rsvl.backend.io.raster import RasterStack
    from rsvl.backend.mapping import inference
    from rsvl.backend.models import dense

    layers, stats, classes = _small_scene(tmp_path, helpers)
    model = random_model({"hsi": 6, "lidar": 1}, 5)

    def run(name):
        with RasterStack(layers) as stack:
            inference.run_inference(model, stack, stats, model.class_embeddings, classes=classes, method=method,
                                    class_path=str(tmp_path / name), tile=16, batch_size=64)
        with rasterio.open(tmp_path / name) as ds:
            return ds.read(1)

    expected = run("plain.tif")
    sizes = []
    if method == "dense":
        original = dense.DenseEmbedder.similarity

        def flaky(self, norm, text):
            sizes.append(self.compute_tile)
            if self.compute_tile > limit:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return original(self, norm, text)

        monkeypatch.setattr(dense.DenseEmbedder, "similarity", flaky)
    else:
        original = inference.embed_patches

        def flaky(model_, norm, halo, device, batch_size=4096):
            sizes.append(batch_size)
            if batch_size > limit:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return original(model_, norm, halo, device, batch_size)

        monkeypatch.setattr(inference, "embed_patches", flaky)
    limit = 16
    with caplog.at_level(logging.WARNING, logger="rsvl"):
        got = run("retried.tif")
    assert np.array_equal(got, expected)
    assert "the GPU ran out of memory: retrying" in caplog.text
    assert sizes[:3] == [64, 32, 16]  # dense sub-tile 64 by default; per-patch batch_size=64 here
    limit = 0
    with pytest.raises(InputError, match="ran out of memory even with the smallest .*set DEVICE to cpu"):
        run("failed.tif")
    assert not (tmp_path / "failed.tif").exists()


def test_device_auto_without_cuda_logs_the_cpu_fallback(caplog):
    import logging

    import torch

    from rsvl.backend.errors import InputError
    from rsvl.backend.runtime.device import resolve_device

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible: auto takes it")
    with caplog.at_level(logging.INFO, logger="rsvl"):
        assert resolve_device("auto").type == "cpu"
    assert "DEVICE=auto: torch sees no CUDA GPU here, running on the CPU" in caplog.text
    with pytest.raises(InputError, match="DEVICE is 'cuda' but torch sees no CUDA GPU here"):
        resolve_device("cuda")
