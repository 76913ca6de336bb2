"""Third-party warnings during an export: recorded for `NAME.checks.json` and `-v`, not printed.

ONNX Runtime's quantizer warns through the root logger (`logging.warning`, which installs a
stderr handler on first use: "WARNING:root:Please consider to run pre-processing before
quantization ..."), torch's exporter and onnx through `warnings`. Inside `captured_warnings()`
both are turned into lines handed to `sink` (the export's detail log) and kept in the returned
list, deduplicated, with a count:

    with captured_warnings(sink=details.append) as caught:
        ...                                    # quantize, export, ...
        checks["warnings"] = caught.lines()    # so far; usable inside and after the block

Loggers with their own handlers (propagate=False) keep them; everything else that reaches the
root logger at WARNING or above is captured. The root logger's handlers and the warning filters
are restored on exit.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Iterator, List

__all__ = ["CapturedWarnings", "captured_warnings"]

Sink = Callable[[str], None]


class CapturedWarnings:
    """Warning lines in first-seen order with their counts; each new line also goes to `sink`."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.counts: Dict[str, int] = {}

    def add(self, line: str) -> None:
        if line not in self.counts:
            self.counts[line] = 0
            self.sink(f"    warning: {line}")
        self.counts[line] += 1

    def lines(self) -> List[str]:
        """Each distinct line, "(xN)" appended when it came N > 1 times."""
        return [line if self.counts[line] == 1 else f"{line} (x{self.counts[line]})"
                for line in self.counts]


class _Handler(logging.Handler):
    def __init__(self, recorder: CapturedWarnings) -> None:
        super().__init__(level=logging.WARNING)
        self.recorder = recorder

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage().strip()
        except Exception:  # noqa: BLE001 - a bad format string must not end the export
            message = str(record.msg)
        self.recorder.add(f"{record.levelname} {record.name}: {message}")


@contextmanager
def captured_warnings(sink: Sink = lambda line: None) -> Iterator[CapturedWarnings]:
    """Record Python warnings and root-logger records (WARNING+) raised inside the block.

    Args:
        sink: called once with each new warning line (indented, for the detail log).

    Yields:
        The record; its `lines()` are the distinct warnings so far, in the order first seen.
    """
    recorder = CapturedWarnings(sink)
    root = logging.getLogger()
    saved_handlers = root.handlers[:]
    root.handlers = [_Handler(recorder)]

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = str(message).strip().splitlines()[0] if str(message).strip() else ""
        recorder.add(f"{category.__name__}: {text} ({Path(filename).name}:{lineno})")

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = show
            yield recorder
    finally:
        root.handlers = saved_handlers
