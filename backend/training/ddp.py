"""Data-parallel training under torchrun: ``torchrun --nproc_per_node N -m rsvl.backend train … --distributed``.

torchrun starts one process per rank and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and
the rendezvous address; :func:`start` joins the process group (gloo on the CPU, nccl on
CUDA with one GPU per local rank). The training loop (:func:`rsvl.backend.training.loop.train`)
then keeps the single-process semantics:

- every rank reads the same inputs and draws the same epoch order from the seed; torch's
  ``DistributedSampler`` (no shuffling of its own) deals that order out, so each global
  batch holds the single-process batch's ``BATCH_SIZE`` samples, ``BATCH_SIZE / N`` per
  rank (the epoch's last batch is padded with at most N - 1 repeated samples);
- the contrastive loss is that of the whole global batch: embeddings are all-gathered
  (:func:`gather`; gradients flow back to the rank that computed them) and
  ``DistributedDataParallel`` averages the parameter gradients, which then equal the
  single-process gradients of the same batch. Batch-norm statistics are each rank's own
  (``BATCH_SIZE / N`` samples): the one difference from a single process;
- validation is split between the ranks and summed, so early stopping sees the same
  figures on every rank; rank 0 alone writes the model file and the report.
"""

from __future__ import annotations

import atexit
import logging
import os
from dataclasses import dataclass
from typing import List, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from ..errors import InputError

log = logging.getLogger("rsvl")
TORCHRUN_HINT = "torchrun --nproc_per_node N -m rsvl.backend train … --distributed"


@dataclass
class Ranks:
    """This process's place in the process group."""

    rank: int
    world_size: int
    local_rank: int
    device: object  # torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def start(device: str = "auto") -> Ranks:
    """Join torchrun's process group; the device of this rank (``cuda:LOCAL_RANK`` on GPUs)."""
    from ..runtime.device import resolve_device

    missing = [v for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise InputError(f"--distributed runs under torchrun ({TORCHRUN_HINT}); {', '.join(missing)} not set")
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, device_id=dev if dev.type == "cuda" else None)
        atexit.register(stop)
    log.info("rank %d of %d on %s (%s)", rank, world, dev, backend)
    return Ranks(rank, world, local, dev, backend)


def stop() -> None:
    """Leave the process group (idempotent). The fallback at exit; after a run that went
    well, :func:`finish` leaves it together with the other ranks."""
    if dist.is_initialized():
        dist.destroy_process_group()


def finish() -> None:
    """Wait for every rank, then leave the process group. Without the barrier a rank that
    is done first tears gloo's connections down while a peer still uses them (rank 0
    writing the model), and gloo aborts the process ("terminate called without an active
    exception", about one run in four on 2 cores). Only after success: a rank that
    failed must not wait for peers stuck in another collective."""
    if dist.is_initialized():
        dist.barrier()
    stop()


def check_batch_size(batch_size: int, world_size: int) -> None:
    if batch_size % world_size or batch_size // world_size < 2:
        raise InputError(f"BATCH_SIZE {batch_size} must split evenly into at least 2 samples per process over "
                         f"{world_size} processes (e.g. {max(2, -(-batch_size // world_size)) * world_size})")


def rank_order(order: np.ndarray, ranks: Ranks) -> np.ndarray:
    """This rank's share of the epoch order, dealt out by ``DistributedSampler``: its local
    batch ``i`` and the other ranks' make up the order's global batch ``i``."""
    sampler = DistributedSampler(range(len(order)), num_replicas=ranks.world_size, rank=ranks.rank, shuffle=False)
    return np.asarray(order)[list(sampler)]


class _Gather(torch.autograd.Function):
    """All-gather along the batch dimension with gradients: backward sums the gradient of
    every rank's copy of the gathered batch and hands this rank its own slice."""

    @staticmethod
    def forward(ctx, local):
        parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, local.contiguous())
        ctx.rank, ctx.n = dist.get_rank(), local.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def gather(x: torch.Tensor) -> torch.Tensor:
    """(n, …) on each rank → (world · n, …) in rank order, differentiable (see :class:`_Gather`)."""
    return _Gather.apply(x)


def gather_plain(x):
    """All-gather without gradients (labels)."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def gather_mix(mix, n_local: int, rank: int):
    """A mixup batch's ``(partner, lam)`` of every rank, in rank order: each rank's
    partners are its own samples, at ``rank · n_local`` onwards in the gathered batch."""
    partner, lam = mix
    return gather_plain(partner + rank * n_local), gather_plain(lam)


def all_sum(values: Sequence[float], device) -> List[float]:
    """Sums of ``values`` over the ranks (float64)."""
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_buffers(module) -> None:
    """Rank 0's batch-norm running statistics on every rank (before validating)."""
    for b in module.buffers():
        dist.broadcast(b, 0)
