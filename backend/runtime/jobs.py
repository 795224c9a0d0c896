"""Progress and cancel callbacks shared by every long-running backend job."""

from __future__ import annotations

import logging
from typing import Callable, Optional

from ..errors import CancelledError

Progress = Callable[[float, str], None]
IsCancelled = Callable[[], bool]

log = logging.getLogger("rsvl")


class Job:
    """Bundles the two callbacks and maps sub-steps onto a [start, end] progress span."""

    def __init__(
        self,
        progress: Optional[Progress] = None,
        is_cancelled: Optional[IsCancelled] = None,
        start: float = 0.0,
        end: float = 1.0,
    ):
        self._progress = progress
        self._is_cancelled = is_cancelled
        self.start = start
        self.end = end

    def report(self, fraction: float, message: str = "") -> None:
        if self._progress is not None:
            fraction = min(max(fraction, 0.0), 1.0)
            self._progress(self.start + (self.end - self.start) * fraction, message)

    def check(self) -> None:
        """Raise :class:`CancelledError` when the user asked to stop."""
        if self._is_cancelled is not None and self._is_cancelled():
            raise CancelledError("cancelled by the user; no output was written")

    def step(self, fraction: float, message: str = "") -> None:
        self.check()
        self.report(fraction, message)

    def span(self, start: float, end: float) -> Job:
        """A child job whose 0..1 maps onto [start, end] of this one."""
        width = self.end - self.start
        return Job(self._progress, self._is_cancelled, self.start + width * start, self.start + width * end)
