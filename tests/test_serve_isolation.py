"""Issue 27.7: `grefel serve` answers each request for its own sake, in-process (no server).

The mechanism: `grefel.serve.answer_each` (each request checked before the valid ones are joined;
a failed joined call rerun request by request; an unexpected error one line, its traceback
logged), `patch_proxy` (PyTriton's proxy turns an ERROR_KEY answer into that request's own
Triton error) and `check_ports` (a taken port refused before anything loads). The real server
is run by the fault family `tools/fault_families/serve.py` (tests/test_fault_families.py).
"""

from __future__ import annotations

import importlib
import logging
import shutil
import socket
import sys
import types
from pathlib import Path
from typing import Any, Dict, Iterator, List

import numpy as np
import pytest
from click.testing import CliRunner

from grefel import serve
from grefel.cli import cli
from grefel.runtime import open_backend
from grefel.serve import ERROR_KEY, RequestError, ServeError, ServeOptions, answer_each
from tools.fault_corpus import mini_onnx


@pytest.fixture(scope="module")
def mini(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mini_onnx(tmp_path_factory.mktemp("mini") / "mini.onnx")


@pytest.fixture(scope="module")
def instance(mini: Path) -> Iterator[Any]:
    with open_backend(mini, device="cpu", threads=1) as backend:
        yield serve._Instance(backend, log_where="serve.log")


def _request(x: np.ndarray) -> Dict[str, np.ndarray]:
    return {"images": x}


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, 112, 112), dtype=np.float32)


def _error(answer: Dict[str, np.ndarray]) -> List[str]:
    assert set(answer) == {ERROR_KEY}, f"an answer, not an error: {sorted(answer)}"
    return [bytes(v).decode() for v in answer[ERROR_KEY]]


def _same(a: Dict[str, np.ndarray], b: Dict[str, np.ndarray]) -> bool:
    """Bit-equal outputs (same names, dtypes, shapes and bytes; BYTES outputs item by item)."""
    def raw(v: np.ndarray) -> Any:
        return v.tolist() if v.dtype == np.object_ else v.tobytes()

    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and raw(a[k]) == raw(b[k])
        for k in a)


def test_invalid_requests_get_their_own_error_and_batch_mates_their_answer(instance) -> None:
    """The issue's example in one batch: an out-of-range request (uint8 scale), NaN and inf
    among valid ones; each valid answer is bit-equal to its answer alone (it was an error
    for all of them: one exception failed the batch)."""
    good = [_images(1, 1), _images(2, 2), _images(1, 3)]
    nan, inf = _images(1, 4), _images(1, 5)
    nan[0, 0, 3, 3], inf[0, 2, 0, 0] = np.nan, np.inf
    batch = [good[0], _images(1, 6) * 255.0, good[1], nan, inf, good[2]]
    answers = instance.infer_images([_request(x) for x in batch])
    assert len(answers) == len(batch)
    code, msg = _error(answers[1])
    assert code == "INVALID_ARG" and "`images` values span" in msg and "[0, 1]" in msg
    assert "NaN or inf" in _error(answers[3])[1] and "NaN or inf" in _error(answers[4])[1]
    assert all("\n" not in _error(answers[i])[1] for i in (1, 3, 4))
    for i, x in zip((0, 2, 5), good):
        alone = instance.infer_images([_request(x)])[0]
        assert _same(answers[i], alone), f"request {i} depends on its batch-mates"
        want = np.exp(x.mean(axis=(2, 3)))  # the mini model: softmax of the channel means
        np.testing.assert_allclose(answers[i]["probs"], want / want.sum(1, keepdims=True),
                                   atol=1e-5)


def test_a_valid_request_is_bit_equal_beside_valid_or_invalid_requests(instance) -> None:
    """Predictions never depend on the batch: the same request alone, first or last among
    valid requests, and among invalid ones gives the same bytes."""
    x = _images(1, 10)
    alone = instance.infer_images([_request(x)])[0]
    bad = _images(1, 11) - 2.0
    for batch, at in (([x, _images(3, 12), _images(1, 13)], 0),
                      ([_images(3, 12), _images(1, 13), x], 2),
                      ([bad, x, bad], 1), ([bad, bad, _images(2, 14), x], 3)):
        answers = instance.infer_images([_request(b) for b in batch])
        assert _same(answers[at], alone), (len(batch), at)


def test_a_failed_joined_call_is_rerun_request_by_request(caplog) -> None:
    """A joined call that fails (a request that only fails in the model) does not fail its
    batch-mates: each is rerun alone, the one that fails alone gets one line (HTTP 500) naming
    the log that holds its traceback."""
    calls: List[int] = []

    def run(xs: List[int]) -> List[Dict[str, np.ndarray]]:
        calls.append(len(xs))
        if 13 in xs:
            raise RuntimeError("the backend choked\non two lines")
        return [{"y": np.array([x * 2])} for x in xs]

    with caplog.at_level(logging.ERROR, logger="grefel.serve"):
        answers = answer_each([1, 13, 3], prepare=lambda r: r, run=run, log_where="W/serve.log")
    assert calls == [3, 1, 1, 1]
    assert answers[0]["y"].tolist() == [2] and answers[2]["y"].tolist() == [6]
    code, msg = _error(answers[1])
    assert code == "INTERNAL" and "\n" not in msg
    assert msg == ("internal error of grefel serve (RuntimeError: the backend choked); its "
                   "traceback is in W/serve.log")
    assert "Traceback (most recent call last)" in caplog.text
    assert "the backend choked" in caplog.text


def test_prepare_errors_stay_with_their_request() -> None:
    """A RequestError is the client's 400; any other error while checking one request is that
    request's 500; the others are answered."""
    def prepare(r: Any) -> Any:
        if r == "bad":
            raise RequestError("`images`: bad, and why")
        if r == "bug":
            raise KeyError("oops")
        return r

    answers = answer_each(["a", "bad", "bug", "b"], prepare,
                          lambda xs: [{"y": np.array([x.encode()])} for x in xs])
    assert _error(answers[1]) == ["INVALID_ARG", "`images`: bad, and why"]
    assert _error(answers[2])[0] == "INTERNAL" and "KeyError" in _error(answers[2])[1]
    assert [answers[0]["y"][0], answers[3]["y"][0]] == [b"a", b"b"]


def test_image_requests_are_checked_each_on_its_own(mini: Path) -> None:
    """grefel_image: an empty, an undecodable and an oversized file each get their own 400
    naming the item; the valid image in the same batch is answered as alone."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(buf, "PNG")
    png = buf.getvalue()
    with open_backend(mini, device="cpu", threads=1) as backend:
        inst = serve._Instance(backend, serve.image_pipeline(backend, ServeOptions(
            aligned=True, threads=1)))
        req = lambda *files: {"image": np.array([[f] for f in files], dtype=np.object_)}  # noqa: E731
        old = serve.MAX_IMAGE_BYTES
        serve.MAX_IMAGE_BYTES = 1000  # the 64 MiB limit, scaled down
        try:
            answers = inst.infer_encoded([req(b""), req(png), req(b"no image"),
                                          req(png + b"\0" * 1000), req(png, b"x")])
        finally:
            serve.MAX_IMAGE_BYTES = old
        alone = inst.infer_encoded([req(png)])[0]
    assert _error(answers[0]) == ["INVALID_ARG", "`image` item 0: empty (no image bytes)"]
    assert "`image` item 0: not a decodable image" in _error(answers[2])[1]
    assert "up to 0 MiB" in _error(answers[3])[1]
    assert "`image` item 1: not a decodable image" in _error(answers[4])[1]
    assert _same(answers[1], alone) and answers[1]["label"][0, 0] == b"red"


# -- the PyTriton proxy patch ---------------------------------------------------------------


def _patched_proxy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """A copy of PyTriton's proxy package with model.py patched, imported with a stand-in for
    Triton's `triton_python_backend_utils` (which exists only inside the backend stub)."""
    import pytriton.proxy

    pkg = tmp_path / "patchedproxy"
    shutil.copytree(Path(pytriton.proxy.__file__).parent, pkg,
                    ignore=shutil.ignore_patterns("__pycache__"))
    serve.patch_proxy(pkg / "model.py")

    class TritonError:
        INVALID_ARG, INTERNAL = "INVALID_ARG", "INTERNAL"

        def __init__(self, message: str, code: str = "INTERNAL") -> None:
            self.message, self.code = message, code

    class InferenceResponse:
        def __init__(self, output_tensors: Any = None, error: Any = None) -> None:
            self.output_tensors, self.error = output_tensors, error

    fake = types.ModuleType("triton_python_backend_utils")
    fake.TritonError, fake.InferenceResponse = TritonError, InferenceResponse
    fake.Tensor = lambda name, value: (name, value)
    fake.triton_string_to_numpy = lambda kind: np.float32
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake)
    monkeypatch.syspath_prepend(str(tmp_path))
    return importlib.import_module("patchedproxy.model")


def test_patched_proxy_answers_one_request_with_its_own_error(tmp_path, monkeypatch) -> None:
    from pytriton.proxy.types import Response

    model = _patched_proxy(tmp_path, monkeypatch)
    outputs = {"probs": {"data_type": "TYPE_FP32"}}
    err = model._wrap_response(Response(data=serve._error_response("INVALID_ARG", "why")),
                               ["probs"], outputs)
    assert err.error.message == "why" and err.error.code == "INVALID_ARG"
    err = model._wrap_response(Response(data=serve._error_response("INTERNAL", "bug")),
                               ["probs"], outputs)
    assert err.error.code == "INTERNAL"
    ok = model._wrap_response(Response(data={"probs": np.ones((1, 3))}), ["probs"], outputs)
    assert ok.error is None and ok.output_tensors[0][0] == "probs"
    trace = ('Traceback (most recent call last):\n  File "x.py", line 1, in f\n'
             "c_python_backend_utils.TritonModelException: Traceback (most recent call last):\n"
             '  File "y.py", line 2\nValueError: the real reason\n\n\nAt:\n'
             "  model.py(501): execute\n")
    assert (model._grefel_one_line(trace)
            == "grefel serve failed to answer: ValueError: the real reason")


def test_an_unknown_proxy_is_refused(tmp_path) -> None:
    other = tmp_path / "model.py"
    other.write_text("def something_else():\n    pass\n")
    with pytest.raises(ServeError, match="not the 0.7 that grefel serve knows"):
        serve.patch_proxy(other)
    assert other.read_text() == "def something_else():\n    pass\n"


# -- ports ---------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_check_ports_names_the_taken_port_and_clashes() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        taken = holder.getsockname()[1]
        others = dict(grpc_port=_free_port(), metrics_port=_free_port())
        with pytest.raises(ServeError) as info:
            serve.check_ports(ServeOptions(http_port=taken, **others))
    msg = str(info.value)
    assert msg.startswith(f"--http-port {taken}: port {taken} on 127.0.0.1 is already in use")
    assert "choose a free port, e.g. --http-port " in msg and "\n" not in msg
    port = _free_port()
    with pytest.raises(ServeError, match="--grpc-port .*the same port as --http-port"):
        serve.check_ports(ServeOptions(http_port=port, grpc_port=port, metrics_port=port + 1))
    with pytest.raises(ServeError, match="--host nonexistent.invalid"):
        serve.check_ports(ServeOptions(host="nonexistent.invalid", http_port=_free_port()))
    serve.check_ports(ServeOptions(http_port=_free_port(), grpc_port=_free_port(),
                                   metrics_port=_free_port()))  # free: no error


def test_serve_with_a_taken_port_is_one_line_before_any_model_loads(mini, tmp_path, monkeypatch,
                                                                    serve_ports) -> None:
    """It was a traceback, then the error after 71 s."""
    def no_loading(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a model was opened before the ports were checked")

    monkeypatch.setattr(serve, "open_backend", no_loading)
    monkeypatch.setattr(serve, "check_environment", no_loading)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        taken = holder.getsockname()[1]
        result = CliRunner().invoke(cli, ["serve", "-w", str(mini), "--out", str(tmp_path),
                                          *serve_ports[:4], "--metrics-port", str(taken)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: --metrics-port {taken}: port"), lines
