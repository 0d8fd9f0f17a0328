"""Progress of a long step, as people read it: how far, how fast, and how long is left.

    validation tree: 12,000 of 50,000 images (24%), 3,150 images/s, about 12 s left

Steps call :meth:`Progress.update` as often as they like (per image is fine); a line is reported
at most every ``interval`` seconds, and always at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def format_duration(seconds: float) -> str:
    """``75`` -> ``'1 min 15 s'``; ``7300`` -> ``'2 h 01 min'``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
    """Reports ``done`` of ``total`` ``unit`` through ``log``, with the rate and time left.

    ``scale`` divides the counts for display (1e6 with ``unit="MB"`` for byte counts).
    """

    def __init__(
        self,
        what: str,
        total: int,
        unit: str,
        log: Callable[[str], None],
        interval: float = 5.0,
        scale: float = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what, self.total, self.unit, self.log = what, total, unit, log
        self.interval, self.scale, self.clock = interval, scale, clock
        self.started = self.last = clock()
        self.done = 0

    def update(self, done: int) -> None:
        """Record that ``done`` units are finished; report if it is time (or the end)."""
        self.done = done
        now = self.clock()
        if done >= self.total or now - self.last >= self.interval:
            self.last = now
            self.log(self.message(now))

    def message(self, now: float | None = None) -> str:
        elapsed = max((self.clock() if now is None else now) - self.started, 1e-9)
        rate = self.done / elapsed
        shown = self._count(self.done)
        if self.total:
            text = f"{self.what}: {shown} of {self._count(self.total)} {self.unit} ({100 * self.done // self.total}%)"
        else:
            text = f"{self.what}: {shown} {self.unit}"
        text += f", {self._count(rate)} {self.unit}/s"
        if self.done >= self.total:
            return text + f", done in {format_duration(elapsed)}"
        if rate > 0:
            text += f", about {format_duration((self.total - self.done) / rate)} left"
        return text

    def _count(self, n: float) -> str:
        return f"{n / self.scale:,.1f}" if self.scale != 1 else f"{n:,.0f}"
