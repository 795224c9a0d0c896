"""Dense inference engine: MMLGNet's exactly-convolutional dense path, prepared once for
fast whole-scene inference.

:meth:`MMLGNet.embed_dense` is the readable reference (and equals the per-patch
definition used in training). :class:`DenseEmbedder` computes the same function with the
algebra rearranged for speed, without changing what any pixel depends on:

- batch norm (eval mode: an affine map) is folded into the preceding convolution;
- each modality's fully connected layer and its slice of the linear fusion layer are one
  linear map, applied as a single dilated convolution per modality whose outputs are
  summed (no non-linearity lies between them); this skips the 256-d modality features;
- stride-1 à trous max pooling is two element-wise maxima of shifted views;
- a spectral-spatial model's pixel branch is folded the same way (1×1 convolutions on the
  window without its halo);
- activations are ``channels_last`` (what oneDNN's convolutions prefer on CPU);
- a window is computed in sub-tiles of ``compute_tile`` pixels (plus the halo, sliced from
  the window already in memory) so intermediate feature maps stay cache-sized and peak
  memory does not grow with the I/O window.

An :class:`~rsvl.backend.models.mmlgnet.Ensemble` gets one folded engine per member
(:class:`EnsembleEmbedder`, from :func:`dense_embedder`); its embedding is theirs joined as
:meth:`Ensemble.embed_dense` joins them.

Results agree with the reference to float32 rounding (about 1e-6 on embeddings); tests
compare both paths with the per-patch definition.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..runtime.allocator import tune_allocator
from .mmlgnet import Ensemble, MMLGNet

COMPUTE_TILE = 64  # output pixels per side of one dense sub-tile (64 beat 32, 96, 128, 256 on a 2-core AVX-512 CPU)


def _stride1_maxpool(x: torch.Tensor, d: int) -> torch.Tensor:
    """``F.max_pool2d(x, 2, stride=1, dilation=d)`` as two maxima of shifted views."""
    x = torch.maximum(x[..., :-d], x[..., d:])
    return torch.maximum(x[..., :-d, :], x[..., d:, :])


class DenseEmbedder:
    """Folded, inference-only copy of a trained :class:`MMLGNet` (eval mode).

    ``embed(windows)`` has the signature and result of ``MMLGNet.embed_dense``;
    ``similarity(norm, text)`` gives the cosine similarity of every window pixel to the
    text embeddings directly, without keeping the whole window's embeddings."""

    def __init__(self, model: MMLGNet, device="cpu", compute_tile: int = COMPUTE_TILE,
                 dtype: torch.dtype = torch.float32):
        if compute_tile < 1:
            raise ValueError(f"compute_tile must be positive (got {compute_tile})")
        tune_allocator()  # window-sized tensors from the heap, not mmap'd per window
        self.device = torch.device(device)
        self.dtype = dtype  # the convolutions' (bfloat16/float16: cast once here); the sum of heads stays float32
        self.patch_size = model.config.patch_size
        self.halo = self.patch_size // 2
        self.compute_tile = compute_tile
        self.modalities = list(model.config.bands)
        self.branches = model.config.branches()  # (key, modality, band indexes or None)
        self.layers: Dict[str, List[Tuple[torch.Tensor, torch.Tensor, bool]]] = {}
        self.heads: Dict[str, torch.Tensor] = {}
        self.pixel = model.pixel is not None
        with torch.no_grad():
            fusion_w = model.fusion.weight.detach().double()
            bias = model.fusion.bias.detach().double().clone()
            offset = 0
            encoders = [(m, model.encoders[m]) for m, _modality, _idx in self.branches]
            if model.pixel is not None:  # spectral-spatial: the per-pixel branch, 1x1 blocks on the centre pixel
                encoders.append(("pixel", model.pixel))
            for m, enc in encoders:
                layers = []
                for (_k, pool), conv, norm in zip(enc.plan, enc.convs, enc.norms):
                    if norm.training:
                        raise ValueError("DenseEmbedder needs a model in eval mode (batch norm as an affine map)")
                    s = norm.weight.double() / torch.sqrt(norm.running_var.double() + norm.eps)
                    w = conv.weight.double() * s[:, None, None, None]
                    b = (conv.bias.double() - norm.running_mean.double()) * s + norm.bias.double()
                    layers.append((self._weight(w), b.to(self.device, self.dtype), pool))
                self.layers[m] = layers
                # fusion[:, slice of m] @ (fc(x) ) = (fusion_m @ fc_w) x + fusion_m @ fc_b
                n = enc.fc.out_features
                fusion_m = fusion_w[:, offset:offset + n]
                offset += n
                s = enc.final_size
                head = fusion_m @ enc.fc.weight.detach().double()  # (D, C*s*s)
                self.heads[m] = self._weight(head.view(head.shape[0], -1, s, s))
                bias += fusion_m @ enc.fc.bias.detach().double()
            self.bias = bias.float().to(self.device)[None, :, None, None]
        # Each branch's dilation at its head: doubled by every stride-1 pooling before it (the
        # pixel branch's 1 x 1 blocks have none).
        self.head_dilation = {m: 1 if m == "pixel" else 2 ** sum(1 for *_wb, pool in layers if pool)
                              for m, layers in self.layers.items()}
        self.head_groups = self._join_heads() if dtype != torch.float32 else []

    def _join_heads(self) -> List[Tuple[Tuple[str, ...], int, int, torch.Tensor]]:
        """(branch keys, dilation, reach, joined weight) per set of heads with the same kernel
        and dilation (every 1 x 1 head is one): their weights joined along the inputs, so
        :meth:`embed_channels_last` runs each set as one convolution."""
        groups: Dict[Tuple[int, int], List[str]] = {}
        for m, head in self.heads.items():
            k = head.shape[-1]
            groups.setdefault((k, self.head_dilation[m] if k > 1 else 1), []).append(m)
        return [(tuple(keys), d, (k - 1) * d,
                 torch.cat([self.heads[m] for m in keys], dim=1).contiguous(memory_format=torch.channels_last))
                for (k, d), keys in groups.items()]

    def _weight(self, w: torch.Tensor) -> torch.Tensor:
        return w.to(self.device, self.dtype).contiguous(memory_format=torch.channels_last)

    def embed(self, windows: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Dict of (N, bands, H+P-1, W+P-1) → L2-normalised (N, D, H, W), as
        :meth:`MMLGNet.embed_dense` (in reduced precision a channels-last view of
        :meth:`embed_channels_last`'s normalised result)."""
        if self.dtype != torch.float32:
            z = self.embed_channels_last(windows)
            return z.div_(z.norm(dim=-1, keepdim=True).clamp_min_(1e-12)).permute(0, 3, 1, 2)
        h, w = self._output_size(windows)
        out = None
        with torch.no_grad():
            for m, x in self._branch_outputs(windows, h, w):
                y = F.conv2d(x, self.heads[m], None, dilation=self.head_dilation[m])[..., :h, :w].float()
                out = y if out is None else out.add_(y)
            return F.normalize(out.add_(self.bias), dim=1)

    def _output_size(self, windows: Dict[str, torch.Tensor]) -> Tuple[int, int]:
        """(h, w) of the pixels a window (with its halo) gives."""
        any_x = windows[self.modalities[0]]
        return any_x.shape[-2] - (self.patch_size - 1), any_x.shape[-1] - (self.patch_size - 1)

    def _branch_outputs(self, windows: Dict[str, torch.Tensor], h: int, w: int):
        """(branch key, its last feature map) per branch, ready for the branch's head (in
        ``self.dtype``, channels-last); ``h`` × ``w`` the window's output pixels."""
        for m, modality, idx in self.branches:
            x = windows[modality] if idx is None else windows[modality][:, idx]
            x = x.to(self.device, self.dtype).contiguous(memory_format=torch.channels_last)
            d = 1
            for weight, bias, pool in self.layers[m]:
                x = F.conv2d(x, weight, bias, dilation=d).relu_()
                if pool:
                    x = _stride1_maxpool(x, d)
                    d *= 2
            yield m, x
        if self.pixel:
            halo = self.halo
            x = torch.cat([windows[m] for m in self.modalities], dim=1)[..., halo:halo + h, halo:halo + w]
            x = x.to(self.device, self.dtype).contiguous(memory_format=torch.channels_last)
            for weight, bias, _pool in self.layers["pixel"]:
                x = F.conv2d(x, weight, bias).relu_()
            yield "pixel", x

    def embed_channels_last(self, windows: Dict[str, torch.Tensor]) -> torch.Tensor:
        """The fused embedding before normalisation as a contiguous float32 (N, H, W, D)
        (the reduced-precision path). Heads of the same kernel and dilation (every 1 × 1
        head is one; :meth:`_join_heads`) run as one convolution over the branches' features
        joined along the channels, each cut to exactly the output's pixels: one GEMM whose
        float32 accumulation sums the branches, a contiguous channels-last result read as
        (N, H, W, D), so the normalisation and the comparison with text are row-major
        reductions and one GEMM."""
        h, w = self._output_size(windows)
        with torch.no_grad():
            features = dict(self._branch_outputs(windows, h, w))
            out = None
            for keys, d, reach, weight in self.head_groups:
                parts = [features[m][..., :h + reach, :w + reach] for m in keys]
                x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
                y = F.conv2d(x.contiguous(memory_format=torch.channels_last), weight, None, dilation=d)
                y = y.permute(0, 2, 3, 1)
                out = y.float() if out is None else out.add_(y)
            return out.contiguous().add_(self.bias.view(1, 1, 1, -1))

    def _tile_similarity(self, sub: Dict[str, torch.Tensor], text: torch.Tensor) -> torch.Tensor:
        """Cosine similarity (K, h, w) of one compute tile's pixels to ``text`` (K, D)."""
        if self.dtype == torch.float32:
            return torch.einsum("dhw,kd->khw", self.embed(sub)[0], text)
        z = self.embed_channels_last(sub)[0]  # (h, w, D) float32
        hh, ww, d = z.shape
        z = z.view(-1, d)
        return (z @ text.t()).div_(z.norm(dim=1, keepdim=True).clamp_min_(1e-12)).t().reshape(-1, hh, ww)

    def similarity(self, norm: Dict[str, np.ndarray], text: torch.Tensor) -> torch.Tensor:
        """Cosine similarity (K, h, w) of a window's pixels to ``text`` (K, D, L2-normalised).

        ``norm``: per-modality normalised arrays (bands, h + 2·halo, w + 2·halo)."""
        halo, t = self.halo, self.compute_tile
        any_arr = norm[self.modalities[0]]
        h, w = any_arr.shape[1] - 2 * halo, any_arr.shape[2] - 2 * halo
        text = text.to(self.device)
        out = torch.empty((text.shape[0], h, w), dtype=torch.float32, device=self.device)
        with torch.no_grad():
            for r in range(0, h, t):
                for c in range(0, w, t):
                    th, tw = min(t, h - r), min(t, w - c)
                    sub = {m: torch.from_numpy(norm[m][None, :, r:r + th + 2 * halo, c:c + tw + 2 * halo])
                           for m in self.modalities}
                    out[:, r:r + th, c:c + tw] = self._tile_similarity(sub, text)
        return out


class EnsembleEmbedder(DenseEmbedder):
    """The dense engine of an :class:`~rsvl.backend.models.mmlgnet.Ensemble`: one folded
    :class:`DenseEmbedder` per member; ``embed`` joins their embeddings as
    :meth:`Ensemble.embed_dense` does, and ``similarity`` (inherited) compares them with
    text in the ensemble's space (:meth:`Ensemble.text_space`)."""

    def __init__(self, model: Ensemble, device="cpu", compute_tile: int = COMPUTE_TILE,
                 dtype: torch.dtype = torch.float32):
        self.engines = [DenseEmbedder(m, device, compute_tile, dtype) for m in model.members]  # each checks the tile
        self.dtype = dtype
        self.join = model.join
        first = self.engines[0]
        self.device, self.patch_size, self.halo = first.device, first.patch_size, first.halo
        self.compute_tile, self.modalities = compute_tile, first.modalities

    def embed(self, windows: Dict[str, torch.Tensor]) -> torch.Tensor:
        return self.join([e.embed(windows) for e in self.engines])

    def _tile_similarity(self, sub: Dict[str, torch.Tensor], text: torch.Tensor) -> torch.Tensor:
        return torch.einsum("dhw,kd->khw", self.embed(sub)[0], text)


def dense_embedder(model, device="cpu", compute_tile: int = COMPUTE_TILE,
                   dtype: torch.dtype = torch.float32) -> DenseEmbedder:
    """The dense engine of a trained model: :class:`DenseEmbedder` for an MMLGNet,
    :class:`EnsembleEmbedder` for an ensemble; ``dtype`` the precision of its convolutions
    (see :mod:`rsvl.backend.runtime.precision`)."""
    cls = EnsembleEmbedder if isinstance(model, Ensemble) else DenseEmbedder
    return cls(model, device, compute_tile, dtype)
