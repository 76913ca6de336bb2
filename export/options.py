"""The settings of one export (`grefel export`), apart from the pipeline so that reading them
(the command line's option declarations) imports neither onnx, torch nor TensorRT.

Each field is a `grefel.ranges.setting`: the one home of its default, its help text and its
valid values, from which the command line's options and `__post_init__`'s checks derive.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Tuple

from grefel.contract import OPSET_RANGE, TENSORRT_TARGETS, opset_rule
from grefel.errors import ConfigError
from grefel.ranges import check_ranges, setting

__all__ = ["CALIB_METHODS", "ExportOptions", "TritonRepoOptions", "name_problem"]

# INT8 calibration methods (export.int8), in the order `--calib-method auto` tries them
CALIB_METHODS = ("minmax", "percentile", "entropy")


def parse_opset(value: str) -> Optional[int]:
    """--opset: "auto" (None: the target's, grefel.contract.opset_for_target) or a number in
    OPSET_RANGE."""
    if value == "auto":
        return None
    lo, hi = OPSET_RANGE
    if not value.isdigit() or not lo <= int(value) <= hi:
        raise ValueError(f"auto, or an opset from {lo} to {hi} (TorchScript exporter)")
    return int(value)


def parse_name(value: str) -> str:
    """--name, refused while parsing by the rule ExportOptions applies (name_problem)."""
    why = name_problem(value)
    if why:
        raise ValueError(why)
    return value


def parse_class_ids(value: str) -> Tuple[int, ...]:
    """--deepstream-face-classes: the detector's face class ids, "0" or "0,2"."""
    parts = [v.strip() for v in value.split(",") if v.strip()]
    if not parts or not all(p.isdigit() for p in parts):
        raise ValueError(f"{value!r}: give the detector's face class id(s), e.g. 0 or 0,2")
    return tuple(int(p) for p in parts)


@dataclass(frozen=True)
class TritonRepoOptions:
    """The Triton model repository `grefel export --triton DIR` writes beside the artifacts
    (export.triton.write_model_repository, the export's last stage): its dynamic batcher and
    instance count."""

    instances: int = setting(1, min=1, option="--triton-instances",
                             help="instance_group count of the Triton model.")
    max_queue_delay_us: int = setting(2000, min=0, option="--triton-queue-delay-us",
                                      help="Dynamic batching: max_queue_delay_microseconds.")
    cuda_graphs: bool = setting(False, option="--triton-cuda-graphs",
                                help="Triton's TensorRT backend replays each batch size as a CUDA "
                                     "graph (optimization { cuda { graphs: true } }; engines "
                                     "only).")

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass(frozen=True)
class ExportOptions:
    fp16: bool = setting(True, option="--fp16/--fp32",
                         help="FP16 engine (with the FP16 gate) or FP32.")
    batch: int = setting(1, min=1, help="Profile opt batch.")  # <= max_batch
    max_batch: int = setting(8, min=1, help="Profile max batch.")
    dynamic: bool = setting(True, option="--dynamic/--static", help="Symbolic batch in the ONNX.")
    # None (the command line's "auto"): chosen for the target; 13..20, what the TorchScript
    # exporter writes
    opset: Optional[int] = setting(None, kind=int, min=OPSET_RANGE[0], max=OPSET_RANGE[1],
                                   parse=parse_opset, cli_default="auto",
                                   help=f"auto ({opset_rule()}) or N.")
    simplify: bool = setting(True, help="onnxsim (a failure is an error).")
    workspace_gib: Optional[float] = setting(None, kind=float, min=0, min_open=True,
                                             option="--workspace",
                                             help="Builder workspace limit, GiB.")
    dla_core: Optional[int] = setting(None, kind=int, min=0,
                                      help="Build for this DLA core (GPU fallback).")
    timing_cache: Optional[Path] = setting(None, path="file",
                                           help="TensorRT timing cache, loaded and saved.")
    tf32: bool = setting(True, help="TF32 for FP32 layers (TensorRT's default on Ampere/Orin+); "
                                    "off: full FP32.")
    target: str = setting("auto", choices=("auto", *TENSORRT_TARGETS),
                          help="TensorRT version to export and lint for (auto: the installed "
                               "one).")
    onnx_only: bool = setting(False, help="Stop after the checked ONNX artifacts.")
    force: bool = setting(False, help="Continue past a failed lint / FP16 gate / verify.")
    verify: bool = setting(False, help="Run the engine vs ONNX Runtime after the build.")
    # the library's default; the command line's is a new run folder (help_default)
    out: Path = setting(Path("engines"), path="dir", help="Artifacts folder.", cli_default=None,
                        help_default="a new runs/export/NAME, -2, -3, ...")
    name: Optional[str] = setting(None, parse=parse_name,
                                  help="Artifact name (default: the source file's stem).")
    embedding: bool = setting(False, help="Also output the pooled embedding.")
    calib_data: Optional[Path] = setting(
        None, path="existing-dir",
        help="Image folder (e.g. SynthFER) for the FP16 gate and --verify; with --int8 the INT8 "
             "calibration images and the held-out INT8 gate images (disjoint).")
    int8: bool = setting(
        False,
        help="Also write NAME.int8.onnx (QDQ: per-channel int8 weights, calibrated int8 "
             "activations; LayerNorm, Softmax and the reliability tail in float) with the INT8 "
             "gate; the engine is INT8. Needs --calib-data.")
    calib_method: str = setting(
        "auto", choices=("auto", *CALIB_METHODS),
        help="INT8 activation ranges: max |x| over the calibration images, its 99.999th "
             "percentile, or minimal KL divergence; auto tries them in that order and keeps the "
             "first that passes the INT8 gate.")
    deepstream: Optional[Path] = setting(
        None, path="dir",
        help="Also write a DeepStream nvinfer config here (secondary classifier on a face "
             "detector's faces): config_infer_secondary_grefel.txt and labels_grefel.txt.")
    deepstream_detector_id: int = setting(
        1, min=1, help="gie-unique-id of the face detector grefel runs after (operate-on-gie-id).")
    deepstream_face_classes: Tuple[int, ...] = setting(
        (0,), parse=parse_class_ids, cli_default="0",
        help="The detector's face class id(s), comma-separated (operate-on-class-ids).")
    # the export's last stage (run_export), written when the export ends with 0 or 2
    triton: Optional[Path] = setting(
        None, path="dir",
        help="Also write a Triton model repository here: DIR/grefel/config.pbtxt and "
             "1/model.plan (the engine) or 1/model.onnx (no engine: ONNX Runtime).")
    triton_repo: TritonRepoOptions = field(default_factory=TritonRepoOptions)

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

