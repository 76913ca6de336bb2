"""grefel's export package: checkpoint -> ONNX -> checks -> FP16 TensorRT engine + sidecar.

One plain path-to-path function per step, each in its own small module (Polygraphy's
loader / runner / comparator split, without its lazy loader chains):

    onnx_export.export_onnx   torch model -> FP32 ONNX (dynamic batch, metadata)      [torch]
    simplify.simplify_onnx    ONNX -> onnxsim'd ONNX, node counts before/after
    runners                   ONNX Runtime and torch runners on the same inputs
    compare                   per-output atol/rtol comparator, top-1 agreement
    lint                      the graph's ops and opset against TensorRT's ONNX op table
    fp16                      FP16-typed ONNX (sensitive parts kept FP32) + the FP16 gate
    trt_builder.build_engine  ONNX -> plain TensorRT plan, API feature-detected    [tensorrt]
    verify                    engine vs ONNX Runtime on the device                  [tensorrt]
    sidecar                   the engine's JSON sidecar
    pipeline                  the stages in order, a progress line and a time each

Importing this package imports neither torch nor TensorRT; only `onnx_export` needs torch,
so `grefel export MODEL.onnx` runs on a Jetson that has no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

from grefel.errors import GrefelError

__all__ = ["ExportError", "checked_classes"]


class ExportError(GrefelError, RuntimeError):
    """An export step failed; the message names the file and what went wrong."""


def checked_classes(classes: Any, onnx_path: Path, n: Optional[int] = None) -> List[str]:
    """The class names of `onnx_path` through grefel's one check
    (`grefel.contract.check_class_names`, `n` of them when given), as an ExportError: the
    labels a DeepStream or Triton config writes next must not lose or merge classes."""
    from grefel import contract

    try:
        return list(contract.check_class_names(
            classes, onnx_path, n, fix="re-export the model with `grefel export`"))
    except contract.ClassNamesError as exc:
        raise ExportError(str(exc)) from None
