"""Self-supervised multimodal Siamese pretraining (issue 11 item 5; the Multimodal Siamese
paper): unlabelled co-registered layers → per-modality encoders, then few-label training.

- Positives are the same location seen by two modalities (e.g. HSI and LiDAR, MS and
  SAR): random valid pixels of the scene give one patch per modality, flipped and
  rotated alike.
- SimSiam (Chen & He): each modality's encoder (MMLGNet's ConvEncoder, the same
  architecture rsvl:train uses) feeds a projector (per modality) and a shared predictor;
  for every pair of modalities the loss is ``D(p_a, sg(z_b)) / 2 + D(p_b, sg(z_a)) / 2``
  with ``D`` the negative cosine and ``sg`` stop-gradient, which is what keeps SimSiam
  from collapsing without negatives.
- The encoders are written to a safetensors file (header ``rsvl_pretrained``: modalities,
  band counts and names, patch size, channels, normalisation). ``PRETRAINED`` in
  rsvl:train (``pretrained=`` in :func:`rsvl.backend.api.train`) starts MMLGNet's
  encoders from it; the fusion layer starts fresh.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import nn

from .. import __version__
from ..errors import InputError, ModelFileError

log = logging.getLogger("rsvl")
PRETRAINED_KEY = "rsvl_pretrained"


def simsiam_loss(p, z):
    """SimSiam's D(p, sg(z)): negative cosine with the target's gradient stopped."""
    return -F.cosine_similarity(p, z.detach(), dim=1).mean()


def _siamese(config):
    from ..models.mmlgnet import ConvEncoder

    dim = 128

    def projector(i):
        return nn.Sequential(nn.Linear(i, 256), nn.BatchNorm1d(256), nn.ReLU(inplace=True), nn.Linear(256, dim),
                             nn.BatchNorm1d(dim))

    class Siamese(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoders = nn.ModuleDict({m: ConvEncoder(b, config.channels[m], config.patch_size,
                                                          config.modality_features) for m, b in config.bands.items()})
            self.projectors = nn.ModuleDict({m: projector(config.modality_features) for m in config.bands})
            self.predictor = nn.Sequential(nn.Linear(dim, dim // 4), nn.BatchNorm1d(dim // 4), nn.ReLU(inplace=True),
                                           nn.Linear(dim // 4, dim))

        def forward(self, batch: Dict[str, torch.Tensor]):
            z = {m: self.projectors[m](self.encoders[m](x)) for m, x in batch.items()}
            p = {m: self.predictor(v) for m, v in z.items()}
            return z, p

        def loss(self, batch):
            z, p = self(batch)
            pairs = list(itertools.combinations(sorted(batch), 2))
            return sum(0.5 * simsiam_loss(p[a], z[b]) + 0.5 * simsiam_loss(p[b], z[a]) for a, b in pairs) / len(pairs)

    return Siamese()


@dataclass
class PretrainResult:
    path: str
    modalities: Dict[str, int]
    n_samples: int
    epochs_run: int
    seconds: float
    history: List[dict] = field(default_factory=list)


def pretrain(layers, output: str, *, patch_size: int = 11, samples: int = 20000, epochs: int = 20,
             batch_size: int = 256, learning_rate: float = 1e-3, seed: int = 0, device: str = "auto",
             reference=None, progress=None, is_cancelled=None) -> PretrainResult:
    """Pretrain per-modality encoders on unlabelled co-registered layers (module docstring)."""
    from safetensors.torch import save_file

    from ..data.augment import flip_rotate
    from ..data.samples import sample_patches
    from ..io.atomic import atomic_path, check_extension, check_outputs
    from ..io.raster import RasterStack, as_layers
    from ..io.selection import fit_bands
    from ..models.mmlgnet import ModelConfig
    from ..models.modelfile import DIGEST_KEY, weights_digest
    from ..runtime.device import resolve_device
    from ..runtime.jobs import Job

    if samples < 16:
        raise InputError(f"SAMPLES must be at least 16 pixels (got {samples})")
    if epochs < 1 or batch_size < 4:
        raise InputError(f"EPOCHS must be at least 1 and BATCH_SIZE at least 4 (got {epochs}, {batch_size})")
    check_extension("OUTPUT", output, "model")
    check_outputs([("OUTPUT", output, 0)])
    job = Job(progress, is_cancelled)
    start = time.perf_counter()
    dev = resolve_device(device)
    with RasterStack(as_layers(layers), reference=reference) as stack:
        if len(stack.modalities) < 2:
            raise InputError("pretraining pairs the same location seen by two modalities: give layers of at least "
                             f"two of INPUT_HSI, INPUT_LIDAR, INPUT_SAR, INPUT_MS (got {', '.join(stack.modalities)})")
        stats, selection = fit_bands(stack, job=job.span(0.0, 0.05))  # bad and empty bands left out, as in train
        config = ModelConfig(bands=stack.band_counts(), embed_dim=1, patch_size=patch_size)
        patches = sample_patches(stack, stats, patch_size, samples, seed, job.span(0.05, 0.2))
        if not patches:
            raise InputError("no pixel is valid in every input layer")
        band_names = stack.band_names()
    torch.manual_seed(seed)
    net = _siamese(config).to(dev)
    optimiser = torch.optim.Adam(net.parameters(), lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    x = {m: torch.from_numpy(p) for m, p in patches.items()}
    n = next(iter(x.values())).shape[0]
    history = []
    train_job = job.span(0.2, 0.97)
    for epoch in range(1, epochs + 1):
        net.train()
        perm = torch.randperm(n, generator=generator)
        total, count = 0.0, 0
        for s in range(0, n, batch_size):
            train_job.step((epoch - 1 + s / n) / epochs, f"epoch {epoch}/{epochs}")
            b = perm[s:s + batch_size]
            if b.numel() < 4:
                continue
            batch = flip_rotate({m: v[b] for m, v in x.items()}, generator)
            loss = net.loss({m: v.to(dev) for m, v in batch.items()})
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * b.numel()
            count += b.numel()
        history.append({"epoch": epoch, "loss": total / max(count, 1)})
    encoders = {f"encoders.{k}": v.detach().cpu().contiguous() for k, v in net.encoders.state_dict().items()}
    header = {
        "rsvl_version": __version__, "format_version": 1, "architecture": config.to_json(),
        "band_names": band_names, "normalisation": {m: {"mean": s.mean, "std": s.std} for m, s in stats.items()},
        "samples": int(n), "epochs": epochs, "seed": seed, "history": history, "method": "simsiam",
        "band_selection": {m: s.to_json() for m, s in selection.items()},
    }
    job.check()
    with atomic_path(output) as tmp:
        save_file(encoders, tmp, metadata={PRETRAINED_KEY: json.dumps(header), DIGEST_KEY: weights_digest(encoders)})
    log.info("pretrained %s encoders on %d pixels: SimSiam loss %.3f -> %.3f", "+".join(config.bands), n,
             history[0]["loss"], history[-1]["loss"])
    return PretrainResult(output, dict(config.bands), int(n), epochs, time.perf_counter() - start, history)


def load_pretrained(path: str, model) -> dict:
    """Copy a pretrained file's encoders into ``model`` (an MMLGNet) after checking that
    its modalities, band counts, patch size and channels match. Returns the header."""
    from ..models.modelfile import read_checked

    meta, tensors = read_checked(path, "PRETRAINED")
    if PRETRAINED_KEY not in meta:
        raise ModelFileError(f"PRETRAINED {path!r} is not an rsvl:pretrain encoder file")
    header = json.loads(meta[PRETRAINED_KEY])
    arch = header["architecture"]
    config = model.config
    if config.groups:
        raise InputError("PRETRAINED encoders are per modality; RECIPE band-groups has one per band group: "
                         "train it without PRETRAINED")
    problems = []
    if dict(arch["bands"]) != dict(config.bands):
        problems.append(f"it was pretrained on {arch['bands']}, the training layers have {config.bands}")
    if int(arch["patch_size"]) != config.patch_size:
        problems.append(f"its patch size is {arch['patch_size']}, PATCH_SIZE is {config.patch_size}")
    if {k: list(v) for k, v in arch["channels"].items()} != config.channels:
        problems.append("its encoder channels differ")
    if problems:
        raise InputError(f"PRETRAINED {os.path.basename(path)!r} does not fit: " + "; ".join(problems))
    state = {k[len("encoders."):]: v for k, v in tensors.items() if k.startswith("encoders.")}
    model.encoders.load_state_dict(state, strict=True)
    return header
