"""rsvl model files: safetensors weights with a JSON header in the safetensors metadata.

The header holds everything needed to use the model without its training data: the
architecture, the modalities with band counts and names (in order), the normalisation
statistics, the classes (code, name, colour), the prompt template, the text encoder id,
the patch size, the rsvl version and the training figures. Never pickle.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Dict, List

from . import __version__
from .atomic import atomic_path
from .errors import ModelFileError, ModelMismatchError
from .labels import ClassInfo
from .mmlgnet import MMLGNet, ModelConfig
from .raster import MODALITY_LABELS, BandStats

FORMAT = "rsvl-model"
FORMAT_VERSION = 1


@dataclass
class ModelHeader:
    config: ModelConfig
    band_names: Dict[str, List[str]]
    stats: Dict[str, BandStats]
    classes: List[ClassInfo]
    prompt_template: str
    text_encoder: str
    method: str = "mmlgnet"
    training: dict = field(default_factory=dict)
    rsvl_version: str = __version__

    def to_json(self) -> dict:
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "rsvl_version": self.rsvl_version,
            "method": self.method,
            "architecture": self.config.to_json(),
            "patch_size": self.config.patch_size,
            "modalities": {
                m: {"bands": self.config.bands[m], "band_names": self.band_names[m]} for m in self.config.bands
            },
            "normalisation": {m: {"mean": s.mean, "std": s.std} for m, s in self.stats.items()},
            "classes": [c.to_json() for c in self.classes],
            "prompt_template": self.prompt_template,
            "text_encoder": self.text_encoder,
            "training": self.training,
        }

    @classmethod
    def from_json(cls, d: dict) -> ModelHeader:
        return cls(
            config=ModelConfig.from_json(d["architecture"]),
            band_names={m: list(v["band_names"]) for m, v in d["modalities"].items()},
            stats={m: BandStats(list(v["mean"]), list(v["std"])) for m, v in d["normalisation"].items()},
            classes=[ClassInfo.from_json(c) for c in d["classes"]],
            prompt_template=d["prompt_template"], text_encoder=d["text_encoder"],
            method=d.get("method", "mmlgnet"), training=d.get("training", {}),
            rsvl_version=d.get("rsvl_version", "?"),
        )

    def check_inputs(self, band_counts: Dict[str, int]) -> None:
        """Refuse inputs unlike the training inputs, naming the modality and band count."""
        problems = []
        for m, n in self.config.bands.items():
            if m not in band_counts:
                problems.append(f"the model needs a {MODALITY_LABELS[m]} input ({m}, {n} bands) and none was given")
            elif band_counts[m] != n:
                problems.append(f"{m} input has {band_counts[m]} bands but the model was trained on {n}")
        for m, n in band_counts.items():
            if m not in self.config.bands:
                problems.append(f"{m} input ({n} bands) was given but the model has no {m} encoder")
        if problems:
            raise ModelMismatchError("inputs do not match the model: " + "; ".join(problems))


def save_model(path: str, model: MMLGNet, header: ModelHeader) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata={"rsvl": json.dumps(header.to_json())})


def read_header(path: str) -> ModelHeader:
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise ModelFileError(f"MODEL file {path!r} does not exist")
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types
        raise ModelFileError(f"MODEL {path!r} is not a safetensors file: {exc}") from exc
    if "rsvl" not in meta:
        raise ModelFileError(f"MODEL {path!r} is a safetensors file but not an rsvl model (no 'rsvl' header)")
    d = json.loads(meta["rsvl"])
    if d.get("format") != FORMAT or int(d.get("format_version", 0)) > FORMAT_VERSION:
        raise ModelFileError(
            f"MODEL {path!r} has format {d.get('format')} v{d.get('format_version')}; this rsvl reads "
            f"{FORMAT} up to v{FORMAT_VERSION}"
        )
    return ModelHeader.from_json(d)


def load_model(path: str, device="cpu"):
    """(model in eval mode on ``device``, header)."""
    from safetensors.torch import load_file

    header = read_header(path)
    model = MMLGNet(header.config, n_classes=len(header.classes))
    state = load_file(path, device="cpu")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelFileError(f"MODEL {path!r}: weights do not fit its architecture: {exc}") from exc
    return model.to(device).eval(), header
