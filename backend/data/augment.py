"""Training-time augmentation for generalisation to other dates and sensors, and
class-balanced sampling (issue 11).

- Spectral jitter: every sample's bands are changed as a new date or sensor changes them:
  a per-band gain (multiplicative, in physical units) and offset. Patches are normalised
  (``(x - mean) / std``), so a physical gain ``g`` and offset ``o`` (in units of the
  band mean) act on a normalised value ``z`` as ``z' = g·z + ((g - 1)·mean + o·mean) / std``.
  Gains and offsets are drawn per sample and per band; one common factor per sample (the
  illumination) is drawn too.
- Band dropout: each band of a sample is, with probability ``dropout``, replaced by its
  training mean (0 once normalised), so the model cannot lean on any one band, which
  another date (phenology, haze, water vapour) or sensor can move on its own; the
  random-subspace idea behind the forests users run, as an augmentation. Elevation and
  single-band modalities are never dropped.
- Geometry: a random flip and a multiple of 90° rotation per sample; a pixel's label does
  not depend on the patch's orientation.
- Spectral mixing (mixup, Zhang et al. 2018): each sample becomes ``λ·x + (1 − λ)·x'`` with
  another sample ``x'`` of the batch, every modality and pixel of the patch alike, and
  its target is shared in the same proportions (:func:`rsvl.backend.models.mmlgnet.mix_targets`).
  A 10 m pixel is often such a linear mixture of surfaces (the linear mixing model of
  spectral unmixing; the patch's elevation mixes too), and the class boundaries a model
  learns from mixtures are smoother where the labelled pixels say nothing.
- Class-balanced sampling: an epoch draws as many samples as there are, each class with
  the same probability (with replacement), so rare classes are seen as often as the
  dominant one.

All draws come from a ``torch.Generator``, so a seed gives the same run.

torch is imported inside the functions: the recipe registry (plain data, read by the plugin and
the CLI without torch) takes :class:`SpectralJitter`'s defaults from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import numpy as np


@dataclass(frozen=True)
class SpectralJitter:
    gain: float = 0.05  # per-band gain drawn from 1 ± gain
    offset: float = 0.03  # per-band offset drawn from ± offset × the band mean
    illumination: float = 0.05  # one factor per sample from 1 ± illumination
    dropout: float = 0.0  # probability that a band of a sample is replaced by its mean (band dropout)


# The semi-supervised loss's strong augmentation of unlabelled patches (with flips and
# rotations): FixMatch wants the student to see a copy far from what the teacher labelled.
STRONG = SpectralJitter(gain=0.15, offset=0.04, illumination=0.1)


def spectral_jitter(batch: Dict[str, object], stats: Dict[str, object], jitter: SpectralJitter, generator):
    """Jittered copies of normalised patches ``batch`` ({modality: (N, B, P, P)}) given
    the normalisation ``stats`` ({modality: BandStats}): gain and offset, then band dropout.
    LiDAR/elevation is left as it is: heights do not change with the date."""
    import torch

    out = {}
    for m, x in batch.items():
        if m == "lidar" or m not in stats:
            out[m] = x
            continue
        n, b = x.shape[0], x.shape[1]
        mean = torch.as_tensor(stats[m].mean, dtype=x.dtype, device=x.device).view(1, b, 1, 1)
        std = torch.as_tensor(stats[m].std, dtype=x.dtype, device=x.device).view(1, b, 1, 1)

        gain = (1 + _uniform((n, b, 1, 1), jitter.gain, generator, x)) * (
            1 + _uniform((n, 1, 1, 1), jitter.illumination, generator, x))
        offset = _uniform((n, b, 1, 1), jitter.offset, generator, x) * mean.abs()
        y = gain * x + ((gain - 1) * mean + offset) / std
        if jitter.dropout > 0 and b > 1:
            keep = torch.rand((n, b, 1, 1), generator=generator) >= jitter.dropout
            y = y * keep.to(device=x.device, dtype=x.dtype)
        out[m] = y
    return out


def _uniform(shape, half: float, generator, like):
    """Draws from [-half, half] (on the CPU generator, then to ``like``'s device and type)."""
    import torch

    r = torch.rand(shape, generator=generator).to(device=like.device, dtype=like.dtype)
    return (2 * r - 1) * half


def flip_rotate(batch: Dict[str, object], generator):
    """Each sample flipped (or not) and rotated by a multiple of 90°, the same way in every
    modality."""
    import torch

    n = next(iter(batch.values())).shape[0]
    k = torch.randint(0, 4, (n,), generator=generator)
    flip = torch.randint(0, 2, (n,), generator=generator).bool()
    out = {}
    for m, x in batch.items():
        y = x.clone()
        for rot in range(4):
            for f in (False, True):
                sel = ((k == rot) & (flip == f)).nonzero().flatten().to(x.device)
                if sel.numel() == 0 or (rot == 0 and not f):
                    continue
                part = x[sel]
                if f:
                    part = torch.flip(part, dims=(-1,))
                y[sel] = torch.rot90(part, rot, dims=(-2, -1))
        out[m] = y
    return out


def mix_pixels(batch: Dict[str, object], alpha: float, generator):
    """Mixup of a batch of normalised patches: ``(mixed batch, partner, lam)`` where sample
    ``i`` of the mixed batch is ``lam[i]·x[i] + (1 − lam[i])·x[partner[i]]`` in every
    modality. ``lam`` is drawn from Beta(alpha, alpha) and folded to [0.5, 1], so each
    mixture keeps its own sample as the larger part (its label stays the main one); the
    partners are a random permutation of the batch. Normalisation is affine, so mixing
    normalised values mixes the physical ones in the same proportions."""
    import torch

    n = next(iter(batch.values())).shape[0]
    # Beta draws from the torch generator's stream, through a NumPy generator it seeds
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
    draws = rng.beta(alpha, alpha, n)
    lam = torch.from_numpy(np.maximum(draws, 1.0 - draws)).float()
    partner = torch.randperm(n, generator=generator)
    out = {}
    for m, x in batch.items():
        w = lam.to(device=x.device, dtype=x.dtype).view(-1, *([1] * (x.dim() - 1)))
        out[m] = w * x + (1 - w) * x[partner.to(x.device)]
    return out, partner, lam


def balanced_order(y: np.ndarray, index: np.ndarray, generator) -> np.ndarray:
    """An epoch of ``len(index)`` samples from ``index`` drawn with replacement so that
    every class present is equally likely."""
    import torch

    labels = y[index]
    classes, counts = np.unique(labels, return_counts=True)
    weight = 1.0 / counts[np.searchsorted(classes, labels)]
    draw = torch.multinomial(torch.as_tensor(weight, dtype=torch.float64), index.size, replacement=True,
                             generator=generator)
    return index[draw.numpy()]


def shift_scene(data: np.ndarray, gains: Sequence[float], offsets: Sequence[float],
                nodata: Optional[float] = None) -> np.ndarray:
    """A scene as another date could show it (for the date-shift bench and tests): band b
    becomes ``data[b] * gains[b] + offsets[b]``; nodata pixels are kept."""
    out = data.astype(np.float64) * np.asarray(gains)[:, None, None] + np.asarray(offsets)[:, None, None]
    if nodata is not None:
        out = np.where(data == nodata, nodata, out)
    return out.astype(data.dtype)
