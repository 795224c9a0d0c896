"""The image/text towers of a pretrained checkpoint: :class:`FoundationModel` builds the open_clip architecture
offline, swaps in a ``len(bands)``-channel patch embedding where needed and loads strictly; prompt templates
are checked and filled here."""

from __future__ import annotations

import logging
import math
import os
from typing import Callable, List, Optional, Sequence

import torch

from ..errors import InputError, ModelFileError
from .checkpoint import build_model, detect_preset, preset_state, read_checkpoint
from .presets import Preset, get_preset

log = logging.getLogger("rsvl")


class FoundationModel:
    """An open_clip model and its preset, in eval mode on ``device``. ``preset`` is a
    name (``auto``: from the checkpoint's keys and shapes) or a :class:`Preset`."""

    def __init__(self, path: str, preset="auto", device="cpu"):
        import open_clip
        from open_clip.factory import resize_pos_embed

        from ..runtime.allocator import tune_allocator

        tune_allocator()  # window batches from the heap, not mmap'd per batch
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
        self.dtype = torch.float32  # the image tower's (PRECISION); the text tower stays float32
        self._candidate = None  # (dtype, image tower cast to it) prepared by check_precision

    def check_precision(self, dtype, x, text) -> tuple:
        """(ok, in words): the image tower cast to ``dtype`` against float32 on a probe batch
        ``x`` of windows: the embeddings' smallest cosine (at least 0.995) and the best of the
        prompts ``text`` (K, D) per window (all the same; ``text`` None: the cosine alone, where
        no prompt is known yet). The cast copy is kept for
        :meth:`use_precision`; the float32 tower is untouched."""
        import copy

        reference = self.encode(x)
        tower = copy.deepcopy(self.model.visual).to(dtype)
        kept, self.model.visual = self.model.visual, tower
        self.dtype, previous = dtype, self.dtype
        try:
            reduced = self.encode(x)
        finally:
            self.model.visual, self.dtype = kept, previous
        self._candidate = (dtype, tower)
        cosine = float((reference * reduced).sum(-1).min()) if len(reference) else 1.0
        if text is None:
            return cosine >= 0.995, (f"on {len(reference)} probe windows the image embeddings keep a cosine of at "
                                     f"least {cosine:.4f} with float32's (limit 0.995)")
        same = float((reference @ text.t()).argmax(-1).eq((reduced @ text.t()).argmax(-1)).float().mean()) \
            if len(reference) else 1.0
        ok = cosine >= 0.995 and same == 1.0
        return ok, (f"on {len(reference)} probe windows the image embeddings keep a cosine of at least {cosine:.4f} "
                    f"with float32's and the best prompt is the same on {same:.0%} (limits 0.995, 100 %)")

    def use_precision(self, dtype) -> None:
        """Run the image tower in ``dtype`` from now on (the text tower stays float32)."""
        if dtype == self.dtype:
            self._candidate = None  # the checked copy is not needed (float32 kept)
            return
        if self._candidate is not None and self._candidate[0] == dtype:
            self.model.visual = self._candidate[1]
        else:
            self.model.visual = self.model.visual.to(dtype)
        self.dtype, self._candidate = dtype, None

    # -- text ----------------------------------------------------------------------------
    def text_embeddings(self, prompts: Sequence[str], templates: Optional[Sequence[str]] = None,
                        progress: Optional[Callable[[float, str], None]] = None, batch: int = 8):
        """(K, D) L2-normalised prompt embeddings: each template filled with the prompt
        (``{}`` or ``{c}``), encoded and normalised, averaged, re-normalised (open_clip's
        ``build_zero_shot_classifier``, the template ensemble of the CLIP papers).

        Each prompt's embedding is cached on disk (:func:`rsvl.backend.text.encoders.text_cache_dir`)
        by checkpoint file (path, size, time), preset and templates: 50 templates × 50
        prompts are 2,500 texts through the text tower once, not on every map. ``progress``
        (fraction, message) is called per batch of ``batch`` prompts."""
        from open_clip.zero_shot_classifier import build_zero_shot_classifier

        from ..text.encoders import cache_get, cache_put, file_fingerprint

        templates = list(templates or self.preset.templates)
        check_templates(templates)
        fillers = [lambda c, t=t: fill_template(t, c) for t in templates]
        encoder_id = f"clip:{self.preset.name}:{self.preset.arch}"
        fingerprint = file_fingerprint(self.path) + "|" + "\n".join(templates)
        out: List[Optional[torch.Tensor]] = [None] * len(prompts)
        for i, prompt in enumerate(prompts):
            cached = cache_get(encoder_id, fingerprint, prompt)
            if cached is not None:
                out[i] = torch.from_numpy(cached)
        todo = [i for i, e in enumerate(out) if e is None]
        for n in range(0, len(todo), batch):
            part = todo[n:n + batch]
            if progress is not None:
                progress(n / max(len(todo), 1), f"encoding prompts {n + 1}-{n + len(part)} of {len(todo)} "
                                                f"({len(templates)} templates each)")
            with torch.no_grad():
                weights = build_zero_shot_classifier(self.model, self.tokenizer, [prompts[i] for i in part],
                                                     fillers, device=self.device)
            for j, i in enumerate(part):
                out[i] = weights[:, j].float().cpu()
                cache_put(encoder_id, fingerprint, prompts[i], out[i].numpy())
        if progress is not None and todo:
            progress(1.0, f"encoded {len(todo)} prompts")
        return torch.stack(out).to(self.device).contiguous()

    # -- images --------------------------------------------------------------------------
    def encode(self, x, tokens: bool = False):
        """L2-normalised embeddings of a batch (N, C, S, S) of preprocessed windows: (N, D),
        or with ``tokens`` (N, g, g, D) per patch token (projected with ``visual.proj``)."""
        visual = self.model.visual
        with torch.no_grad():
            if self.dtype != torch.float32:  # reduced precision: the tower in dtype, the normalisation in float32
                x = x.to(self.dtype)
                if not tokens:
                    return torch.nn.functional.normalize(self.model.encode_image(x).float(), dim=-1)
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
