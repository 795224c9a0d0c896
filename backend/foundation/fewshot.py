"""Few-shot adaptation of a pretrained vision-language checkpoint (FOUNDATION_MODEL in
rsvl:train): a light head on frozen image embeddings, initialised from the class prompts.

- A labelled pixel's feature is what the zero-shot map scores at that pixel: the mean of
  the L2-normalised embeddings (per window, or per patch token with ``resolution=token``)
  of the windows covering it, on the same window grid the map uses. Scores are linear in
  the embedding, so a head applied to these features gives exactly the stitched map.
- The head is a cosine classifier: class vectors W (K × D) initialised with the class
  names' text embeddings (the preset's template ensemble) and a temperature initialised
  at CLIP's 100; trained with cross-entropy on the user's labels (Adam, full batch), the
  weights of the best validation epoch kept. With zero epochs it *is* the zero-shot map.
- The result is a model file (safetensors, header under ``rsvl_fewshot``) that
  :func:`classify_fewshot` and ``rsvl:query`` use like any rsvl model; it names the
  checkpoint it was made from, which must stay at that path.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError, LabelError
from ..evaluation.metrics import Accuracy, accuracy_from_matrix, confusion_matrix
from ..io.labels import ClassInfo
from ..io.windows import as_boxes, tile_windows
from .fewshot_file import FEWSHOT_KEY, FewShotHeader, read_fewshot
from .zeroshot import ZeroShotSetup, _read_window, _resize, choose_vit_precision, open_for_scene, score_windows, write_maps

log = logging.getLogger("rsvl")
def _labelled_pixels(labels, grid) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:

    rows, cols, codes = [], [], []
    for window in tile_windows(grid.width, grid.height, 1024):
        sub = labels.read(window)
        rr, cc = np.nonzero(sub > 0)
        rows.append(rr + int(window.row_off))
        cols.append(cc + int(window.col_off))
        codes.append(sub[rr, cc])
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(codes).astype(np.int64)


def pixel_features(setup: ZeroShotSetup, boxes, rows, cols, *, tokens: bool, batch_size: int = 8, job=None):
    """(N, D) features of the pixels (rows, cols): the mean of the embeddings (window or
    token cells) of the windows covering each, as the map stitches scores; and (N,) bool,
    whether the pixel's own input is valid."""
    fm = setup.model
    feats = None
    count = np.zeros(rows.size, np.int64)
    valid = np.zeros(rows.size, bool)
    pending = []

    def flush():
        nonlocal feats
        if not pending:
            return
        batch = _resize(torch.from_numpy(np.stack([x for x, _ in pending])).to(fm.device), fm.image_size)
        emb = fm.encode(batch, tokens=tokens)
        grids = (emb if tokens else emb[:, None, None, :]).cpu().numpy().astype(np.float64)
        if feats is None:
            feats = np.zeros((rows.size, grids.shape[-1]))
        for (_, (idx, cy, cx)), grid in zip(pending, grids):
            np.add.at(feats, idx, grid[cy, cx])
            np.add.at(count, idx, 1)
        pending.clear()

    rows_needed = max((b[2] for b in boxes), default=1)
    with setup.stack.downward(rows_needed):
        for i, (r, c, h, w) in enumerate(boxes):
            if job is not None:
                job.step(i / max(len(boxes), 1), f"window {i + 1}/{len(boxes)}")
            inside = np.flatnonzero((rows >= r) & (rows < r + h) & (cols >= c) & (cols < c + w))
            if inside.size == 0:
                continue
            arr, ok = _read_window(setup, (r, c, h, w))
            valid[inside] = ok[rows[inside] - r, cols[inside] - c]
            if not ok.any():
                continue
            g = fm.image_size // fm.token_size if tokens else 1
            cy = (rows[inside] - r) * g // h
            cx = (cols[inside] - c) * g // w
            pending.append((setup.prep(arr, ok), (inside, cy, cx)))
            if len(pending) >= batch_size:
                flush()
        flush()
    if feats is None:
        raise LabelError("no labelled pixel lies on valid input data")
    with np.errstate(invalid="ignore", divide="ignore"):
        feats = feats / np.maximum(count, 1)[:, None]
    return feats.astype(np.float32), valid & (count > 0)


@dataclass
class FewShotResult:
    model_path: str
    classes: List[ClassInfo]
    n_train: int
    n_val: int
    validation_oa_zero_shot: Optional[float]
    validation_oa: Optional[float]
    epochs_run: int
    best_epoch: int
    seconds: float
    history: List[dict]
    validation: Optional[Accuracy] = None  # the kept head's figures on the validation pixels


def fit_head(features, y, text, *, epochs: int, learning_rate: float, val_features=None, val_y=None, seed=0,
             logit_scale: float = 100.0):
    """Cosine-classifier head from ``text`` (K, D): (weights (K, D) normalised, scale,
    history, best epoch). The weights of the epoch with the best validation accuracy (or
    training loss without validation) are kept; epoch 0 is the zero-shot head."""
    torch.manual_seed(seed)
    x = torch.from_numpy(features)
    t = torch.from_numpy(y)
    w = torch.nn.Parameter(text.detach().cpu().float().clone())
    log_scale = torch.nn.Parameter(torch.tensor(math.log(logit_scale)))
    opt = torch.optim.Adam([w, log_scale], lr=learning_rate)
    xv = torch.from_numpy(val_features) if val_features is not None and len(val_features) else None
    tv = torch.from_numpy(val_y) if xv is not None else None

    def evaluate():
        with torch.no_grad():
            wn = F.normalize(w, dim=1)
            loss = F.cross_entropy(log_scale.exp() * x @ wn.t(), t).item()
            acc = float(((xv @ wn.t()).argmax(1) == tv).float().mean()) if xv is not None else None
        return loss, acc

    loss, acc = evaluate()
    history = [{"epoch": 0, "train_loss": loss, "val_oa": acc}]
    best = (acc if acc is not None else -loss, 0, F.normalize(w.detach(), dim=1).clone(), float(log_scale.detach().exp()))
    for epoch in range(1, epochs + 1):
        opt.zero_grad()
        logits = log_scale.exp() * x @ F.normalize(w, dim=1).t()
        F.cross_entropy(logits, t).backward()
        opt.step()
        with torch.no_grad():
            log_scale.clamp_(0.0, math.log(100.0))
        loss, acc = evaluate()
        history.append({"epoch": epoch, "train_loss": loss, "val_oa": acc})
        key = acc if acc is not None else -loss
        if key > best[0]:
            best = (key, epoch, F.normalize(w.detach(), dim=1).clone(), float(log_scale.detach().exp()))
    return best[2], best[3], history, best[1]


def train_fewshot(
    checkpoint: str, layers, labels: str, output_model: str, *, class_field: Optional[str] = None,
    class_name_field: Optional[str] = None, preset: str = "auto", templates: Optional[Sequence[str]] = None,
    tile_size: Optional[int] = None, stride: Optional[int] = None, resolution: str = "tile",
    bands: Optional[str] = None, value_scale: str = "auto", offset: float = 0.0, epochs: int = 100,
    learning_rate: float = 1e-2, validation_fraction: float = 0.2, seed: int = 0, device: str = "auto",
    reference=None, progress=None, is_cancelled=None, precision: str = "auto",
) -> FewShotResult:
    """Adapt a pretrained checkpoint to the user's labels (see the module docstring).
    ``precision``: the image tower's (:func:`rsvl.backend.foundation.zeroshot.choose_vit_precision`,
    checked with the class names' text embeddings); the head trains in float32."""
    from safetensors.torch import save_file

    from ..io.atomic import atomic_path, check_extension, check_outputs
    from ..io.labels import open_labels
    from ..models.modelfile import DIGEST_KEY, weights_digest
    from ..runtime.jobs import Job

    if resolution not in ("tile", "token"):
        raise InputError(f"RESOLUTION must be tile or token (got {resolution!r})")
    if epochs < 0:
        raise InputError(f"EPOCHS must be 0 or more (got {epochs})")
    if not 0.0 <= validation_fraction < 1.0:
        raise InputError(f"VALIDATION_FRACTION must be in [0, 1) (got {validation_fraction})")
    check_extension("OUTPUT_MODEL", output_model, "model")
    check_outputs([("OUTPUT_MODEL", output_model, 0)])
    job = Job(progress, is_cancelled)
    start = time.perf_counter()
    fm, setup, tile, stride, _dev = open_for_scene(checkpoint, preset, device, layers, tile_size=tile_size,
                                                   stride=stride, bands=bands, scale=value_scale, offset=offset,
                                                   reference=reference, job=job)
    with setup.stack as stack:
        job.step(0.02, "reading labels")
        source = open_labels(labels, stack.grid, class_field, class_name_field=class_name_field)
        classes = list(source.classes)
        rows, cols, codes = _labelled_pixels(source, stack.grid)
        if rows.size == 0:
            raise LabelError(f"TRAINING {os.path.basename(labels)!r} has no labelled pixel on the input grid")
        boxes = as_boxes(tile_windows(stack.width, stack.height, tile, stride, edge="shift"))
        labelled = [c for c in classes if c.code in set(codes.tolist())]
        job.step(0.03, "encoding class names")
        labelled_text = fm.text_embeddings([c.name for c in labelled], templates)  # the check's prompts, the head's start
        choose_vit_precision(precision, fm, setup, boxes, labelled_text, fm.device)
        feats, ok = pixel_features(setup, boxes, rows, cols, tokens=resolution == "token",
                                   job=job.span(0.05, 0.85))
    if (~ok).any():
        log.warning("%d labelled pixels lie on nodata and were not used", int((~ok).sum()))
    feats, codes = feats[ok], codes[ok]
    present = sorted(set(codes.tolist()))
    classes = [c for c in classes if c.code in present]
    index = {c.code: i for i, c in enumerate(classes)}
    if len(classes) < 2:
        raise LabelError(f"TRAINING holds {len(classes)} class(es) on valid pixels; a classifier needs at least two")
    y = np.asarray([index[c] for c in codes], np.int64)
    rng = np.random.default_rng(seed)
    val = np.zeros(y.size, bool)
    if validation_fraction > 0:
        for k in range(len(classes)):  # stratified: each class keeps at least one training pixel
            members = np.flatnonzero(y == k)
            n_val = int(round(validation_fraction * members.size)) if members.size > 1 else 0
            val[rng.permutation(members)[:n_val]] = True
    row = {c.code: i for i, c in enumerate(labelled)}
    text = labelled_text[[row[c.code] for c in classes]].cpu()  # the classes left on valid pixels
    head, scale, history, best_epoch = fit_head(
        feats[~val], y[~val], text, epochs=epochs, learning_rate=learning_rate,
        val_features=feats[val] if val.any() else None, val_y=y[val] if val.any() else None, seed=seed)
    header = FewShotHeader(
        checkpoint=os.path.abspath(checkpoint), preset=fm.preset.name, tile=tile, stride=stride,
        resolution=resolution, templates=list(templates) if templates else None, bands=bands,
        value_scale=str(value_scale), offset=float(offset or 0.0), classes=classes, logit_scale=scale,
        history=history)
    tensors = {"head.weight": head.contiguous()}
    with atomic_path(output_model) as tmp:
        save_file(tensors, tmp, metadata={FEWSHOT_KEY: json.dumps(header.to_json()),
                                          DIGEST_KEY: weights_digest(tensors)})
    job.report(1.0, "done")
    zero = history[0]["val_oa"]
    best = history[best_epoch]["val_oa"]
    log.info("few-shot head on %s: %d training / %d validation pixels; validation OA zero-shot %s, adapted %s "
             "(epoch %d)", fm.preset.name, int((~val).sum()), int(val.sum()),
             "n/a" if zero is None else f"{zero:.4f}", "n/a" if best is None else f"{best:.4f}", best_epoch)
    validation = None
    if val.any():  # the kept head (best epoch) on the validation pixels: OA, AA, kappa, per class
        pred = (feats[val] @ head.cpu().numpy().T).argmax(1)
        matrix = confusion_matrix(y[val], pred, range(len(classes)))
        validation = accuracy_from_matrix(matrix, [c.code for c in classes], [c.name for c in classes])
    return FewShotResult(output_model, classes, int((~val).sum()), int(val.sum()), zero, best, epochs, best_epoch,
                         time.perf_counter() - start, history, validation)


def classify_fewshot(model_path: str, layers, output: str, *, confidence: Optional[str] = None,
                     similarity: Optional[str] = None, device: str = "auto", reference=None, progress=None,
                     is_cancelled=None, batch_size: int = 8,
                     precision: str = "auto") -> Tuple[List[ClassInfo], int, float]:
    """Classify a scene with a few-shot model: the head's class vectors score the stitched
    window (or token) embeddings; outputs as rsvl:classify writes them. ``precision``: the
    image tower's (checked with the head's class vectors). Returns (classes, pixels, seconds)."""
    from ..io.atomic import check_outputs
    from ..mapping.inference import class_dtype
    from ..runtime.jobs import Job

    header, head = read_fewshot(model_path)
    job = Job(progress, is_cancelled)
    start = time.perf_counter()
    fm, setup, _tile, _stride, dev = open_for_scene(
        header.checkpoint, header.preset, device, layers, tile_size=header.tile, stride=header.stride,
        bands=header.bands, scale=header.value_scale, offset=header.offset, reference=reference, job=job)
    k = len(header.classes)
    with setup.stack as stack:
        pixels = stack.width * stack.height
        check_outputs([("OUTPUT", output, pixels * np.dtype(class_dtype(header.classes)).itemsize),
                       ("OUTPUT_CONFIDENCE", confidence, pixels * 4), ("OUTPUT_SIMILARITY", similarity, pixels * 4 * k)])
        boxes = as_boxes(tile_windows(stack.width, stack.height, header.tile, header.stride, edge="shift"))
        head = head.to(dev)
        choose_vit_precision(precision, fm, setup, boxes, head, dev)
        scores = score_windows(setup, head, boxes, tokens=header.resolution == "token",
                               batch_size=batch_size, job=job.span(0.05, 0.9))
        write_maps(setup, scores, header.classes, [c.name for c in header.classes], output_similarity=similarity,
                   output=output, confidence=confidence, logit_scale=header.logit_scale, job=job.span(0.9, 1.0))
        job.report(1.0, "done")
    return header.classes, pixels, time.perf_counter() - start
