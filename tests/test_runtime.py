"""Backends behind one interface: PyTorch, ONNX Runtime and TensorRT (with recording fakes).

The TensorRT backend's tests are in test_runtime_trt.py; the `fake_trt` fixture here (also used
by test_predict.py) installs the shared TensorRT + pycuda fake whose "engine" runs the same ONNX
model in ONNX Runtime.
"""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pytest
from fakes.trt import EngineSpec, Gpu, install

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


# -- TensorRT / pycuda: the shared fake (tests/fakes/trt.py) -------------------------------------


def ort_engine_spec(onnx_path: Path, **kw: Any) -> EngineSpec:
    """A fake engine whose outputs come from the ONNX model in ONNX Runtime."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])

    def run(batch: np.ndarray) -> Dict[str, np.ndarray]:
        return dict(zip(NAMES, sess.run(NAMES, {"images": batch})))

    return EngineSpec(run, {"probs": (len(CLASSES),), "primary": (len(CLASSES),),
                            "confidence": ()}, **kw)


@pytest.fixture()
def fake_trt(models: Dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Install the fakes (TensorRT 10.3, profile 1..4); returns (gpu, engine path, pycuda fake,
    engine spec). The engine runs the ONNX model in ONNX Runtime."""
    spec = ort_engine_spec(models["onnx"], profile=(1, 1, 4))
    gpu = Gpu(gen="10.3", engines={b"FAKEPLAN": spec})
    _, cuda = install(monkeypatch, gpu)
    engine = tmp_path / "tiny.engine"
    engine.write_bytes(b"FAKEPLAN")
    write_sidecar(engine)
    return gpu, engine, cuda, spec


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
        "grefel.runtime.detectors, grefel.pipeline, grefel.predict\n"
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
