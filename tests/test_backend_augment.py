"""Augmentation for other dates and sensors, and class-balanced sampling (issue 11)."""

from __future__ import annotations

import numpy as np
import torch

from rsvl.backend.data.augment import SpectralJitter, balanced_order, flip_rotate, mix_pixels, shift_scene, spectral_jitter
from rsvl.backend.io.raster import BandStats


def test_spectral_jitter_is_a_bounded_per_band_gain_and_offset_in_physical_units():
    rng = np.random.default_rng(0)
    mean, std = np.array([1000.0, 2000.0, 3000.0]), np.array([100.0, 300.0, 500.0])
    phys = rng.uniform(500, 4000, (16, 3, 5, 5))
    z = torch.from_numpy((phys - mean[None, :, None, None]) / std[None, :, None, None]).float()
    stats = {"ms": BandStats(mean.tolist(), std.tolist()), "lidar": BandStats([700.0], [50.0])}
    lidar = torch.randn(16, 1, 5, 5)
    jitter = SpectralJitter(gain=0.05, offset=0.03, illumination=0.05)
    out = spectral_jitter({"ms": z, "lidar": lidar}, stats, jitter, torch.Generator().manual_seed(1))
    assert out["lidar"] is lidar  # heights do not change with the date
    new = out["ms"].double().numpy() * std[None, :, None, None] + mean[None, :, None, None]
    # per sample and band: new = g * phys + o (a least-squares fit leaves no residual), g within the bounds
    xs, ns = phys.reshape(16, 3, -1), new.reshape(16, 3, -1)
    xc, nc = xs - xs.mean(-1, keepdims=True), ns - ns.mean(-1, keepdims=True)
    g = (xc * nc).sum(-1) / (xc * xc).sum(-1)
    assert np.abs(nc - g[..., None] * xc).max() < 1e-3 * std.max()
    assert ((g > (0.95 * 0.95) - 1e-6) & (g < 1.05 * 1.05 + 1e-6)).all() and g.std() > 0.01
    o = ns.mean(-1) - g * xs.mean(-1)
    assert (np.abs(o) <= 0.03 * mean + 1e-3).all()
    same = spectral_jitter({"ms": z}, stats, SpectralJitter(0, 0, 0), torch.Generator().manual_seed(1))
    torch.testing.assert_close(same["ms"], z)


def test_flips_and_rotations_keep_the_centre_pixel_and_act_alike_on_every_modality():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5).repeat(20, 1, 1, 1)
    y = x[:, :1] * 10
    out = flip_rotate({"hsi": x, "lidar": y}, torch.Generator().manual_seed(0))
    seen = set()
    for i in range(x.shape[0]):
        assert torch.equal(out["hsi"][i, :, 2, 2], x[i, :, 2, 2])
        match = [(k, f) for k in range(4) for f in (False, True)
                 if torch.equal(out["hsi"][i], torch.rot90(torch.flip(x[i], (-1,)) if f else x[i], k, (-2, -1)))]
        assert len(match) >= 1
        k, f = match[0]
        assert torch.equal(out["lidar"][i], torch.rot90(torch.flip(y[i], (-1,)) if f else y[i], k, (-2, -1)))
        seen.add((k, f))
    assert len(seen) >= 6  # the draws cover the dihedral group


def test_balanced_order_draws_each_class_about_equally():
    y = np.array([0] * 900 + [1] * 90 + [2] * 10)
    index = np.arange(y.size)
    order = balanced_order(y, index, torch.Generator().manual_seed(0))
    assert order.size == y.size
    share = np.bincount(y[order], minlength=3) / order.size
    assert np.allclose(share, 1 / 3, atol=0.06)


def test_shift_scene_keeps_nodata():
    data = np.array([[[1.0, -1.0]], [[2.0, 4.0]]], dtype=np.float32)
    out = shift_scene(data, [1.1, 0.9], [0.5, -1.0], nodata=-1.0)
    np.testing.assert_allclose(out, [[[1.6, -1.0]], [[0.8, 2.6]]], rtol=1e-6)


def test_training_with_augmentation_and_balanced_epochs_is_seeded(shared_scene, tmp_path):
    from safetensors.torch import load_file

    from rsvl.backend import api
    from rsvl.backend.io.raster import LayerSpec
    from rsvl.backend.models.modelfile import read_header

    layers = [LayerSpec(str(shared_scene.paths["hsi"]), "hsi"), LayerSpec(str(shared_scene.paths["lidar"]), "lidar")]
    fast = dict(patch_size=5, epochs=8, batch_size=64, learning_rate=3e-3, seed=3, device="cpu")
    results = [api.train(layers, str(shared_scene.labels), str(tmp_path / f"m{i}.safetensors"), augment=True,
                         balanced=True, **fast) for i in range(2)]
    plain = api.train(layers, str(shared_scene.labels), str(tmp_path / "plain.safetensors"), **fast)
    a, b, c = (load_file(str(tmp_path / n)) for n in ("m0.safetensors", "m1.safetensors", "plain.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same seed, the same augmented run
    assert not all(torch.equal(a[k], c[k]) for k in a)  # and augmentation changed it
    assert results[0].validation.oa > 0.8 and plain.validation.oa > 0.8
    training = read_header(str(tmp_path / "m0.safetensors")).training
    assert training["augment"] is True and training["balanced"] is True


def test_band_dropout_replaces_whole_bands_by_their_mean_and_spares_elevation_and_single_bands():
    mean, std = np.array([1000.0, 2000.0, 3000.0, 500.0]), np.array([100.0, 300.0, 500.0, 50.0])
    stats = {"ms": BandStats(mean.tolist(), std.tolist()), "sar": BandStats([0.1], [0.05]),
             "lidar": BandStats([700.0], [50.0])}
    z = torch.randn(4000, 4, 5, 5)
    sar, lidar = torch.randn(4000, 1, 5, 5), torch.randn(4000, 1, 5, 5)
    jitter = SpectralJitter(gain=0, offset=0, illumination=0, dropout=0.2)
    out = spectral_jitter({"ms": z, "sar": sar, "lidar": lidar}, stats, jitter, torch.Generator().manual_seed(3))
    assert out["lidar"] is lidar
    torch.testing.assert_close(out["sar"], sar)  # a single band is never dropped
    dropped = (out["ms"] == 0).flatten(2).all(-1)  # (sample, band): the whole band at its mean
    kept = (out["ms"] == z).flatten(2).all(-1)
    assert bool((dropped ^ kept).all())  # each band is either untouched or dropped
    rate = dropped.double().mean().item()
    assert 0.18 < rate < 0.22
    assert dropped.double().mean(0).min().item() > 0.15  # every band is dropped, independently
    again = spectral_jitter({"ms": z}, stats, jitter, torch.Generator().manual_seed(3))
    torch.testing.assert_close(again["ms"], out["ms"])  # the generator decides


def test_mixup_mixes_every_modality_alike_with_the_own_sample_as_the_larger_part():
    g = torch.Generator().manual_seed(5)
    batch = {"ms": torch.randn(512, 4, 5, 5, generator=g), "lidar": torch.randn(512, 1, 5, 5, generator=g)}
    out, partner, lam = mix_pixels(batch, 0.4, torch.Generator().manual_seed(7))
    assert sorted(partner.tolist()) == list(range(512))  # a permutation of the batch
    assert float(lam.min()) >= 0.5 and float(lam.max()) <= 1.0
    assert float(lam.std()) > 0.05  # drawn, not fixed
    for m, x in batch.items():
        w = lam.view(-1, 1, 1, 1)
        torch.testing.assert_close(out[m], w * x + (1 - w) * x[partner])
    # the shares follow Beta(0.4, 0.4) folded to [0.5, 1] (NumPy's draws of the same law)
    ref = np.random.default_rng(0).beta(0.4, 0.4, 200000)
    assert abs(float(lam.mean()) - float(np.maximum(ref, 1 - ref).mean())) < 0.02
    again, partner2, lam2 = mix_pixels(batch, 0.4, torch.Generator().manual_seed(7))
    torch.testing.assert_close(again["ms"], out["ms"])  # the generator decides
    assert torch.equal(partner2, partner) and torch.equal(lam2, lam)
