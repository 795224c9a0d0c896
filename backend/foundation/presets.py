"""What each published checkpoint is: a :class:`Preset` names the open_clip architecture (the ``-quickgelu``
variant where the weights were trained with QuickGELU), the Sentinel-2 bands the image tower takes in order, how
digital numbers become its input values, mean/std, the key prefix of the released state dict and the default
prompt templates. Facts come from each model's public code (docs/foundation-models.md)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Dict, List, Tuple

from ..errors import InputError

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
