"""Lazy imports of optional, heavy or hardware-bound packages, with errors that say what to install.

No module of grefel imports tensorrt, pycuda, cuda-bindings or onnxruntime at import time;
`grefel.runtime` does not import torch either. Nothing is ever installed automatically.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, Callable, Dict

__all__ = ["MissingDependency", "OPTIONAL", "install_hint", "lazy_exports", "require"]

# grefel is on no package index: its extras install from a clone (docs/install.md).
_TRAIN = ("grefel's train extra: `pip install '.[train]'` in a clone of grefel (docs/install.md; "
          "on Jetson, NVIDIA's torch wheel for your JetPack first)")
_HINTS = {
    "torch": f"PyTorch, {_TRAIN}",
    "onnxsim": f"onnxsim, part of {_TRAIN}",
    "safetensors": f"safetensors, part of {_TRAIN}",
    "tensorrt": "the TensorRT Python bindings: `pip install '.[trt]'` in a clone of grefel on a "
    "desktop GPU; on Jetson, JetPack's python3-libnvinfer in a venv made with "
    "--system-site-packages (docs/install.md)",
    "pycuda": "pycuda: `pip install 'pycuda>=2025.1.2'`, which builds against the CUDA toolkit "
    "(export PATH=/usr/local/cuda/bin:$PATH first; docs/install.md), or cuda-bindings instead "
    "(wheels, nothing to compile)",
    "cuda.bindings": "cuda-bindings (NVIDIA's cuda-python; wheels, nothing to compile): `pip "
    "install 'cuda-bindings==12.*'` on a CUDA 12 driver (JetPack 6, desktop CUDA 12) or "
    "'cuda-bindings==13.*' on CUDA 13 (JetPack 7); it comes with `pip install '.[trt]'` "
    "(docs/install.md)",
    "onnxruntime": "ONNX Runtime: `pip install onnxruntime` (or onnxruntime-gpu)",
    "onnx": "onnx: `pip install onnx`",
    "cv2": "OpenCV: `pip install opencv-python-headless`",
    "pytriton": "PyTriton and Triton's client, grefel's serve extra: `pip install '.[serve]'` "
    "in a clone of grefel (docs/install.md)",
    "tritonclient": "Triton's client, grefel's serve extra: `pip install '.[serve]'` in a clone "
    "of grefel (docs/install.md)",
    "ai_edge_litert": "LiteRT, grefel's faces extra: `pip install '.[faces]'` in a clone of "
    "grefel",
}
_HINTS["pycuda.driver"] = _HINTS["pycuda"].replace("pycuda:", "pycuda with a working NVIDIA "
                                                   "driver:", 1)
# The optional packages: a command that imports one that is missing ends in one error line
# (grefel.cli.main), never a traceback.
OPTIONAL = frozenset(name.split(".")[0] for name in _HINTS)


class MissingDependency(ImportError):
    """An optional package is not importable; the message says how to install it."""


def install_hint(name: str) -> str:
    """How to install the package that provides module `name` (or its top-level package)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):  # cuda.bindings.driver -> cuda.bindings
        hint = _HINTS.get(".".join(parts[:end]))
        if hint:
            return hint
    return f"`pip install {name}`"


def require(name: str, needed_for: str = "") -> ModuleType:
    """Import `name` or raise MissingDependency naming the package to install.

    needed_for: what needs it ("x.safetensors (a PyTorch checkpoint)"), to open the message.
    TensorRT is checked for a real module: `tensorrt-stubs` installs an empty namespace package
    that imports but has no `Builder`.
    """
    try:
        module = importlib.import_module(name)
    except Exception as exc:  # ImportError, or OSError from a missing shared library
        what = f"{needed_for} needs {name}, which" if needed_for else name
        raise MissingDependency(f"{what} is not available ({exc}). Install "
                                f"{install_hint(name)}.") from exc
    if name == "tensorrt" and not hasattr(module, "Builder"):
        raise MissingDependency(
            "tensorrt imports but has no Builder (only type stubs are installed). "
            f"Install {_HINTS['tensorrt']}."
        )
    return module


def lazy_exports(package: str, names: Dict[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` (PEP 562) that imports `names[attr]` on first access of `attr`.

    Keeps `import grefel` and `import grefel.data` free of torch until a name is used.
    """

    def __getattr__(name: str) -> Any:
        if name in names:
            return getattr(importlib.import_module(names[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
