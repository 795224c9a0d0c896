"""Device selection: ``auto`` takes CUDA when torch sees a GPU, else the CPU."""

from __future__ import annotations

import logging

from ..errors import InputError

log = logging.getLogger("rsvl")

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto"):
    import torch

    name = (name or "auto").lower()
    if name not in DEVICES and not name.startswith("cuda:"):
        raise InputError(f"DEVICE must be one of {', '.join(DEVICES)} (got {name!r})")
    if name == "auto":
        if torch.cuda.is_available():
            log.info("DEVICE=auto: CUDA GPU %s (torch %s, CUDA %s)", torch.cuda.get_device_name(0),
                     torch.__version__, torch.version.cuda)
            return torch.device("cuda")
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        log.info("DEVICE=auto: torch sees no CUDA GPU here, running on the CPU (torch %s, %s)", torch.__version__,
                 build)
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("DEVICE is 'cuda' but torch sees no CUDA GPU here: use 'auto' or 'cpu'")
    return torch.device(name)
