"""Fakes that follow the real APIs (TensorRT, cuda-bindings, pycuda), and what the tests of the
real bindings share."""

from __future__ import annotations

import os

import pytest


def unavailable(reason: str) -> None:
    """A test of real bindings that cannot run here: skipped, or failed where CI requires it
    (GREFEL_REQUIRE_TRT_BINDINGS=1)."""
    if os.environ.get("GREFEL_REQUIRE_TRT_BINDINGS") == "1":
        pytest.fail(f"{reason} (GREFEL_REQUIRE_TRT_BINDINGS=1)")
    pytest.skip(reason)
