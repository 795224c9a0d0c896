"""Pretrained vision-language foundation models: Llama3-MS-CLIP, RemoteCLIP, GeoRSCLIP,
SkyCLIP and any other open_clip checkpoint, loaded from local files (never downloaded).

A :class:`Preset` is one declarative entry: open_clip architecture (the ``-quickgelu``
variant where the weights were trained with QuickGELU), the Sentinel-2 bands the image
tower takes in order, how digital numbers become its input values, mean/std, the key
prefix of the released state dict and the default prompt templates. Facts come from each
model's public code (see the design notes in the README).

- Loading: :func:`read_checkpoint` reads safetensors, or a PyTorch file with
  ``torch.load(weights_only=True)`` (a pickle that holds code is refused, never run),
  unwraps training checkpoints (``state_dict``, ``module.``) and keeps the keys under the
  preset's prefix. :class:`FoundationModel` builds the open_clip architecture offline,
  swaps in a ``len(bands)``-channel patch embedding where needed and loads strictly.
- Inputs: :func:`select_bands` picks the preset's bands from band descriptions, from the
  band count of a 13-band L1C or 12-band L2A stack, or from an explicit BANDS list;
  :func:`value_scale` decides how raster values become digital numbers.
- Scene maps (:func:`zeroshot_map`): windows of ``tile`` pixels every ``stride`` pixels
  (the last row and column moved in to end at the edge) are resized to the model input,
  encoded in batches, and scored against the prompt embeddings (template ensembles); a
  pixel's score is the mean over the windows covering it, per window (``tile``) or per
  16-pixel patch token (``token``). Nodata input pixels are filled with the band means
  (normalised zero) for the model and are nodata in every output.
- Retrieval (:func:`retrieve`): the scene's tiles ranked by cosine similarity to a text,
  written as polygons; :func:`average_precision_at_k` is the mAP@K the paper reports.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .errors import InputError, ModelFileError

log = logging.getLogger("rsvl")

S2_L1C = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
S2_L2A = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
MSCLIP_BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
RGB_BANDS = ("B04", "B03", "B02")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MSCLIP_MEAN = (925.161, 1183.128, 1338.041, 1667.254, 2233.633, 2460.96, 2555.569, 2619.542, 2406.497, 1841.645)
MSCLIP_STD = (1205.586, 1223.713, 1399.638, 1403.298, 1378.513, 1434.924, 1491.141, 1454.089, 1473.248, 1365.08)
RGB_DN_WHITE = 2000.0  # Sentinel-2 DN mapped to 255 for the RGB CLIPs (their benchmarks' DN / 2000 × 255)

# The 50 templates published with Llama3-MS-CLIP (IBM/MS-CLIP, Apache-2.0), named placeholder.
MSCLIP_TEMPLATES = (
    "a satellite image showing {c}.", "a satellite image showing a {c}.", "a satellite image showing the {c}.",
    "The image is a satellite view showing {c}.", "The image is a satellite view showing a {c}.",
    "The image is a satellite view showing the {c}.", "The image shows {c}", "a satellite image of {c}.",
    "a satellite image of a {c}.", "a satellite image of the {c}.", "the satellite image of {c}.",
    "the satellite image of a {c}.", "the satellite image of the {c}.", "a satellite view of {c}.",
    "a satellite view of a {c}.", "a satellite view of the {c}.", "a low resolution satellite image of the {c}.",
    "a low resolution satellite image of a {c}.", "a bad satellite image of the {c}.",
    "a bad satellite image of a {c}.", "a cropped satellite image of the {c}.", "a cropped satellite image of a {c}.",
    "a bright satellite image of the {c}.", "a bright satellite image of a {c}.",
    "a cropped aerial image of the {c}.", "a cropped aerial image of a {c}.", "a bright aerial image of the {c}.",
    "a bright aerial image of a {c}.", "a dark aerial image of the {c}.", "a dark aerial image of a {c}.",
    "a close-up aerial image of the {c}.", "a close-up aerial image of a {c}.",
    "a black and white aerial image of the {c}.", "a black and white aerial image of a {c}.",
    "a jpeg corrupted aerial image of the {c}.", "a jpeg corrupted aerial image of a {c}.",
    "a blurry aerial image of the {c}.", "a blurry aerial image of a {c}.", "a good aerial image of the {c}.",
    "a good aerial image of a {c}.", "an aerial image of the large {c}.", "an aerial image of a large {c}.",
    "an aerial image of the nice {c}.", "an aerial image of a nice {c}.", "an aerial image of the small {c}.",
    "an aerial image of a small {c}.", "an aerial image of the weird {c}.", "an aerial image of a weird {c}.",
    "an aerial image of the cool {c}.", "an aerial image of a cool {c}.",
)
# A short remote-sensing ensemble for the RGB CLIPs (their papers prompt "a satellite photo of …").
RS_TEMPLATES = (
    "a satellite photo of {}.", "a satellite image of {}.", "an aerial image of {}.",
    "a remote sensing image of {}.", "a satellite image showing {}.",
)


@dataclass(frozen=True)
class Preset:
    name: str
    arch: str  # open_clip architecture
    bands: Tuple[str, ...]  # Sentinel-2 bands in the order the image tower takes them
    scaling: str  # "dn": digital numbers as they are; "rgb255": DN / 2000 × 255, clipped, as uint8 / 255
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    templates: Tuple[str, ...]
    key_prefix: str = ""  # keep the keys under this prefix (stripped)
    source: str = ""

    @property
    def channels(self) -> int:
        return len(self.bands)

    @property
    def rgb(self) -> bool:
        return self.bands == RGB_BANDS


def _rgb(name: str, arch: str, source: str) -> Preset:
    return Preset(name, arch, RGB_BANDS, "rgb255", CLIP_MEAN, CLIP_STD, RS_TEMPLATES, "", source)


PRESETS: Dict[str, Preset] = {p.name: p for p in (
    Preset("llama3-ms-clip", "ViT-B-16", MSCLIP_BANDS, "dn", MSCLIP_MEAN, MSCLIP_STD, MSCLIP_TEMPLATES,
           "clip_base_model.model.", "Llama3_MS_CLIP_weights.pt (IBM/MS-CLIP)"),
    _rgb("remoteclip-rn50", "RN50", "RemoteCLIP-RN50.pt"),
    _rgb("remoteclip-vit-b-32", "ViT-B-32", "RemoteCLIP-ViT-B-32.pt"),
    _rgb("remoteclip-vit-l-14", "ViT-L-14", "RemoteCLIP-ViT-L-14.pt"),
    _rgb("georsclip-vit-b-32", "ViT-B-32-quickgelu", "RS5M_ViT-B-32*.pt (GeoRSCLIP)"),
    _rgb("georsclip-vit-l-14", "ViT-L-14-quickgelu", "RS5M_ViT-L-14*.pt (GeoRSCLIP, OpenAI initialisation)"),
    _rgb("georsclip-vit-h-14", "ViT-H-14", "RS5M_ViT-H-14.pt (GeoRSCLIP)"),
    _rgb("skyclip-vit-b-32", "ViT-B-32", "SkyCLIP ViT-B-32 training checkpoint"),
    _rgb("skyclip-vit-l-14", "ViT-L-14-quickgelu", "SkyCLIP ViT-L-14 training checkpoint"),
)}


def preset_names() -> List[str]:
    return ["auto", *PRESETS, "open_clip:ARCH"]


def get_preset(name: str) -> Preset:
    """A named preset, or ``open_clip:ARCH`` for any other open_clip checkpoint (RGB input,
    CLIP mean/std, the remote-sensing template ensemble)."""
    name = (name or "").strip()
    if name in PRESETS:
        return PRESETS[name]
    if name.startswith("open_clip:"):
        import open_clip

        arch = name.split(":", 1)[1]
        if arch.startswith("local-dir:"):  # a directory with open_clip_config.json (custom architectures)
            folder = arch.split(":", 1)[1]
            if not os.path.isfile(os.path.join(folder, "open_clip_config.json")):
                raise InputError(f"PRESET {name!r}: {folder!r} has no open_clip_config.json")
        elif arch not in open_clip.list_models():
            raise InputError(f"PRESET {name!r}: open_clip has no architecture {arch!r} (or give "
                             "open_clip:local-dir:DIR for a directory holding open_clip_config.json)")
        return _rgb(name, arch, "an open_clip checkpoint")
    raise InputError(f"PRESET must be one of {', '.join(preset_names())} (got {name!r})")


# -- checkpoints ----------------------------------------------------------------------------
def read_checkpoint(path: str) -> Dict[str, object]:
    """The state dict of a checkpoint file: safetensors, or a PyTorch file read with
    ``weights_only=True`` (plain tensors only: a pickle that holds code is refused and never
    run). Training checkpoints are unwrapped (``state_dict``; a ``module.`` prefix)."""
    import torch

    if not os.path.isfile(path):
        raise ModelFileError(f"MODEL file {path!r} does not exist")
    with open(path, "rb") as f:
        head = f.read(16)
    try:
        if head[8:9] == b"{":  # safetensors: 8-byte header length, then JSON
            from safetensors.torch import load_file

            state = load_file(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 (torch and safetensors raise many types)
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
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


class FoundationModel:
    """An open_clip model and its preset, in eval mode on ``device``. ``preset`` is a
    name (``auto``: from the checkpoint's keys and shapes) or a :class:`Preset`."""

    def __init__(self, path: str, preset="auto", device="cpu"):
        import open_clip
        import torch
        from open_clip.factory import resize_pos_embed

        state = read_checkpoint(path)
        if isinstance(preset, Preset):
            self.preset = preset
        else:
            self.preset = get_preset(detect_preset(state) if (preset or "auto") == "auto" else preset)
            if (preset or "auto") == "auto":
                log.info("PRESET=auto: %s is %s", os.path.basename(path), self.preset.name)
        p = self.preset
        state = preset_state(state, p, path)
        model = build_model(p)
        if "logit_scale" in state and state["logit_scale"].ndim != model.logit_scale.ndim:
            state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
        resize_pos_embed(state, model)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            raise ModelFileError(f"MODEL {path!r} does not fit PRESET {p.name} ({p.arch}, {p.channels} bands): "
                                 f"{' '.join(lines[1:3])[:400]}") from exc
        visual = model.visual
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.tokenizer = open_clip.get_tokenizer(p.arch if p.arch.startswith("local-dir:")
                                                 else p.arch.replace("-quickgelu", ""))
        size = getattr(visual, "image_size", 224)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        patch = getattr(visual, "patch_size", None)
        self.token_size = int(patch[0] if isinstance(patch, (tuple, list)) else patch) if patch else None
        self.path = path

    # -- text ----------------------------------------------------------------------------
    def text_embeddings(self, prompts: Sequence[str], templates: Optional[Sequence[str]] = None):
        """(K, D) L2-normalised prompt embeddings: each template filled with the prompt
        (``{}`` or ``{c}``), encoded and normalised, averaged, re-normalised."""
        import torch

        templates = list(templates or self.preset.templates)
        check_templates(templates)
        out = []
        with torch.no_grad():
            for prompt in prompts:
                texts = [fill_template(t, prompt) for t in templates]
                tokens = self.tokenizer(texts).to(self.device)
                emb = self.model.encode_text(tokens, normalize=True).float()
                mean = emb.mean(0)
                out.append(mean / mean.norm())
        return torch.stack(out)

    # -- images --------------------------------------------------------------------------
    def encode(self, x, tokens: bool = False):
        """L2-normalised embeddings of a batch (N, C, S, S) of preprocessed windows: (N, D),
        or with ``tokens`` (N, g, g, D) per patch token (projected with ``visual.proj``)."""
        import torch

        visual = self.model.visual
        with torch.no_grad():
            if not tokens:
                return self.model.encode_image(x, normalize=True).float()
            if self.token_size is None or getattr(visual, "proj", None) is None:
                raise InputError(f"RESOLUTION=token needs a ViT image tower; {self.preset.arch} has none: use "
                                 "RESOLUTION=tile")
            visual.output_tokens = True
            try:
                _pooled, toks = visual(x)
            finally:
                visual.output_tokens = False
            toks = (toks @ visual.proj).float()
            g = int(round(math.sqrt(toks.shape[1])))
            toks = torch.nn.functional.normalize(toks, dim=-1)
            return toks.reshape(toks.shape[0], g, g, -1)


def check_templates(templates: Sequence[str]) -> None:
    if not templates:
        raise InputError("TEMPLATES is empty: give one template per line, each with {} or {c} for the prompt")
    bad = [t for t in templates if "{}" not in t and "{c}" not in t]
    if bad:
        raise InputError(f"every template needs {{}} or {{c}} where the prompt goes; not: {bad[0]!r}")


def fill_template(template: str, prompt: str) -> str:
    """Fill ``{c}`` (Llama3-MS-CLIP's named placeholder) or ``{}`` with the prompt; other
    braces are left as they are."""
    return template.replace("{c}", prompt).replace("{}", prompt)


# -- bands and values -----------------------------------------------------------------------
_BAND = re.compile(r"(?<![A-Za-z0-9])B0?(\d{1,2}A?)(?![0-9A-Za-z])", re.IGNORECASE)


def sentinel2_band(name: str) -> Optional[str]:
    """'B02' for 'B2', 'b02', 'S2_B02_10m', 'T32TQM_20200101T102021_B02' …; None if no band code."""
    found = _BAND.findall(name or "")
    if not found:
        return None
    code = found[-1].upper()
    if code.endswith("A"):  # B8A: Sentinel-2's narrow NIR band keeps its one digit
        return f"B{int(code[:-1])}A"
    return f"B{int(code):02d}"


def select_bands(names: Sequence[str], preset: Preset, bands: Optional[str] = None) -> List[int]:
    """0-based indexes of the preset's bands among the input bands ``names``: from BANDS
    (band codes or 1-based numbers, comma-separated), else from band codes found in the
    names (descriptions, or file names for one-band layers), else from the band count
    (13 = Sentinel-2 L1C, 12 = L2A; 3 for an RGB model = an RGB raster, in R, G, B order)."""
    count = len(names)
    expected = ", ".join(preset.bands)
    if bands and bands.strip():
        items = [b.strip() for b in bands.split(",") if b.strip()]
        if len(items) != preset.channels:
            raise InputError(f"BANDS names {len(items)} band(s); {preset.name} takes {preset.channels}: {expected}")
        out = []
        codes = [sentinel2_band(n) for n in names]
        for item in items:
            if item.isdigit():
                i = int(item) - 1
                if not 0 <= i < count:
                    raise InputError(f"BANDS: band {item} does not exist (the input has {count} bands)")
            else:
                code = sentinel2_band(item) or item
                if code not in codes:
                    raise InputError(f"BANDS: no input band is named {item!r} (bands: {', '.join(names)})")
                i = codes.index(code)
            out.append(i)
        return out
    codes = [sentinel2_band(n) for n in names]
    if all(b in codes for b in preset.bands):
        return [codes.index(b) for b in preset.bands]
    if preset.rgb and count == 3:
        return [0, 1, 2]
    for order, what in ((S2_L1C, "13-band L1C"), (S2_L2A, "12-band L2A")):
        if count == len(order):
            log.info("bands taken as a Sentinel-2 %s stack (%s) by their count", what, ", ".join(order))
            return [order.index(b) for b in preset.bands]
    named = [c for c in codes if c]
    raise InputError(
        f"{preset.name} takes Sentinel-2 bands {expected}"
        + (" (or a 3-band RGB raster)" if preset.rgb else "")
        + f"; the input has {count} band(s)" + (f" named {', '.join(named)}" if named else "")
        + ": give a 13-band L1C or 12-band L2A stack, name the bands in their descriptions, or set BANDS")


def value_scale(value_scale: str, dtypes: Sequence[str], sample: Optional[np.ndarray]) -> float:
    """Factor from raster values to digital numbers (reflectance × 10000). ``auto``:
    integer rasters as they are; float rasters whose valid values lie within reflectance
    range (99th percentile ≤ 2) × 10000 (logged); other floats as they are."""
    text = str(value_scale if value_scale is not None else "auto").strip().lower()
    if text not in ("", "auto"):
        try:
            factor = float(text)
        except ValueError:
            raise InputError(f"VALUE_SCALE must be 'auto' or a number (got {value_scale!r})") from None
        if not factor > 0:
            raise InputError(f"VALUE_SCALE must be positive (got {value_scale!r})")
        return factor
    if all(np.issubdtype(np.dtype(d), np.integer) for d in dtypes):
        return 1.0
    if sample is not None:
        v = sample[np.isfinite(sample)]
        if v.size and float(np.percentile(np.abs(v), 99)) <= 2.0:
            log.info("VALUE_SCALE=auto: float values within reflectance range, multiplied by 10000 to digital numbers")
            return 10000.0
    return 1.0


@dataclass
class Preprocessor:
    """Raster values of the selected bands → the image tower's input values."""

    preset: Preset
    scale: float = 1.0  # raster value × scale = digital number
    offset: float = 0.0  # subtracted after scaling (L2A's +1000 from processing baseline 04.00)
    eight_bit: bool = False  # an RGB raster already in 0..255 (uint8): no DN mapping

    def __call__(self, data: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """(C, h, w) float32 values and (h, w) validity → (C, h, w) float32 model input;
        invalid pixels are 0 (the band mean after normalisation)."""
        p = self.preset
        mean = np.asarray(p.mean, np.float32)[:, None, None]
        std = np.asarray(p.std, np.float32)[:, None, None]
        if p.scaling == "dn":
            x = data.astype(np.float32) * np.float32(self.scale) - np.float32(self.offset)
        elif self.eight_bit:
            x = np.clip(data, 0, 255).astype(np.uint8).astype(np.float32) / np.float32(255)
        else:
            dn = data.astype(np.float32) * np.float32(self.scale) - np.float32(self.offset)
            x = np.clip(dn / np.float32(RGB_DN_WHITE) * np.float32(255), 0, 255).astype(np.uint8)
            x = x.astype(np.float32) / np.float32(255)
        out = (x - mean) / std
        return np.where(valid[None], out, np.float32(0)).astype(np.float32)


# -- windows ----------------------------------------------------------------------------------
def window_starts(size: int, tile: int, stride: int) -> List[int]:
    """Window starts along one axis: every ``stride`` pixels, the last one moved in to end
    at the edge; one window (the whole axis) when it is not longer than ``tile``."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] + tile < size:
        starts.append(size - tile)
    return starts


def scene_windows(width: int, height: int, tile: int, stride: int) -> List[Tuple[int, int, int, int]]:
    """(row, col, height, width) of every window, row-major."""
    th, tw = min(tile, height), min(tile, width)
    return [(r, c, th, tw) for r in window_starts(height, tile, stride) for c in window_starts(width, tile, stride)]


def check_tiling(tile: int, stride: Optional[int]) -> int:
    if tile < 16:
        raise InputError(f"TILE_SIZE must be at least 16 pixels (got {tile})")
    stride = stride or max(tile // 2, 1)
    if not 1 <= stride <= tile:
        raise InputError(f"STRIDE must be between 1 and TILE_SIZE ({tile}) pixels (got {stride}): larger strides "
                         "would leave pixels without a window")
    return stride


def _resize(batch, size: int):
    import torch.nn.functional as F

    if batch.shape[-1] == size and batch.shape[-2] == size:
        return batch
    return F.interpolate(batch, size=(size, size), mode="bicubic", align_corners=False, antialias=True)


class WindowScores:
    """Per-window score grids (K, gh, gw) and their footprints, stitched into per-pixel
    means: a pixel's score is the mean of the scores of the windows (or, per token, the
    window cells) covering it."""

    def __init__(self, k: int):
        self.k = k
        self.boxes: List[Tuple[int, int, int, int]] = []
        self.grids: List[np.ndarray] = []
        self.valid: List[float] = []  # fraction of valid pixels of each window

    def add(self, box, grid: np.ndarray, valid_fraction: float = 1.0) -> None:
        self.boxes.append(box)
        self.grids.append(grid.astype(np.float32))
        self.valid.append(float(valid_fraction))

    def stitch(self, row0: int, col0: int, h: int, w: int) -> Tuple[np.ndarray, np.ndarray]:
        """(K, h, w) mean scores and (h, w) window counts of a block of the scene."""
        total = np.zeros((self.k, h, w), np.float64)
        count = np.zeros((h, w), np.int32)
        boxes = np.asarray(self.boxes, dtype=np.int64).reshape(-1, 4)
        if boxes.size:
            hit = np.flatnonzero((boxes[:, 0] < row0 + h) & (boxes[:, 0] + boxes[:, 2] > row0)
                                 & (boxes[:, 1] < col0 + w) & (boxes[:, 1] + boxes[:, 3] > col0))
        else:
            hit = []
        for i in hit:
            r, c, wh, ww = (int(v) for v in boxes[i])
            grid = self.grids[i]
            y0, y1 = max(r, row0), min(r + wh, row0 + h)
            x0, x1 = max(c, col0), min(c + ww, col0 + w)
            cy = (np.arange(y0, y1) - r) * grid.shape[1] // wh
            cx = (np.arange(x0, x1) - c) * grid.shape[2] // ww
            total[:, y0 - row0:y1 - row0, x0 - col0:x1 - col0] += grid[:, cy][:, :, cx]
            count[y0 - row0:y1 - row0, x0 - col0:x1 - col0] += 1
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = (total / np.maximum(count, 1)).astype(np.float32)
        return mean, count


def multi_label(scores: np.ndarray) -> np.ndarray:
    """Llama3-MS-CLIP's multi-label rule: prompt k is present where its score exceeds the
    mean score of the other prompts. ``scores`` (K, …) → bool (K, …)."""
    k = scores.shape[0]
    if k < 2:
        raise InputError("MULTI_LABEL needs at least two prompts (a prompt is present where its score exceeds the "
                         "mean of the others)")
    total = scores.sum(axis=0, keepdims=True)
    others = (total - scores) / (k - 1)
    return scores > others


def average_precision_at_k(scores: Sequence[float], relevant: Sequence[bool], k: int = 100) -> float:
    """AP@k of one query: items ranked by ``scores`` (descending); the mean over the top k
    of precision@i at each relevant item, divided by min(k, number of relevant items)."""
    scores = np.asarray(scores, np.float64)
    relevant = np.asarray(relevant, bool)
    n_rel = int(relevant.sum())
    if n_rel == 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")[:k]
    hits = relevant[order]
    precision = np.cumsum(hits) / np.arange(1, hits.size + 1)
    return float((precision * hits).sum() / min(k, n_rel))


def mean_average_precision_at_k(scores: np.ndarray, relevant: np.ndarray, k: int = 100) -> float:
    """mAP@k over queries: ``scores`` and ``relevant`` are (queries, items)."""
    return float(np.mean([average_precision_at_k(s, r, k) for s, r in zip(scores, relevant)]))


# -- scene passes -----------------------------------------------------------------------------
@dataclass
class ZeroShotSetup:
    model: FoundationModel
    stack: object  # RasterStack
    band_index: List[int]  # indexes into the stack's one modality
    modality: str
    prep: Preprocessor


def open_scene(model: FoundationModel, layers, bands: Optional[str], scale: str, offset: float, reference=None):
    """The input stack, the preset's bands in it and the preprocessing, checked."""
    from .raster import RasterStack

    stack = RasterStack(layers, reference=reference)
    try:
        if len(stack.modalities) != 1:
            raise InputError(f"{model.preset.name} takes one multispectral (or RGB) input: give the layers as "
                             f"INPUT_MS (or INPUT_RGB) only (got {', '.join(stack.modalities)})")
        modality = next(iter(stack.modalities))
        index = select_bands(_band_labels(stack, modality), model.preset, bands)
        dtypes = [s.dataset.dtypes[i - 1] for s in stack.sources for i in s.indexes]
        dtypes = [dtypes[i] for i in index]
        sample = _sample_values(stack, modality, index)
        factor = value_scale(scale, dtypes, sample)
        eight_bit = model.preset.rgb and all(d == "uint8" for d in dtypes) and str(scale).strip().lower() in ("", "auto")
        if eight_bit:
            log.info("an 8-bit RGB raster: values taken as 0..255")
        return ZeroShotSetup(model, stack, index, modality, Preprocessor(model.preset, factor, float(offset or 0.0),
                                                                           eight_bit))
    except Exception:
        stack.close()
        raise


def _band_labels(stack, modality: str) -> List[str]:
    """Band names to look for band codes in: the description, else the file name of a
    one-band layer (B02.jp2 …)."""
    out = []
    for src in stack.modalities[modality]:
        for name in src.band_names:
            if re.search(r":band\d+$", name) and src.count == 1:
                out.append(os.path.splitext(os.path.basename(str(src.layer.path)))[0])
            else:
                out.append(name)
    return out


def _sample_values(stack, modality: str, index: List[int], side: int = 256) -> Optional[np.ndarray]:
    """A decimated read of the selected bands (valid values only) for VALUE_SCALE=auto."""
    values = []
    band = 0
    for src in stack.modalities[modality]:
        sel = [i - band for i in index if band <= i < band + src.count]
        band += src.count
        if not sel:
            continue
        ds = src.dataset
        shape = (len(sel), min(side, ds.height), min(side, ds.width))
        data = ds.read([src.indexes[i] for i in sel], out_shape=shape, masked=True).astype("float64")
        values.append(np.asarray(data.compressed()))
    return np.concatenate(values) if values else None


def _read_window(setup: ZeroShotSetup, box) -> Tuple[np.ndarray, np.ndarray]:
    from rasterio.windows import Window

    r, c, h, w = box
    data, valid = setup.stack.read(Window(c, r, w, h))
    arr = data[setup.modality][setup.band_index]
    ok = valid[setup.modality][setup.band_index].all(axis=0)
    return arr, ok


def score_windows(setup: ZeroShotSetup, text, boxes, *, tokens: bool, batch_size: int, job) -> WindowScores:
    """Encode every window with a valid pixel, in batches, and score it against ``text``."""
    import torch

    fm = setup.model
    scores = WindowScores(text.shape[0])
    pending: List[Tuple[tuple, np.ndarray, float]] = []

    def flush():
        if not pending:
            return
        batch = torch.from_numpy(np.stack([x for _, x, _ in pending])).to(fm.device)
        batch = _resize(batch, fm.image_size)
        while True:
            try:
                emb = fm.encode(batch, tokens=tokens)
                break
            except torch.cuda.OutOfMemoryError:
                if batch.shape[0] == 1:
                    raise InputError("the GPU ran out of memory with one window: set DEVICE to cpu") from None
                half = batch.shape[0] // 2
                log.warning("the GPU ran out of memory: encoding %d windows at a time", half)
                emb = torch.cat([fm.encode(batch[:half], tokens=tokens), fm.encode(batch[half:], tokens=tokens)])
                break
        if tokens:
            grid = torch.einsum("nhwd,kd->nkhw", emb, text)
        else:
            grid = (emb @ text.t())[:, :, None, None]
        for (box, _, frac), g in zip(pending, grid.cpu().numpy()):
            scores.add(box, g, frac)
        pending.clear()

    rows = max((b[2] for b in boxes), default=1)
    with setup.stack.downward(rows):  # overlapping windows: each input block read once
        for i, box in enumerate(boxes):
            job.step(i / max(len(boxes), 1), f"window {i + 1}/{len(boxes)}")
            arr, ok = _read_window(setup, box)
            if not ok.any():
                continue
            pending.append((box, setup.prep(arr, ok), float(ok.mean())))
            if len(pending) >= batch_size:
                flush()
        flush()
    return scores


def _scan_blocks(setup: ZeroShotSetup, scores: WindowScores, job, tile: int = 256):
    """(window, validity, mean scores, counts) of each output block, row-major."""
    stack = setup.stack
    with stack.scan(tile) as blocks:
        for i, block in enumerate(blocks):
            job.step(i / max(len(blocks), 1), "writing")
            data, valid = stack.read(block)
            ok = valid[setup.modality][setup.band_index].all(axis=0)
            mean, count = scores.stitch(int(block.row_off), int(block.col_off), int(block.height), int(block.width))
            yield block, ok & (count > 0), mean


def write_maps(setup: ZeroShotSetup, scores: WindowScores, classes, names: Sequence[str], *,
               output_similarity: Optional[str] = None, output: Optional[str] = None,
               confidence: Optional[str] = None, logit_scale: float = 100.0, multi_label_output: bool = False,
               threshold: Optional[float] = None, job=None) -> None:
    """Write the stitched per-pixel scores, block by block, into the requested outputs:
    cosine similarity per class/prompt (float32, band names), the best class (codes of
    ``classes``, colour table, category names), its softmax probability (``confidence``),
    or one 0/1 band per prompt (``multi_label_output``). Atomic: all or nothing."""
    import contextlib

    import rasterio

    from .atomic import atomic_path
    from .inference import class_dtype, gtiff_profile
    from .jobs import Job
    from .labels import set_category_names

    job = job or Job()
    stack = setup.stack
    k = len(names)
    codes = np.asarray([c.code for c in classes], dtype=np.int64)
    with contextlib.ExitStack() as ctx:
        dst = {}
        if output_similarity:
            tmp = ctx.enter_context(atomic_path(output_similarity))
            dst["sim"] = ctx.enter_context(rasterio.open(tmp, "w", **gtiff_profile(stack.grid, k, "float32", math.nan)))
            for i, name in enumerate(names, start=1):
                dst["sim"].set_band_description(i, name)
        if output and multi_label_output:
            tmp = ctx.enter_context(atomic_path(output))
            dst["ml"] = ctx.enter_context(rasterio.open(tmp, "w", **gtiff_profile(stack.grid, k, "uint8", 255)))
            for i, name in enumerate(names, start=1):
                dst["ml"].set_band_description(i, f"{name} (1 = present)")
        elif output:
            class_tmp = ctx.enter_context(atomic_path(output))
            dst["cls"] = ctx.enter_context(rasterio.open(class_tmp, "w", **gtiff_profile(stack.grid, 1,
                                                                                        class_dtype(classes), 0)))
            dst["cls"].write_colormap(1, {0: (0, 0, 0, 0), **{c.code: (*c.colour, 255) for c in classes}})
        if confidence:
            tmp = ctx.enter_context(atomic_path(confidence))
            dst["conf"] = ctx.enter_context(rasterio.open(tmp, "w", **gtiff_profile(stack.grid, 1, "float32",
                                                                                     math.nan)))
            dst["conf"].set_band_description(1, "confidence (softmax probability of the class)")
        for block, ok, mean in _scan_blocks(setup, scores, job):
            if "sim" in dst:
                dst["sim"].write(np.where(ok[None], mean, np.float32(np.nan)).astype(np.float32), window=block)
            if "ml" in dst:
                dst["ml"].write(np.where(ok[None], multi_label(mean), 255).astype(np.uint8), window=block)
            if "cls" in dst:
                best, arg = mean.max(axis=0), mean.argmax(axis=0)
                keep = ok if threshold is None else (ok & (best >= threshold))
                dst["cls"].write(np.where(keep, codes[arg], 0).astype(dst["cls"].dtypes[0]), 1, window=block)
            if "conf" in dst:
                z = logit_scale * (mean - mean.max(axis=0, keepdims=True))
                p = 1.0 / np.exp(z).sum(axis=0)
                dst["conf"].write(np.where(ok, p, np.float32(np.nan)).astype(np.float32), 1, window=block)
        for d in dst.values():
            d.close()
        if "cls" in dst:
            set_category_names(class_tmp, classes)


def open_for_scene(checkpoint: str, preset, device: str, layers, *, tile_size: Optional[int], stride: Optional[int],
                   bands: Optional[str], scale: str, offset: float, reference=None, job=None,
                   stride_default: str = "half"):
    """(model, scene setup, tile, stride, torch device): the checkpoint loaded on the
    resolved device, the input stack opened and checked, the tiling validated (``stride``
    None: half a tile, or the tile with ``stride_default="tile"``)."""
    from .device import resolve_device
    from .raster import as_layers

    dev = resolve_device(device)
    if job is not None:
        job.step(0.0, "loading the foundation model")
    fm = FoundationModel(checkpoint, preset, dev)
    tile = tile_size or fm.image_size
    stride = check_tiling(tile, stride or (tile if stride_default == "tile" else None))
    setup = open_scene(fm, as_layers(layers), bands, scale, offset, reference)
    return fm, setup, tile, stride, dev


@dataclass
class ZeroShotResult:
    similarity: Optional[str]
    output: Optional[str]
    prompts: List[str]
    preset: str
    windows: int
    seconds: float
    multi_label: bool
    classes: list


def zeroshot_map(
    checkpoint: str, layers, prompts: Sequence[str], *, output_similarity: Optional[str] = None,
    output: Optional[str] = None, preset: str = "auto", templates: Optional[Sequence[str]] = None,
    tile_size: Optional[int] = None, stride: Optional[int] = None, resolution: str = "tile",
    multi_label_output: bool = False, threshold: Optional[float] = None, bands: Optional[str] = None,
    scale: str = "auto", offset: float = 0.0, batch_size: int = 8, device: str = "auto", reference=None,
    progress=None, is_cancelled=None,
) -> ZeroShotResult:
    """Map a scene from text alone with a pretrained vision-language checkpoint: one
    cosine-similarity band per prompt (``output_similarity``) and the styled best-prompt map
    (``output``; with ``multi_label_output`` one 0/1 band per prompt instead)."""


    from .atomic import check_outputs
    from .jobs import Job
    from .labels import prompt_classes

    prompts = [p.strip() for p in prompts if p and p.strip()]
    if not prompts:
        raise InputError("PROMPTS is empty: give at least one text prompt, one per line")
    if not (output_similarity or output):
        raise InputError("give OUTPUT_SIMILARITY or OUTPUT")
    if resolution not in ("tile", "token"):
        raise InputError(f"RESOLUTION must be tile or token (got {resolution!r})")
    if threshold is not None and not -1.0 <= threshold <= 1.0:
        raise InputError(f"THRESHOLD is a cosine similarity in [-1, 1] (got {threshold})")
    if multi_label_output and len(prompts) < 2:
        multi_label(np.zeros((1, 1)))  # raises the clear error
    job = Job(progress, is_cancelled)
    start = time.perf_counter()
    fm, setup, tile, stride, dev = open_for_scene(checkpoint, preset, device, layers, tile_size=tile_size,
                                                  stride=stride, bands=bands, scale=scale, offset=offset,
                                                  reference=reference, job=job)
    k = len(prompts)
    classes = prompt_classes(prompts, [])
    with setup.stack as stack:
        pixels = stack.width * stack.height
        check_outputs([("OUTPUT_SIMILARITY", output_similarity, pixels * 4 * k),
                       ("OUTPUT", output, pixels * (k if multi_label_output else 1))])
        job.step(0.02, "encoding prompts")
        text = fm.text_embeddings(prompts, templates).to(dev)
        boxes = scene_windows(stack.width, stack.height, tile, stride)
        scores = score_windows(setup, text, boxes, tokens=resolution == "token", batch_size=batch_size,
                               job=job.span(0.05, 0.9))
        write_maps(setup, scores, classes, prompts, output_similarity=output_similarity, output=output,
                   multi_label_output=multi_label_output, threshold=threshold, job=job.span(0.9, 1.0))
        job.report(1.0, "done")
    seconds = time.perf_counter() - start
    log.info("zero-shot map: %d windows of %d px (stride %d, %s) in %.1f s with %s", len(scores.boxes), tile, stride,
             resolution, seconds, fm.preset.name)
    return ZeroShotResult(output_similarity, output, prompts, fm.preset.name, len(scores.boxes), seconds,
                          multi_label_output, classes)


@dataclass
class RetrieveResult:
    output: str
    query: str
    preset: str
    ranked: List[Tuple[int, float, Tuple[int, int, int, int]]]  # (rank, score, (row, col, h, w))
    windows: int
    seconds: float


def retrieve(
    checkpoint: str, layers, query: str, output: str, *, top_k: int = 20, preset: str = "auto",
    templates: Optional[Sequence[str]] = None, tile_size: Optional[int] = None, stride: Optional[int] = None,
    min_valid: float = 0.5, bands: Optional[str] = None, scale: str = "auto", offset: float = 0.0,
    batch_size: int = 8, device: str = "auto", reference=None, progress=None, is_cancelled=None,
) -> RetrieveResult:
    """The TOP_K tiles of a scene most similar to a text query, as polygons (GeoPackage)
    with ``rank`` and ``score`` (cosine similarity) fields. Tiles are ``tile_size`` pixels
    every ``stride`` (default: the tile size, no overlap); tiles with less than
    ``min_valid`` valid pixels are left out."""
    from .atomic import atomic_path, check_outputs
    from .jobs import Job

    query = (query or "").strip()
    if not query:
        raise InputError("QUERY is empty: give the text to search for")
    if top_k < 1:
        raise InputError(f"TOP_K must be at least 1 (got {top_k})")
    if not output:
        raise InputError("OUTPUT is required")
    job = Job(progress, is_cancelled)
    start = time.perf_counter()
    fm, setup, tile, stride, dev = open_for_scene(checkpoint, preset, device, layers, tile_size=tile_size,
                                                  stride=stride, bands=bands, scale=scale, offset=offset,
                                                  reference=reference, job=job, stride_default="tile")
    with setup.stack as stack:
        check_outputs([("OUTPUT", output, 1 << 20)])
        text = fm.text_embeddings([query], templates).to(dev)
        boxes = scene_windows(stack.width, stack.height, tile, stride)
        scores = score_windows(setup, text, boxes, tokens=False, batch_size=batch_size, job=job.span(0.05, 0.95))
        # Tiles mostly of nodata (scene edges, clouds masked out) are not ranked.
        kept = [(float(g[0, 0, 0]), box) for box, g, frac in zip(scores.boxes, scores.grids, scores.valid)
                if frac >= min_valid]
        kept.sort(key=lambda t: -t[0])
        ranked = [(i + 1, s, box) for i, (s, box) in enumerate(kept[:top_k])]
        grid = stack.grid
        with atomic_path(output) as tmp:
            _write_tiles(tmp, grid, ranked, query)
    seconds = time.perf_counter() - start
    return RetrieveResult(output, query, fm.preset.name, ranked, len(scores.boxes), seconds)


def _write_tiles(path: str, grid, ranked, query: str) -> None:
    """Tile footprints as polygons in the scene's CRS (rotated grids included)."""
    from osgeo import ogr, osr

    from .gdal_exceptions import gdal_exceptions

    with gdal_exceptions():
        driver = ogr.GetDriverByName("GPKG")
        ds = driver.CreateDataSource(path)
        srs = osr.SpatialReference()
        srs.ImportFromWkt(grid.crs.to_wkt())
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        layer = ds.CreateLayer("tiles", srs, ogr.wkbPolygon)
        for name, kind in (("rank", ogr.OFTInteger), ("score", ogr.OFTReal), ("query", ogr.OFTString),
                           ("row", ogr.OFTInteger), ("col", ogr.OFTInteger), ("size", ogr.OFTInteger)):
            layer.CreateField(ogr.FieldDefn(name, kind))
        t = grid.transform
        for rank, score, (r, c, h, w) in ranked:
            corners = [t * (c, r), t * (c + w, r), t * (c + w, r + h), t * (c, r + h), t * (c, r)]
            ring = ogr.Geometry(ogr.wkbLinearRing)
            for x, y in corners:
                ring.AddPoint_2D(float(x), float(y))
            poly = ogr.Geometry(ogr.wkbPolygon)
            poly.AddGeometry(ring)
            f = ogr.Feature(layer.GetLayerDefn())
            f.SetGeometry(poly)
            f.SetField("rank", int(rank))
            f.SetField("score", float(score))
            f.SetField("query", query)
            f.SetField("row", int(r))
            f.SetField("col", int(c))
            f.SetField("size", int(max(h, w)))
            layer.CreateFeature(f)
        ds = None


def describe_checkpoint(path: str) -> str:
    """One line on what a checkpoint is, for messages and `info`."""
    state = read_checkpoint(path)
    try:
        name = detect_preset(state)
    except InputError as exc:
        return f"an open_clip-style checkpoint ({exc})"
    return f"a {name} checkpoint ({get_preset(name).arch})"


def is_rsvl_model(path: str) -> bool:
    """Whether ``path`` is an rsvl model file (safetensors with an rsvl header)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little")
            if len(head) < 8 or not 2 <= n <= 100 * 2**20:
                return False
            meta = json.loads(f.read(n).decode("utf-8")).get("__metadata__") or {}
    except (OSError, ValueError, UnicodeDecodeError, AttributeError):
        return False
    return "rsvl" in meta
