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
- runs text encoders in a child process (:mod:`rsvl.backend.text.worker`), so transformers,
  open_clip and what they import are never loaded into the host;
- imports torch with ``RTLD_DEEPBIND`` (Linux), so that torch's matrix products use the
  MKL torch carries rather than the host's global BLAS (see :class:`_DeepBindTorch`).

What remains in the host is eager PyTorch: classification and queries import neither
``torch._dynamo`` nor triton; training imports ``torch._dynamo`` (torch's own optimiser
does) but not triton.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys


def embed() -> None:
    """Prepare this process for rsvl as a guest of a GUI application. Idempotent."""
    from ..text.encoders import run_encoders_in_worker

    if os.environ.get("RSVL_ALLOW_TRITON") != "1" and "triton" not in sys.modules:
        sys.modules["triton"] = None
    run_encoders_in_worker()
    if hasattr(os, "RTLD_DEEPBIND") and os.environ.get("RSVL_TORCH_DEEPBIND", "1") == "1" \
            and "torch" not in sys.modules and not any(isinstance(f, _DeepBindTorch) for f in sys.meta_path):
        sys.meta_path.insert(0, _DeepBindTorch())


class _DeepBindTorch(importlib.abc.MetaPathFinder):
    """Imports torch with ``RTLD_DEEPBIND`` so that its libraries call their own symbols.

    QGIS links the system BLAS (OpenBLAS on Debian) and loads it into the global symbol
    scope at start. torch's ``libtorch_cpu`` exports the ``sgemm_`` of the MKL it carries
    and calls it through the dynamic linker, which then binds it to QGIS's OpenBLAS: inside
    QGIS torch's matrix products ran on OpenBLAS and its threads, which spun beside
    torch's OpenMP threads (training 2-5x slower than the command line) and gave other
    numbers (a different validation accuracy for the same seed). Loaded with
    ``RTLD_DEEPBIND``, torch binds its own symbols first, as in a plain Python process.
    ``RSVL_TORCH_DEEPBIND=0`` switches this off."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torch" or "torch" in sys.modules:
            return None
        # Find the real spec without us. We stay on the path until torch is imported: a
        # look-up that imports nothing (rsvl's dependency check) must not use us up.
        index = sys.meta_path.index(self)
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(index, self)
        if spec is not None and spec.loader is not None:
            spec.loader = _DeepBindLoader(spec.loader)
        return spec


class _DeepBindLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        flags = sys.getdlopenflags()
        sys.setdlopenflags(flags | os.RTLD_DEEPBIND)
        try:
            self.loader.exec_module(module)
        finally:
            sys.setdlopenflags(flags)
