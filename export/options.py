"""The settings of one export (`grefel export`), apart from the pipeline so that reading them
(the command line's option declarations) imports neither onnx, torch nor TensorRT.

Each numeric field declares its valid values once (grefel.ranges.ranged); the command line's
option types and `__post_init__` both derive from that declaration.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

from grefel.contract import OPSET_RANGE
from grefel.errors import ConfigError
from grefel.ranges import check_ranges, ranged

__all__ = ["ExportOptions", "TritonRepoOptions", "name_problem"]


@dataclass(frozen=True)
class ExportOptions:
    fp16: bool = True
    batch: int = ranged(1, min=1)  # the engine profile's opt batch (<= max_batch)
    max_batch: int = ranged(8, min=1)  # the engine profile's max batch
    dynamic: bool = True
    # None: chosen for the target (opset_for_target); else what the TorchScript exporter writes
    opset: Optional[int] = ranged(None, kind=int, min=OPSET_RANGE[0], max=OPSET_RANGE[1])
    simplify: bool = True
    workspace_gib: Optional[float] = ranged(None, kind=float, min=0, min_open=True)
    dla_core: Optional[int] = ranged(None, kind=int, min=0)
    timing_cache: Optional[Path] = None
    tf32: bool = True
    target: str = "auto"
    onnx_only: bool = False
    force: bool = False
    verify: bool = False
    out: Path = Path("engines")
    name: Optional[str] = None
    embedding: bool = False
    calib_data: Optional[Path] = None
    int8: bool = False  # also the QDQ INT8 ONNX (needs calib_data); the engine is INT8
    calib_method: str = "auto"  # auto: each of export.int8.CALIB_METHODS in turn
    deepstream: Optional[Path] = None  # also a DeepStream nvinfer config folder
    deepstream_detector_id: int = ranged(1, min=1)  # the face detector's gie-unique-id
    deepstream_face_classes: Tuple[int, ...] = (0,)  # its face class ids

    def __post_init__(self) -> None:
        check_ranges(self)
        why = None if self.name is None else name_problem(self.name)
        if why:
            raise ConfigError(f"invalid ExportOptions: name: {why}")


def name_problem(name: str) -> Optional[str]:
    """Why `name` cannot be an artifact name (`--name`), or None: the artifacts are
    `OUT/NAME.onnx`, `OUT/NAME_fp16_b8.engine`, ..., so a name is one plain file name stem: not
    empty (which would silently fall back to the source's stem), no folder separator, and not
    starting with a dot (hidden files; `..`)."""
    if not name.strip():
        return "empty; give a file name stem such as best, or leave --name out"
    if "/" in name or "\\" in name or "\x00" in name:
        return f"{name!r} holds a folder separator; give a plain name and the folder with --out"
    if name.startswith("."):
        return f"{name!r} starts with a dot (a hidden file); give a plain name"
    return None


@dataclass(frozen=True)
class TritonRepoOptions:
    """The Triton model repository `grefel export --triton DIR` writes beside the artifacts
    (export.triton.write_model_repository): its dynamic batcher and instance count."""

    instances: int = ranged(1, min=1)  # instance_group count
    max_queue_delay_us: int = ranged(2000, min=0)  # dynamic batching: longest wait, microseconds
    cuda_graphs: bool = False  # optimization { cuda { graphs: true } } (TensorRT plans)

    def __post_init__(self) -> None:
        check_ranges(self)
