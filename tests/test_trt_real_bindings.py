"""Every TensorRT call our builder, `--verify` and runtime make, checked per TensorRT version
on the code path where it runs: against the committed API snapshots (8.5.2, 8.6.1, 10.3.0,
10.13.0.35, 11.4.0.106) and against the real pybind bindings of 8.6.1, 10.3.0, 10.13.0.35 and
11.4.0.106, without a GPU.

1. The calls: `export.trt_builder.build_engine`, `grefel.runtime.trt_backend.TensorRTBackend`
   (which `--verify`, `predict` and `bench` use) and `grefel check`'s preflight (benchmarks.check)
   run against the shared fake of each generation (tests/fakes/trt.py), which records every
   TensorRT member they touch with its arguments:
   FP16 (weak on 8.x, strongly typed on 10.x/11.x), INT8 from the QDQ ONNX (BuilderFlag.INT8
   on 8.x/10.x, strongly typed on 11.x, also on DLA), FP32 with and without TF32, DLA, timing
   cache load/fresh/merge; engines with a dynamic profile (min > 1), a static batch and FP16 I/O.
2. Snapshots (always, no download): each recorded call exists in that generation's snapshot.
3. Real bindings: the PyPI wheels `tensorrt-bindings==8.6.1`, `tensorrt-cu12-bindings==10.3.0`,
   `==10.13.0.35`, `==11.4.0.106` (about 1 MB each; `make test` fetches them into `.whl/trt`,
   or set GREFEL_TRT_WHEELS) are extracted and imported in a child process, with the 9 C entry
   points they link compiled at test time with gcc as stand-in libnvinfer / libnvonnxparser /
   libnvinfer_plugin (+ libnvparsers on 8.x) of the right soname. The child
   (tests/trt_real/probe.py) replays every recorded call: the member must exist, and pybind11
   must accept the argument types we pass (a call on an uninitialised instance in a forked
   child: "incompatible function arguments" = rejected). Negative controls (a string flag,
   `set_timing_cache(None, ...)`, a float pool size) must be rejected. It also checks that the
   committed snapshot is the real module's (classes, members, enum values).
   A missing wheel or gcc is a visible skip with the reason (pytest -ra); with
   GREFEL_REQUIRE_TRT_BINDINGS=1 (what `make test`, i.e. CI, sets) it is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
from fakes import unavailable
from fakes.trt import (
    FAKE_CLASSES,
    GENERATIONS,
    SNAPSHOTS,
    Call,
    EngineSpec,
    Gpu,
    install,
    make_fakes,
    surface,
)

ROOT = Path(__file__).resolve().parents[1]
PROBE = Path(__file__).resolve().parent / "trt_real" / "probe.py"
WHEELS = {"8.6.1": "tensorrt_bindings", "10.3.0": "tensorrt_cu12_bindings",
          "10.13.0.35": "tensorrt_cu12_bindings", "11.4.0.106": "tensorrt_cu12_bindings"}
GEN_OF = {v: g for g, v in GENERATIONS.items()}
OUTPUTS = {"probs": (7,), "primary": (7,), "confidence": ()}
NEGATIVE = [  # what the real bindings must reject (proves the acceptance check discriminates)
    {"cls": "IBuilderConfig", "member": "set_flag", "kind": "method", "args": [{"str": "FP16"}]},
    {"cls": "IBuilderConfig", "member": "set_timing_cache", "kind": "method",
     "args": [{"none": None}, {"bool": False}]},
    {"cls": "IBuilderConfig", "member": "set_memory_pool_limit", "kind": "method",
     "args": [{"enum": "MemoryPoolType", "name": "WORKSPACE"}, {"float": 1.5}]},
    {"cls": "IExecutionContext", "member": "execute_async_v3", "kind": "method",
     "args": [{"none": None}]},
]


def _fn(batch: np.ndarray) -> Dict[str, np.ndarray]:
    p = np.full((len(batch), 7), 1 / 7, np.float32)
    return {"probs": p, "primary": p, "confidence": p.max(1)}


def exercise(gen: str, tmp: Path, monkeypatch: Any) -> List[Call]:
    """Run every builder and backend code path on the fake of `gen`; the calls it recorded."""
    from export import ExportError
    from export.trt_builder import BuildOptions, build_engine
    from grefel.runtime.trt_backend import TensorRTBackend

    engines = {b"DYN": EngineSpec(_fn, OUTPUTS, profile=(4, 4, 8)),
               b"STATIC": EngineSpec(_fn, OUTPUTS, static=4),
               b"HALF": EngineSpec(_fn, OUTPUTS, profile=(1, 2, 4), input_dtype="HALF",
                                   output_dtype="HALF")}
    gpu = Gpu(gen=gen, engines=engines)
    install(monkeypatch, gpu)
    cache = tmp / "timing.cache"
    onnx = {"onnx_fp16": tmp / "m.fp16.onnx", "fp32_layers": ["/model/fusion/se/Mul", "Gemm_4"],
            "log": str}
    gpu.parse_errors = ["node /x: Unsupported op Foo"]
    with pytest.raises(ExportError, match="Unsupported op Foo"):
        build_engine(tmp / "m.onnx", tmp / "m.engine", BuildOptions(), **onnx)
    gpu.parse_errors = ()
    for opts in (BuildOptions(workspace_gib=1.5, timing_cache=cache, batch=2),
                 BuildOptions(timing_cache=cache), BuildOptions(dla_core=0),
                 BuildOptions(fp16=False), BuildOptions(fp16=False, tf32=False),
                 BuildOptions(int8=True), BuildOptions(int8=True, dla_core=0)):
        build_engine(tmp / "m.onnx", tmp / "m.engine", opts, onnx_int8=tmp / "m.int8.onnx",
                     **onnx)
    gpu.on_build = lambda: cache.write_bytes(b"TCACHE:Fake Orin:other")
    build_engine(tmp / "m.onnx", tmp / "m.engine", BuildOptions(timing_cache=cache), **onnx)
    gpu.on_build = None
    cache.write_bytes(b"unreadable")
    build_engine(tmp / "m.onnx", tmp / "m.engine", BuildOptions(timing_cache=cache), **onnx)
    from benchmarks.check import device_facts

    device_facts()  # `grefel check`'s preflight: typing modes, the builder's DLA cores
    x = np.zeros((10, 3, 112, 112), np.float32)
    for plan in engines:
        (tmp / "e.engine").write_bytes(plan)
        with TensorRTBackend(tmp / "e.engine", sidecar=False) as backend:
            backend.infer_timed(x)
    unique: Dict[tuple, Call] = {}
    for call in gpu.calls:
        unique.setdefault((call.cls, call.member, call.kind, json.dumps(call.args)), call)
    return list(unique.values())


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: Any) -> Dict[str, List[Call]]:
    out = {}
    for gen in GENERATIONS:
        with pytest.MonkeyPatch.context() as mp:
            out[gen] = exercise(gen, tmp_path_factory.mktemp(f"calls{gen}"), mp)
    return out


# --- snapshots: presence per generation --------------------------------------------------------
@pytest.mark.parametrize("gen", list(GENERATIONS))
def test_every_call_exists_in_the_snapshot_of_its_generation(gen: str, recorded: Any) -> None:
    snap = surface(gen)["classes"]
    missing = []
    for call in recorded[gen]:
        cls = snap.get(call.cls.split(".")[-1] if call.cls == "ILogger.Severity" else call.cls)
        if call.cls == "tensorrt":
            top = surface(gen)
            ok = call.member in snap or call.member in top["constants"] or (
                call.member in top["functions"])
        elif call.cls == "ILogger.Severity":
            ok = call.member in snap["Logger"]["enum"]
        elif call.kind == "enum":
            ok = cls is not None and call.member in cls.get("enum", {})
        elif call.kind == "init":
            ok = cls is not None
        else:
            ok = cls is not None and call.member in cls["members"]
        if not ok:
            missing.append(call)
    assert not missing
    methods = {(c.cls, c.member) for c in recorded[gen] if c.kind in ("method", "init", "set")}
    assert ("IExecutionContext", "set_input_shape") in methods
    assert ("IBuilderConfig", "can_run_on_DLA") in methods
    weak = ("ILayer", "set_output_type") in methods
    assert weak == (gen in ("8.5", "8.6"))  # weak typing only where STRONGLY_TYPED is missing
    assert ("OnnxParser", "get_error") in methods
    assert not any(c.member == "nptype" for c in recorded[gen])  # broken on 8.5.2


# --- the fake against the snapshots -------------------------------------------------------------
@pytest.mark.parametrize("gen", list(GENERATIONS))
def test_every_public_member_of_the_fake_exists_in_the_real_surface(gen: str) -> None:
    """The fake cannot invent API: each public member of each fake class is a member of that
    real class in some generation, and what the fake of `gen` lets through is in `gen`'s
    snapshot; enum members and values are that generation's."""
    trt, _ = make_fakes(Gpu(gen=gen))
    snap = surface(gen)["classes"]
    union = {name: set().union(*(surface(g)["classes"][name]["members"] for g in GENERATIONS))
             for name in FAKE_CLASSES}
    for name in FAKE_CLASSES:
        cls = getattr(trt, name)
        public = {m for m in vars(cls) if not m.startswith("_")} - {"Severity"}
        public -= set(snap[name].get("enum", {}))  # Logger.WARNING etc.
        assert public <= union[name], (name, public - union[name])
        for member in public:
            if member not in snap[name]["members"]:
                with pytest.raises(AttributeError):
                    getattr(object.__new__(cls), member)
    for name in ("DataType", "BuilderFlag", "NetworkDefinitionCreationFlag", "LayerType"):
        fake = {k: int(m) for k, m in getattr(trt, name).__members__.items()}
        assert fake == snap[name]["enum"]


def test_fake_pycuda_only_has_pycuda_names() -> None:
    """pycuda 2026.1 (src/wrapper/wrap_cudadrv.cpp) has each name the fake offers."""
    real = {"init", "Device", "Context", "Stream", "Event", "DeviceAllocation",
            "pagelocked_empty", "mem_alloc", "memcpy_htod_async", "memcpy_dtoh_async",
            "get_driver_version", "get_version", "Error", "LogicError", "RuntimeError"}
    _, cuda = make_fakes(Gpu())
    assert {n for n in vars(cuda) if not n.startswith("_")} <= real
    assert isinstance(vars(cuda.Context)["pop"], staticmethod)  # pycuda's static pop


# --- the real bindings --------------------------------------------------------------------------
def _wheel(version: str) -> Path:
    folder = Path(os.environ.get("GREFEL_TRT_WHEELS", ROOT / ".whl" / "trt"))
    tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    found = sorted(folder.glob(f"{WHEELS[version]}-{version}-{tag}-*.whl"))
    if not found:
        unavailable(f"real TensorRT {version} bindings not tested: no {WHEELS[version]} "
                     f"{version} {tag} wheel in {folder} (run `make trt-bindings`)")
    return found[0]


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: Any) -> Path:
    """Stand-in native libraries per major version, compiled with gcc / g++."""
    if shutil.which("gcc") is None or shutil.which("g++") is None:
        unavailable("real TensorRT bindings not tested: gcc/g++ not found")
    src = PROBE.parent
    root = tmp_path_factory.mktemp("trt-stubs")
    for major in ("8", "10", "11"):
        out = root / major
        out.mkdir()
        for lib in ("libnvinfer", "libnvonnxparser", "libnvinfer_plugin"):
            subprocess.run(["gcc", "-shared", "-fPIC", f"-Wl,-soname,{lib}.so.{major}", "-o",
                            str(out / f"{lib}.so.{major}"), str(src / "stubs.c")], check=True)
        if major == "8":
            subprocess.run(["g++", "-shared", "-fPIC", "-Wl,-soname,libnvparsers.so.8", "-o",
                            str(out / "libnvparsers.so.8"), str(src / "stubs8.cc")], check=True)
    return root


@pytest.mark.parametrize("version", list(WHEELS))
def test_real_bindings_accept_every_call(
    version: str, recorded: Any, stubs: Path, tmp_path: Path
) -> None:
    wheel = _wheel(version)
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(tmp_path / "wheel")
    gen = GEN_OF[version]
    calls = [dict(asdict(c), args=list(c.args), expect="ok") for c in recorded[gen]]
    calls += [dict(c, expect="rejected") for c in NEGATIVE]
    (tmp_path / "calls.json").write_text(json.dumps(calls))
    out = tmp_path / "out.json"
    major = version.split(".")[0]
    proc = subprocess.run(
        [sys.executable, str(PROBE), str(stubs / major), str(tmp_path / "wheel"),
         str(tmp_path / "calls.json"), str(SNAPSHOTS / f"trt-{version}.json"), str(out)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["version"] == version and result["snapshot_problems"] == []
    bad = [(r["cls"], r["member"], r["kind"], r["args"], r["status"])
           for r in result["results"] if r["expect"] == "ok"
           and r["status"] not in ("accepted", "present")]
    assert not bad
    negatives = [r["status"] for r in result["results"] if r["expect"] == "rejected"]
    assert negatives == ["rejected"] * len(NEGATIVE)
    checked = sum(r["expect"] == "ok" for r in result["results"])
    print(f"TensorRT {version}: {checked} calls checked against the real bindings")
