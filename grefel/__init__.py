"""grefel: GReFEL facial-expression recognition for Jetson and desktop NVIDIA GPUs.

`import grefel` imports neither torch nor TensorRT: the model classes are loaded on first use,
so a Jetson that only runs engines (`grefel.runtime`) needs numpy, TensorRT and pycuda alone.

    from grefel import GReFEL, GReFELConfig, GReFELLoss
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["GReFEL", "GReFELConfig", "GReFELLoss", "GReFELOutput", "__version__"]

_LAZY = {
    "GReFEL": "grefel.model.grefel",
    "GReFELOutput": "grefel.model.grefel",
    "GReFELLoss": "grefel.model.losses",
    "GReFELConfig": "grefel.config",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'grefel' has no attribute {name!r}")
