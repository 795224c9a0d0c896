"""Reading and recognising checkpoint files: :func:`read_checkpoint` reads safetensors, or a PyTorch file with
``torch.load(weights_only=True)`` (a pickle that holds code is refused, never run), unwraps training checkpoints
(``state_dict``, ``module.``) and keeps the keys under the preset's prefix; :func:`detect_preset` recognises the
model; :func:`build_model` builds it offline."""

from __future__ import annotations

import logging
import os
from typing import Dict, Optional

from ..errors import InputError, ModelFileError
from .fewshot_file import model_kind  # reads a safetensors header without torch
from .presets import PRESETS, Preset, get_preset

log = logging.getLogger("rsvl")


# -- checkpoints ----------------------------------------------------------------------------
CHECKPOINT_FORMATS = ("a safetensors file, or a PyTorch .pt/.pth/.bin/.ckpt file (a zip archive or a pickle of "
                      "tensors)")


def checkpoint_kind(path: str, what: str = "MODEL") -> str:
    """'safetensors', 'zip' or 'pickle' for a file that can be a checkpoint; otherwise
    :class:`ModelFileError` naming ``what`` (the parameter) and saying what the file looks
    like. Reads the first bytes only."""
    from ..models.modelfile import describe_file

    if not os.path.isfile(path):
        raise ModelFileError(f"{what} file {path!r} does not exist")
    with open(path, "rb") as f:
        head = f.read(16)
    n = int.from_bytes(head[:8], "little") if len(head) >= 8 else 0
    if head[8:9] == b"{" and 2 <= n <= os.path.getsize(path):
        return "safetensors"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):  # pickle protocol 2-5
        return "pickle"
    raise ModelFileError(f"{what} {path!r} is not a pretrained checkpoint: it {describe_file(path)}; expected "
                         f"{CHECKPOINT_FORMATS}")


def read_checkpoint(path: str) -> Dict[str, object]:
    """The state dict of a checkpoint file: safetensors, or a PyTorch file read with
    ``weights_only=True`` (plain tensors only: a pickle that holds code is refused and never
    run). Training checkpoints are unwrapped (``state_dict``; a ``module.`` prefix)."""
    import torch

    head = checkpoint_kind(path)
    try:
        if head == "safetensors":
            from safetensors.torch import load_file

            state = load_file(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 (torch and safetensors raise many types)
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):  # a zip/pickle (checkpoint_kind)
            raise ModelFileError(f"MODEL {path!r} was refused: it is a pickle that holds more than tensors (code "
                                 "or objects that would run on loading); give a plain weights file") from exc
        raise ModelFileError(f"MODEL {path!r} cannot be read as a checkpoint: {text}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(isinstance(k, str) for k in state):
        raise ModelFileError(f"MODEL {path!r} holds no state dict of named tensors")
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _vit_arch(width: int, patch: int) -> Optional[str]:
    return {(768, 32): "ViT-B-32", (768, 16): "ViT-B-16", (1024, 14): "ViT-L-14", (1280, 14): "ViT-H-14"}.get(
        (width, patch))


def detect_preset(state: Dict[str, object]) -> str:
    """The preset a state dict belongs to, where its keys and shapes tell (PRESET=auto)."""
    prefix = PRESETS["llama3-ms-clip"].key_prefix
    conv = state.get(prefix + "visual.conv1.weight")
    if conv is not None and tuple(conv.shape) == (768, 10, 16, 16):
        return "llama3-ms-clip"
    if "visual.layer1.0.conv1.weight" in state and "visual.attnpool.positional_embedding" in state:
        return "remoteclip-rn50"
    conv = state.get("visual.conv1.weight")
    if conv is None:
        raise InputError("PRESET=auto does not recognise this checkpoint (no open_clip image tower keys such as "
                         "'visual.conv1.weight'): set PRESET to open_clip:ARCH or a named preset")
    width, channels, patch = int(conv.shape[0]), int(conv.shape[1]), int(conv.shape[2])
    arch = _vit_arch(width, patch)
    candidates = [p.name for p in PRESETS.values() if p.arch.replace("-quickgelu", "") == arch
                  and p.channels == channels]
    if len(candidates) == 1:
        return candidates[0]
    if arch and not candidates:
        return f"open_clip:{arch}"
    what = f"a {arch} checkpoint" if arch else f"a ViT of width {width} with {patch}-pixel patches"
    raise InputError(
        f"PRESET=auto cannot tell which model {what} is"
        + (f" ({', '.join(candidates)} share its shapes but differ in activation and preprocessing)"
           if candidates else "")
        + ": set PRESET")


class _DropMessage(logging.Filter):
    """Drops open_clip's root-logger warnings about weights while rsvl builds a model whose
    weights it loads itself."""

    def __init__(self, *starts: str):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.starts)


def build_model(preset: Preset, device=None):
    """The preset's open_clip model (random weights, eval mode), with a
    ``len(preset.bands)``-channel patch embedding where the preset needs one. ``device``
    "meta" builds it without allocating weights (for checking key layouts)."""
    import contextlib

    import open_clip
    import torch

    quiet = _DropMessage("No pretrained weights loaded for model", "Local config loaded",
                         "Multiple checkpoints found", "Model ")  # the caller loads the weights
    logging.getLogger().addFilter(quiet)
    try:
        with torch.device(device) if device is not None else contextlib.nullcontext():
            model = open_clip.create_model(preset.arch, pretrained=None, load_weights=False,
                                           **({"device": device} if device is not None else {}))
            visual = model.visual
            if preset.channels != 3:
                if not isinstance(getattr(visual, "conv1", None), torch.nn.Conv2d):
                    raise InputError(f"PRESET {preset.name}: {preset.arch} has no patch embedding to give "
                                     f"{preset.channels} channels")
                old = visual.conv1
                visual.conv1 = torch.nn.Conv2d(preset.channels, old.out_channels, old.kernel_size, stride=old.stride,
                                               bias=old.bias is not None)
    finally:
        logging.getLogger().removeFilter(quiet)
    return model.eval()


def preset_state(state: Dict[str, object], preset: Preset, path: str = "checkpoint") -> Dict[str, object]:
    """The state dict the preset's open_clip model loads: the keys under the preset's
    prefix with the prefix stripped (Llama3-MS-CLIP's Lightning file holds every key three
    times, under clip_base_model.model., image_encoder.model. and text_encoder.model., plus a
    scalar ``temperature``), training-only scalars dropped."""
    if preset.key_prefix:
        kept = {k[len(preset.key_prefix):]: v for k, v in state.items() if k.startswith(preset.key_prefix)}
        if not kept:
            raise ModelFileError(f"MODEL {path!r} has no keys under {preset.key_prefix!r}, as {preset.name} "
                                 "weights have: set PRESET to the model the file holds")
        state = kept
    else:
        state = dict(state)
    state.pop("temperature", None)
    return state


def describe_checkpoint(path: str) -> str:
    """One line on what a checkpoint is, for messages and `info`."""
    state = read_checkpoint(path)
    try:
        name = detect_preset(state)
    except InputError as exc:
        return f"an open_clip-style checkpoint ({exc})"
    return f"a {name} checkpoint ({get_preset(name).arch})"


def is_rsvl_model(path: str) -> bool:
    """Whether ``path`` is an rsvl:train model file (safetensors with an rsvl header)."""
    return model_kind(path) == "rsvl"
