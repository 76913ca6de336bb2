"""Lazy imports of optional, heavy or hardware-bound packages, with errors that say what to install.

No module of grefel imports tensorrt, pycuda or onnxruntime at import time; `grefel.runtime`
does not import torch either. Nothing is ever installed automatically.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, Callable, Dict

__all__ = ["MissingDependency", "lazy_exports", "require"]

_HINTS = {
    "tensorrt": "TensorRT Python bindings: `pip install 'grefel[trt]'` on a desktop GPU; on Jetson "
    "use JetPack's python3-libnvinfer in a venv made with --system-site-packages (docs/install.md)",
    "pycuda": "pycuda: `pip install 'grefel[trt]'` (on Jetson it builds against JetPack's CUDA: "
    "export PATH=/usr/local/cuda/bin:$PATH first)",
    "pycuda.driver": "pycuda with a working NVIDIA driver (`pip install 'grefel[trt]'`)",
    "onnxruntime": "ONNX Runtime: `pip install onnxruntime` (or onnxruntime-gpu)",
    "torch": "PyTorch: `pip install torch` (on Jetson, NVIDIA's wheel for your JetPack)",
    "onnx": "onnx: `pip install onnx`",
    "onnxsim": "onnxsim: `pip install onnxsim`",
    "cv2": "OpenCV: `pip install opencv-python-headless`",
}


class MissingDependency(ImportError):
    """An optional package is not importable; the message says how to install it."""


def require(name: str) -> ModuleType:
    """Import `name` or raise MissingDependency naming the package to install.

    TensorRT is checked for a real module: `tensorrt-stubs` installs an empty namespace package
    that imports but has no `Builder`.
    """
    try:
        module = importlib.import_module(name)
    except Exception as exc:  # ImportError, or OSError from a missing shared library
        hint = _HINTS.get(name, f"`pip install {name}`")
        raise MissingDependency(f"{name} is not available ({exc}). Install {hint}.") from exc
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
