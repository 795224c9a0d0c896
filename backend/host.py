"""rsvl as a guest in a GUI application's process (the QGIS plugin calls :func:`embed`).

Desktop QGIS loads Mesa's OpenGL, and with it Mesa's LLVM (``libLLVM-15.so``). ``triton``
brings its own LLVM (``triton/_C/libtriton.so``); loading both crashes QGIS with a
segmentation fault in LLVM's static initialisers. Nothing in rsvl compiles code, yet
triton is imported all the same: torch's optimisers import ``torch._dynamo`` on first use
(``torch._disable_dynamo``), ``torch._dynamo`` imports ``triton`` to see whether it is
installed, and transformers imports ``torch._dynamo`` at import time. So a host process:

- marks ``triton`` as not importable (``sys.modules["triton"] = None``): ``import triton``
  raises ImportError and ``importlib.util.find_spec("triton")`` returns None, which torch
  and transformers treat as "triton is not installed". Its LLVM is never loaded. A process
  that has already imported triton keeps it, and ``RSVL_ALLOW_TRITON=1`` leaves triton
  alone (for hosts whose OpenGL is not Mesa's and that compile with triton themselves);
- runs text encoders in a child process (:mod:`rsvl.backend.textworker`), so transformers,
  open_clip and what they import are never loaded into the host.

What remains in the host is eager PyTorch: classification and queries import neither
``torch._dynamo`` nor triton; training imports ``torch._dynamo`` (torch's own optimiser
does) but not triton.
"""

from __future__ import annotations

import os
import sys


def embed() -> None:
    """Prepare this process for rsvl as a guest of a GUI application. Idempotent."""
    from .text import run_encoders_in_worker

    if os.environ.get("RSVL_ALLOW_TRITON") != "1" and "triton" not in sys.modules:
        sys.modules["triton"] = None
    run_encoders_in_worker()
