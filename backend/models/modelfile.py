"""rsvl model files: safetensors weights with a JSON header in the safetensors metadata.

The header holds everything needed to use the model without its training data: the
architecture, the modalities with band counts and names (in order), the normalisation
statistics, the classes (code, name, colour), the prompt template, the text encoder id,
the patch size, the rsvl version and the training figures. Never pickle.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from .. import __version__
from ..errors import ModelFileError, ModelMismatchError, count
from ..io.atomic import atomic_path
from ..io.bands import BandSelection
from ..io.labels import ClassInfo
from ..io.raster import MODALITY_LABELS, BandStats
from .mmlgnet import Ensemble, MMLGNet, ModelConfig

log = logging.getLogger("rsvl")
FORMAT = "rsvl-model"
# the newest this rsvl reads; v2 adds the pixel branch (spectral-spatial), v3 ensembles, v4 dropped input bands
FORMAT_VERSION = 4


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
    members: int = 1  # > 1: a deep ensemble (mmlgnet.Ensemble) of that many models of ``config``
    # per modality: the input's bands the model uses (bad and empty bands dropped) and their wavelengths
    bands: Dict[str, BandSelection] = field(default_factory=dict)

    def format_version(self) -> int:
        """The oldest format that describes this model, so older rsvl versions keep reading
        the models they can run and name the update for the others."""
        if any(s.dropped for s in self.bands.values()):
            return 4  # an older rsvl would take the input's band count for the model's
        return 3 if self.members > 1 else 2 if self.config.pixel_channels else 1

    def to_json(self) -> dict:
        return {
            "format": FORMAT, "format_version": self.format_version(), "rsvl_version": self.rsvl_version,
            "method": self.method,
            "architecture": self.config.to_json(),
            "patch_size": self.config.patch_size,
            "modalities": {
                m: {"bands": self.config.bands[m], "band_names": self.band_names[m],
                    **({"selection": self.bands[m].to_json()} if m in self.bands else {})} for m in self.config.bands
            },
            "normalisation": {m: {"mean": s.mean, "std": s.std} for m, s in self.stats.items()},
            "classes": [c.to_json() for c in self.classes],
            "prompt_template": self.prompt_template,
            "text_encoder": self.text_encoder,
            "training": self.training,
            "members": self.members,
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
            rsvl_version=d.get("rsvl_version", "?"), members=int(d.get("members", 1)),
            bands={m: BandSelection.from_json(v["selection"]) for m, v in d["modalities"].items() if v.get("selection")},
        )

    def check_stack(self, stack, force: bool = False) -> None:
        """Select the bands the model uses from ``stack`` (the bands it dropped in training) and
        refuse inputs unlike the training inputs (:meth:`check_inputs`, band wavelengths and
        bad bands: :func:`~rsvl.backend.io.bands.apply_selection`)."""
        from ..io.selection import apply_selection

        apply_selection(stack, self.bands, force=force)
        self.check_inputs(stack.band_counts(), stack.band_names(), stack.grid, force=force)

    def check_inputs(self, band_counts: Dict[str, int], band_names: Optional[Dict[str, List[str]]] = None,
                     grid=None, force: bool = False) -> None:
        """Refuse inputs unlike the training inputs, naming the modality and what differs:
        band counts always; band order when both sides name their bands (the same names
        in another order); pixel size against the training grid (a warning beyond a
        factor of 1.5, refused beyond 4). ``force`` turns the order and pixel-size refusals
        into warnings."""
        self._check_counts(band_counts)
        soft = []
        for m, names in (band_names or {}).items():
            soft += self._band_order_problems(m, names)
        if grid is not None:
            soft += self._pixel_size_problems(grid)
        for level, message in soft:
            if level == "refuse" and not force:
                raise ModelMismatchError(f"inputs do not match the model: {message} (FORCE accepts them anyway)")
            log.warning("%s", message)

    def _band_order_problems(self, modality: str, names: List[str]):
        trained = self.band_names.get(modality, [])
        if len(trained) != len(names) or not (_named(trained) and _named(names)) or trained == names:
            return []
        if sorted(trained) == sorted(names):
            moved = [f"{n} is band {names.index(n) + 1}, was {i + 1}" for i, n in enumerate(trained) if names[i] != n]
            return [("refuse", f"{modality} bands are in another order than in training ({'; '.join(moved[:6])}): "
                               "reorder them (e.g. gdal_translate -b …) or build the stack as in training")]
        differ = [f"{a!r} vs {b!r}" for a, b in zip(trained, names) if a != b]
        return [("warn", f"{modality} band names differ from training (trained vs given: {', '.join(differ[:6])}); "
                         "check that the bands are the same ones in the same order")]

    def _pixel_size_problems(self, grid):
        trained = self.training.get("reference_grid")
        if not trained or not trained.get("transform"):
            return []
        from rasterio.crs import CRS

        t_crs = CRS.from_wkt(trained["crs"]) if trained.get("crs") else None
        if t_crs is None or grid.crs is None or t_crs.is_geographic != grid.crs.is_geographic or \
                (t_crs.linear_units or "") != (grid.crs.linear_units or ""):
            return []  # sizes in different units: nothing to compare
        t_size = max(abs(trained["transform"][0]), abs(trained["transform"][4]))
        size = max(abs(grid.transform.a), abs(grid.transform.e))
        if not t_size or not size:
            return []
        ratio = max(size / t_size, t_size / size)
        text = (f"the input pixel size is {size:g} but the model was trained on {t_size:g} "
                f"({ratio:.1f}x {'finer' if size < t_size else 'coarser'})")
        if ratio > 4:
            return [("refuse", text + ": patches would cover a very different ground area; resample the inputs to "
                               "the training resolution")]
        if ratio > 1.5:
            return [("warn", text + "; patches cover a different ground area than in training")]
        return []

    def _check_counts(self, band_counts: Dict[str, int]) -> None:
        problems = []
        for m, n in self.config.bands.items():
            if m not in band_counts:
                problems.append(f"the model needs a {MODALITY_LABELS[m]} input ({m}, {count(n, 'band')}) and none was given")
            elif band_counts[m] != n:
                problems.append(f"{m} input has {count(band_counts[m], 'band')} but the model was trained on {n}")
        for m, n in band_counts.items():
            if m not in self.config.bands:
                problems.append(f"{m} input ({count(n, 'band')}) was given but the model has no {m} encoder")
        if problems:
            raise ModelMismatchError("inputs do not match the model: " + "; ".join(problems))


def _named(names: List[str]) -> bool:
    """Whether bands carry real names (descriptions), not rsvl's fallback "layer:bandN"."""
    return bool(names) and not any(re.search(r":band\d+$", n) or not n.strip() for n in names)


def save_model(path: str, model, header: ModelHeader) -> None:
    """Write ``model`` (an MMLGNet, or an Ensemble with ``header.members`` members) and its
    header atomically."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata={"rsvl": json.dumps(header.to_json()), DIGEST_KEY: weights_digest(tensors)})


DIGEST_KEY = "rsvl_weights_sha256"


def read_checked(path: str, parameter: str):
    """(metadata, tensors) of an rsvl safetensors file whose weights match the checksum
    written with them (files without one are accepted); clear errors otherwise."""
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise ModelFileError(f"{parameter} file {path!r} does not exist")
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 (safetensors raises its own types)
        raise ModelFileError(f"{parameter} {path!r} cannot be read: {exc}") from exc
    if meta.get(DIGEST_KEY) not in (None, weights_digest(tensors)):
        raise ModelFileError(f"{parameter} {path!r} is corrupted: its weights do not match the checksum written "
                             "with them; copy it again or make it again")
    return meta, tensors


def weights_digest(tensors) -> str:
    """SHA-256 of the weights (names, dtypes, shapes and bytes, in name order): stored in
    the model file so that bytes changed on disk or in transfer are caught on loading;
    safetensors itself checks the layout but not the values."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def read_header(path: str) -> ModelHeader:
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise ModelFileError(f"MODEL file {path!r} does not exist")
    expected = "expected a model file written by rsvl:train (safetensors weights with an rsvl header)"
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types
        raise ModelFileError(f"MODEL {path!r} is not an rsvl model: it {describe_file(path)}; {expected}") from exc
    if "rsvl" not in meta:
        raise ModelFileError(f"MODEL {path!r} is a safetensors file but not an rsvl model (no 'rsvl' header); "
                             f"{expected}")
    d = json.loads(meta["rsvl"])
    if d.get("format") != FORMAT or int(d.get("format_version", 0)) > FORMAT_VERSION:
        raise ModelFileError(
            f"MODEL {path!r} was made by rsvl {d.get('rsvl_version', '?')} (format {d.get('format')} "
            f"v{d.get('format_version')}); this is rsvl {__version__}, which reads {FORMAT} up to "
            f"v{FORMAT_VERSION}: update rsvl"
        )
    return ModelHeader.from_json(d)


def describe_file(path: str) -> str:
    """What a file that is not a model looks like, in words (it is never unpickled)."""
    with open(path, "rb") as f:
        head = f.read(8)
    if not head:
        return "is empty"
    truncated = _truncated_safetensors(path, head)  # first: its 8-byte length can start like anything
    if truncated:
        return truncated
    if head.startswith(b"PK\x03\x04"):
        return "looks like a zip archive, e.g. a PyTorch .pt/.pth checkpoint (not loaded: pickles can run code)"
    if head[:1] == b"\x80":
        return "looks like a Python pickle (not loaded: pickles can run code)"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "looks like a TIFF raster"
    if head.lstrip()[:1] in (b"{", b"<"):
        return "looks like a text (JSON/HTML/XML) file"
    with open(path, "rb") as f:
        start = f.read(512)
    if all(32 <= b < 127 or b in (9, 10, 13) for b in start):
        return "looks like a text file"
    return "is not a safetensors file (corrupted?)"


def _truncated_safetensors(path: str, head: bytes) -> str:
    """A description when ``path`` starts like a safetensors file but is shorter than its
    header says (an interrupted copy or download), else ''."""
    size = os.path.getsize(path)
    n = int.from_bytes(head, "little") if len(head) == 8 else 0
    if not 2 <= n <= min(size, 100 * 2**20):
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(8)
            meta = json.loads(f.read(n).decode("utf-8"))
        end = 8 + n + max((v["data_offsets"][1] for k, v in meta.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return ""
    if size < end:
        return (f"is truncated: {size:,} of the {end:,} bytes its header describes (an interrupted copy, download "
                "or training?)")
    return ""


def load_model(path: str, device="cpu"):
    """(model in eval mode on ``device``, header)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    header = read_header(path)
    members = [MMLGNet(header.config, n_classes=len(header.classes)) for _ in range(header.members)]
    model = Ensemble(members) if len(members) > 1 else members[0]
    state = load_file(path, device="cpu")
    with safe_open(path, framework="pt") as f:
        digest = (f.metadata() or {}).get(DIGEST_KEY)
    if digest is not None and digest != weights_digest(state):
        raise ModelFileError(f"MODEL {path!r} is corrupted: its weights do not match the checksum rsvl:train "
                             "wrote into it (changed on disk or in transfer); copy it again or train it again")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelFileError(f"MODEL {path!r}: weights do not fit its architecture: {exc}") from exc
    return model.to(device).eval(), header
