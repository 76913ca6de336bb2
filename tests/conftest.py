"""Shared test settings: small thread count so parallel CI steps stay predictable."""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _torch_threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture(autouse=True, scope="session")
def _crash_reports(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A bug's crash report (grefel.crash) from any test, or any command a test runs in a child
    process, lands in the test's temporary folder, not in the user's ~/.cache."""
    os.environ["GREFEL_CRASH_DIR"] = str(tmp_path_factory.mktemp("crash"))


@pytest.fixture(scope="session")
def paper_model():
    """One paper-preset model (both RB parts) shared by the tests that need its size."""
    from grefel.model import create_model

    torch.manual_seed(0)
    return create_model("paper", "both").eval()



@pytest.fixture(scope="session")
def synthfer(tmp_path_factory):
    """A small SynthFER folder (90 faces, balanced classes; read-only for the tests using it)."""
    from grefel.data.synthfer import generate_synthfer

    return generate_synthfer(tmp_path_factory.mktemp("synthfer"), 90, seed=0,
                             imbalance="uniform", difficulty=0.3)


@pytest.fixture
def no_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    """TensorRT and pycuda are not importable for this test, whatever is installed."""
    from fakes.trt import block

    block(monkeypatch)


@pytest.fixture
def serve_ports() -> list:
    """`--http-port A --grpc-port B --metrics-port C`, three ports free now: a `grefel serve`
    test must not rely on the default 8000-8002 being free (another server may hold them)."""
    import socket

    holders = [socket.socket() for _ in range(3)]
    try:
        for s in holders:  # held together, so the three differ
            s.bind(("127.0.0.1", 0))
        ports = [str(s.getsockname()[1]) for s in holders]
    finally:
        for s in holders:
            s.close()
    return ["--http-port", ports[0], "--grpc-port", ports[1], "--metrics-port", ports[2]]
