"""Progress of long work on stderr (torch-free).

On a terminal one line is redrawn in place, at most every `tty_every` seconds; anywhere else (a
log file, a pipe, CI) one plain line is written every `every` seconds (10), so a 30 s video or
a large eval set says how far it is without flooding a log.

    progress = Progress("predict", unit="frames", total=None)
    for i, frame in enumerate(frames, 1):
        ...
        progress.update(i)
    progress.close()
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Optional, TextIO

__all__ = ["Progress"]


class Progress:
    """Reports `done` (of `total` when known) `unit` and the rate.

    Args:
        what: the command or stage, first on the line.
        unit: what is counted ("frames", "images", "batches").
        total: the count at the end, when known (a percentage is shown).
        stream: where the lines go (stderr).
        tty: redraw in place; None: when `stream` is a terminal.
        every: seconds between plain lines.
        clock: seconds, monotonic (tests pass their own).
    """

    def __init__(
        self,
        what: str,
        unit: str,
        total: Optional[int] = None,
        stream: Optional[TextIO] = None,
        tty: Optional[bool] = None,
        every: float = 10.0,
        tty_every: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what, self.unit, self.total = what, unit, total
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)()) if tty is None else tty
        self.every = tty_every if self.tty else every
        self.clock = clock
        self.start = self.last = clock()
        self.done = 0
        self._drawn = False

    def line(self) -> str:
        """`what: done/total unit (p %), rate unit/s, elapsed s`."""
        elapsed = max(self.clock() - self.start, 1e-9)
        count = f"{self.done}/{self.total}" if self.total else f"{self.done}"
        pct = f" ({100.0 * self.done / self.total:.0f} %)" if self.total else ""
        return (f"{self.what}: {count} {self.unit}{pct}, {self.done / elapsed:.1f} {self.unit}/s, "
                f"{elapsed:.0f} s")

    def update(self, done: int) -> None:
        self.done = done
        now = self.clock()
        if now - self.last < self.every:
            return
        self.last = now
        if self.tty:
            self.stream.write("\r" + self.line() + "\x1b[K")
            self._drawn = True
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the redrawn line on a terminal (plain lines need nothing)."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
