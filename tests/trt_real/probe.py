"""Child process of tests/test_trt_real_bindings.py: import one real TensorRT bindings wheel
with stand-in native libraries and replay calls against it.

    python probe.py STUB_DIR WHEEL_DIR CALLS.json SNAPSHOT.json OUT.json

- STUB_DIR: the stand-in libnvinfer / libnvonnxparser / libnvinfer_plugin (/ libnvparsers)
  of this major version, preloaded with RTLD_GLOBAL so the module's DT_NEEDED entries resolve.
- CALLS.json: `[{"cls", "member", "kind", "args", "expect"}]` (tests/fakes/trt.py `Call` with
  its arguments encoded by `fakes.trt.encode`).
- Argument acceptance: a method is called on an uninitialised pybind11 instance
  (`C.__new__(C)`) in a forked child. pybind11 converts every argument before the C++ call, so
  `TypeError: ... incompatible function arguments` means our argument types are rejected; any
  other outcome (the stub's NULL object crashing the child, another exception) means accepted.
- The snapshot check: every class, member and enum value of the committed snapshot is the real
  module's.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List


def _load(stub_dir: str, wheel_dir: str) -> Any:
    for name in sorted(os.listdir(stub_dir)):
        ctypes.CDLL(os.path.join(stub_dir, name), mode=os.RTLD_GLOBAL)
    sys.path.insert(0, wheel_dir)
    import tensorrt_bindings

    return tensorrt_bindings


def _resolve(trt: Any, dotted: str) -> Any:
    obj = trt
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _build(trt: Any, arg: Dict[str, Any]) -> Any:
    if "enum" in arg:
        return getattr(_resolve(trt, arg["enum"]), arg["name"])
    ((kind, value),) = arg.items()
    if kind == "obj":
        if value == "Logger":
            return trt.Logger(trt.Logger.WARNING)
        cls = getattr(trt, value)
        return cls.__new__(cls)
    if kind == "none":
        return None
    if kind == "bytes":
        return b"\0" * value
    if kind in ("tuple", "list"):
        items = [_build(trt, v) for v in value]
        return tuple(items) if kind == "tuple" else items
    return value  # int, float, str, bool


def _attempt(fn: Callable[[], Any]) -> str:
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        signal.alarm(10)
        code = 0
        try:
            fn()
        except TypeError as exc:
            code = 3 if "incompatible" in str(exc) else 0
        except BaseException:
            code = 0
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return "timeout" if os.WTERMSIG(status) == signal.SIGALRM else "accepted"
    return "rejected" if os.WEXITSTATUS(status) == 3 else "accepted"


def _check_call(trt: Any, call: Dict[str, Any]) -> str:
    cls_name, member, kind = call["cls"], call["member"], call["kind"]
    try:
        cls = trt if cls_name == "tensorrt" else _resolve(trt, cls_name)
    except AttributeError:
        return "missing"
    if kind in ("enum", "attr"):
        return "present" if hasattr(cls, member) else "missing"
    if kind != "init" and not hasattr(cls, member):
        return "missing"
    if kind == "get":
        return "present"

    def run() -> None:
        args = [_build(trt, a) for a in call["args"]]
        if kind == "init":
            cls(*args)
        elif kind == "set":
            setattr(cls.__new__(cls), member, args[0])
        else:
            getattr(cls, member)(cls.__new__(cls), *args)

    return _attempt(run)


def _check_snapshot(trt: Any, snap: Dict[str, Any]) -> List[str]:
    problems: List[str] = []
    if not str(trt.__version__).startswith(snap["version"]):
        problems.append(f"version {trt.__version__} != snapshot {snap['version']}")
    for cls_name, entry in snap["classes"].items():
        cls = getattr(trt, cls_name, None)
        if cls is None:
            problems.append(f"class {cls_name} missing")
            continue
        for member in entry["members"]:
            if not hasattr(cls, member):
                problems.append(f"{cls_name}.{member} missing")
        for name, value in entry.get("enum", {}).items():
            real = getattr(cls, name, None)
            if real is None or int(real) != value:
                problems.append(f"{cls_name}.{name} = {real!r}, snapshot {value}")
    for const, member in snap["constants"].items():
        if getattr(trt, const, None) != getattr(trt.DataType, member, object()):
            problems.append(f"tensorrt.{const} is not DataType.{member}")
    return problems


def main() -> None:
    stub_dir, wheel_dir, calls_path, snap_path, out_path = sys.argv[1:6]
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    trt = _load(stub_dir, wheel_dir)
    calls = json.loads(Path(calls_path).read_text())
    snap = json.loads(Path(snap_path).read_text())
    results = [dict(call, status=_check_call(trt, call)) for call in calls]
    out = {"version": trt.__version__, "results": results,
           "snapshot_problems": _check_snapshot(trt, snap)}
    Path(out_path).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
