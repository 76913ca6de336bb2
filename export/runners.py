"""Runners that answer the same float32 images with named numpy outputs.

Each returns `Dict[name, np.ndarray]`; the comparator checks them against each other. Batches
are fed whole (the exported graph has a dynamic batch) or in chunks of `chunk`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from export import ExportError
from grefel._lazy import require

__all__ = ["ort_session", "run_onnxruntime", "run_torch"]

Outputs = Dict[str, np.ndarray]


def ort_session(path: Union[str, Path], threads: int = 1):
    """A CPU ONNX Runtime session for `path`; a load error names the file."""
    ort = require("onnxruntime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail / NotImplemented types
        raise ExportError(f"{path}: ONNX Runtime cannot load it ({exc})") from exc


def run_onnxruntime(session, images: np.ndarray, chunk: Optional[int] = None) -> Outputs:
    """Run `session` on images (N, 3, 112, 112) float32, in chunks of `chunk` (all at once)."""
    names = [o.name for o in session.get_outputs()]
    input_name = session.get_inputs()[0].name
    step = chunk or len(images)
    parts: List[List[np.ndarray]] = []
    for i in range(0, len(images), step):
        parts.append(session.run(names, {input_name: images[i : i + step]}))
    return {n: np.concatenate([p[k] for p in parts]) for k, n in enumerate(names)}


def run_torch(model, images: np.ndarray, names: Sequence[str], half: bool = False) -> Outputs:
    """Run a GReFEL on images; `half` casts the inputs to the model's FP16 (model.half() first)."""
    torch = require("torch")
    with torch.no_grad():
        x = torch.from_numpy(images)
        out = model(x.half() if half else x)
    return {n: getattr(out, n).float().numpy() for n in names}
