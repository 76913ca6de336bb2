"""Progress on long work: plain lines every 10 s off a terminal, one redrawn line on one."""

from __future__ import annotations

import io
from typing import List

from grefel.progress import Progress


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _run(times: List[float], tty: bool, total: int = 0) -> str:
    clock, stream = _Clock(), io.StringIO()
    progress = Progress("predict", "frames", total=total or None, stream=stream, tty=tty,
                        clock=clock)
    for done, t in enumerate(times, 1):
        clock.now = t
        progress.update(done)
    progress.close()
    return stream.getvalue()


def test_plain_lines_every_ten_seconds() -> None:
    text = _run([1, 5, 10, 12, 19, 21, 33], tty=False)
    assert text.splitlines() == ["predict: 3 frames, 0.3 frames/s, 10 s",
                                 "predict: 6 frames, 0.3 frames/s, 21 s",
                                 "predict: 7 frames, 0.2 frames/s, 33 s"]


def test_on_a_terminal_one_line_redrawn_with_a_percentage() -> None:
    text = _run([0.1, 0.3, 0.4, 0.6], tty=True, total=4)
    assert text == ("\rpredict: 2/4 frames (50 %), 6.7 frames/s, 0 s\x1b[K"
                    "\rpredict: 4/4 frames (100 %), 6.7 frames/s, 1 s\x1b[K\n")

