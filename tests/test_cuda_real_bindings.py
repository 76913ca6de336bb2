"""grefel's cuda-bindings layer against the real cuda-bindings wheels, without a GPU.

The wheels `cuda-bindings==12.8.0` (the first with `cuda.bindings` as its own package; CUDA 12
drivers: JetPack 6, desktop 12.x), `==12.9.10` (the newest 12.x) and `==13.5.0` (CUDA 13:
JetPack 7, desktop 13.x), with `cuda-pathfinder` (12.9+ find libcuda through it), are fetched by
`make cuda-bindings` into `.whl/cuda` (or set GREFEL_CUDA_WHEELS), extracted and imported in a
child process (tests/cuda_real/probe.py):

- without any libcuda.so.1: the layer's first call is one CudaError naming cuInit (12.8 says
  "Failed to dlopen libcuda.so.1", 12.9+ cuda-pathfinder's DynamicLibNotFoundError);
- with a stand-in libcuda.so.1 (tests/cuda_real/libcuda_stub.c, compiled with gcc at test time;
  it answers cuGetProcAddress_v2, through which the bindings resolve every driver function):
  every function of the fake driver (tests/fakes/cuda_bindings.py) exists in the real module
  with the same parameter names, the enum values agree, the real module rejects a wrong
  argument type (the control), and `BindingsLayer` runs each operation the TensorRT backend
  uses, copies round-tripping through the stub's memory, and reports each CUDA error the
  stub returns as "cuX failed: CUDA_ERROR_...".

A missing wheel or gcc is a visible skip (pytest -ra); with GREFEL_REQUIRE_TRT_BINDINGS=1 (what
`make test`, i.e. CI, sets) it is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any, Dict, List

import pytest
from fakes import unavailable

ROOT = Path(__file__).resolve().parents[1]
PROBE = Path(__file__).resolve().parent / "cuda_real" / "probe.py"
VERSIONS = ("12.8.0", "12.9.10", "13.5.0")


def _wheel(pattern: str) -> Path:
    folder = Path(os.environ.get("GREFEL_CUDA_WHEELS", ROOT / ".whl" / "cuda"))
    found = sorted(folder.glob(pattern))
    if not found:
        unavailable(f"real cuda-bindings not tested: no {pattern} in {folder} "
                     "(run `make cuda-bindings`)")
    return found[-1]


@pytest.fixture(scope="module")
def stub(tmp_path_factory: Any) -> Path:
    if shutil.which("gcc") is None:
        unavailable("real cuda-bindings not tested: gcc not found")
    out = tmp_path_factory.mktemp("libcuda")
    subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o",
                    str(out / "libcuda.so.1"), str(PROBE.parent / "libcuda_stub.c")], check=True)
    return out


@pytest.fixture(scope="module")
def pathfinder(tmp_path_factory: Any) -> Path:
    out = tmp_path_factory.mktemp("pathfinder")
    with zipfile.ZipFile(_wheel("cuda_pathfinder-*-py3-none-any.whl")) as zf:
        zf.extractall(out)
    return out


def _probe(mode: str, paths: List[Path], tmp: Path, env: Dict[str, str]) -> Dict[str, Any]:
    out = tmp / f"{mode}.json"
    proc = subprocess.run([sys.executable, str(PROBE), str(ROOT), str(out), mode,
                           *map(str, paths)], capture_output=True, text=True, timeout=120,
                          cwd=tmp, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert "crash" not in result, result["crash"]
    return result


@pytest.mark.parametrize("version", VERSIONS)
def test_the_cuda_layer_on_the_real_bindings(
    version: str, stub: Path, pathfinder: Path, tmp_path: Path
) -> None:
    tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    with zipfile.ZipFile(_wheel(f"cuda_bindings-{version}-{tag}-*.whl")) as zf:
        zf.extractall(tmp_path / "wheel")
    paths = [tmp_path / "wheel", pathfinder]
    nolib = _probe("nolib", paths, tmp_path, {"LD_LIBRARY_PATH": ""})
    assert nolib["version"] == version
    if nolib.get("system_libcuda"):
        print("a system libcuda.so.1 exists here: the no-driver case is not checked")
    else:
        assert nolib["nolib"].startswith("cuInit failed: ") and "\n" not in nolib["nolib"]
        assert "libcuda" in nolib["nolib"] or "driver library" in nolib["nolib"]
    real = _probe("stub", paths, tmp_path, {"LD_LIBRARY_PATH": str(stub)})
    assert real["signature_problems"] == [] and real["enum_problems"] == []
    assert real["rejected"] == ["cuMemAlloc", "cuCtxPushCurrent"]
    assert real["open"] == ["Stub GPU", "8.7"]
    assert real["versions"] == {"cuda_driver_version": 12080, "cuda_bindings": version}
    assert real["roundtrip"] and real["elapsed"] == 1.5 and real["handle"]
    assert real["errors"] == {
        "ordinal": "cuDeviceGet failed: CUDA_ERROR_INVALID_DEVICE (stub error)",
        "pop": "cuCtxPopCurrent failed: CUDA_ERROR_INVALID_CONTEXT (stub error)",
        "alloc": "cuMemAlloc failed: CUDA_ERROR_OUT_OF_MEMORY (stub error)",
    }
    print(f"cuda-bindings {version}: {real['functions']} functions checked")
