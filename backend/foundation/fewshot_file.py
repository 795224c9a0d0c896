"""The few-shot model file (a head on a pretrained checkpoint, :mod:`.fewshot`): its header,
telling it from an rsvl:train model or a checkpoint, and reading it. No torch at import:
Processing's parameter checks use :func:`model_kind`."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import List, Optional

from .. import __version__
from ..errors import ModelFileError
from ..io.labels import ClassInfo

FEWSHOT_KEY = "rsvl_fewshot"
FEWSHOT_VERSION = 1


@dataclass
class FewShotHeader:
    checkpoint: str
    preset: str
    tile: int
    stride: int
    resolution: str
    templates: Optional[List[str]]
    bands: Optional[str]
    value_scale: str
    offset: float
    classes: List[ClassInfo]
    logit_scale: float
    rsvl_version: str = __version__
    format_version: int = FEWSHOT_VERSION
    history: List[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        d = asdict(self)
        d["classes"] = [{"code": c.code, "name": c.name, "colour": list(c.colour)} for c in self.classes]
        return d

    @classmethod
    def from_json(cls, d: dict) -> FewShotHeader:
        d = dict(d)
        d["classes"] = [ClassInfo(int(c["code"]), c["name"], tuple(c["colour"])) for c in d["classes"]]
        return cls(**d)


def _metadata(path: str) -> Optional[dict]:
    """The ``__metadata__`` of a safetensors file, read from its JSON header alone (no
    weights, no torch); None when the file is not one."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little")
            if len(head) < 8 or not 2 <= n <= 100 * 2**20:
                return None
            return json.loads(f.read(n).decode("utf-8")).get("__metadata__") or {}
    except (OSError, ValueError, UnicodeDecodeError, AttributeError):
        return None


def model_kind(path: str) -> str:
    """'rsvl' (an rsvl:train model), 'fewshot' (a head on a checkpoint) or 'checkpoint'
    (anything else: a pretrained checkpoint, checked when it is read)."""
    meta = _metadata(path)
    if meta is None:
        return "checkpoint"
    if FEWSHOT_KEY in meta:
        return "fewshot"
    return "rsvl" if "rsvl" in meta else "checkpoint"


def read_fewshot(path: str):
    """(header, head weights (K, D) float32 tensor) of a few-shot model file."""
    from ..models.modelfile import read_checked

    meta, tensors = read_checked(path, "MODEL")
    d = json.loads(meta[FEWSHOT_KEY])
    if int(d.get("format_version", 0)) > FEWSHOT_VERSION:
        raise ModelFileError(f"MODEL {path!r} was made by rsvl {d.get('rsvl_version', '?')} (few-shot format "
                             f"v{d.get('format_version')}); this is rsvl {__version__}: update rsvl")
    header = FewShotHeader.from_json(d)
    if not os.path.isfile(header.checkpoint):
        raise ModelFileError(f"MODEL {path!r} adapts the checkpoint {header.checkpoint!r}, which is not there any "
                             "more: put it back at that path or train again")
    return header, tensors["head.weight"].float()


def describe_fewshot(path: str) -> dict:
    """A few-shot model file's header as JSON (what ``rsvl info`` prints), without its
    weights; says whether the checkpoint it adapts is still at its path."""
    meta = _metadata(path) or {}
    if FEWSHOT_KEY not in meta:
        raise ModelFileError(f"MODEL {path!r} is not a few-shot model file (no {FEWSHOT_KEY!r} header)")
    d = json.loads(meta[FEWSHOT_KEY])
    return {"kind": "few-shot head on a pretrained checkpoint", **d,
            "checkpoint_found": os.path.isfile(d.get("checkpoint", ""))}
