"""MMLGNet encoders: per-modality CNNs fused into one embedding aligned to text.

Paper configuration (Chaudhary et al., MMLGNet): each modality has three blocks of
Conv3x3 → BatchNorm → ReLU → MaxPool2x2 (HSI 64/128/256 filters, LiDAR 32/64/128),
a flatten and a fully connected layer to 256 features; the modality features are
concatenated and a linear fusion layer projects them into the text embedding space.

rsvl makes the blocks *exactly convolutional*: convolutions are "valid" (no zero
padding at the patch border) and the last blocks shrink their kernel when the patch is
already small. A pixel's output then depends only on the patch pixels, identically
wherever the patch sits, so :meth:`MMLGNet.forward_dense` can compute every pixel of a
window at once (stride-2 pooling becomes dilated "à trous" pooling) and give the same
numbers as the per-patch :meth:`MMLGNet.forward` used for training. For the paper's
11×11 patches the spatial sizes go 11 → 9 → 4 → 2 → 1 → 1 (the paper: 11 → 5 → 2 → 1).

Spectral-spatial models (recipe ``spectral-spatial``) add a *pixel branch*: the centre
pixel's bands of every modality, concatenated, through 1×1 Conv → BN → ReLU blocks and a
fully connected layer (a per-pixel MLP, written as a :class:`ConvEncoder` with a 1-pixel
patch). Its features join the CNN branches' features before the fusion layer, so the
fused embedding sees both the pixel's exact spectrum and its neighbourhood. It is exactly
convolutional too (the dense path crops the window's halo).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..io.raster import MODALITIES

DEFAULT_CHANNELS: Dict[str, Tuple[int, int, int]] = {
    "hsi": (64, 128, 256),
    "ms": (64, 128, 256),
    "lidar": (32, 64, 128),
    "sar": (32, 64, 128),
}
MODALITY_FEATURES = 256  # per-modality embedding (the paper's D/2)


@dataclass
class ModelConfig:
    """Architecture of an MMLGNet model (stored in the model file)."""

    bands: Dict[str, int]  # modality -> band count, canonical modality order
    embed_dim: int  # = text embedding dimension
    patch_size: int = 11
    channels: Dict[str, List[int]] = field(default_factory=dict)
    modality_features: int = MODALITY_FEATURES
    # Band-group prompting (recipe "band-groups"): modality -> [[group name, [band indexes]], ...];
    # each group gets its own encoder branch. Empty: one branch per modality (MMLGNet).
    groups: Dict[str, List[list]] = field(default_factory=dict)
    # Spectral-spatial models: filters of the per-pixel branch's 1x1 blocks (empty: no pixel branch).
    pixel_channels: List[int] = field(default_factory=list)

    def __post_init__(self):
        self.bands = {m: int(self.bands[m]) for m in MODALITIES if m in self.bands}
        if not self.bands:
            raise ValueError("a model needs at least one modality")
        if self.patch_size < 1 or self.patch_size % 2 == 0:
            raise ValueError(f"PATCH_SIZE must be a positive odd number (got {self.patch_size})")
        for m in self.bands:
            self.channels.setdefault(m, list(DEFAULT_CHANNELS[m]))
        self.channels = {m: [int(c) for c in self.channels[m]] for m in self.bands}
        self.groups = {m: [[str(g), [int(i) for i in idx]] for g, idx in self.groups[m]]
                       for m in self.bands if self.groups.get(m)}
        self.pixel_channels = [int(c) for c in self.pixel_channels]
        if any(c < 1 for c in self.pixel_channels):
            raise ValueError(f"pixel branch filters must be positive (got {self.pixel_channels})")
        for m, groups in self.groups.items():
            used = sorted(i for _g, idx in groups for i in idx)
            if not used or used[0] < 0 or used[-1] >= self.bands[m] or len(set(used)) != len(used):
                raise ValueError(f"band groups of {m} must use its bands 0..{self.bands[m] - 1} at most once")

    def branches(self) -> List[Tuple[str, str, object]]:
        """(key, modality, band indexes or None) of every encoder branch, in order."""
        out = []
        for m in self.bands:
            if m in self.groups:
                out += [(f"{m}:{g}", m, list(idx)) for g, idx in self.groups[m]]
            else:
                out.append((m, m, None))
        return out

    def to_json(self) -> dict:
        d = {
            "bands": self.bands, "embed_dim": self.embed_dim, "patch_size": self.patch_size,
            "channels": self.channels, "modality_features": self.modality_features,
        }
        if self.groups:
            d["groups"] = self.groups
        if self.pixel_channels:
            d["pixel_channels"] = self.pixel_channels
        return d

    @classmethod
    def from_json(cls, d: dict) -> ModelConfig:
        return cls(
            bands=dict(d["bands"]), embed_dim=int(d["embed_dim"]), patch_size=int(d["patch_size"]),
            channels={k: list(v) for k, v in d["channels"].items()}, modality_features=int(d["modality_features"]),
            groups={k: [list(g) for g in v] for k, v in d.get("groups", {}).items()},
            pixel_channels=list(d.get("pixel_channels", [])),
        )

    @property
    def total_bands(self) -> int:
        return sum(self.bands.values())


def block_plan(patch_size: int, n_blocks: int) -> Tuple[List[Tuple[int, bool]], int]:
    """(kernel, pool) per block and the final spatial size, for valid convolutions."""
    size = patch_size
    plan = []
    for _ in range(n_blocks):
        k = min(3, size)
        size = size - k + 1
        pool = size >= 2
        if pool:
            size //= 2
        plan.append((k, pool))
    return plan, size


class ConvEncoder(nn.Module):
    """One modality's CNN: valid Conv → BN → ReLU → MaxPool blocks, flatten, FC."""

    def __init__(self, in_bands: int, channels: Sequence[int], patch_size: int, out_features: int):
        super().__init__()
        self.plan, self.final_size = block_plan(patch_size, len(channels))
        convs, norms = [], []
        c_in = in_bands
        for (k, _pool), c_out in zip(self.plan, channels):
            convs.append(nn.Conv2d(c_in, c_out, kernel_size=k))
            norms.append(nn.BatchNorm2d(c_out))
            c_in = c_out
        self.convs = nn.ModuleList(convs)
        self.norms = nn.ModuleList(norms)
        self.fc = nn.Linear(c_in * self.final_size * self.final_size, out_features)
        self.patch_size = patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, bands, P, P) patches → (N, out_features)."""
        for (_k, pool), conv, norm in zip(self.plan, self.convs, self.norms):
            x = F.relu(norm(conv(x)))
            if pool:
                x = F.max_pool2d(x, 2)
        return self.fc(x.flatten(1))

    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, bands, H + P - 1, W + P - 1), a window with a halo of P//2 pixels
        → (N, out_features, H, W): the per-patch output of every pixel of the window.

        Stride-2 pooling is replaced by stride-1 pooling whose later layers are dilated
        (à trous), which keeps every pixel's own pooling grid. Batch norm must be in
        eval mode (it is an affine map then)."""
        h = x.shape[-2] - (self.patch_size - 1)
        w = x.shape[-1] - (self.patch_size - 1)
        d = 1
        for (_k, pool), conv, norm in zip(self.plan, self.convs, self.norms):
            x = F.relu(norm(F.conv2d(x, conv.weight, conv.bias, dilation=d)))
            if pool:
                x = F.max_pool2d(x, 2, stride=1, dilation=d)
                d *= 2
        s = self.final_size
        weight = self.fc.weight.view(self.fc.out_features, -1, s, s)
        x = F.conv2d(x, weight, self.fc.bias, dilation=d)
        # Floor pooling ignores the last rows/columns of a patch: crop the surplus.
        return x[..., :h, :w]


class MMLGNet(nn.Module):
    """Per-modality encoders → concatenation → linear fusion → embedding in text space.

    The class text embeddings (frozen, from the text encoder) live in the buffer
    ``class_embeddings`` (C, D), L2-normalised; ``logit_scale`` is CLIP's learnable
    temperature (log of 1/τ)."""

    def __init__(self, config: ModelConfig, n_classes: int):
        super().__init__()
        self.config = config
        branches = config.branches()
        self.encoders = nn.ModuleDict({
            key: ConvEncoder(len(idx) if idx is not None else config.bands[m], config.channels[m], config.patch_size,
                             config.modality_features)
            for key, m, idx in branches
        })
        # Spectral-spatial: a per-pixel branch on the centre pixel of every modality (1x1 blocks).
        self.pixel = (ConvEncoder(config.total_bands, config.pixel_channels, 1, config.modality_features)
                      if config.pixel_channels else None)
        n_features = len(branches) + (1 if self.pixel is not None else 0)
        self.fusion = nn.Linear(config.modality_features * n_features, config.embed_dim)
        # Band-group prompting: each group's features projected into the text space, aligned
        # with "<the group's physics> of <class>" prompts during training (not used to map).
        self.group_heads = nn.ModuleDict({key: nn.Linear(config.modality_features, config.embed_dim)
                                          for key, _m, idx in branches if idx is not None}) if config.groups else None
        self.logit_scale = nn.Parameter(torch.tensor(float(torch.log(torch.tensor(1 / 0.07)))))
        self.register_buffer("class_embeddings", torch.zeros(n_classes, config.embed_dim))

    @staticmethod
    def _bands(x: torch.Tensor, idx) -> torch.Tensor:
        return x if idx is None else x[:, idx]

    def branch_features(self, patches: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Each branch's (N, modality_features) features of per-patch inputs (the pixel
        branch, where there is one, last under the key ``"pixel"``)."""
        out = {key: self.encoders[key](self._bands(patches[m], idx)) for key, m, idx in self.config.branches()}
        if self.pixel is not None:
            h = self.config.patch_size // 2
            centre = torch.cat([patches[m][:, :, h:h + 1, h:h + 1] for m in self.config.bands], dim=1)
            out["pixel"] = self.pixel(centre)
        return out

    def embed(self, patches: Dict[str, torch.Tensor], features: Dict[str, torch.Tensor] = None) -> torch.Tensor:
        """Per-patch path: dict of (N, bands, P, P) → L2-normalised (N, D)."""
        features = features if features is not None else self.branch_features(patches)
        return F.normalize(self.fusion(torch.cat(list(features.values()), dim=1)), dim=1)

    def group_embeddings(self, features: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """L2-normalised (N, D) text-space embedding of each band group (band-group models)."""
        return {key: F.normalize(head(features[key]), dim=1) for key, head in (self.group_heads or {}).items()}

    def embed_dense(self, windows: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Dense path: dict of (N, bands, H+P-1, W+P-1) → L2-normalised (N, D, H, W)."""
        feats = [self.encoders[key].forward_dense(self._bands(windows[m], idx))
                 for key, m, idx in self.config.branches()]
        if self.pixel is not None:
            h = self.config.patch_size // 2
            centre = torch.cat([windows[m] for m in self.config.bands], dim=1)
            feats.append(self.pixel.forward_dense(centre[..., h:centre.shape[-2] - h, h:centre.shape[-1] - h]))
        x = torch.cat(feats, dim=1)
        weight = self.fusion.weight[:, :, None, None]
        return F.normalize(F.conv2d(x, weight, self.fusion.bias), dim=1)

    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=float(torch.log(torch.tensor(100.0)))).exp()

    def logits(self, z: torch.Tensor, text: torch.Tensor = None) -> torch.Tensor:
        """Scaled cosine similarities of embeddings ``z`` (N, D) to text (C, D)."""
        text = self.class_embeddings if text is None else text
        return self.scale() * z @ text.t()

    def text_space(self, text: torch.Tensor) -> torch.Tensor:
        """Text embeddings (K, D) as :meth:`embed`'s vectors are compared with them (here:
        unchanged; see :class:`Ensemble`)."""
        return text


class Ensemble(nn.Module):
    """A deep ensemble (Lakshminarayanan et al., 2017): ``members`` MMLGNet models of one
    architecture, trained on the same labels from different seeds (initial weights, batch
    order, augmentation). A pixel's cosine similarity to a text is the mean of the members'.

    It keeps MMLGNet's interface: :meth:`embed` and :meth:`embed_dense` give the members'
    L2-normalised embeddings concatenated and divided by sqrt(M) (unit vectors of M·D
    values), and :meth:`text_space` repeats a (K, D) text embedding M times over sqrt(M),
    so their dot product is exactly the mean of the members' cosine similarities. Class
    prompts, open-vocabulary queries and the dense engine work unchanged."""

    def __init__(self, members: Sequence[MMLGNet]):
        super().__init__()
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two members")
        configs = {repr(m.config) for m in members}
        if len(configs) != 1:
            raise ValueError("ensemble members must share one architecture")
        self.members = nn.ModuleList(members)

    @property
    def config(self) -> ModelConfig:
        return self.members[0].config

    @property
    def class_embeddings(self) -> torch.Tensor:
        return self.members[0].class_embeddings

    def join(self, parts: List[torch.Tensor]) -> torch.Tensor:
        """The members' unit embeddings (each (N, D, ...)) as one unit vector of M·D values."""
        return torch.cat(parts, dim=1) / len(self.members) ** 0.5

    def embed(self, patches: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-patch path: dict of (N, bands, P, P) → unit (N, M·D)."""
        return self.join([m.embed(patches) for m in self.members])

    def embed_dense(self, windows: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Dense path: dict of (N, bands, H+P-1, W+P-1) → unit (N, M·D, H, W)."""
        return self.join([m.embed_dense(windows) for m in self.members])

    def text_space(self, text: torch.Tensor) -> torch.Tensor:
        return text.repeat(1, len(self.members)) / len(self.members) ** 0.5

    def scale(self) -> torch.Tensor:
        """The members' mean temperature (1/τ), for the confidence's softmax."""
        return torch.stack([m.scale() for m in self.members]).mean()

    def logits(self, z: torch.Tensor, text: torch.Tensor = None) -> torch.Tensor:
        text = self.class_embeddings if text is None else text
        return self.scale() * z @ self.text_space(text).t()


def mix_targets(positives: torch.Tensor, mix=None) -> torch.Tensor:
    """The (images, texts) weights of a batch's positive pairs. ``positives``: 1 where
    image ``i`` and text ``j`` match. With ``mix = (partner, lam)`` (image ``i`` is
    ``lam[i]·x[i] + (1 − lam[i])·x[partner[i]]``, :func:`rsvl.backend.data.augment.mix_pixels`)
    image ``i`` matches text ``j`` by ``lam[i]`` where sample ``i`` does and by
    ``1 − lam[i]`` where its partner does."""
    if mix is None:
        return positives
    partner, lam = mix
    lam = lam.to(device=positives.device, dtype=positives.dtype)[:, None]
    return lam * positives + (1 - lam) * positives[partner.to(positives.device)]


def _two_way_loss(s: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean of the image→text and text→image cross-entropies of logits ``s`` (images ×
    texts) against ``weights`` spread over each row's positives."""
    loss_v = -((weights / weights.sum(1, keepdim=True)) * F.log_softmax(s, dim=1)).sum(1).mean()
    w_t = weights.t()
    loss_t = -((w_t / w_t.sum(1, keepdim=True)) * F.log_softmax(s.t(), dim=1)).sum(1).mean()
    return 0.5 * (loss_v + loss_t)


def symmetric_contrastive_loss(z_v: torch.Tensor, z_t: torch.Tensor, scale: torch.Tensor, mix=None) -> torch.Tensor:
    """MMLGNet eq. 4–6 (CLIP's loss): the i-th visual embedding should pick the i-th
    text (its class prompt) among the batch's texts and vice versa; mean of both. With
    ``mix`` (:func:`mix_targets`) a mixed image picks its own and its partner's text."""
    s = scale * z_v @ z_t.t()
    if mix is None:
        target = torch.arange(s.shape[0], device=s.device)
        return 0.5 * (F.cross_entropy(s, target) + F.cross_entropy(s.t(), target))
    return _two_way_loss(s, mix_targets(torch.eye(s.shape[0], dtype=s.dtype, device=s.device), mix))


def supervised_contrastive_loss(z_v: torch.Tensor, z_t: torch.Tensor, y: torch.Tensor,
                                scale: torch.Tensor, mix=None) -> torch.Tensor:
    """The symmetric image-text loss with the supervised matrix (BP-LCZ's multivariate
    supervised contrast): every same-class pair in the batch is a positive, so two samples
    of one class — whose prompts are the same text — are not pushed apart as negatives.
    Each row's target spreads evenly over its positives; mean of both directions. With
    ``mix`` (:func:`mix_targets`) a mixed image's positives are weighted by its shares."""
    s = scale * z_v @ z_t.t()
    return _two_way_loss(s, mix_targets((y[:, None] == y[None, :]).to(s.dtype), mix))


LOSSES = ("supervised", "clip")
