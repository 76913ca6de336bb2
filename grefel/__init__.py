"""grefel: GReFEL facial-expression recognition for Jetson and desktop NVIDIA GPUs.

`import grefel` imports neither torch nor TensorRT: the model classes are loaded on first use,
so a Jetson that only runs engines (`grefel.runtime`) needs numpy, TensorRT and pycuda alone.

    from grefel import GReFEL, GReFELConfig, GReFELLoss
"""

from __future__ import annotations

from grefel._lazy import lazy_exports

__version__ = "0.1.0"
__all__ = ["GReFEL", "GReFELConfig", "GReFELLoss", "GReFELOutput", "__version__"]

_LAZY = {
    "GReFEL": "grefel.model.grefel",
    "GReFELOutput": "grefel.model.grefel",
    "GReFELLoss": "grefel.model.losses",
    "GReFELConfig": "grefel.config",
}

__getattr__ = lazy_exports(__name__, _LAZY)
