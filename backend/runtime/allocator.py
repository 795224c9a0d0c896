"""glibc's allocator, set for large tensors: :func:`tune_allocator`.

glibc serves a block over its mmap threshold with a fresh ``mmap`` and returns it with
``munmap`` when freed, and gives the top of the heap back to the system past its trim
threshold. Both start low (128 KiB) and only rise as blocks are freed, so a process that
allocates and frees tensors of a few MiB per window — every dense-engine window, every
training batch — page-faults its way through fresh zeroed memory again and again. On the
2-core test machine the dense engine ran 1.35–1.45× slower in a fresh process than once
the thresholds were up (float32 95 → 65 ms per 128 × 128 window; bfloat16 48 → 36 ms;
docs/experiments/022). Dask's nanny makes it worse still (``MALLOC_TRIM_THRESHOLD_=65536``).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("rsvl")
MMAP_THRESHOLD = 32 * 2**20  # glibc's own ceiling for its dynamic mmap threshold (64-bit)
TRIM_THRESHOLD = 64 * 2**20  # free memory kept at the top of the heap before giving it back
_DONE = [None]  # None: not tried yet in this process; else whether the thresholds are set


def tune_allocator(force: bool = False) -> bool:
    """Set glibc's mmap threshold to 32 MiB and its trim threshold to 64 MiB in this process
    (tried once): large blocks are reused from the heap, not mapped and unmapped per window.
    Left alone where the user set ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or a
    ``glibc.malloc`` tunable in ``GLIBC_TUNABLES`` (``force``: set all the same, as Dask
    workers do against their nanny's setting), and on other C libraries (no ``mallopt``, or
    one that refuses). Returns whether the thresholds are set."""
    if _DONE[0] is not None and not force:
        return _DONE[0]
    user = any(os.environ.get(k) for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")) or \
        "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")
    if user and not force:
        _DONE[0] = False
        return False
    import ctypes
    import ctypes.util

    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (macOS, Windows)
        _DONE[0] = False
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's <malloc.h>
    _DONE[0] = bool(mallopt(m_mmap_threshold, MMAP_THRESHOLD) and mallopt(m_trim_threshold, TRIM_THRESHOLD))
    if _DONE[0]:
        log.debug("glibc malloc thresholds set for large tensors (mmap %d MiB, trim %d MiB)",
                  MMAP_THRESHOLD >> 20, TRIM_THRESHOLD >> 20)
    return _DONE[0]
