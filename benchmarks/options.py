"""The settings of one `grefel bench` run (and of `grefel check --run`), apart from the
benchmark code so that reading them (the command line's option declarations) imports neither
torch nor a backend.

Each field is a `grefel.ranges.setting`: the one home of its default, its help text and its
valid values. The list-valued fields (backends, batch sizes, presets, detectors, det-every) are
comma-separated on the command line; their `choices` hold for each item.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

from grefel.config import INFERENCE_THREADS, PRESETS, FaceAlignment
from grefel.errors import ConfigError
from grefel.predict import PredictOptions
from grefel.ranges import check_ranges, choices_of, range_of, ranged, setting
from grefel.runtime.detectors import DETECTORS

__all__ = ["BACKEND_NAMES", "BenchOptions", "CheckOptions"]

# --backends names -> the backend names the runtime and the records use
BACKEND_NAMES = {"torch": "torch", "onnx": "onnx", "trt": "tensorrt"}


@dataclass(frozen=True)
class BenchOptions:
    """What `grefel bench` times and how long (benchmarks.report.run_bench). With `source`,
    the end-to-end pipeline rows (detectors x det_every on that video) instead of the model
    alone; the pipeline fields matter only then."""

    backends: Tuple[str, ...] = setting(("torch", "onnx", "trt"), choices=tuple(BACKEND_NAMES),
                                        help="Backends to time.")
    batch_sizes: Tuple[int, ...] = setting((1, 8, 32), help="Batch sizes to time.")
    min_iters: int = setting(20, min=1, option="--iters", help="Timed calls, at least.")
    min_seconds: float = setting(3.0, min=0.0, option="--seconds", help="Timed time, at least.")
    presets: Tuple[str, ...] = setting(
        ("paper",), choices=tuple(PRESETS),
        help="Presets for the params/FLOPs table and the random-init model.")
    threads: Optional[int] = setting(None, like=INFERENCE_THREADS,
                                     help="CPU threads (default: all).")
    source: Optional[str] = setting(
        None, help="A video (or camera / stream): time the end-to-end pipeline on it for each "
                   "--weights file instead of the model alone.")
    detectors: Tuple[str, ...] = setting(("auto",), choices=DETECTORS,
                                         help="Pipeline rows: detectors.")
    det_every: Tuple[int, ...] = setting((1, 3), help="Pipeline rows: detect every N frames.")
    det_size: int = setting(FaceAlignment.det_size, like=range_of(FaceAlignment, "det_size"),
                            help="Pipeline rows: longest side the detector sees.")
    max_frames: Optional[int] = setting(None, like=range_of(PredictOptions, "max_frames"),
                                        help="Pipeline rows: frames per row.")
    cuda_graph: bool = setting(False, help="TensorRT rows: replay each batch shape as a CUDA "
                                           "graph (cuda-bindings).")

    def __post_init__(self) -> None:
        lists = [f for f in dataclasses.fields(self) if isinstance(f.default, tuple)]
        for f in lists:  # a list given is kept as a tuple: the options stay immutable
            object.__setattr__(self, f.name, tuple(getattr(self, f.name)))
        check_ranges(self)
        problems = []
        for f in lists:
            items = getattr(self, f.name)
            allowed = choices_of(f)
            counts = isinstance(f.default[0], int)  # batch sizes, det_every: positive integers
            bad = [i for i in items if (allowed is not None and i not in allowed) or (
                counts and (isinstance(i, bool) or not isinstance(i, int) or i < 1))]
            if not items or bad:
                want = f"one or more of {', '.join(allowed)}" if allowed else \
                    "one or more positive integers"
                problems.append(f"{f.name}: {list(items)!r}: give {want}")
        if problems:
            raise ConfigError("invalid BenchOptions: " + "; ".join(problems))

    def pipeline(self) -> Optional[Dict[str, Any]]:
        """The pipeline rows' settings as the record keeps them (None without `source`)."""
        if self.source is None:
            return None
        return {"source": self.source, "detectors": list(self.detectors),
                "det_every": list(self.det_every), "det_size": self.det_size,
                "max_frames": self.max_frames}


@dataclass
class CheckOptions:
    """`grefel check --run`'s settings.

    Args:
        out: the report folder (made and claimed by the caller).
        model: the model whose engines are built (None: the default model's ONNX; on
            TensorRT 8.5 its checkpoint, which needs torch, for an opset-16 export).
        calib_data: INT8 calibration images (None: a SynthFER folder drawn by the section).
        sections: which sections to run (None: all).
        time_limit_s: every section's limit (None: each its own `Section.limit_s`).
    """

    out: Path
    model: Optional[Path] = None
    calib_data: Optional[Path] = None
    sections: Optional[Sequence[str]] = None
    time_limit_s: Optional[float] = ranged(None, kind=float, min=1)  # finite: nan, inf refused

    def __post_init__(self) -> None:
        check_ranges(self)
