"""The precision maps are computed in: ``PRECISION`` / ``--precision`` = ``auto`` (default),
``float32``, ``bfloat16`` or ``float16`` (GPU).

``auto`` takes bfloat16 only where the device multiplies bfloat16 natively — a CUDA GPU of
compute capability 8.0 or newer, or a CPU with AMX (``amx_bf16``) or AVX-512-BF16
(``avx512_bf16``) in its flags (``/proc/cpuinfo``; elsewhere torch's own CPU checks) —
**and** the model passes :func:`agreement` on the scene (the class map of a probe window
agrees with float32 on at least 99.9 % of its pixels and the confidence moves by at most
0.01 at the 99.9th percentile); float32 everywhere else. Training (:func:`choose_training`)
has no model to check yet: ``auto`` trains in bfloat16 wherever the device has it natively.
On CUDA, TF32 is turned off (:func:`exact_float32_on_cuda`). The log says which was chosen
and why. ``RSVL_PRECISION`` (e.g. ``float32``) stands for ``auto``
where it is set: runs that must be bit-identical across machines set it.

Reduced precision casts the dense engine's folded weights once and runs its convolutions in
that type; the sum of the heads, the normalisation and the cosine similarity stay float32.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import numpy as np

from ..errors import InputError

log = logging.getLogger("rsvl")
PRECISIONS = ("auto", "float32", "bfloat16", "float16")
SAME_CLASS = 0.999  # share of the probe's pixels whose class must not change
CONFIDENCE = 0.01  # the 99.9th percentile of the confidence's change


def cpu_flags() -> set:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bfloat16(device) -> Tuple[bool, str]:
    """Whether ``device`` multiplies bfloat16 matrices natively, and why (in words)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        ok = major >= 8
        return ok, f"CUDA compute capability {major}.{minor} ({'>=' if ok else '<'} 8.0)"
    flags = cpu_flags()
    units = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
    if not flags:  # no /proc/cpuinfo (Windows, macOS): torch's own checks of the CPU
        probes = (("amx_bf16", "_is_amx_tile_supported"), ("avx512_bf16", "_is_avx512_bf16_supported"))
        units = [f for f, probe in probes if getattr(torch.cpu, probe, lambda: False)()]
    if units:
        return True, f"the CPU has {' and '.join(units)}"
    return False, "the CPU has neither AMX nor AVX-512-BF16 (bfloat16 would be emulated, slower than float32)"


def _asked(precision: Optional[str], device) -> Tuple[str, str]:
    """(the precision asked, checked; " (RSVL_PRECISION)" where the environment gave it for auto)."""
    import torch

    precision, source = (precision or "auto").strip().lower(), ""
    if precision == "auto" and os.environ.get("RSVL_PRECISION", "").strip():
        precision, source = os.environ["RSVL_PRECISION"].strip().lower(), " (RSVL_PRECISION)"
    if precision not in PRECISIONS:
        raise InputError(f"PRECISION must be one of {', '.join(PRECISIONS)} (got {precision!r})")
    if precision == "float16" and torch.device(device).type != "cuda":
        raise InputError("PRECISION float16 is for CUDA GPUs; on a CPU use bfloat16 or float32")
    return precision, source


def torch_dtype(name: str):
    """The torch dtype of a precision's name (float32, bfloat16, float16)."""
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


@dataclass
class Choice:
    dtype: object  # torch.dtype
    name: str
    reason: str


def choose(precision: Optional[str], device, check: Optional[Callable[[object], Tuple[bool, str]]] = None) -> Choice:
    """The precision to compute in: ``precision`` as asked, or for ``auto`` bfloat16 where
    :func:`native_bfloat16` and ``check(torch.bfloat16)`` (a model's agreement with float32)
    both say yes. Logs the choice and its reason."""
    import torch

    precision, why_env = _asked(precision, device)
    exact_float32_on_cuda(device)  # before the check: its reference is float32's map
    if precision != "auto":
        choice = Choice(torch_dtype(precision), precision, f"asked{why_env}")
        if precision != "float32" and check is not None:
            ok, detail = check(choice.dtype)
            if not ok:
                log.warning("PRECISION %s: %s; the map may differ from float32's", precision, detail)
    else:
        native, why = native_bfloat16(device)
        if not native:
            choice = Choice(torch.float32, "float32", f"auto: {why}")
        elif check is None:
            choice = Choice(torch.bfloat16, "bfloat16", f"auto: {why}")
        else:
            ok, detail = check(torch.bfloat16)
            choice = Choice(torch.bfloat16, "bfloat16", f"auto: {why}; {detail}") if ok else \
                Choice(torch.float32, "float32", f"auto: {why}, but {detail}: float32 kept")
    log.info("precision %s (%s)", choice.name, choice.reason)
    return choice


# Whether ``auto`` trains in bfloat16 where the device has it natively: yes, since the
# accuracy bench's rows trained in bfloat16 stay within the seeds' noise of float32's
# (docs/experiments/022, bench/accuracy_bf16_training.json).
TRAIN_AUTO_REDUCED = True


def choose_training(precision: Optional[str], device) -> Choice:
    """The precision of a training run's forward pass (autocast; the losses, the optimiser
    and the weights stay float32). ``auto``: bfloat16 where the device has it natively (and
    :data:`TRAIN_AUTO_REDUCED`), else float32; ``bfloat16`` on a CPU without it runs emulated (slower) with
    a warning. Logs the choice and its reason."""
    import torch

    precision, source = _asked(precision, device)
    exact_float32_on_cuda(device)
    native, why = native_bfloat16(device)
    if precision == "auto":
        if native and TRAIN_AUTO_REDUCED:
            choice = Choice(torch.bfloat16, "bfloat16", f"auto: {why}")
        elif native:
            choice = Choice(torch.float32, "float32", f"auto: {why}, but bfloat16 training is not the default")
        else:
            choice = Choice(torch.float32, "float32", f"auto: {why}")
    else:
        if precision == "bfloat16" and not native:
            log.warning("PRECISION bfloat16: %s; training will be slower than in float32", why)
        choice = Choice(torch_dtype(precision), precision, f"asked{source}")
    log.info("training precision %s (%s)", choice.name, choice.reason)
    return choice


def exact_float32_on_cuda(device) -> None:
    """On a CUDA device, make float32 mean float32, as on a CPU: TF32 off for matrix products
    and cuDNN's convolutions (``torch.backends.cuda.matmul.allow_tf32`` and
    ``torch.backends.cudnn.allow_tf32``; cuDNN's is on by default). Set before a precision
    check (its reference is the float32 map) and kept for the run: a reduced-precision run's
    float32 parts (sums, normalisation, text scores, losses) are then exact too. The older
    flags, not torch 2.9's ``fp32_precision``: after the new API is set torch refuses to
    read the old flags, which other code in the process (QGIS plugins, transformers) may
    still do. Nothing on other devices."""
    import torch

    if torch.device(device).type != "cuda":
        return
    if torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        log.info("CUDA: TF32 off for matrix products and convolutions (float32 means float32)")


def agreement(reference: np.ndarray, reduced: np.ndarray, scale: float) -> Tuple[bool, str]:
    """Whether similarities ``reduced`` (K, N) give float32's ``reference`` (K, N) class map
    and confidences: (ok, the figures in words)."""
    same = float((reference.argmax(0) == reduced.argmax(0)).mean()) if reference.size else 1.0

    def confidence(sim):
        z = scale * (sim - sim.max(axis=0, keepdims=True))
        return 1.0 / np.exp(z).sum(axis=0)

    moved = float(np.quantile(np.abs(confidence(reference) - confidence(reduced)), 0.999)) if reference.size else 0.0
    ok = same >= SAME_CLASS and moved <= CONFIDENCE
    return ok, (f"the class map agrees with float32 on {same:.2%} of a probe window's pixels and the confidence "
                f"moves by {moved:.4f} (limits {SAME_CLASS:.1%}, {CONFIDENCE})")
