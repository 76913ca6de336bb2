"""A stop signal never separates a frame's records from its count in the summary.

SIGTERM that arrived after a frame's records were flushed but before the summary counted the
frame left `--json`'s "frames" one short of the records file (seen once in 1051 runs of
tests/test_bad_input.py's signal test). Here the signal is sent from inside the flush, every
time, so the window is hit deterministically.
"""

from __future__ import annotations

import io
import json
import os
import signal
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
from PIL import Image

from grefel.predict import (
    PredictOptions,
    RecordWriter,
    signals_end_run,
    stream_predictions,
)
from grefel.runtime.base import Backend

CLASSES = ("neutral", "happiness", "sadness")


class Uniform(Backend):
    name = "uniform"

    def _open(self) -> None:
        self.classes = CLASSES

    def _close(self) -> None:
        pass

    def _infer(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        p = np.full((len(batch), len(CLASSES)), 1.0 / len(CLASSES), np.float32)
        return {"probs": p, "primary": p, "confidence": np.zeros(len(batch), np.float32)}


class SignalOnFlush(RecordWriter):
    """Sends `signum` to this process while the `at`-th frame's records are being flushed."""

    def __init__(self, stream: io.StringIO, signum: int, at: int) -> None:
        super().__init__(stream, "jsonl", CLASSES)
        self.signum, self.at, self.flushes = signum, at, 0

    def flush(self) -> None:
        super().flush()
        self.flushes += 1
        if self.flushes == self.at:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_during_a_frames_write_counts_the_frame(tmp_path: Path, signum: int) -> None:
    folder = tmp_path / "faces"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(np.full((64, 64, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    out = io.StringIO()
    writer = SignalOnFlush(out, signum, at=3)
    with Uniform() as backend, signals_end_run():
        summary = stream_predictions(str(folder), backend, writer,
                                     PredictOptions(aligned=True, threads=1))
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert summary.interrupted and summary.signal == signum
    assert summary.frames == len(records) == 3
