"""MMLGNet training loop: Adam, symmetric image-text contrastive loss, early stopping on
a held-out, class-stratified validation split, best weights kept."""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from .jobs import Job

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
    # Generalisation (issue 11, backend/augment.py): spectral gain/offset jitter plus flips
    # and 90-degree rotations of the training patches; class-balanced epochs.
    augment: bool = False
    balanced: bool = False


@dataclass
class TrainOutcome:
    history: List[dict] = field(default_factory=list)
    best_epoch: int = 0
    epochs_run: int = 0
    seconds: float = 0.0
    samples_per_s: float = 0.0
    val_index: Optional[np.ndarray] = None
    val_pred: Optional[np.ndarray] = None
    stopped_early: bool = False


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

    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def predict_patches(model, patches: Dict[str, object], index: np.ndarray, batch_size: int, device):
    """Class logits of the per-patch path for samples ``index`` (eval mode, no grad)."""
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for s in range(0, index.size, max(batch_size, 1)):
            b = index[s:s + batch_size]
            z = model.embed({m: torch.from_numpy(p[b]).to(device) for m, p in patches.items()})
            out.append(model.logits(z).cpu())
    return torch.cat(out) if out else torch.zeros(0, model.class_embeddings.shape[0])


def _batch_embedder(model, groups: bool):
    """The part of a training step that DistributedDataParallel wraps (its ``forward`` is
    what DDP hooks): a batch → (embeddings, band-group embeddings)."""
    import torch

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
    import torch.nn.functional as F

    from .ddp import all_sum, broadcast_buffers

    broadcast_buffers(model)  # rank 0's batch-norm statistics: the model every rank evaluates (and saves)
    shard = np.array_split(val_idx, ranks.world_size)[ranks.rank]
    logits = predict_patches(model, patches, shard, batch_size, device)
    yv = y_t[shard]
    loss_sum, correct = all_sum([float(F.cross_entropy(logits, yv, reduction="sum")) if shard.size else 0.0,
                                 float((logits.argmax(1) == yv).sum())], device)
    return loss_sum / val_idx.size, correct / val_idx.size


def train(model, patches: Dict[str, np.ndarray], y: np.ndarray, settings: TrainSettings, device, job: Job,
          stats: Optional[dict] = None, group_text: Optional[dict] = None, ranks=None) -> TrainOutcome:
    """Train ``model`` in place (its ``class_embeddings`` must be set); ``y`` holds class
    indices 0..C-1. Returns the history; the model ends with its best weights. ``stats``
    (the patches' normalisation) is what spectral augmentation needs. ``ranks``
    (:class:`rsvl.backend.ddp.Ranks`, under torchrun): data-parallel training with the
    single-process batches and loss (see :mod:`rsvl.backend.ddp`); figures are global."""
    import torch
    import torch.nn.functional as F

    from .augment import SpectralJitter, balanced_order, flip_rotate, spectral_jitter
    from .mmlgnet import supervised_contrastive_loss, symmetric_contrastive_loss

    _seed_everything(settings.seed)
    train_idx, val_idx = split_validation(y, settings.validation_fraction, settings.seed)
    if train_idx.size < 2:
        from .errors import LabelError

        raise LabelError(f"the training set has {train_idx.size} usable pixel(s); label at least two")
    model.to(device)
    text = model.class_embeddings.to(device)
    group_text = {k: v.to(device) for k, v in (group_text or {}).items()}
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    generator = torch.Generator().manual_seed(settings.seed)
    augment_generator, step, net = generator, settings.batch_size, None
    if ranks is not None:
        from torch.nn.parallel import DistributedDataParallel

        from .ddp import all_sum, check_batch_size, gather, gather_plain, rank_order

        check_batch_size(settings.batch_size, ranks.world_size)
        step = settings.batch_size // ranks.world_size  # this rank's part of each global batch
        net = DistributedDataParallel(_batch_embedder(model, bool(group_text)),
                                      device_ids=[device] if device.type == "cuda" else None)
        # The epoch order comes from ``generator`` on every rank alike; augmentation draws differ per rank.
        augment_generator = torch.Generator().manual_seed(settings.seed + 7919 * (ranks.rank + 1))
    tensors = {m: torch.from_numpy(p) for m, p in patches.items()}
    y_t = torch.from_numpy(y)
    outcome = TrainOutcome(val_index=val_idx)
    best_key, best_state, bad_epochs = None, None, 0
    start = time.perf_counter()
    seen = 0
    n_batches = max(1, -(-train_idx.size // settings.batch_size))
    for epoch in range(1, settings.epochs + 1):
        model.train()
        order = torch.from_numpy(train_idx)[torch.randperm(train_idx.size, generator=generator)]
        if settings.balanced:
            order = torch.from_numpy(balanced_order(y, train_idx, generator))
        if ranks is not None:
            order = torch.from_numpy(rank_order(order.numpy(), ranks))
        total, correct, count = 0.0, 0, 0
        for bi, s in enumerate(range(0, order.numel(), step)):
            job.step(((epoch - 1) + bi / n_batches) / settings.epochs, f"epoch {epoch}/{settings.epochs}")
            b = order[s:s + step]
            if b.numel() < 2:  # batch norm needs two samples (every rank has the same count)
                continue
            batch = {m: t[b].to(device, non_blocking=True) for m, t in tensors.items()}
            if settings.augment:
                batch = flip_rotate(spectral_jitter(batch, stats or {}, SpectralJitter(), augment_generator),
                                    augment_generator)
            yb = y_t[b].to(device)
            if net is None:
                features = model.branch_features(batch)
                z = model.embed(batch, features)
                groups = model.group_embeddings(features) if group_text else {}
                z_all, y_all, groups_all = z, yb, groups
            else:  # the loss of the whole global batch, on every rank
                z, groups = net(batch)
                z_all, y_all = gather(z), gather_plain(yb)
                groups_all = {k: gather(g) for k, g in groups.items()}
            if settings.loss == "clip":
                loss = symmetric_contrastive_loss(z_all, text[y_all], model.scale())
            else:
                loss = supervised_contrastive_loss(z_all, text[y_all], y_all, model.scale())
            if group_text:  # band-group prompting: each group aligned with its physics-and-class prompts
                loss = loss + sum(supervised_contrastive_loss(g, group_text[k][y_all], y_all, model.scale())
                                  for k, g in groups_all.items()) / len(groups_all)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * b.numel()
            count += b.numel()
            with torch.no_grad():
                correct += int((model.logits(z).argmax(1) == yb).sum())
            seen += b.numel()
        if ranks is not None:
            total, correct, count = all_sum([total, correct, count], device)
        record = {"epoch": epoch, "train_loss": total / max(count, 1), "train_oa": correct / max(count, 1)}
        if val_idx.size and ranks is not None:
            record["val_loss"], record["val_oa"] = _validate_shard(model, patches, y_t, val_idx,
                                                                   settings.batch_size * 4, device, ranks)
            key = (record["val_oa"], -record["val_loss"])
        elif val_idx.size:
            logits = predict_patches(model, patches, val_idx, settings.batch_size * 4, device)
            yv = y_t[val_idx]
            record["val_loss"] = float(F.cross_entropy(logits, yv))
            record["val_oa"] = float((logits.argmax(1) == yv).float().mean())
            key = (record["val_oa"], -record["val_loss"])
        else:
            key = (record["train_oa"], -record["train_loss"])
        outcome.history.append(record)
        log.debug("epoch %d: %s", epoch, ", ".join(f"{k}={v:.4f}" for k, v in record.items() if k != "epoch"))
        if best_key is None or key > best_key:
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
    outcome.seconds = time.perf_counter() - start
    if ranks is not None:
        seen = all_sum([seen], device)[0]  # samples of all ranks
    outcome.samples_per_s = seen / max(outcome.seconds, 1e-9)
    model.load_state_dict(best_state)
    model.eval()
    if val_idx.size:
        outcome.val_pred = predict_patches(model, patches, val_idx, settings.batch_size * 4, device).argmax(1).numpy()
    job.report(1.0, "training finished")
    return outcome
