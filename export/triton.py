"""A Triton Inference Server model repository for a grefel model (`grefel export --triton DIR`).

    DIR/grefel/config.pbtxt     Triton's model configuration (protobuf text format)
    DIR/grefel/labels.txt       class names in output order (`label_filename` of probs/primary)
    DIR/grefel/1/model.plan     the TensorRT engine (platform tensorrt_plan), or
    DIR/grefel/1/model.onnx     the FP32 ONNX (platform onnxruntime_onnx)

Inputs and outputs are read from the ONNX the model is (or was built from): `images` float32
[-1, 3, 112, 112] (dims without the batch, `max_batch_size` > 0: the batch dimension must be
dynamic), outputs probs / primary [C], confidence [1] reshaped to a per-sample scalar (the graph's
output is [N]), embedding [D] when exported. Dynamic batching with `max_queue_delay_us`;
`instance_group` count `instances` with no kind, so Triton places them on the GPU when there is
one and on the CPU otherwise. The folder `DIR/grefel` is written beside the old one and swapped
in only when complete: a failed write never replaces a good repository.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, List, Sequence

import onnx

from export import ExportError
from grefel import contract

__all__ = ["MODEL_NAME", "config_text", "write_model_repository"]

MODEL_NAME = "grefel"
PLATFORMS = {".engine": "tensorrt_plan", ".plan": "tensorrt_plan", ".onnx": "onnxruntime_onnx"}
LABELS = "labels.txt"
_DTYPES = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16"}


def _dims(value: Any) -> List[Any]:
    shape = value.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or -1) for d in shape]


def _io(onnx_path: Path) -> tuple:
    """(input dims without batch, [(output name, dtype, dims without batch)], class names)."""
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # DecodeError, OSError
        raise ExportError(f"{onnx_path}: not a readable ONNX model ({exc})") from None
    inputs = [i for i in model.graph.input if i.name == contract.INPUT_NAME]
    if not inputs:
        raise ExportError(f"{onnx_path}: no input {contract.INPUT_NAME!r} (a grefel export has it)")
    in_dims = _dims(inputs[0])
    if isinstance(in_dims[0], int) and in_dims[0] > 0:
        raise ExportError(f"{onnx_path}: fixed batch {in_dims[0]}; a Triton repository with "
                          "dynamic batching needs a dynamic batch: export without --static")
    if [int(d) for d in in_dims[1:]] != list(contract.INPUT_SHAPE):
        raise ExportError(f"{onnx_path}: input {in_dims}, expected [N, 3, 112, 112]")
    outputs = []
    for out in model.graph.output:
        dtype = _DTYPES.get(out.type.tensor_type.elem_type)
        if dtype is None:
            raise ExportError(f"{onnx_path}: output {out.name} has an element type Triton's "
                              "config here does not map (float32 / float16 expected)")
        outputs.append((out.name, dtype, _dims(out)[1:]))
    missing = [n for n in contract.OUTPUTS if n not in [o[0] for o in outputs]]
    if missing:
        raise ExportError(f"{onnx_path}: no output(s) {missing} (a grefel export has them)")
    meta = {p.key: p.value for p in model.metadata_props}
    classes = json.loads(meta["grefel.class_names"]) if "grefel.class_names" in meta else None
    n = next(o[2][0] if o[2] else None for o in outputs if o[0] == "probs")
    if not isinstance(n, int) or n <= 0:  # a symbolic class dimension: the metadata says
        if not classes:
            raise ExportError(f"{onnx_path}: the number of classes is neither in the graph nor "
                              "in its grefel.class_names metadata")
        n = len(classes)
    classes = classes or [f"class{i}" for i in range(n)]
    try:  # the one check of class names (grefel.contract), as every backend's
        classes = list(contract.check_class_names(
            classes, onnx_path, n, fix="re-export the model with `grefel export`"))
    except contract.ClassNamesError as exc:
        raise ExportError(str(exc)) from None
    outputs = [(name, dtype, [n] if name in ("probs", "primary") else
                [d if isinstance(d, int) and d > 0 else -1 for d in dims])
               for name, dtype, dims in outputs]
    return in_dims[1:], outputs, list(classes)


def config_text(
    *,
    platform: str,
    max_batch: int,
    outputs: Sequence[tuple],
    max_queue_delay_us: int,
    instances: int,
    name: str = MODEL_NAME,
    cuda_graphs: bool = False,
) -> str:
    """config.pbtxt for the model (Triton's ModelConfig message in protobuf text format)."""
    dims = ", ".join(str(d) for d in contract.INPUT_SHAPE)
    lines = [
        f'name: "{name}"',
        f'platform: "{platform}"',
        f"max_batch_size: {max_batch}",
        "input [",
        "  {",
        f'    name: "{contract.INPUT_NAME}"',
        "    data_type: TYPE_FP32",
        "    format: FORMAT_NCHW",
        f"    dims: [ {dims} ]",
        "  }",
        "]",
        "output [",
    ]
    parts = []
    for out_name, dtype, out_dims in outputs:
        body = [f'    name: "{out_name}"', f"    data_type: {dtype}"]
        if out_dims:
            body.append(f"    dims: [ {', '.join(str(int(d)) for d in out_dims)} ]")
        else:  # a per-sample scalar ([N] in the graph): Triton's dims [1] + reshape to []
            body += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
        if out_name in ("probs", "primary"):
            body.append(f'    label_filename: "{LABELS}"')
        parts.append("  {\n" + "\n".join(body) + "\n  }")
    lines.append(",\n".join(parts))
    lines += [
        "]",
        "dynamic_batching {",
        f"  max_queue_delay_microseconds: {max_queue_delay_us}",
        "}",
        "instance_group [",
        "  {",
        f"    count: {instances}",
        "  }",
        "]",
    ]
    if cuda_graphs:  # the TensorRT backend captures and replays each batch size's enqueue
        lines += ["optimization {", "  cuda {", "    graphs: true", "  }", "}"]
    return "\n".join(lines) + "\n"


def write_model_repository(
    repo: Path,
    model_file: Path,
    onnx_path: Path,
    *,
    max_batch: int,
    max_queue_delay_us: int = 2000,
    instances: int = 1,
    cuda_graphs: bool = False,
) -> Path:
    """Write `repo/grefel` for `model_file` (an .engine/.plan or .onnx) whose graph is
    `onnx_path` (the ONNX itself, or the one the engine was built from); returns the folder.
    `cuda_graphs` adds `optimization { cuda { graphs: true } }` (TensorRT plans only: it is a
    TensorRT-backend setting)."""
    model_file, repo = Path(model_file), Path(repo)
    platform = PLATFORMS.get(model_file.suffix.lower())
    if platform is None:
        raise ExportError(f"{model_file}: a Triton repository takes an .engine / .plan or .onnx")
    if max_batch < 1 or instances < 1 or max_queue_delay_us < 0:
        raise ExportError("--max-batch and --triton-instances must be >= 1, the queue delay >= 0")
    if cuda_graphs and platform != "tensorrt_plan":
        raise ExportError(f"{model_file}: CUDA graphs in Triton are a TensorRT-backend setting; "
                          "this repository would serve an ONNX model (build an engine, or drop "
                          "--triton-cuda-graphs)")
    _, outputs, classes = _io(Path(onnx_path))
    text = config_text(platform=platform, max_batch=max_batch, outputs=outputs,
                       max_queue_delay_us=max_queue_delay_us, instances=instances,
                       cuda_graphs=cuda_graphs)
    repo.mkdir(parents=True, exist_ok=True)
    final = repo / MODEL_NAME
    work = Path(tempfile.mkdtemp(prefix=f".{MODEL_NAME}-", dir=repo))
    old = None
    try:
        (work / "1").mkdir()
        target = "model.plan" if platform == "tensorrt_plan" else "model.onnx"
        shutil.copyfile(model_file, work / "1" / target)
        (work / LABELS).write_text("\n".join(classes) + "\n", encoding="utf-8")
        (work / "config.pbtxt").write_text(text, encoding="utf-8")
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{MODEL_NAME}-old-", dir=repo))
            os.replace(final, old / MODEL_NAME)
        os.replace(work, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        if old is not None and not final.exists():
            os.replace(old / MODEL_NAME, final)  # the good repository back in place
        shutil.rmtree(work, ignore_errors=True)
        raise ExportError(f"{repo}: cannot write the Triton repository ({exc})") from None
    return final
