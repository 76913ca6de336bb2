"""Backends behind one interface: PyTorch, ONNX Runtime and TensorRT (with recording fakes).

The TensorRT tests replace `tensorrt` and `pycuda.driver` by small recording fakes whose
"engine" runs the same ONNX model in ONNX Runtime: they check our glue (tensor-name API calls,
buffers, chunking, context handling, error messages), not TensorRT.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import threading
import types
from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np
import pytest

from grefel.runtime import BackendError, open_backend

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger")
NAMES = ["probs", "primary", "confidence"]


# -- shared fixtures (also imported by test_predict.py) -------------------------------------------


def make_models(folder: Path) -> Dict[str, Path]:
    """A seeded tiny GReFEL as checkpoint + dynamic-batch ONNX (+ class metadata) in `folder`."""
    import onnx
    import torch

    from grefel.checkpoint import save_checkpoint
    from grefel.model import create_model

    torch.manual_seed(0)
    model = create_model("tiny", class_names=CLASSES).eval()
    ckpt = save_checkpoint(folder / "tiny.safetensors", model)

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, images: torch.Tensor):
            out = self.model(images)
            return out.probs, out.primary, out.confidence

    onnx_path = folder / "tiny.onnx"
    with torch.no_grad():
        torch.onnx.export(
            Wrapper().eval(),
            (torch.rand(2, 3, 112, 112),),
            str(onnx_path),
            dynamo=False,
            opset_version=17,
            input_names=["images"],
            output_names=NAMES,
            dynamic_axes={n: {0: "batch"} for n in ["images", *NAMES]},
        )
    proto = onnx.load(str(onnx_path))
    proto.metadata_props.add(key="grefel.class_names", value=json.dumps(list(CLASSES)))
    onnx.save(proto, str(onnx_path))
    return {"ckpt": ckpt, "onnx": onnx_path}


@functools.lru_cache(maxsize=None)
def _shared_models() -> Dict[str, Path]:
    folder = Path(tempfile.mkdtemp(prefix="grefel-test-models-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return make_models(folder)


@pytest.fixture()
def models() -> Dict[str, Path]:
    """Built once per test session (test_predict.py shares them through this module)."""
    return _shared_models()


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, 112, 112), dtype=np.float32)


# -- TensorRT / pycuda fakes ----------------------------------------------------------------------


class FakeCuda(types.ModuleType):
    """`pycuda.driver` stand-in: host/device buffers are numpy arrays; every call is recorded."""

    def __init__(self, calls: List[Any], gpu: str = "Fake Orin", cc: tuple = (8, 7)) -> None:
        super().__init__("pycuda.driver")
        self.calls, self.gpu, self.cc = calls, gpu, cc
        self.allocs: Dict[int, np.ndarray] = {}
        fake = self

        class Context:
            def push(self) -> None:
                fake.calls.append(("ctx.push", threading.get_ident()))

            def pop(self) -> None:
                fake.calls.append(("ctx.pop", threading.get_ident()))

        class Device:
            def __init__(self, index: int) -> None:
                fake.calls.append(("Device", index))

            def name(self) -> str:
                return fake.gpu

            def compute_capability(self) -> tuple:
                return fake.cc

            def retain_primary_context(self) -> Context:
                fake.calls.append(("retain_primary_context",))
                return Context()

        class Alloc:
            def __init__(self, nbytes: int) -> None:
                self.buf = np.zeros(nbytes, np.uint8)
                fake.allocs[id(self)] = self.buf

            def __int__(self) -> int:
                return id(self)

            def free(self) -> None:
                fake.calls.append(("free",))

        class Stream:
            handle = 0xBEEF  # never the default stream (0)

            def synchronize(self) -> None:
                fake.calls.append(("synchronize",))

        class Event:
            def record(self, stream: Any) -> None:
                fake.calls.append(("event.record", stream.handle))

            def time_since(self, other: Any) -> float:
                return 1.5

        self.Device, self.Stream, self.Event, self._Alloc = Device, Stream, Event, Alloc

    def init(self) -> None:
        self.calls.append(("init",))

    def pagelocked_empty(self, shape: Any, dtype: Any) -> np.ndarray:
        self.calls.append(("pagelocked_empty", shape, np.dtype(dtype).name))
        return np.empty(shape, dtype)

    def mem_alloc(self, nbytes: int) -> Any:
        self.calls.append(("mem_alloc", nbytes))
        return self._Alloc(nbytes)

    def memcpy_htod_async(self, dest: Any, src: np.ndarray, stream: Any) -> None:
        assert stream.handle != 0
        dest.buf[: src.nbytes] = np.ascontiguousarray(src).view(np.uint8).ravel()

    def memcpy_dtoh_async(self, dest: np.ndarray, src: Any, stream: Any) -> None:
        dest.view(np.uint8)[:] = src.buf[: dest.nbytes]


def make_fake_trt(
    calls: List[Any],
    run: Callable[[np.ndarray], Dict[str, np.ndarray]],
    cuda: FakeCuda,
    version: str = "10.3.0",
    max_batch: int = 4,
    input_dtype: Any = np.float32,
    static: bool = False,
) -> types.ModuleType:
    """`tensorrt` stand-in whose engine computes its outputs with `run` (ONNX Runtime here)."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.Builder = object
    trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    trt.nptype = lambda dt: dt
    widths = {"probs": len(CLASSES), "primary": len(CLASSES), "confidence": None}

    class Context:
        def __init__(self) -> None:
            self.addr: Dict[str, int] = {}
            self.shape = (max_batch, 3, 112, 112)

        def set_input_shape(self, name: str, shape: tuple) -> bool:
            calls.append(("set_input_shape", name, tuple(shape)))
            self.shape = tuple(shape)
            return True

        def set_tensor_address(self, name: str, ptr: int) -> bool:
            calls.append(("set_tensor_address", name))
            self.addr[name] = ptr
            return True

        def get_tensor_shape(self, name: str) -> tuple:
            n = self.shape[0]
            return (n,) if widths[name] is None else (n, widths[name])

        def execute_async_v3(self, handle: int) -> bool:
            calls.append(("execute_async_v3", handle, self.shape[0]))
            count = int(np.prod(self.shape))
            raw = cuda.allocs[self.addr["images"]]
            batch = raw.view(input_dtype)[:count].reshape(self.shape).astype(np.float32)
            for name, value in run(batch).items():
                out = cuda.allocs[self.addr[name]].view(np.float32)
                out[: value.size] = value.ravel()
            return True

        def __del__(self) -> None:
            calls.append(("del context",))

    class Engine:
        num_io_tensors = 4

        def get_tensor_name(self, i: int) -> str:
            return ["images", *NAMES][i]

        def get_tensor_mode(self, name: str) -> str:
            return "INPUT" if name == "images" else "OUTPUT"

        def get_tensor_dtype(self, name: str) -> Any:
            return input_dtype if name == "images" else np.float32

        def get_tensor_shape(self, name: str) -> tuple:
            return (max_batch if static else -1, 3, 112, 112)

        def get_tensor_profile_shape(self, name: str, profile: int) -> list:
            assert not static, "a fixed-shape engine has no optimization profile"
            return [(1, 3, 112, 112), (1, 3, 112, 112), (max_batch, 3, 112, 112)]

        def create_execution_context(self) -> Context:
            return Context()

        def __del__(self) -> None:
            calls.append(("del engine",))

    class Runtime:
        def __init__(self, logger: Any) -> None:
            pass

        def deserialize_cuda_engine(self, plan: bytes) -> Any:
            return Engine() if plan.startswith(b"FAKEPLAN") else None

        def __del__(self) -> None:
            calls.append(("del runtime",))

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            pass

    trt.Runtime, trt.Logger = Runtime, Logger
    return trt


@pytest.fixture()
def fake_trt(models: Dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Install the fakes; returns (calls, engine path, cuda fake). The engine runs the ONNX."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(models["onnx"]), providers=["CPUExecutionProvider"])

    def run(batch: np.ndarray) -> Dict[str, np.ndarray]:
        return dict(zip(NAMES, sess.run(NAMES, {"images": batch})))

    calls: List[Any] = []
    cuda = FakeCuda(calls)
    install_fakes(monkeypatch, calls, run, cuda)
    engine = tmp_path / "tiny.engine"
    engine.write_bytes(b"FAKEPLAN")
    write_sidecar(engine)
    return calls, engine, cuda, run


def install_fakes(
    monkeypatch: pytest.MonkeyPatch, calls: List[Any], run: Any, cuda: FakeCuda, **kw: Any
) -> None:
    pycuda = types.ModuleType("pycuda")
    pycuda.driver = cuda
    monkeypatch.setitem(sys.modules, "pycuda", pycuda)
    monkeypatch.setitem(sys.modules, "pycuda.driver", cuda)
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_trt(calls, run, cuda, **kw))


def write_sidecar(engine: Path, **over: Any) -> None:
    """The engine sidecar as `grefel export` writes it (grefel.contract.engine_sidecar_doc);
    `over` replaces entries of its `versions` (tensorrt, gpu, compute_capability)."""
    from grefel.contract import engine_sidecar_doc

    versions = {"tensorrt": "10.3.0.26", "gpu": "Fake Orin", "compute_capability": "8.7"}
    versions.update(over)
    doc = engine_sidecar_doc(
        engine=engine.name, engine_sha256="", onnx="tiny.onnx", onnx_sha256="",
        onnx_fp32_sha256="", class_names=CLASSES, model_config=None, versions=versions,
        build={}, gates={}, created_utc="2026-01-01T00:00:00Z",
    )
    engine.with_suffix(".json").write_text(json.dumps(doc))


# -- tests ----------------------------------------------------------------------------------------


def test_runtime_imports_no_heavy_module() -> None:
    """grefel.runtime (all modules) and grefel.predict import no torch / ORT / TensorRT / pycuda."""
    code = (
        "import sys, grefel.runtime, grefel.runtime.trt_backend, grefel.runtime.ort_backend, "
        "grefel.runtime.torch_backend, grefel.runtime.preprocess, grefel.runtime.sources, "
        "grefel.predict\n"
        "print(sorted(m for m in ('torch', 'onnxruntime', 'tensorrt', 'pycuda') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.strip() == "[]"


def test_torch_and_onnx_backends_agree(models: Dict[str, Path]) -> None:
    x = images(5)
    with open_backend(models["ckpt"], device="cpu") as pt, open_backend(models["onnx"]) as ox:
        a, b = pt.infer(x), ox.infer(x)
        assert pt.classes == ox.classes == CLASSES
    for name in NAMES:
        assert a[name].shape == b[name].shape
        np.testing.assert_allclose(a[name], b[name], atol=1e-5)
    np.testing.assert_allclose(a["probs"].sum(1), 1.0, atol=1e-5)


def test_tensorrt_glue_agrees_and_chunks(fake_trt: Any, models: Dict[str, Path]) -> None:
    """Checks our glue, not TensorRT: a batch of 10 with profile max 4 runs as 4 + 4 + 2 on the
    non-default stream, through pinned buffers sized for the max, and matches PyTorch."""
    calls, engine, _, _ = fake_trt
    x = images(10, seed=1)
    with open_backend(models["ckpt"], device="cpu") as pt:
        ref = pt.infer(x)
    with open_backend(engine) as trt:
        assert trt.classes == CLASSES and trt.max_batch == 4
        out = trt.infer(x)
    for name in NAMES:
        np.testing.assert_allclose(out[name], ref[name], atol=1e-5)
    runs = [c for c in calls if c[0] == "execute_async_v3"]
    assert [(c[1], c[2]) for c in runs] == [(0xBEEF, 4), (0xBEEF, 4), (0xBEEF, 2)]
    pinned = [c for c in calls if c[0] == "pagelocked_empty"]
    assert ("pagelocked_empty", 4 * 3 * 112 * 112, "float32") in pinned and len(pinned) == 4
    shapes = [c[2] for c in calls if c[0] == "set_input_shape"]
    assert shapes[-3:] == [(4, 3, 112, 112), (4, 3, 112, 112), (2, 3, 112, 112)]


def test_tensorrt_teardown_order_and_primary_context(fake_trt: Any) -> None:
    """Checks our glue, not TensorRT: primary context pushed on enter; on exit the execution
    context, engine and runtime go before the device buffers are freed and the context pops."""
    calls, engine, _, _ = fake_trt
    with open_backend(engine) as trt:
        trt.infer(images(1))
        del calls[:]
    order = [c[0] for c in calls]
    assert order == ["del context", "del engine", "del runtime"] + ["free"] * 4 + ["ctx.pop"]


def test_tensorrt_worker_thread_pushes_context(fake_trt: Any) -> None:
    """Checks our glue, not TensorRT: a worker thread makes the context current around its use."""
    calls, engine, _, _ = fake_trt
    result: Dict[str, Any] = {}
    with open_backend(engine) as trt:

        def work() -> None:
            with trt.thread_context():
                result["out"] = trt.infer(images(2))
            result["tid"] = threading.get_ident()

        t = threading.Thread(target=work)
        t.start()
        t.join()
    tid = result["tid"]
    assert ("ctx.push", tid) in calls and ("ctx.pop", tid) in calls
    assert result["out"]["probs"].shape == (2, len(CLASSES))


def test_tensorrt_fp16_input_and_gpu_time(
    models: Dict[str, Path], monkeypatch: Any, tmp_path: Path
) -> None:
    """Checks our glue, not TensorRT: an engine with FP16 I/O gets an FP16 pinned input buffer
    and `infer_timed` returns the CUDA-event time summed over chunks."""
    calls: List[Any] = []
    cuda = FakeCuda(calls)

    def run(b: np.ndarray) -> Dict[str, np.ndarray]:
        uniform = np.full((len(b), 7), 1 / 7, np.float32)
        return {"probs": uniform, "primary": uniform, "confidence": np.zeros(len(b), np.float32)}

    install_fakes(monkeypatch, calls, run, cuda, input_dtype=np.float16, max_batch=2)
    engine = tmp_path / "fp16.engine"
    engine.write_bytes(b"FAKEPLAN")
    write_sidecar(engine)
    with open_backend(engine) as trt:
        out, gpu_ms = trt.infer_timed(images(3))
    assert ("pagelocked_empty", 2 * 3 * 112 * 112, "float16") in calls
    assert gpu_ms == pytest.approx(3.0) and out["probs"].shape == (3, 7)


def test_tensorrt_fixed_batch_engine_pads_the_last_chunk(
    fake_trt: Any, models: Dict[str, Path], monkeypatch: Any
) -> None:
    """Checks our glue, not TensorRT: a static batch-4 engine runs 5 images as 4 + (1 padded)."""
    calls, engine, cuda, run = fake_trt
    install_fakes(monkeypatch, calls, run, cuda, static=True)
    x = images(5, seed=3)
    with open_backend(engine) as trt:
        out = trt.infer(x)
    with open_backend(models["onnx"]) as ox:
        ref = ox.infer(x)
    np.testing.assert_allclose(out["probs"], ref["probs"], atol=1e-5)
    assert [c[2] for c in calls if c[0] == "execute_async_v3"] == [4, 4]


def test_tensorrt_reads_only_the_export_sidecar_layout(fake_trt: Any) -> None:
    """Checks our glue, not TensorRT: the sidecar export writes is read through the contract
    (`versions: {tensorrt, gpu, compute_capability}`, `class_names`); the old flat layout
    without a format version is refused with one line naming the file."""
    _, engine, _, _ = fake_trt
    with open_backend(engine) as trt:
        assert trt.classes == CLASSES
    write_sidecar(engine, compute_capability="7.2")
    with pytest.raises(BackendError, match="compute capability 7.2"), open_backend(engine):
        pass
    flat = {"tensorrt_version": "10.3.0", "gpu_name": "Fake Orin", "classes": list(CLASSES)}
    engine.with_suffix(".json").write_text(json.dumps(flat))
    with pytest.raises(BackendError, match=r"tiny.json: sidecar format None"), open_backend(
        engine
    ):
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
    """Checks our glue, not TensorRT: the sidecar's build target must match what runs here."""
    calls, engine, _, _ = fake_trt
    write_sidecar(engine, **sidecar)
    with pytest.raises(BackendError, match="rebuild it here") as err, open_backend(engine):
        pass
    assert message in str(err.value)
    assert not any(c[0] == "retain_primary_context" for c in calls)


def test_tensorrt_not_an_engine_and_missing_sidecar(fake_trt: Any, caplog: Any) -> None:
    """Checks our glue, not TensorRT: None from deserialize_cuda_engine becomes a clear error
    (and the pushed context is popped again); a missing sidecar only warns."""
    calls, engine, _, _ = fake_trt
    engine.write_bytes(b"this is not a plan")
    engine.with_suffix(".json").unlink()
    backend = open_backend(engine)
    with caplog.at_level(logging.WARNING), pytest.raises(BackendError) as err, backend:
        pass
    assert "not a TensorRT engine, or built by another TensorRT version" in str(err.value)
    assert "no sidecar" in caplog.text
    assert [c[0] for c in calls].count("ctx.push") == [c[0] for c in calls].count("ctx.pop") == 1


def test_infer_validates_the_batch(models: Dict[str, Path]) -> None:
    backend = open_backend(models["onnx"])
    with pytest.raises(BackendError, match="inside `with`"):
        backend.infer(images(1))
    with backend:
        for bad, msg in [
            (images(1).astype(np.float64), "float32"),
            (np.zeros((1, 3, 64, 64), np.float32), "shape"),
            (np.full((1, 3, 112, 112), np.nan, np.float32), "NaN"),
            ([[0.0]], "numpy array"),
        ]:
            with pytest.raises(BackendError, match=msg):
                backend.infer(bad)


def test_open_backend_rejects_unknown_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="unknown model file type"):
        open_backend(tmp_path / "model.pt")
    with pytest.raises(BackendError, match="no such model file"):
        open_backend(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(BackendError, match="not a loadable ONNX model"), open_backend(bad):
        pass
