"""`grefel serve`: a real Triton server (PyTriton's bundled tritonserver) answering NVIDIA's
tritonclient over HTTP and gRPC, compared with the backend's own `infer` on the same inputs,
and `grefel_image` with `grefel predict` / `Pipeline` on the same image files.

One server per module (started as `python -m grefel serve` on free local ports); the SIGTERM
test stops it and is the last test of the module. The server and this process read the same
BlazeFace files, the ones inside grefel, so `--detector auto` is the same detector in both.
"""

from __future__ import annotations

import functools
import io
import json
import os
import signal
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator, List

import numpy as np
import pytest
import test_runtime as rt  # the seeded tiny model files
from click.testing import CliRunner

from benchmarks import serve_load
from grefel import contract
from grefel.cli import cli
from grefel.config import FaceAlignment
from grefel.pipeline import Pipeline
from grefel.predict import PredictOptions, RecordWriter, stream_predictions
from grefel.runtime import open_backend
from grefel.runtime.detectors import make_detector

httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

if int(np.__version__.split(".")[0]) >= 2:  # the serve extra pins numpy<2 (see grefel.serve)
    pytest.skip("grefel serve needs numpy<2 (the lock's serve extra)", allow_module_level=True)
pytest.importorskip("pytriton.triton")

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5
NAMES = ("probs", "primary", "confidence")
START_TIMEOUT_S = 180
FIRST_READY_IMAGES = np.random.default_rng(11).random((2, 3, 112, 112), dtype=np.float32)


class Server(serve_load.Server):
    """The benchmark's server (free local ports, SIGTERM to stop) with this module's settings
    and one client per protocol."""

    def __init__(self, weights: Path, log: Path) -> None:
        self.run_folder = log.parent / "run"  # tritonserver's log: run_folder/tritonserver.log
        super().__init__(weights, max_batch=8, delay_us=5000, threads=1, log=log,
                         extra=("--exit-timeout", "60", "--out", str(self.run_folder)))
        self.http_client = httpclient.InferenceServerClient(f"127.0.0.1:{self.http}")
        self.grpc_client = grpcclient.InferenceServerClient(f"127.0.0.1:{self.grpc}")
        self.first_ready: Dict[str, Any] = {}  # each model's answer (or error) at the first 200

    def _probe(self) -> bool:
        """The documented readiness probe: GET /v2/health/ready answers 200."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/v2/health/ready",
                                        timeout=10) as r:
                return r.status == 200
        except OSError:  # not listening yet, or an HTTP error status (503: not ready)
            return False

    def wait_ready(self) -> None:
        """Polls the documented probe until its first 200, then at once asks every model (one
        request each; the answers or errors are kept in `first_ready`, which
        test_first_ready_answers_every_model checks). RuntimeError, with the server's output,
        if the server exits or is not ready within START_TIMEOUT_S."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._probe():
            if self.proc.poll() is not None:
                raise RuntimeError(f"grefel serve exited with {self.proc.returncode}:\n"
                                   f"{self.output()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"grefel serve not ready after {START_TIMEOUT_S} s:\n"
                                   f"{self.output()}")
            time.sleep(0.05)
        for model, call in (
            ("grefel", lambda: _infer(self.http_client, httpclient, FIRST_READY_IMAGES)),
            ("grefel_image", lambda: _served_images(self.http_client, httpclient,
                                                    [_png(_face_image())])),
        ):
            try:
                self.first_ready[model] = call()
            except InferenceServerException as exc:
                self.first_ready[model] = exc


@pytest.fixture(scope="module")
def weights() -> Path:
    return rt._shared_models()["onnx"]


@pytest.fixture(scope="module")
def server(weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(weights, tmp_path_factory.mktemp("serve") / "serve.log")
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def backend(weights: Path) -> Iterator[Any]:
    with open_backend(weights, device="cpu", threads=1) as b:
        yield b


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, 112, 112), dtype=np.float32)


def _infer(client: Any, module: Any, x: np.ndarray, dtype: str = "FP32",
           name: str = "images", model: str = "grefel") -> Any:
    inp = module.InferInput(name, list(x.shape), dtype)
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp])


def _check_equal(result: Any, ref: Dict[str, np.ndarray], classes) -> None:
    for name in NAMES:
        got = result.as_numpy(name)
        want = ref[name].reshape(got.shape)
        np.testing.assert_allclose(got, want, atol=TOL, rtol=0, err_msg=name)
    labels = [b.decode() for b in result.as_numpy("label").reshape(-1)]
    assert labels == [classes[i] for i in np.argmax(ref["probs"], axis=1)]
    names = result.as_numpy("classes")
    assert names.shape == ref["probs"].shape
    assert [b.decode() for b in names[0]] == list(classes)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_images_model_equals_backend_infer(server, backend, protocol) -> None:
    client, module = ((server.http_client, httpclient) if protocol == "http"
                      else (server.grpc_client, grpcclient))
    for n, seed in ((1, 0), (5, 1)):
        x = _images(n, seed)
        result = _infer(client, module, x)
        assert result.as_numpy("probs").shape == (n, len(rt.CLASSES))
        assert result.as_numpy("confidence").shape == (n, 1)
        _check_equal(result, backend.infer(x), rt.CLASSES)


def test_concurrent_requests_batch_dynamically_each_gets_its_own_answer(server, backend) -> None:
    """16 clients at once (the dynamic batcher joins them): each answer is its own input's."""
    inputs = [_images(1 + i % 3, 100 + i) for i in range(16)]
    results: List[Any] = [None] * len(inputs)
    errors: List[BaseException] = []

    def call(i: int) -> None:
        try:
            client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc}")
            results[i] = _infer(client, grpcclient, inputs[i])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    for x, result in zip(inputs, results):
        _check_equal(result, backend.infer(x), rt.CLASSES)


def _png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _face_image() -> np.ndarray:
    """A drawn SynthFER face (grefel.data.faces) in a larger grey frame that the `auto` face
    detector (the server's) finds: the first of a few fixed seeds; detectors are deterministic."""
    from grefel.data.faces import make_identity, render_face

    detector = make_detector("auto")
    for seed in range(20):
        rng = np.random.default_rng(seed)
        face, _, _ = render_face(rng, make_identity(rng), "happiness", size=160, difficulty=0.0)
        frame = np.full((240, 320, 3), 128, dtype=np.uint8)
        frame[40:200, 80:240] = np.asarray(face)
        if detector.detect(frame):
            return frame
    raise AssertionError("the face detector finds none of the drawn faces")


def _served_images(client: Any, module: Any, files: List[bytes]) -> Any:
    """One grefel_image request holding every file of `files`."""
    x = np.array([[f] for f in files], dtype=np.object_)
    return _infer(client, module, x, dtype="BYTES", name="image", model="grefel_image")


def _check_no_face(result: Any, i: int) -> None:
    """grefel_image's sample i has no face and no expression: face false, NaN probs, primary
    and confidence, an empty label, a 0-size box."""
    assert not result.as_numpy("face")[i, 0], "a face was found where there is none"
    for name in NAMES:
        assert np.isnan(result.as_numpy(name)[i]).all(), name
    assert result.as_numpy("label")[i, 0] == b""
    assert result.as_numpy("box")[i].tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_encoded_image_model_equals_local_pipeline(server, backend, protocol) -> None:
    """Each image of one request (noise: no face; a drawn face) against `Pipeline.process` with
    its own defaults on the decoded image: its first face's outputs and box; no face, no
    expression."""
    client, module = ((server.http_client, httpclient) if protocol == "http"
                      else (server.grpc_client, grpcclient))
    rng = np.random.default_rng(3)
    files = [_png(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)), _png(_face_image())]
    result = _served_images(client, module, files)
    pipe = Pipeline(backend, track=False, threads=1)  # the server runs with --threads 1
    noise, face = (pipe.process(contract.decode_image_bytes(data))[0] for data in files)
    assert not noise.face and noise.probs is None and noise.label is None
    _check_no_face(result, 0)
    assert face.face and face.probs is not None and face.primary is not None, "not detected"
    want = {"probs": list(face.probs.values()), "primary": list(face.primary.values()),
            "confidence": [face.confidence]}
    for name in NAMES:
        np.testing.assert_allclose(result.as_numpy(name)[1].reshape(-1), want[name],
                                   atol=TOL, rtol=0, err_msg=name)
    assert result.as_numpy("face")[1, 0]
    assert result.as_numpy("box")[1].tolist() == list(face.box)
    assert result.as_numpy("label")[1, 0].decode() == face.label


def test_encoded_image_model_equals_grefel_predict_on_the_file(server, backend, tmp_path) -> None:
    """The photo's file through `grefel predict` (its default options: BlazeFace, 5-point
    alignment) and through grefel_image, beside another image in the same request: the
    served answer is the first record's (probs, primary, confidence within 1e-5; the box).
    (Labels are argmaxes of these probs, compared in the tests above; an untrained model's
    near-uniform probs could make them a near-tie here.)"""
    photo = tmp_path / "face.png"
    photo.write_bytes(_png(_face_image()))
    out = io.StringIO()
    stream_predictions(str(photo), backend, RecordWriter(out, "jsonl", backend.classes),
                       PredictOptions(threads=1))
    rec = json.loads(out.getvalue().splitlines()[0])
    assert rec["face"] and rec["aligned"] and len(rec["keypoints"]) == 6, rec
    noise = _png(np.random.default_rng(4).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    result = _served_images(server.grpc_client, grpcclient, [noise, photo.read_bytes()])
    classes = list(backend.classes)
    for name in ("probs", "primary"):
        np.testing.assert_allclose(result.as_numpy(name)[1], [rec[name][c] for c in classes],
                                   atol=TOL, rtol=0, err_msg=name)
    np.testing.assert_allclose(result.as_numpy("confidence")[1], [rec["confidence"]],
                               atol=TOL, rtol=0)
    assert result.as_numpy("box")[1].tolist() == rec["box"]
    assert bool(result.as_numpy("face")[1, 0])
    assert "'grefel_image' faces: detector blazeface-auto" in server.output()


def test_serve_face_options_are_predicts(weights, monkeypatch, tmp_path) -> None:
    """--detector, --det-size, --align, --margin and --min-face reach grefel_image's options;
    not given, they are `grefel predict`'s defaults."""
    from grefel import serve

    monkeypatch.chdir(tmp_path)  # the runs/serve folders of tritonserver's log
    got: List[Any] = []
    monkeypatch.setattr(serve, "serve", lambda w, opts, on_ready: got.append(opts))
    result = CliRunner().invoke(cli, ["serve", "-w", str(weights)])
    assert result.exit_code == 0, result.output
    assert (got[0].face, got[0].aligned) == (PredictOptions().face, PredictOptions().aligned)
    result = CliRunner().invoke(cli, ["serve", "-w", str(weights), "--detector", "haar",
                                      "--det-size", "320", "--min-face", "24", "--no-align",
                                      "--margin", "0.3", "--aligned"])
    assert result.exit_code == 0, result.output
    assert (got[1].face, got[1].aligned) == (FaceAlignment(
        detector="haar", det_size=320, min_face=24, align=False, margin=0.3), True)


def test_image_model_answers_no_face_without_expression_and_aligned_whole_image(backend) -> None:
    """grefel_image's instance (what Triton calls) without a server: a chessboard has no face
    (face false, NaN probs, empty label, 0-size box) beside a drawn face in the same batch;
    with --aligned the chessboard is the face and its whole image is classified."""
    from grefel.serve import ServeOptions, _Instance, image_pipeline

    cells = (np.indices((8, 8)).sum(axis=0) % 2).astype(np.uint8) * 255
    board = np.repeat(np.kron(cells, np.ones((30, 30), np.uint8))[:, :, None], 3, axis=2)
    requests = [{"image": np.array([[_png(board)]], dtype=np.object_)},
                {"image": np.array([[_png(_face_image())]], dtype=np.object_)}]

    class Answer:  # the outputs as tritonclient's InferResult gives them
        def __init__(self, outputs: Dict[str, np.ndarray]) -> None:
            self.outputs = outputs

        def as_numpy(self, name: str) -> np.ndarray:
            return self.outputs[name]

    detect = _Instance(backend, image_pipeline(backend, ServeOptions(threads=1)))
    board_out, face_out = (Answer(o) for o in detect.infer_encoded(requests))
    _check_no_face(board_out, 0)
    assert face_out.as_numpy("face")[0, 0] and face_out.as_numpy("label")[0, 0] != b""
    whole = _Instance(backend, image_pipeline(backend, ServeOptions(threads=1, aligned=True)))
    answer = Answer(whole.infer_encoded(requests[:1])[0])
    x = contract.to_model_input(contract.resize(board))[None]
    _check_equal(answer, backend.infer(x), rt.CLASSES)
    assert answer.as_numpy("face")[0, 0] and answer.as_numpy("box")[0].tolist() == [0, 0, 240, 240]


def _error(call) -> str:
    with pytest.raises(InferenceServerException) as info:
        call()
    return str(info.value)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_malformed_requests_get_triton_errors_and_the_server_lives_on(server, backend,
                                                                      protocol) -> None:
    client, module = ((server.http_client, httpclient) if protocol == "http"
                      else (server.grpc_client, grpcclient))
    wrong_shape = np.zeros((1, 3, 64, 64), dtype=np.float32)
    assert "shape" in _error(lambda: _infer(client, module, wrong_shape)).lower()
    wrong_dtype = np.zeros((1, 3, 112, 112), dtype=np.float64)
    assert "data-type" in _error(lambda: _infer(client, module, wrong_dtype, dtype="FP64"))
    over = _images(2, 5) * 255.0
    assert "[0, 1]" in _error(lambda: _infer(client, module, over))
    nan = _images(1, 6)
    nan[0, 0, 0, 0] = np.nan
    assert "NaN" in _error(lambda: _infer(client, module, nan))
    junk = np.array([[b"not an image at all"]], dtype=np.object_)
    msg = _error(lambda: _infer(client, module, junk, "BYTES", "image", "grefel_image"))
    assert "not a decodable image" in msg
    empty = np.array([[b""]], dtype=np.object_)
    assert "empty" in _error(lambda: _infer(client, module, empty, "BYTES", "image",
                                            "grefel_image"))
    assert "pixels" in _error(lambda: _infer(client, module, _images(1, 0), name="pixels"))
    # the server answers correctly after every one of them
    x = _images(2, 7)
    _check_equal(_infer(client, module, x), backend.infer(x), rt.CLASSES)
    assert server.proc.poll() is None


def test_first_ready_answers_every_model(server, backend) -> None:
    """The documented probe's first 200 (GET /v2/health/ready, polled from the server's
    start) means every model answers: the requests sent at that moment (by the `server`
    fixture) got their answers, not "unknown model". (PyTriton's default start answered 200
    before it had loaded the models; grefel serve now has tritonserver load them before it
    listens: grefel.serve.)"""
    answers = server.first_ready
    assert set(answers) == {"grefel", "grefel_image"}
    errors = {m: str(a) for m, a in answers.items() if isinstance(a, Exception)}
    assert not errors, errors
    _check_equal(answers["grefel"], backend.infer(FIRST_READY_IMAGES), rt.CLASSES)
    assert bool(answers["grefel_image"].as_numpy("face")[0, 0])


def test_health_and_metrics_endpoints(server) -> None:
    base = f"http://127.0.0.1:{server.http}"
    with urllib.request.urlopen(f"{base}/v2/health/live", timeout=10) as r:
        assert r.status == 200
    with urllib.request.urlopen(f"{base}/v2/health/ready", timeout=10) as r:
        assert r.status == 200
    assert server.grpc_client.is_server_live() and server.grpc_client.is_server_ready()
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics}/metrics", timeout=10) as r:
        text = r.read().decode()
    assert 'nv_inference_request_success{model="grefel",version="1"}' in text
    config = server.http_client.get_model_config("grefel")
    assert config["max_batch_size"] == 8
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 5000


def test_numpy2_and_missing_pytriton_are_one_clear_line(weights, monkeypatch, tmp_path,
                                                       serve_ports) -> None:
    from grefel import serve

    monkeypatch.setattr(serve.np, "__version__", "2.1.3")
    result = CliRunner().invoke(cli, ["serve", "--out", str(tmp_path), "--weights", str(weights),
                                      *serve_ports])
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "numpy<2" in lines[0] and "numpy 2.1.3" in lines[0]
    monkeypatch.setattr(serve.np, "__version__", "1.26.4")
    monkeypatch.setitem(sys.modules, "pytriton.triton", None)
    result = CliRunner().invoke(cli, ["serve", "--out", str(tmp_path), "--weights", str(weights),
                                      *serve_ports])
    assert result.exit_code == 1 and "pip install '.[serve]'" in result.output
    assert len(result.output.strip().splitlines()) == 1
    monkeypatch.undo()
    result = CliRunner().invoke(cli, ["serve", "--out", str(tmp_path), "--weights",
                                      str(weights.with_name("none.onnx")), *serve_ports])
    assert result.exit_code == 1 and "none.onnx: no such model file" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_missing_blazeface_is_one_clear_line(weights, monkeypatch, tmp_path, serve_ports) -> None:
    """--detector blazeface in an install that lacks its model file: one line naming the file,
    before tritonserver starts."""
    from grefel.runtime import detectors

    monkeypatch.setattr(detectors, "MODELS", tmp_path)
    monkeypatch.setenv("LD_LIBRARY_PATH", os.environ.get("LD_LIBRARY_PATH", ""))  # restored
    result = CliRunner().invoke(cli, ["serve", "--out", str(tmp_path), "-w", str(weights),
                                      "--detector", "blazeface", *serve_ports])
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "missing from this grefel install" in lines[0]
    assert str(tmp_path / "face_detection_short_range.tflite") in lines[0]
    assert "--detector haar" in lines[0]


def test_tritonserver_log_is_in_its_file_and_serve_says_where(server) -> None:
    """It flooded grefel serve's stdout (tables; CUDA errors on a CPU machine)."""
    log = server.run_folder / "tritonserver.log"
    assert "successfully loaded 'grefel_image'" in log.read_text(errors="replace")
    out = server.output()
    assert f"tritonserver's log: {log} (-v: on stdout instead)" in out.splitlines()
    assert "model_lifecycle" not in out and "+---" not in out, out


def test_sigterm_answers_in_flight_requests_then_exits(server, backend) -> None:
    """Last test of the module: it stops the module's server."""
    inputs = [_images(8, 200 + i) for i in range(8)]
    done = [threading.Event() for _ in inputs]
    results: List[Any] = [None] * len(inputs)
    errors: List[Any] = [None] * len(inputs)

    def callback(i: int, result: Any = None, error: Any = None) -> None:
        results[i], errors[i] = result, error
        done[i].set()

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc}")
    for i, x in enumerate(inputs):
        inp = grpcclient.InferInput("images", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        client.async_infer("grefel", [inp], callback=functools.partial(callback, i))
    # tritonserver's shutdown waits (up to --exit-timeout) for open HTTP connections to close:
    # the module's keep-alive HTTP client is closed first
    server.http_client.close()
    assert done[0].wait(timeout=120), "no answer to the first request"
    pending = [i for i, d in enumerate(done) if not d.is_set()]
    server.proc.send_signal(signal.SIGTERM)  # one backend call of 8 at a time: 7 queued
    assert pending, "every request was answered before SIGTERM: nothing was in flight"
    for d in done:
        assert d.wait(timeout=120)
    assert [e for e in errors if e is not None] == []
    for x, result in zip(inputs, results):
        _check_equal(result, backend.infer(x), rt.CLASSES)
    assert server.proc.wait(timeout=90) == 0, server.output()
    assert "stopped" in server.output()
