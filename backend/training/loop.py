"""Training loop of rsvl's recipes: image-text contrastive loss against the class prompts,
with one of two schedules (``TrainSettings.schedule``):

- ``early-stopping`` (MMLGNet, the paper's): Adam at a constant rate, early stopping on a
  held-out, class-stratified validation split, best weights kept;
- ``one-cycle`` (spectral-spatial): AdamW with a one-cycle learning rate (warm-up, then
  cosine decay) for a fixed number of epochs (at least ``min_steps`` steps), and an
  exponential moving average of the weights (and batch-norm statistics) as the model. With
  a validation split, the schedule first runs on the rest and is scored on it (the
  reported figures), then, with ``refit``, runs again from the same initial weights on
  every labelled sample: the model uses all labels, the figures describe the recipe.
  With ``ema_choices`` the validation run keeps one weight average per decay and the
  refit takes the one the validation split prefers (:func:`choose_average`).

Long module: both schedules share the stepper, the epoch, the validation scoring and the DDP
hooks; apart, each would need the other's internals.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..runtime.allocator import tune_allocator
from ..runtime.jobs import Job
from ..runtime.precision import torch_dtype

log = logging.getLogger("rsvl")


@dataclass
class TrainSettings:
    epochs: int = 100
    batch_size: int = 128
    learning_rate: float = 1e-4
    validation_fraction: float = 0.2
    patience: int = 15
    seed: int = 0
    device: str = "auto"
    # "supervised": same-class pairs are positives (default); "clip": MMLGNet's eq. 4-6,
    # where the i-th image matches only the i-th text and same-class pairs are negatives.
    loss: str = "supervised"
    # Generalisation (issue 11, backend/data/augment.py): spectral gain/offset jitter plus flips
    # and 90-degree rotations of the training patches; class-balanced epochs.
    augment: bool = False
    balanced: bool = False
    # Schedule (see the module docstring) and its settings.
    schedule: str = "early-stopping"
    weight_decay: float = 0.0
    ema: float = 0.0  # decay per step of the weight average (0: none)
    # Other decays of the weight average tried alongside ``ema`` in the validation run (same
    # steps, one average each); the refit keeps one only where the validation split prefers it
    # by more than a standard error (:func:`choose_average`), else ``ema``.
    ema_choices: Tuple[float, ...] = ()
    min_steps: int = 0  # one-cycle: at least this many steps, however few the samples
    refit: bool = False  # one-cycle with validation: refit on every sample afterwards
    # SpectralJitter (gain, offset, band dropout) applied to every batch (recipe default);
    # None: AUGMENT's 5 % gain/offset jitter, or nothing without AUGMENT.
    jitter: Optional[object] = None
    # Mixup of the labelled batch (augment.mix_pixels; Beta(mixup, mixup) shares), after the
    # jitter and flips, with the loss's positives shared in the same proportions. 0: none.
    mixup: float = 0.0
    # Semi-supervised (one-cycle with a weight average): pseudo-labels of unlabelled pixels of
    # the scene, from the weight average where it is confident, train the model on strongly
    # augmented copies (FixMatch's loss with a mean teacher). 0: labelled pixels only.
    unlabelled_weight: float = 0.0
    confidence: float = 0.95  # the teacher's softmax probability a pseudo-label needs
    unlabelled_ratio: int = 1  # unlabelled samples per labelled sample in a batch
    # The validation split's seed (None: ``seed``). An ensemble's members differ in ``seed``
    # (initial weights, batches, augmentation) and share this, so their validation figures add up.
    split_seed: Optional[int] = None
    # The forward pass's arithmetic (:func:`rsvl.backend.runtime.precision.choose_training`):
    # float32, or bfloat16 / float16 autocast (losses, optimiser and weights stay float32;
    # float16 scales the loss against underflow).
    precision: str = "float32"


SCHEDULES = ("early-stopping", "one-cycle")
UNLABELLED_PIXELS = 20000  # the pool of unlabelled pixels the semi-supervised loss draws from, at most
UNLABELLED_POOL_MB = 256  # … and at most this much memory


def unlabelled_pool_size(patches: Dict[str, np.ndarray]) -> int:
    """How many unlabelled patches of the labelled patches' shape to hold in memory."""
    per_patch = sum(p[0].nbytes for p in patches.values())
    return int(max(1, min(UNLABELLED_PIXELS, UNLABELLED_POOL_MB * 2**20 // max(per_patch, 1))))


@dataclass
class TrainOutcome:
    history: List[dict] = field(default_factory=list)
    best_epoch: int = 0
    epochs_run: int = 0
    seconds: float = 0.0
    samples_per_s: float = 0.0
    val_index: Optional[np.ndarray] = None
    val_pred: Optional[np.ndarray] = None
    val_similarity: Optional[np.ndarray] = None  # (n_val, C) cosine similarities behind val_pred
    stopped_early: bool = False
    refit: bool = False  # one-cycle: the model was refit on every sample after the validation run
    pseudo_labelled: Optional[float] = None  # semi-supervised: share of unlabelled samples drawn that were pseudo-labelled
    ema: Optional[float] = None  # one-cycle: the decay of the weight average that is the model
    ema_scores: Optional[Dict[str, List[float]]] = None  # validation (OA, loss) of each decay tried


def split_validation(y: np.ndarray, fraction: float, seed: int):
    """Class-stratified split of sample indices; classes with one sample stay in training."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        k = int(round(fraction * idx.size)) if idx.size > 1 else 0
        k = min(k, idx.size - 1)
        val.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def _seed_everything(seed: int):
    import random


    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def predict_patches(model, patches: Dict[str, object], index: np.ndarray, batch_size: int, device):
    """Class logits of the per-patch path for samples ``index`` (eval mode, no grad)."""
    model.eval()
    out = []
    with torch.no_grad():
        for s in range(0, index.size, max(batch_size, 1)):
            b = index[s:s + batch_size]
            z = model.embed({m: torch.from_numpy(p[b]).to(device) for m, p in patches.items()})
            out.append(model.logits(z).cpu())
    return torch.cat(out) if out else torch.zeros(0, model.class_embeddings.shape[0])


def _grad_scaler(device):
    """float16's loss scaler: ``torch.amp.GradScaler`` (torch 2.3+), else CUDA's own."""
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler(device.type)
    return torch.cuda.amp.GradScaler()


def _batch_embedder(model, groups: bool):
    """The part of a training step that DistributedDataParallel wraps (its ``forward`` is
    what DDP hooks): a batch → (embeddings, band-group embeddings)."""
    class BatchEmbedder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, batch):
            features = self.model.branch_features(batch)
            return self.model.embed(batch, features), (self.model.group_embeddings(features) if groups else {})

    return BatchEmbedder()


def _validate_shard(model, patches, y_t, val_idx, batch_size, device, ranks):
    """(loss, OA) of the validation samples, each rank predicting its share (summed)."""
    from .ddp import all_sum, broadcast_buffers

    broadcast_buffers(model)  # rank 0's batch-norm statistics: the model every rank evaluates (and saves)
    shard = np.array_split(val_idx, ranks.world_size)[ranks.rank]
    logits = predict_patches(model, patches, shard, batch_size, device)
    yv = y_t[shard]
    loss_sum, correct = all_sum([float(F.cross_entropy(logits, yv, reduction="sum")) if shard.size else 0.0,
                                 float((logits.argmax(1) == yv).sum())], device)
    return loss_sum / val_idx.size, correct / val_idx.size


def one_cycle(steps: int, warm_up: float = 0.1):
    """The one-cycle factor of the peak learning rate at step ``t`` of ``steps``: a linear
    warm-up over the first ``warm_up`` share (at least one step), then a cosine decay to
    zero. (torch's OneCycleLR divides by zero below about ten steps.)"""
    import math

    warm = max(1, round(warm_up * steps))

    def factor(t: int) -> float:
        if t < warm:
            return (t + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (t - warm) / max(1, steps - warm))))

    return factor


class _Stepper:
    """One optimisation step of the contrastive loss on a batch (single process, or the
    whole global batch under torchrun), shared by both schedules."""

    def __init__(self, model, settings: TrainSettings, device, stats, group_text, ranks, patches, y,
                 unlabelled=None):
        self.model, self.settings, self.device, self.ranks = model, settings, device, ranks
        self.unlabelled = {m: torch.from_numpy(p) for m, p in (unlabelled or {}).items()}
        self.teacher = None  # the weight average, once a schedule has one (semi-supervised loss)
        self.pseudo = [0, 0]  # pseudo-labelled and unlabelled samples seen (the share is logged)
        self.stats = stats or {}
        self.text = model.class_embeddings.to(device)
        self.group_text = {k: v.to(device) for k, v in (group_text or {}).items()}
        self.tensors = {m: torch.from_numpy(p) for m, p in patches.items()}
        self.y = torch.from_numpy(y)
        self.step_size, self.net = settings.batch_size, None
        self.dtype = torch_dtype(settings.precision)
        self.scaler = _grad_scaler(device) if self.dtype is torch.float16 else None
        # The epoch order comes from ``generator`` on every rank alike; augmentation draws differ per rank.
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.augment_generator = self.generator
        if ranks is not None:
            from .ddp import check_batch_size

            check_batch_size(settings.batch_size, ranks.world_size)
            self.step_size = settings.batch_size // ranks.world_size  # this rank's part of each global batch
            # Buffers (batch-norm statistics) stay each rank's own between steps: one collective fewer
            # per step; rank 0's are broadcast before any evaluation (:func:`_sync_buffers`).
            self.net = DistributedDataParallel(_batch_embedder(model, bool(self.group_text)), broadcast_buffers=False,
                                               gradient_as_bucket_view=True,
                                               device_ids=[device] if device.type == "cuda" else None)
            self.augment_generator = torch.Generator().manual_seed(settings.seed + 7919 * (ranks.rank + 1))

    def autocast(self):
        """The forward pass's precision: autocast to ``settings.precision``, or nothing (float32)."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward_step(self, loss, optimiser) -> bool:
        """Gradients of ``loss`` and one optimiser step (float16: through the loss scaler).
        Returns whether the optimiser stepped: the scaler skips a step whose gradients
        overflowed (and lowers its scale), and then the schedule and the weight averages
        must not advance either."""
        optimiser.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            optimiser.step()
            return True
        self.scaler.scale(loss).backward()
        scale = self.scaler.get_scale()
        self.scaler.step(optimiser)
        self.scaler.update()
        return self.scaler.get_scale() >= scale

    def epoch_order(self, index: np.ndarray):
        """This process's samples of one epoch, in order (the whole epoch in one process)."""
        from ..data.augment import balanced_order

        order = torch.from_numpy(index)[torch.randperm(index.size, generator=self.generator)]
        if self.settings.balanced:
            order = torch.from_numpy(balanced_order(self.y.numpy(), index, self.generator))
        if self.ranks is not None:
            from .ddp import rank_order

            order = torch.from_numpy(rank_order(order.numpy(), self.ranks))
        return order

    def batches(self, order):
        for s in range(0, order.numel(), self.step_size):
            b = order[s:s + self.step_size]
            if b.numel() >= 2:  # batch norm needs two samples (every rank has the same count)
                yield b

    def _pseudo_labels(self, n_labelled: int):
        """(strongly augmented unlabelled batch, the teacher's pseudo-labels, 1 where the
        teacher is confident else 0), or Nones when there is no semi-supervised loss. The
        teacher (the weight average, eval mode) sees the patches as they are; the student a
        spectrally jittered (:data:`rsvl.backend.data.augment.STRONG`), flipped and rotated copy."""
        from ..data.augment import STRONG, flip_rotate, spectral_jitter

        if self.teacher is None or not self.unlabelled or self.settings.unlabelled_weight <= 0:
            return None, None, None
        pool = next(iter(self.unlabelled.values())).shape[0]
        pick = torch.randint(0, pool, (self.settings.unlabelled_ratio * n_labelled,), generator=self.augment_generator)
        raw = {m: t[pick].to(self.device, non_blocking=True) for m, t in self.unlabelled.items()}
        with torch.no_grad(), self.autocast():
            z = self.teacher.embed(raw)
        with torch.no_grad():
            prob = torch.softmax(self.teacher.logits(z.float()), dim=1)
            confidence, pseudo = prob.max(1)
            sure = (confidence >= self.settings.confidence).to(prob.dtype)
        self.pseudo[0] += int(sure.sum())
        self.pseudo[1] += int(sure.numel())
        strong = spectral_jitter(raw, self.stats, STRONG, self.augment_generator)
        return flip_rotate(strong, self.augment_generator), pseudo, sure

    def loss(self, b):
        """(loss, embeddings, labels) of batch ``b`` (this process's samples)."""
        from ..data.augment import SpectralJitter, flip_rotate, mix_pixels, spectral_jitter
        from ..models.mmlgnet import supervised_contrastive_loss, symmetric_contrastive_loss
        from .ddp import gather, gather_mix, gather_plain

        settings, model = self.settings, self.model
        batch = {m: t[b].to(self.device, non_blocking=True) for m, t in self.tensors.items()}
        jitter = settings.jitter or (SpectralJitter() if settings.augment else None)
        if jitter is not None:
            batch = spectral_jitter(batch, self.stats, jitter, self.augment_generator)
        if settings.augment:
            batch = flip_rotate(batch, self.augment_generator)
        mix = None
        if settings.mixup > 0:
            batch, partner, lam = mix_pixels(batch, settings.mixup, self.augment_generator)
            mix = (partner.to(self.device), lam.to(self.device))
        yb = self.y[b].to(self.device)
        strong, pseudo, sure = self._pseudo_labels(b.numel())
        if strong is not None:  # one forward pass (and batch-norm batch) for both parts
            batch = {m: torch.cat([x, strong[m]]) for m, x in batch.items()}
        n = b.numel()
        with self.autocast():
            if self.net is None:
                features = model.branch_features(batch)
                z = model.embed(batch, features)
                groups = model.group_embeddings({k: f[:n] for k, f in features.items()}) if self.group_text else {}
            else:
                z, groups = self.net(batch)
                groups = {k: g[:n] for k, g in groups.items()}
        z, groups = z.float(), {k: g.float() for k, g in groups.items()}  # the losses in float32
        z, z_u = z[:n], z[n:]
        z_all, y_all, groups_all, mix_all = z, yb, groups, mix
        if self.net is not None:  # the loss of the whole global batch, on every rank
            z_all, y_all = gather(z), gather_plain(yb)
            groups_all = {k: gather(g) for k, g in groups.items()}
            if mix is not None:
                mix_all = gather_mix(mix, n, self.ranks.rank)
        text = self.text
        if settings.loss == "clip":
            loss = symmetric_contrastive_loss(z_all, text[y_all], model.scale(), mix=mix_all)
        else:
            loss = supervised_contrastive_loss(z_all, text[y_all], y_all, model.scale(), mix=mix_all)
        if self.group_text:  # band-group prompting: each group aligned with its physics-and-class prompts
            loss = loss + sum(supervised_contrastive_loss(g, self.group_text[k][y_all], y_all, model.scale(),
                                                          mix=mix_all)
                              for k, g in groups_all.items()) / len(groups_all)
        if strong is not None:
            per_sample = F.cross_entropy(model.logits(z_u), pseudo, reduction="none")
            loss = loss + settings.unlabelled_weight * (per_sample * sure).mean()
        return loss, z, yb


def _sync_buffers(module, ranks) -> None:
    if ranks is not None:
        from .ddp import broadcast_buffers

        broadcast_buffers(module)  # rank 0's batch-norm statistics: the model every rank evaluates (and saves)


def _evaluate(model, patches, y_t, val_idx, batch_size, device, ranks):
    """(validation loss, OA), the same figures on every rank."""
    if ranks is not None:
        return _validate_shard(model, patches, y_t, val_idx, batch_size, device, ranks)
    logits = predict_patches(model, patches, val_idx, batch_size, device)
    yv = y_t[val_idx]
    return float(F.cross_entropy(logits, yv)), float((logits.argmax(1) == yv).float().mean())


def _epoch(stepper: _Stepper, optimiser, index, job: Job, epoch: int, n_epochs: int, n_batches: int,
           after_step=None):
    """One epoch over ``index``: (loss sum, correct, count, samples seen) of this process."""
    model = stepper.model
    model.train()
    total, correct, count = 0.0, 0, 0
    for bi, b in enumerate(stepper.batches(stepper.epoch_order(index))):
        job.step(((epoch - 1) + bi / n_batches) / n_epochs, f"epoch {epoch}/{n_epochs}")
        loss, z, yb = stepper.loss(b)
        if stepper.backward_step(loss, optimiser) and after_step is not None:
            after_step()
        total += float(loss.detach()) * b.numel()
        count += b.numel()
        with torch.no_grad():
            correct += int((model.logits(z).argmax(1) == yb).sum())
    return total, correct, count


def _global(values, stepper: _Stepper):
    if stepper.ranks is None:
        return values
    from .ddp import all_sum

    return all_sum(values, stepper.device)


def train(model, patches: Dict[str, np.ndarray], y: np.ndarray, settings: TrainSettings, device, job: Job,
          stats: Optional[dict] = None, group_text: Optional[dict] = None, ranks=None,
          unlabelled: Optional[Dict[str, np.ndarray]] = None) -> TrainOutcome:
    """Train ``model`` in place (its ``class_embeddings`` must be set); ``y`` holds class
    indices 0..C-1. Returns the history; the model ends with its final weights (best
    epoch, or the weight average). ``stats`` (the patches' normalisation) is what spectral
    augmentation needs. ``ranks`` (:class:`rsvl.backend.training.ddp.Ranks`, under torchrun):
    data-parallel training with the single-process batches and loss (see
    :mod:`rsvl.backend.training.ddp`); figures are global. ``unlabelled``: patches of unlabelled
    pixels of the scene for the semi-supervised loss (``settings.unlabelled_weight``; the
    one-cycle schedule with a weight average only)."""
    import functools

    from ..errors import InputError, LabelError

    if settings.schedule not in SCHEDULES:
        raise InputError(f"schedule must be one of {', '.join(SCHEDULES)} (got {settings.schedule!r})")
    tune_allocator()  # batch-sized tensors from the heap, not mmap'd per step
    _seed_everything(settings.seed)
    train_idx, val_idx = split_validation(y, settings.validation_fraction,
                                          settings.seed if settings.split_seed is None else settings.split_seed)
    if train_idx.size < 2:
        raise LabelError(f"the training set has {train_idx.size} usable pixel(s); label at least two")
    model.to(device)
    if settings.unlabelled_weight > 0 and (settings.schedule != "one-cycle" or not settings.ema):
        raise InputError("the semi-supervised loss needs the one-cycle schedule with a weight average (its teacher)")
    run = _early_stopping if settings.schedule == "early-stopping" else functools.partial(_one_cycle,
                                                                                          unlabelled=unlabelled)
    start = time.perf_counter()
    outcome = TrainOutcome(val_index=val_idx)
    seen = run(model, patches, y, settings, device, job, stats, group_text, ranks, train_idx, val_idx, outcome)
    outcome.seconds = time.perf_counter() - start
    if ranks is not None:
        from .ddp import all_sum

        seen = all_sum([seen], device)[0]  # samples of all ranks
    outcome.samples_per_s = seen / max(outcome.seconds, 1e-9)
    model.eval()
    job.report(1.0, "training finished")
    return outcome


def _early_stopping(model, patches, y, settings, device, job, stats, group_text, ranks, train_idx, val_idx,
                    outcome: TrainOutcome) -> int:
    """MMLGNet's schedule: constant-rate Adam, best validation epoch kept, early stopping."""
    stepper = _Stepper(model, settings, device, stats, group_text, ranks, patches, y)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    best_key, best_state, bad_epochs, seen = None, None, 0, 0
    n_batches = max(1, -(-train_idx.size // settings.batch_size))
    for epoch in range(1, settings.epochs + 1):
        total, correct, count = _global(list(_epoch(stepper, optimiser, train_idx, job, epoch, settings.epochs,
                                                    n_batches)), stepper)
        seen += int(count) if ranks is None else int(count) // ranks.world_size
        record = {"epoch": epoch, "train_loss": total / max(count, 1), "train_oa": correct / max(count, 1)}
        if val_idx.size:
            _sync_buffers(model, ranks)
            record["val_loss"], record["val_oa"] = _evaluate(model, patches, stepper.y, val_idx,
                                                             settings.batch_size * 4, device, ranks)
            key = (record["val_oa"], -record["val_loss"])
        else:
            key = (record["train_oa"], -record["train_loss"])
        outcome.history.append(record)
        log.debug("epoch %d: %s", epoch, ", ".join(f"{k}={v:.4f}" for k, v in record.items() if k != "epoch"))
        if best_key is None or key > best_key:
            _sync_buffers(model, ranks)
            best_key, bad_epochs = key, 0
            best_state = copy.deepcopy(model.state_dict())
            outcome.best_epoch = epoch
        else:
            bad_epochs += 1
        outcome.epochs_run = epoch
        if val_idx.size and bad_epochs >= settings.patience:
            outcome.stopped_early = True
            log.info("early stopping after %d epochs without improvement (best epoch %d)", bad_epochs, outcome.best_epoch)
            break
    model.load_state_dict(best_state)
    model.eval()
    if val_idx.size:
        _score_validation(outcome, model, patches, val_idx, settings, device)
    return seen


def _score_validation(outcome: TrainOutcome, model, patches, index, settings: TrainSettings, device) -> None:
    """The validation samples' predictions and cosine similarities, into ``outcome``."""
    logits = predict_patches(model, patches, index, settings.batch_size * 4, device)
    outcome.val_similarity = (logits / float(model.scale().detach())).numpy()
    outcome.val_pred = logits.argmax(1).numpy()


def choose_average(decays, scores, n_val: int):
    """The weight average the refit uses: ``decays[0]`` (the recipe's) unless another's
    validation OA is ahead of it by more than one standard error of its OA, sqrt(OA (1 − OA)
    / n_val), so a few validation samples choose nothing; the best such by OA, then by
    loss. ``scores``: decay → (OA, −loss)."""
    oa0 = scores[decays[0]][0]
    margin = math.sqrt(max(oa0 * (1 - oa0), 1e-12) / max(n_val, 1))
    better = [d for d in decays[1:] if scores[d][0] > oa0 + margin]
    return max(better, key=lambda d: scores[d]) if better else decays[0]


def _one_cycle(model, patches, y, settings, device, job, stats, group_text, ranks, train_idx, val_idx,
               outcome: TrainOutcome, unlabelled=None) -> int:
    """Spectral-spatial's schedule: AdamW, one-cycle rate, weight average; a validation run
    then (``refit``) a final run on every sample, from the same initial weights. With
    ``ema_choices`` the validation run keeps one weight average per decay and the refit
    uses the decay that scored best on the validation split."""
    initial = copy.deepcopy(model.state_dict())
    runs = [(train_idx, val_idx)]
    if val_idx.size and settings.refit:
        runs.append((np.arange(y.size), np.zeros(0, dtype=np.int64)))
    seen = 0
    decays = ([settings.ema] + [d for d in settings.ema_choices if d != settings.ema]) if settings.ema else [0.0]
    for i, (fit_idx, score_idx) in enumerate(runs):
        if i:
            model.load_state_dict(initial)
            log.info("refitting on all %d labelled samples (the validation figures come from the first fit)", y.size)
        span = job.span(i / len(runs), (i + 1) / len(runs))
        seen += _one_cycle_run(model, patches, y, settings, device, span, stats, group_text, ranks, fit_idx,
                               score_idx, outcome, record=i == 0, unlabelled=unlabelled,
                               decays=decays if score_idx.size else decays[:1])
        decays = [outcome.ema]
    outcome.refit = len(runs) > 1
    return seen


def _one_cycle_run(model, patches, y, settings, device, job, stats, group_text, ranks, fit_idx, score_idx,
                   outcome: TrainOutcome, record: bool, unlabelled=None, decays=(0.0,)) -> int:
    """One run of the schedule. ``decays``: the weight averages kept (0: none, the model
    itself); the first (the recipe's) is the teacher of the semi-supervised loss and the one
    the history scores; with ``score_idx`` another replaces it as the model only when its
    validation OA is ahead by more than one standard error (the best such, by OA then loss)."""
    stepper = _Stepper(model, settings, device, stats, group_text, ranks, patches, y, unlabelled)
    local = -(-fit_idx.size // ranks.world_size) if ranks is not None else fit_idx.size  # samples per epoch here
    # Steps per epoch: the last batch of an epoch is skipped when it has one sample (see _Stepper.batches).
    n_batches = max(1, local // stepper.step_size + (1 if local % stepper.step_size >= 2 else 0))
    epochs = max(settings.epochs, -(-settings.min_steps // n_batches))
    steps = n_batches * epochs
    optimiser = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, one_cycle(steps))
    averages = {d: AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(d), use_buffers=True) for d in decays if d}
    average = averages.get(decays[0])

    def after_step():
        schedule.step()
        for a in averages.values():
            a.update_parameters(model)

    final = average.module if average is not None else model
    if average is not None:
        stepper.teacher = average.module.eval()
    seen = 0
    for epoch in range(1, epochs + 1):
        total, correct, count = _global(list(_epoch(stepper, optimiser, fit_idx, job, epoch, epochs, n_batches,
                                                    after_step)), stepper)
        seen += int(count) if ranks is None else int(count) // ranks.world_size
        entry = {"epoch": epoch, "train_loss": total / max(count, 1), "train_oa": correct / max(count, 1),
                 "learning_rate": float(schedule.get_last_lr()[0])}
        if score_idx.size and (epoch == epochs or epoch % max(1, epochs // 20) == 0):
            _sync_buffers(final, ranks)
            entry["val_loss"], entry["val_oa"] = _evaluate(final, patches, stepper.y, score_idx,
                                                           settings.batch_size * 4, device, ranks)
            final.train(False)
        if record:
            outcome.history.append(entry)
        log.debug("epoch %d: %s", epoch, ", ".join(f"{k}={v:.4f}" for k, v in entry.items() if k != "epoch"))
    chosen = decays[0]
    if score_idx.size and len(decays) > 1:
        scores = {}
        for d in decays:
            candidate = averages[d].module if d else model
            _sync_buffers(candidate, ranks)
            loss, oa = _evaluate(candidate, patches, stepper.y, score_idx, settings.batch_size * 4, device, ranks)
            scores[d] = (oa, -loss)
        chosen = choose_average(decays, scores, score_idx.size)
        outcome.ema_scores = {str(d): [round(v[0], 4), round(-v[1], 4)] for d, v in scores.items()}
        log.info("weight average chosen on the validation split: decay %s (OA, loss: %s)", chosen,
                 outcome.ema_scores)
        final = averages[chosen].module if chosen else model
    outcome.ema = chosen
    _sync_buffers(final, ranks)
    if score_idx.size:
        final.eval()
        _score_validation(outcome, final, patches, score_idx, settings, device)
    if final is not model:
        model.load_state_dict(final.state_dict())
    if stepper.pseudo[1]:
        outcome.pseudo_labelled = stepper.pseudo[0] / stepper.pseudo[1]
        log.info("semi-supervised: %.0f %% of %d unlabelled samples drawn were pseudo-labelled",
                 100 * stepper.pseudo[0] / stepper.pseudo[1], stepper.pseudo[1])
    outcome.epochs_run = outcome.best_epoch = epochs
    return seen
