"""The TensorRT backend (grefel.runtime.trt_backend) against the shared strict fake of
`tensorrt` and `pycuda.driver` (tests/fakes/trt.py), whose engine runs the ONNX model in ONNX
Runtime. Checks our glue (tensor-name API calls and their results, buffers, chunking, padding,
CUDA context handling across threads, error messages), not TensorRT.

Every test runs twice, once per CUDA layer (grefel.runtime.cuda_layer): on pycuda, and on the
fake `cuda.bindings.driver` (tests/fakes/cuda_bindings.py), which the backend picks by itself
when both import."""

from __future__ import annotations

import gc
import threading
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
import test_runtime as rt  # the model files and the fake_trt fixture (same module as pytest's)
from fakes.trt import CUDA_DEFAULT, GENERATIONS, Gpu, install

from grefel.runtime import BackendError, open_backend
from grefel.runtime.trt_backend import TensorRTBackend

CLASSES, NAMES, images = rt.CLASSES, rt.NAMES, rt.images
models, fake_trt = rt.models, rt.fake_trt
LAYERS = ("pycuda", "cuda-bindings")


@pytest.fixture(autouse=True, params=LAYERS)
def cuda_layer(request: Any) -> Any:
    """The CUDA layer every Gpu() of the test gets (not monkeypatch: tests call its undo)."""
    before = CUDA_DEFAULT[0]
    CUDA_DEFAULT[0] = request.param
    try:
        yield request.param
    finally:
        CUDA_DEFAULT[0] = before


def _engine(tmp_path: Path, monkeypatch: Any, onnx: Path, gen: str = "10.3", **spec: Any):
    gpu = Gpu(gen=gen, engines={b"FAKEPLAN": rt.ort_engine_spec(onnx, **spec)})
    install(monkeypatch, gpu)
    engine = tmp_path / f"{gen}.engine"
    engine.write_bytes(b"FAKEPLAN")
    rt.write_sidecar(engine, tensorrt=gpu_version(gen))
    return gpu, engine


def gpu_version(gen: str) -> str:
    return GENERATIONS[gen]


def _runs(gpu: Gpu) -> List[int]:
    """The batch of every execute_async_v3 (read from the set_input_shape calls before it)."""
    shapes, runs = [], []
    for call in gpu.calls:
        if call.member == "set_input_shape":
            shapes.append(call.args[1])
        elif call.member == "execute_async_v3":
            runs.append(shapes[-1]["tuple"][0]["int"])
    return runs


@pytest.mark.parametrize("gen", list(GENERATIONS))
def test_tensorrt_glue_agrees_and_chunks_in_every_generation(
    gen: str, models: Dict[str, Path], monkeypatch: Any, tmp_path: Path
) -> None:
    """A batch of 10 with profile max 4 runs as 4 + 4 + 2 through pinned buffers sized for the
    max and matches PyTorch, in every generation. 8.5's `nptype` raises under numpy 1.24+ (as
    on JetPack 5.1), so the backend must map dtypes itself."""
    gpu, engine = _engine(tmp_path, monkeypatch, models["onnx"], gen, profile=(1, 1, 4))
    x = images(10, seed=1)
    with open_backend(models["ckpt"], device="cpu") as pt:
        ref = pt.infer(x)
    with open_backend(engine) as trt:
        assert trt.classes == CLASSES and trt.max_batch == 4 and trt.min_batch == 1
        out = trt.infer(x)
    for name in NAMES:
        np.testing.assert_allclose(out[name], ref[name], atol=1e-5)
    assert _runs(gpu)[-3:] == [4, 4, 2]
    assert not any(c.member == "nptype" for c in gpu.calls)


def test_numpy_dtype_table_covers_every_generation() -> None:
    from fakes.trt import make_fakes

    from grefel.runtime.trt_backend import numpy_dtype

    for gen in GENERATIONS:
        trt, _ = make_fakes(Gpu(gen=gen))
        assert numpy_dtype(trt, trt.float16) == np.float16
        assert numpy_dtype(trt, trt.float32) == np.float32
        assert numpy_dtype(trt, trt.bool) == np.bool_
        if "FP8" in trt.DataType.__members__:  # 8.6+
            with pytest.raises(BackendError, match="no numpy equivalent"):
                numpy_dtype(trt, trt.DataType.FP8)


def test_tensorrt_profile_minimum_is_padded(
    models: Dict[str, Path], monkeypatch: Any, tmp_path: Path
) -> None:
    """A profile with min 4 (trtexec --minShapes, DLA): 10 images run as 8 + (2 padded to 4);
    the outputs have 10 rows that match ONNX Runtime (ignoring the False from set_input_shape
    would keep the old shape and return 8 rows)."""
    gpu, engine = _engine(tmp_path, monkeypatch, models["onnx"], profile=(4, 4, 8))
    x = images(10, seed=2)
    with open_backend(engine) as trt:
        assert trt.min_batch == 4 and trt.max_batch == 8
        out = trt.infer(x)
    with open_backend(models["onnx"]) as ox:
        ref = ox.infer(x)
    assert out["probs"].shape == (10, len(CLASSES))
    np.testing.assert_allclose(out["probs"], ref["probs"], atol=1e-5)
    assert _runs(gpu) == [8, 4]


def test_tensorrt_false_from_set_input_shape_or_set_tensor_address_raises(
    fake_trt: Any, monkeypatch: Any
) -> None:
    gpu, engine, _, _ = fake_trt
    trt_module = __import__("sys").modules["tensorrt"]
    with open_backend(engine) as trt:
        monkeypatch.setattr(trt_module.IExecutionContext, "set_input_shape", lambda *a: False)
        with pytest.raises(BackendError, match="refused input shape .*profile is batch 1..4"):
            trt.infer(images(2))
    monkeypatch.undo()
    gpu, engine, _, _ = fake_trt
    install(monkeypatch, gpu)
    trt_module = __import__("sys").modules["tensorrt"]
    monkeypatch.setattr(trt_module.IExecutionContext, "set_tensor_address", lambda *a: False)
    with pytest.raises(BackendError, match="refused the buffer address of 'images'"), \
            open_backend(engine):
        pass
    assert gpu.leftover() == {}


def test_tensorrt_teardown_and_no_context_left_pushed(fake_trt: Any) -> None:
    """Between calls no context stays pushed (nothing for pycuda to abort on at exit); close
    drops context, engine and runtime, then frees all four device buffers."""
    gpu, engine, _, _ = fake_trt
    with open_backend(engine) as trt:
        assert gpu.leftover() == {}
        trt.infer(images(1))
        assert gpu.leftover() == {}
    assert trt._context is None and trt._engine is None and trt._runtime is None
    assert len(gpu.freed) == 4 and gpu.leftover() == {}
    if gpu.cuda == "cuda-bindings":  # pinned buffers freed, stream and events destroyed, the
        assert len(gpu.freed_host) == 4 and gpu.retained == 0  # primary context released
        assert {"cuStreamDestroy", "cuEventDestroy"} <= set(gpu.cuda_calls)


def test_tensorrt_other_threads_infer_and_close(fake_trt: Any) -> None:
    """pycuda's Context.pop is static (the calling thread's top): a worker thread infers and
    another thread closes without ever popping a context it did not push."""
    gpu, engine, _, _ = fake_trt
    backend = TensorRTBackend(engine)
    backend.__enter__()
    result: Dict[str, Any] = {}

    def work() -> None:
        result["out"] = backend.infer(images(2))
        with backend.thread_context():
            result["inside"] = dict(gpu.leftover())
        result["after"] = dict(gpu.leftover())

    def close() -> None:
        backend.close()

    for target in (work, close):
        t = threading.Thread(target=target)
        t.start()
        t.join()
    assert result["out"]["probs"].shape == (2, len(CLASSES))
    assert list(result["inside"].values()) == [1] and result["after"] == {}
    assert len(gpu.freed) == 4 and gpu.leftover() == {}


def test_tensorrt_inference_holds_the_lock(fake_trt: Any) -> None:
    """One execution context, stream and set of pinned buffers: inference runs under the
    backend's lock, so another thread cannot interleave its shapes and copies."""
    gpu, engine, _, spec = fake_trt
    seen: List[bool] = []
    run = spec.fn

    def probe(batch: np.ndarray) -> Dict[str, np.ndarray]:
        box: Dict[str, bool] = {}
        t = threading.Thread(target=lambda: box.update(free=backend._lock.acquire(False)))
        t.start()
        t.join()
        if box["free"]:
            backend._lock.release()
        seen.append(box["free"])
        return run(batch)

    spec.fn = probe
    with open_backend(engine) as backend:
        backend.infer(images(2))
    assert seen == [False]


def test_unclosed_backend_is_freed_by_its_finaliser(fake_trt: Any) -> None:
    gpu, engine, _, _ = fake_trt
    backend = TensorRTBackend(engine)
    backend.__enter__()
    backend.infer(images(1))
    assert gpu.leftover() == {} and gpu.freed == []
    del backend
    gc.collect()
    assert len(gpu.freed) == 4 and gpu.leftover() == {}


def test_one_process_wide_tensorrt_logger(fake_trt: Any) -> None:
    gpu, engine, _, _ = fake_trt
    with open_backend(engine), open_backend(engine):
        pass
    assert len(gpu.loggers) == 1


def test_tensorrt_fp16_input_and_gpu_time(
    models: Dict[str, Path], monkeypatch: Any, tmp_path: Path
) -> None:
    """An engine with FP16 I/O gets an FP16 pinned input buffer and `infer_timed` returns the
    CUDA-event time summed over chunks."""
    gpu, engine = _engine(tmp_path, monkeypatch, models["onnx"], profile=(1, 1, 2),
                          input_dtype="HALF")
    with open_backend(engine) as trt:
        assert trt._input.host.dtype == np.float16
        out, gpu_ms = trt.infer_timed(images(3))
    assert gpu_ms == pytest.approx(3.0) and out["probs"].shape == (3, 7)


def test_tensorrt_timed_call_of_a_checked_batch_does_not_scan_it_again(
    models: Dict[str, Path], monkeypatch: Any, tmp_path: Path
) -> None:
    """bench checks the batch (check_input) outside its timed region; the timed
    `infer_timed(checked, checked=True)` must not run the pass over the values again (a
    counted np.isfinite), but still refuses a batch of the wrong shape."""
    import grefel.runtime.base as base

    gpu, engine = _engine(tmp_path, monkeypatch, models["onnx"], profile=(1, 1, 4))
    scans: List[int] = []
    real = np.isfinite
    monkeypatch.setattr(base.np, "isfinite", lambda a: (scans.append(np.size(a)), real(a))[1])
    with open_backend(engine) as trt:
        x = images(3)
        checked = trt.check_input(x)
        input_scans = [n for n in scans if n == x.size]
        assert len(input_scans) == 1
        out, _ = trt.infer_timed(checked, checked=True)
        assert [n for n in scans if n == x.size] == input_scans  # no second scan of the input
        assert out["probs"].shape == (3, 7)
        trt.infer_timed(x)  # unchecked: scanned inside
        assert len([n for n in scans if n == x.size]) == 2
        with pytest.raises(BackendError, match="shape"):
            trt.infer_timed(x[:, :2], checked=True)


def test_tensorrt_fixed_batch_engine_pads_the_last_chunk(
    models: Dict[str, Path], monkeypatch: Any, tmp_path: Path
) -> None:
    """A static batch-4 engine runs 5 images as 4 + (1 padded)."""
    gpu, engine = _engine(tmp_path, monkeypatch, models["onnx"], static=4)
    x = images(5, seed=3)
    with open_backend(engine) as trt:
        out = trt.infer(x)
    with open_backend(models["onnx"]) as ox:
        ref = ox.infer(x)
    np.testing.assert_allclose(out["probs"], ref["probs"], atol=1e-5)
    assert _runs(gpu) == [4, 4]


def test_tensorrt_reads_only_the_export_sidecar_layout(fake_trt: Any) -> None:
    """Checks our glue, not TensorRT: the sidecar export writes is read through the contract
    (`versions: {tensorrt, gpu, compute_capability}`, `class_names`); the old flat layout
    without a format version is refused with one line naming the file."""
    import json

    _, engine, _, _ = fake_trt
    with open_backend(engine) as trt:
        assert trt.classes == CLASSES
    rt.write_sidecar(engine, compute_capability="7.2")
    with pytest.raises(BackendError, match="compute capability 7.2"), open_backend(engine):
        pass
    flat = {"tensorrt_version": "10.3.0", "gpu_name": "Fake Orin", "classes": list(CLASSES)}
    engine.with_suffix(".json").write_text(json.dumps(flat))
    with pytest.raises(BackendError, match=r"\.json: sidecar format None"), open_backend(engine):
        pass


@pytest.mark.parametrize(
    "sidecar, message",
    [
        ({"tensorrt": "8.5.2.2"}, "TensorRT 8.5.2.2 (running 10.3.0)"),
        (
            {"gpu": "NVIDIA GeForce RTX 4090", "compute_capability": [8, 9]},
            "compute capability 8.9 (running 8.7)",
        ),
    ],
)
def test_tensorrt_refuses_foreign_engine(
    fake_trt: Any, sidecar: Dict[str, Any], message: str
) -> None:
    gpu, engine, _, _ = fake_trt
    rt.write_sidecar(engine, **sidecar)
    with pytest.raises(BackendError, match="rebuild it here") as err, open_backend(engine):
        pass
    assert message in str(err.value)
    assert not any(c.cls == "Runtime" for c in gpu.calls)


def test_tensorrt_not_an_engine_and_missing_sidecar(fake_trt: Any, caplog: Any) -> None:
    """None from deserialize_cuda_engine becomes a clear error (and the pushed context is
    popped again); a missing sidecar only warns."""
    import logging

    gpu, engine, _, _ = fake_trt
    engine.write_bytes(b"this is not a plan")
    engine.with_suffix(".json").unlink()
    backend = open_backend(engine)
    with caplog.at_level(logging.WARNING), pytest.raises(BackendError) as err, backend:
        pass
    assert "not a TensorRT engine, or built by another TensorRT version" in str(err.value)
    assert "no sidecar" in caplog.text
    assert gpu.leftover() == {}


@pytest.mark.parametrize(
    "gpu_kw, index, messages",
    [
        ({"no_gpu": True}, 0, {
            "pycuda": "cannot use CUDA device 0 (RuntimeError: cuInit failed: no CUDA-capable "
                      "device is detected)",
            "cuda-bindings": "cannot use CUDA device 0 (cuInit failed: CUDA_ERROR_NO_DEVICE (no "
                             "CUDA-capable device is detected))"}),
        ({}, 3, {
            "pycuda": "cannot use CUDA device 3 (LogicError: cuDeviceGet failed: invalid device "
                      "ordinal)",
            "cuda-bindings": "cannot use CUDA device 3 (cuDeviceGet failed: "
                             "CUDA_ERROR_INVALID_DEVICE (invalid device ordinal))"}),
    ],
)
def test_cuda_errors_become_one_backend_error(
    fake_trt: Any, monkeypatch: Any, gpu_kw: Dict[str, Any], index: int,
    messages: Dict[str, str], cuda_layer: str
) -> None:
    """Each layer's CUDA error reaches the user as one line naming the call and the error."""
    _, engine, _, spec = fake_trt
    gpu = Gpu(engines={b"FAKEPLAN": spec}, **gpu_kw)
    install(monkeypatch, gpu)
    with pytest.raises(BackendError) as err, TensorRTBackend(engine, gpu=index):
        pass
    assert messages[cuda_layer] in str(err.value) and "\n" not in str(err.value)
    assert gpu.leftover() == {} and gpu.retained == 0


def test_raw_tensorrt_errors_become_backend_errors(fake_trt: Any, monkeypatch: Any) -> None:
    gpu, engine, _, spec = fake_trt
    trt_module = __import__("sys").modules["tensorrt"]

    def boom(self: Any, plan: Any) -> None:
        raise RuntimeError("std::exception: CUDA error 700")

    monkeypatch.setattr(trt_module.Runtime, "deserialize_cuda_engine", boom)
    with pytest.raises(BackendError, match="could not load this engine .RuntimeError: "
                       "std::exception: CUDA error 700"), open_backend(engine):
        pass
    assert gpu.leftover() == {}
    monkeypatch.undo()
    install(monkeypatch, gpu)

    def bad_run(batch: np.ndarray) -> Dict[str, np.ndarray]:
        raise MemoryError("cuMemcpy failed: out of memory")

    spec.fn = bad_run
    with open_backend(engine) as trt, pytest.raises(
            BackendError, match="inference failed .MemoryError: cuMemcpy failed"):
        trt.infer(images(1))
    assert gpu.leftover() == {}


def test_predict_and_bench_without_a_gpu_print_one_line(
    fake_trt: Any, monkeypatch: Any, tmp_path: Path
) -> None:
    """predict exits 1 with one line; bench records one status line for the engine."""
    from click.testing import CliRunner
    from PIL import Image

    from benchmarks.latency import Target, run
    from grefel.cli import cli

    _, engine, _, spec = fake_trt
    install(monkeypatch, Gpu(no_gpu=True, engines={b"FAKEPLAN": spec}))
    image = tmp_path / "face.png"
    Image.fromarray(np.zeros((112, 112, 3), np.uint8)).save(image)
    res = CliRunner().invoke(cli, ["predict", str(image), "-w", str(engine), "--aligned"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    lines = [line for line in res.output.splitlines() if "cannot use CUDA device" in line]
    assert len(lines) == 1 and "no CUDA-capable device" in lines[0]
    rows = run([Target("e", "tensorrt", engine)], [1], min_iters=1, min_seconds=0.0)
    assert rows[0].status.startswith("unavailable: ") and "cannot use CUDA device" in rows[0].status


def test_the_cuda_layer_is_chosen_at_open(fake_trt: Any, monkeypatch: Any, cuda_layer: str) -> None:
    """cuda-bindings when it imports, else pycuda; GREFEL_CUDA or cuda= forces one; a forced
    layer that is missing, or an unknown name, is one line."""
    from grefel._lazy import MissingDependency

    gpu, engine, _, _ = fake_trt
    with open_backend(engine) as trt:
        assert trt.cuda_layer == cuda_layer
    monkeypatch.setenv("GREFEL_CUDA", "pycuda")
    with open_backend(engine) as trt:
        assert trt.cuda_layer == "pycuda"
    monkeypatch.setenv("GREFEL_CUDA", "cuda-bindings")
    if cuda_layer == "pycuda":  # the fake cuda.bindings is not importable
        with pytest.raises(MissingDependency, match="cuda-bindings==12"), open_backend(engine):
            pass
    with TensorRTBackend(engine, cuda="pycuda") as trt:
        assert trt.cuda_layer == "pycuda"
    monkeypatch.setenv("GREFEL_CUDA", "cupy")
    with pytest.raises(MissingDependency, match="GREFEL_CUDA='cupy': use one of cuda-bindings, "
                       "pycuda"), open_backend(engine):
        pass
    assert gpu.leftover() == {}


def test_a_cuda_error_in_inference_is_one_line(fake_trt: Any, monkeypatch: Any,
                                               cuda_layer: str) -> None:
    """A failed copy ends the inference with one BackendError naming the call and the CUDA
    error, and leaves no context pushed."""
    gpu, engine, cuda, _ = fake_trt
    if cuda_layer == "cuda-bindings":
        gpu.cuda_fail["cuMemcpyHtoDAsync"] = "CUDA_ERROR_ILLEGAL_ADDRESS"
        expected = "inference failed (cuMemcpyHtoDAsync failed: CUDA_ERROR_ILLEGAL_ADDRESS"
    else:
        def illegal(*args: Any) -> None:
            raise cuda.LogicError("cuMemcpyHtoDAsync failed: an illegal memory access was "
                                  "encountered")

        monkeypatch.setattr(cuda, "memcpy_htod_async", illegal)
        expected = "inference failed (LogicError: cuMemcpyHtoDAsync failed: an illegal memory"
    with open_backend(engine) as trt, pytest.raises(BackendError) as err:
        trt.infer(images(1))
    assert expected in str(err.value) and "\n" not in str(err.value)
    assert gpu.leftover() == {} and len(gpu.freed) == 4


def test_cuda_graph_captures_once_per_shape_and_replays(
    models: Dict[str, Path], monkeypatch: Any, tmp_path: Path, cuda_layer: str, caplog: Any
) -> None:
    """--cuda-graph on cuda-bindings: per input shape one warm-up enqueue, one capture (which
    runs nothing), then replays, with outputs equal to ONNX Runtime's every time. On pycuda one
    warning and plain enqueues."""
    import logging

    gpu, engine = _engine(tmp_path, monkeypatch, models["onnx"], profile=(1, 1, 4))
    x = images(6, seed=4)
    with open_backend(models["onnx"]) as ox:
        ref = ox.infer(x)
    with caplog.at_level(logging.WARNING), TensorRTBackend(engine, cuda_graph=True) as trt:
        outs = [trt.infer(x) for _ in range(3)]  # chunks 4 + 2, three times
    for out in outs:
        np.testing.assert_allclose(out["probs"], ref["probs"], atol=1e-5)
    if cuda_layer == "cuda-bindings":
        # run 1: warm-up enqueues of 4 and 2; run 2: both captured, then launched; run 3: two
        # launches
        assert (gpu.enqueues, gpu.graph_launches) == (2, 4) and not caplog.text
        assert gpu.cuda_calls.count("cuStreamBeginCapture") == 2
        assert gpu.cuda_calls.count("cuGraphExecDestroy") == 2
    else:
        assert (gpu.enqueues, gpu.graph_launches) == (6, 0)
        assert "--cuda-graph needs cuda-bindings (pycuda is in use)" in caplog.text


@pytest.mark.parametrize("cuda_layer", ["cuda-bindings"], indirect=True)  # capture: bindings only
def test_cuda_graph_capture_failure_falls_back_with_one_warning(
    models: Dict[str, Path], monkeypatch: Any, tmp_path: Path, cuda_layer: str, caplog: Any
) -> None:
    import logging

    gpu, engine = _engine(tmp_path, monkeypatch, models["onnx"], profile=(1, 1, 4))
    gpu.cuda_fail["cuGraphInstantiate"] = "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED"
    x = images(3, seed=5)
    with open_backend(models["onnx"]) as ox:
        ref = ox.infer(x)
    with caplog.at_level(logging.WARNING), TensorRTBackend(engine, cuda_graph=True) as trt:
        outs = [trt.infer(x) for _ in range(3)]
        assert trt.cuda_graph is False
    for out in outs:
        np.testing.assert_allclose(out["probs"], ref["probs"], atol=1e-5)
    warnings = [r.getMessage() for r in caplog.records if "CUDA graph capture failed" in
                r.getMessage()]
    assert len(warnings) == 1 and "cuGraphInstantiate failed: " \
        "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED" in warnings[0]
    assert gpu.capturing == {} and gpu.graph_launches == 0 and gpu.enqueues == 3


@pytest.mark.parametrize("cuda_layer", ["cuda-bindings"], indirect=True)
def test_cuda_graph_flag_reaches_the_backend_from_predict_and_bench(
    fake_trt: Any, monkeypatch: Any, tmp_path: Path, cuda_layer: str
) -> None:
    """`--cuda-graph` on predict and bench opens the engine with cuda_graph=True."""
    from click.testing import CliRunner
    from PIL import Image

    from benchmarks.latency import Target, run
    from grefel.cli import cli

    seen: List[bool] = []
    real_init = TensorRTBackend.__init__

    def spy(self: Any, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        seen.append(self.cuda_graph)

    monkeypatch.setattr(TensorRTBackend, "__init__", spy)
    _, engine, _, _ = fake_trt
    image = tmp_path / "face.png"
    Image.fromarray(np.zeros((112, 112, 3), np.uint8)).save(image)
    res = CliRunner().invoke(cli, ["predict", str(image), "-w", str(engine), "--aligned",
                                   "--cuda-graph", "--out", str(tmp_path / "p.jsonl")])
    assert res.exit_code == 0, res.output
    rows = run([Target("e", "tensorrt", engine)], [1], min_iters=1, min_seconds=0.0,
               cuda_graph=True)
    assert rows[0].status == "ok" and seen == [True, True]
    import benchmarks.report as report

    kwargs: Dict[str, Any] = {}

    def record_call(**kw: Any) -> Any:
        kwargs.update(kw)
        raise report.BenchError("stop here")

    monkeypatch.setattr(report, "run_bench", record_call)
    res = CliRunner().invoke(cli, ["bench", "-w", str(engine), "--cuda-graph", "--out",
                                   str(tmp_path / "bench")])
    assert "stop here" in res.output and kwargs["opts"].cuda_graph is True


def test_the_sidecar_names_the_gpu_as_the_runtime_reads_it(fake_trt: Any, cuda_layer: str,
                                                            monkeypatch: Any) -> None:
    """export's sidecar takes the GPU name and compute capability from the same CUDA layer
    the backend compares them with (nvidia-smi's name differs on Jetson), never nvidia-smi
    when a layer works."""
    import subprocess

    from export.sidecar import device_info

    def no_smi(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("nvidia-smi asked although a CUDA layer works")

    monkeypatch.setattr(subprocess, "run", no_smi)
    gpu, engine, _, _ = fake_trt
    info = device_info()
    assert (info["gpu"], info["compute_capability"], info["cuda_layer"]) == (
        "Fake Orin", "8.7", cuda_layer)
    assert info["cuda_driver_version"] in (12060,) and gpu.leftover() == {}
    with open_backend(engine) as trt:
        assert trt.device == f"cuda:0 ({info['gpu']})"
