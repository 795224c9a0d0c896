"""Dense (shared-computation) inference equals the per-patch definition, windows equal
the whole image, and per-pixel outputs do not depend on how the scene is tiled."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch

from rsvl.backend.models.mmlgnet import block_plan


@pytest.mark.parametrize("patch_size,pixel", [(3, ()), (5, ()), (7, ()), (11, ()), (13, ()), (1, (8,)), (5, (8, 6)),
                                              (11, (16, 16))])
def test_dense_equals_per_patch(patch_size, pixel, random_model):
    """MMLGNet, and spectral-spatial models (``pixel``: the pixel branch's filters)."""
    model = random_model({"hsi": 6, "lidar": 1}, patch_size, pixel_channels=pixel)
    halo = patch_size // 2
    h, w = 17, 23
    g = torch.Generator().manual_seed(1)
    window = {"hsi": torch.randn(1, 6, h + 2 * halo, w + 2 * halo, generator=g),
              "lidar": torch.randn(1, 1, h + 2 * halo, w + 2 * halo, generator=g)}
    with torch.no_grad():
        dense = model.embed_dense(window)[0]  # (D, h, w)
        patches = {m: x[0].unfold(1, patch_size, 1).unfold(2, patch_size, 1).permute(1, 2, 0, 3, 4)
                   .reshape(h * w, x.shape[1], patch_size, patch_size) for m, x in window.items()}
        per_patch = model.embed(patches).t().reshape(-1, h, w)
    assert dense.shape == per_patch.shape
    assert (dense - per_patch).abs().max() <= 1e-5
    logits_d = model.logits(dense.flatten(1).t())
    logits_p = model.logits(per_patch.flatten(1).t())
    assert (logits_d - logits_p).abs().max() <= 1e-4
    assert torch.equal(logits_d.argmax(1), logits_p.argmax(1))
    from rsvl.backend.models.dense import DenseEmbedder

    engine = DenseEmbedder(model, compute_tile=8).embed(window)[0]
    assert (engine - per_patch).abs().max() <= 1e-5


def test_pixel_branch_reads_each_pixels_own_bands(random_model):
    """With the CNN branches' share of the fusion set to zero, a spectral-spatial model is a
    per-pixel function: changing one pixel changes that pixel's embedding alone, in the
    reference dense path and in the dense engine (the halo crop is aligned)."""
    from rsvl.backend.models.dense import DenseEmbedder

    model = random_model({"hsi": 6, "lidar": 1}, 7, pixel_channels=(8, 8))
    with torch.no_grad():
        model.fusion.weight[:, :-model.config.modality_features] = 0
    g = torch.Generator().manual_seed(2)
    window = {"hsi": torch.randn(1, 6, 16, 18, generator=g), "lidar": torch.randn(1, 1, 16, 18, generator=g)}
    bumped = {m: x.clone() for m, x in window.items()}
    bumped["hsi"][0, :, 3 + 4, 3 + 6] += 3.0  # output pixel (4, 6); the halo is 3
    with torch.no_grad():
        for embed in (model.embed_dense, DenseEmbedder(model).embed):
            moved = (embed(bumped)[0] - embed(window)[0]).abs().amax(0)
            assert moved[4, 6] > 1e-3
            moved[4, 6] = 0
            assert moved.max() == 0


def test_block_plan_matches_paper_depth():
    plan, final = block_plan(11, 3)
    assert plan == [(3, True), (3, True), (1, False)] and final == 1


def test_dense_and_patch_rasters_match_with_edges_and_nodata(tmp_path, helpers, random_model):
    """Whole pipeline: raster edges, nodata holes and several windows."""
    from rsvl.backend.io.labels import ClassInfo
    from rsvl.backend.io.raster import BandStats, LayerSpec, RasterStack
    from rsvl.backend.mapping.inference import run_inference

    rng = np.random.default_rng(0)
    t = rasterio.transform.from_origin(0, 0, 1, 1)
    hsi = rng.normal(100, 20, (6, 37, 29)).astype(np.float32)
    hsi[:, 5:8, 3:9] = -9999  # nodata hole
    lidar = rng.normal(5, 2, (1, 37, 29)).astype(np.float32)
    paths = [helpers.write_raster(tmp_path / "h.tif", hsi, t, crs="EPSG:32633", nodata=-9999.0),
             helpers.write_raster(tmp_path / "l.tif", lidar, t, crs="EPSG:32633")]
    layers = [LayerSpec(str(paths[0]), "hsi"), LayerSpec(str(paths[1]), "lidar")]
    model = random_model({"hsi": 6, "lidar": 1}, 7)
    stats = {"hsi": BandStats([100.0] * 6, [20.0] * 6), "lidar": BandStats([5.0], [2.0])}
    classes = [ClassInfo(i + 1, f"c{i}", (i, i, i)) for i in range(5)]
    outs = {}
    for method, tile in (("dense", 16), ("dense", 512), ("patch", 16)):
        with RasterStack(layers) as stack:
            base = tmp_path / f"{method}{tile}"
            run_inference(model, stack, stats, model.class_embeddings, classes=classes,
                          class_path=str(base) + "_c.tif", similarity_path=str(base) + "_s.tif", method=method,
                          tile=tile, batch_size=97)
        with rasterio.open(str(base) + "_c.tif") as c, rasterio.open(str(base) + "_s.tif") as s:
            outs[(method, tile)] = (c.read(1), s.read())
    ref_c, ref_s = outs[("patch", 16)]
    assert (ref_c[5:8, 3:9] == 0).all() and np.isnan(ref_s[:, 5:8, 3:9]).all()
    assert (ref_c > 0).sum() == 37 * 29 - 18
    for key, (c, s) in outs.items():
        assert np.array_equal(c, ref_c), key
        np.testing.assert_allclose(s, ref_s, atol=1e-5, equal_nan=True, err_msg=str(key))
