"""Device selection: ``auto`` takes CUDA when torch sees a GPU, else the CPU."""

from __future__ import annotations

import logging

from .errors import InputError

log = logging.getLogger("rsvl")

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto"):
    import torch

    name = (name or "auto").lower()
    if name not in DEVICES and not name.startswith("cuda:"):
        raise InputError(f"DEVICE must be one of {', '.join(DEVICES)} (got {name!r})")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        log.info("DEVICE=auto: torch sees no CUDA GPU here, running on the CPU")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("DEVICE is 'cuda' but torch sees no CUDA GPU here: use 'auto' or 'cpu'")
    return torch.device(name)
