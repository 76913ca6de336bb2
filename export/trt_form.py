"""The ONNX TensorRT's parser gets: the exported file with its ONNX-Runtime-CPU rewrites undone.

`grefel export` writes two exact rewrites into its ONNX files for ONNX Runtime's CPU kernels:
PReLUs as branch-free element-wise ops (`export.prelu`) and, in the INT8 ONNX, activations as
uint8 with zero point 128 and biases as int32 (`export.int8`). TensorRT wants the other forms:
`PRelu` layers (its own PReLU, fused with convolutions, what DLA runs), int8 Q/DQ with zero
point 0 and float biases (its DequantizeLinear takes int8 and fp8 only). `for_tensorrt`
returns the source untouched when none of these is in it, else a copy with them undone, written
atomically into `work`.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from export.int8 import float_biases, to_int8_activations
from export.prelu import to_prelu
from grefel.fileio import atomic_path

__all__ = ["for_tensorrt"]


def for_tensorrt(source: Path, work: Path) -> Path:
    """`source`, or `work/<stem>.trt.onnx` with the PReLUs folded back, the activations int8
    and the biases float again. `source` is never changed; an unreadable file is returned as it
    is (TensorRT's parser reports it in its own words)."""
    try:
        model = onnx.load(str(source))
    except Exception:  # noqa: BLE001 - unreadable or not ONNX
        return source
    changed = to_prelu(model) + to_int8_activations(model) + float_biases(model)
    if changed == 0:
        return source
    work.mkdir(parents=True, exist_ok=True)
    target = work / f"{source.stem}.trt.onnx"
    with atomic_path(target) as tmp:
        onnx.save(model, str(tmp))
    return target
