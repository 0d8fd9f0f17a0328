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

    ``scale`` divides the counts for display (1e6 with ``unit="MB"`` for byte counts). ``total``
    may be None (unknown: no percentage or time left). ``start`` is what was already done before
    this run (a resumed download), which does not count towards the rate.
    """

    def __init__(
        self,
        what: str,
        total: int | None,
        unit: str,
        log: Callable[[str], None],
        interval: float = 5.0,
        scale: float = 1,
        clock: Callable[[], float] = time.monotonic,
        start: int = 0,
    ) -> None:
        self.what, self.total, self.unit, self.log = what, total, unit, log
        self.interval, self.scale, self.clock = interval, scale, clock
        self.started = self.last = clock()
        self.start = self.done = start
        self.ended = False

    def update(self, done: int) -> None:
        """Record that ``done`` units are finished; report if it is time (or the end)."""
        if self.ended:
            return  # the end was reported already
        self.done = done
        now = self.clock()
        if self.finished or now - self.last >= self.interval:
            self.last = now
            self.ended = self.finished
            self.log(self.message(now))

    @property
    def finished(self) -> bool:
        return bool(self.total) and self.done >= self.total

    def message(self, now: float | None = None) -> str:
        elapsed = max((self.clock() if now is None else now) - self.started, 1e-9)
        rate = (self.done - self.start) / elapsed
        shown = self._count(self.done)
        if self.total:
            text = f"{self.what}: {shown} of {self._count(self.total)} {self.unit} ({100 * self.done // self.total}%)"
        else:
            text = f"{self.what}: {shown} {self.unit}"
        text += f", {self._count(rate)} {self.unit}/s"
        if self.finished:
            return text + f", done in {format_duration(elapsed)}"
        if self.total and rate > 0:
            text += f", about {format_duration((self.total - self.done) / rate)} left"
        return text

    def _count(self, n: float) -> str:
        return f"{n / self.scale:,.1f}" if self.scale != 1 else f"{n:,.0f}"


def reporter(
    what: str, unit: str, log: Callable[[str], None], scale: float = 1, resumed: bool = False
) -> Callable[[int, int | None], None]:
    """A ``progress(done, total)`` callback for library functions that learn the total as they go.

    With ``resumed``, what is done at the first call was done before (a resumed download) and does
    not count towards the rate.
    """
    progress: list[Progress] = []

    def report(done: int, total: int | None) -> None:
        if not progress:
            progress.append(Progress(what, total, unit, log, scale=scale, start=done if resumed else 0))
        progress[0].total = total
        progress[0].update(done)

    return report
