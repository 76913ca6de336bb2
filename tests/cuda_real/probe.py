"""Child process of tests/test_cuda_real_bindings.py: one real cuda-bindings wheel, imported
without a GPU, against grefel's CUDA layer and the fake driver.

    python probe.py ROOT OUT.json MODE PATH...

ROOT is the repository (grefel and tests/fakes are imported from it); PATH... go first on
sys.path (the extracted cuda-bindings wheel, and cuda-pathfinder for 12.9+); MODE is:

- `nolib`: no libcuda.so.1 exists; the layer's first call must be one CudaError naming cuInit.
- `stub`: the stand-in libcuda.so.1 (libcuda_stub.c) is on LD_LIBRARY_PATH. Checks: the fake
  driver's functions have the real parameter names, its enum members the real values; the real
  module rejects a wrong argument type (a control: the acceptance below means something); then
  grefel.runtime.cuda_layer.BindingsLayer runs every operation the TensorRT backend uses
  (context, pinned and device memory, copies that round-trip through the stub's memory, stream,
  events, graph capture, teardown) and the error paths (a bad ordinal, an empty context stack,
  a failing cuMemAlloc), each a one-line CudaError naming the call and the CUDA error.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import traceback
from typing import Any, Dict, List


def _signatures(real: Any, fake: Any, names: List[str]) -> List[str]:
    problems = []
    for name in names:
        if not hasattr(real, name):
            problems.append(f"{name}: missing")
            continue
        want = list(inspect.signature(getattr(real, name)).parameters)
        got = list(inspect.signature(getattr(fake, name)).parameters)
        if want != got:
            problems.append(f"{name}: real {want}, fake {got}")
    return problems


def _enums(real: Any, fake: Any) -> List[str]:
    problems = []
    for enum_name in ("CUresult", "CUdevice_attribute", "CUstreamCaptureMode"):
        for member in getattr(fake, enum_name):
            value = getattr(getattr(real, enum_name), member.name, None)
            if value is None or int(value) != int(member):
                problems.append(f"{enum_name}.{member.name}: real {value}, fake {int(member)}")
    return problems


def _error(fn: Any, *args: Any) -> str:
    from grefel.runtime.cuda_layer import CudaError

    try:
        fn(*args)
    except CudaError as exc:
        return str(exc)
    return "no error"


def _exercise(layer: Any) -> Dict[str, Any]:
    import numpy as np

    out: Dict[str, Any] = {"open": list(layer.open(0)), "versions": layer.versions()}
    layer.push()
    host = layer.pinned(12, np.float32)
    back = layer.pinned(12, np.float32)
    host[:] = np.arange(12, dtype=np.float32)
    device = layer.alloc(host.nbytes)
    stream = layer.stream()
    start, end = layer.event(), layer.event()
    layer.record(start, stream)
    layer.htod(device, host[:8], stream)
    layer.dtoh(back[:8], device, stream)
    layer.record(end, stream)
    layer.synchronize(stream)
    out["roundtrip"] = back[:8].tolist() == host[:8].tolist()
    out["elapsed"] = layer.elapsed_ms(start, end)
    out["handle"] = isinstance(layer.stream_handle(stream), int) and int(device) != 0
    layer.begin_capture(stream)
    graph = layer.end_capture(stream)
    graph_exec = layer.instantiate(graph)
    layer.launch(graph_exec, stream)
    layer.destroy_graph(graph, graph_exec)
    layer.free(device)
    layer.free_pinned(host)
    layer.free_pinned(back)
    layer.destroy_stream(stream)
    layer.destroy_event(start)
    layer.destroy_event(end)
    layer.pop()
    layer.release()
    out["errors"] = {
        "ordinal": _error(layer.open, 3),
        "pop": _error(layer.pop),
    }
    layer.open(0)
    layer.push()
    os.environ["STUB_CUDA_FAIL"] = "cuMemAlloc=2"  # CUDA_ERROR_OUT_OF_MEMORY
    out["errors"]["alloc"] = _error(layer.alloc, 64)
    del os.environ["STUB_CUDA_FAIL"]
    layer.pop()
    layer.release()
    return out


def main() -> None:
    root, out_path, mode, *paths = sys.argv[1:]
    sys.path[:0] = [*paths, root, os.path.join(root, "tests")]
    result: Dict[str, Any] = {}
    try:
        import cuda.bindings
        from cuda.bindings import driver

        from grefel.runtime.cuda_layer import BindingsLayer

        result["version"] = getattr(cuda.bindings, "__version__", None)
        layer = BindingsLayer(driver)
        if mode == "nolib":
            import ctypes

            try:  # a machine with an NVIDIA driver has one: nothing to check there
                ctypes.CDLL("libcuda.so.1")
                result["system_libcuda"] = True
            except OSError:
                result["nolib"] = _error(layer.open, 0)
        else:
            from fakes.cuda_bindings import FUNCTIONS, make_driver
            from fakes.trt import Gpu

            fake = make_driver(Gpu())
            result["signature_problems"] = _signatures(driver, fake, FUNCTIONS)
            result["enum_problems"] = _enums(driver, fake)
            result["functions"] = len(FUNCTIONS)
            rejected = []
            for name, args in (("cuMemAlloc", ("64",)), ("cuCtxPushCurrent", ("ctx",))):
                try:
                    getattr(driver, name)(*args)
                except TypeError:
                    rejected.append(name)
            result["rejected"] = rejected
            result.update(_exercise(layer))
    except BaseException:  # noqa: BLE001 - reported to the parent whole
        result["crash"] = traceback.format_exc()
    with open(out_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
