"""grefel.unpickle: torch's own weights-only loader with inert stand-ins where torch allows it,
the restricted unpickler elsewhere; nothing pickled ever runs on either path."""

from __future__ import annotations

import os
import sys
from collections import OrderedDict
from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch

from grefel import unpickle
from grefel.unpickle import Inert, safe_load

CALLS: List[str] = []
STAND_INS = "restricted torch.load(weights_only=True) with inert stand-ins"
HAS_SAFE_GLOBALS = hasattr(torch.serialization, "safe_globals") and hasattr(
    torch.serialization, "get_unsafe_globals_in_checkpoint"
)


def _record_call(what: str) -> None:
    CALLS.append(what)


class _Evil:
    """Pickles as a call of `_record_call` (a module torch does not block)."""

    def __reduce__(self):
        return (_record_call, ("executed",))


class _Shell:
    """Pickles as `os.system(...)`: a module torch's unpickler refuses outright."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class RecorderMeter:
    """POSTER V2's training recorder: numpy arrays and numpy scalars in a pickled object."""

    def __init__(self) -> None:
        self.epoch_losses = np.zeros((4, 2), dtype=np.float32)
        self.best = np.float64(92.21)


def _poster_like(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    RecorderMeter.__module__ = "__main__"
    monkeypatch.setattr(sys.modules["__main__"], "RecorderMeter", RecorderMeter, raising=False)
    state = OrderedDict([("module.w", torch.arange(6.0).reshape(2, 3))])
    torch.save({"state_dict": state, "recorder": RecorderMeter(), "evil": _Evil()}, path)
    monkeypatch.delattr(sys.modules["__main__"], "RecorderMeter")
    RecorderMeter.__module__ = __name__


@pytest.mark.skipif(not HAS_SAFE_GLOBALS, reason="torch < 2.5 has no safe_globals API")
def test_poster_checkpoint_goes_through_torchs_own_unpickler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "poster.pth"
    _poster_like(path, monkeypatch)
    CALLS.clear()
    result = safe_load(path)
    assert CALLS == [] and result.method == STAND_INS
    assert torch.equal(result.obj["state_dict"]["module.w"], torch.arange(6.0).reshape(2, 3))
    recorder = result.obj["recorder"]
    assert isinstance(recorder, Inert) and recorder._pickled_as == "__main__.RecorderMeter"
    assert isinstance(result.obj["evil"], Inert) and result.obj["evil"]._args == ("executed",)
    assert "__main__.RecorderMeter" in result.placeholders
    assert any(p.startswith("numpy") for p in result.placeholders)  # numpy kept inert too


def test_floor_torch_without_safe_globals_uses_the_restricted_unpickler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What torch 2.1-2.4 does: no safe_globals API, so the restricted unpickler reads it."""
    path = tmp_path / "poster.pth"
    _poster_like(path, monkeypatch)
    monkeypatch.delattr(torch.serialization, "safe_globals", raising=False)
    CALLS.clear()
    result = safe_load(path)
    assert CALLS == [] and result.method == "restricted torch.load"
    assert isinstance(result.obj["recorder"], Inert)
    assert torch.equal(result.obj["state_dict"]["module.w"], torch.arange(6.0).reshape(2, 3))


def test_a_blocked_module_falls_back_and_still_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "shell.pth"
    torch.save({"w": torch.ones(2), "shell": _Shell(marker)}, path)
    assert unpickle._torch_with_stand_ins(path) is None  # torch refuses os/posix outright
    result = safe_load(path)
    assert not marker.exists() and result.method == "restricted torch.load"
    assert isinstance(result.obj["shell"], Inert) and torch.equal(result.obj["w"], torch.ones(2))
