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
one and on the CPU otherwise.

Triton takes every folder in DIR for a model, hidden ones included (its LocalFileSystem's
GetDirectorySubdirs skips no dot entries), and a model folder whose config names another model
fails to load ("directory name must equal model name"): with `--exit-on-error` (the default)
the server then exits at start-up. So the new `grefel` folder is made *beside* DIR, in
`DIR/../.DIRNAME.grefel-work-<pid>-*` (the same filesystem, so the final rename is atomic), and
swapped in only when complete; the folder it replaces waits in `.DIRNAME.grefel-old-<pid>-*`
until the swap is done. A failed write never replaces a good repository, and a killed one leaves
nothing inside DIR: the next export removes the folders of processes that no longer run (and
puts an old `grefel` back when a kill fell between the two renames of the swap). Where DIR's
parent cannot hold them (DIR is a mount point, or its parent is not writable) they are made
inside DIR as before, and the export says so.

`DIR/grefel/grefel.json` records what the model file is and, for a plan, the TensorRT version
and GPU (name, compute capability) that built it (from the engine's sidecar), and config.pbtxt
repeats it in comments. A plan runs only on the TensorRT and GPU that built it, so a later
export of a plan from another TensorRT or GPU into the same DIR is refused with one line (give
another DIR, or remove DIR/grefel to replace it); an ONNX model, or a plan whose builder is not
recorded, is replaced.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import onnx

from export import ExportError, checked_classes
from grefel import __version__, contract
from grefel.fileio import left_by_dead_run, sha256_file

__all__ = ["MODEL_NAME", "RECORD", "config_text", "remove_stale_work_dirs",
           "write_model_repository"]

MODEL_NAME = "grefel"
PLATFORMS = {".engine": "tensorrt_plan", ".plan": "tensorrt_plan", ".onnx": "onnxruntime_onnx"}
LABELS = "labels.txt"
RECORD = "grefel.json"  # in the model folder: what built the model file
RECORD_FORMAT = "grefel-triton/1"
WORK_TAG, OLD_TAG = ".grefel-work-", ".grefel-old-"  # .DIRNAME<tag><pid>-<random>, beside DIR
BUILDER_KEYS = ("tensorrt", "gpu", "compute_capability")
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
        raise ExportError(f"{onnx_path}: input {in_dims}, expected "
                          f"[N, {', '.join(map(str, contract.INPUT_SHAPE))}]")
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
    classes = checked_classes(classes, onnx_path, n)  # the one check, as every backend's
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
    comments: Sequence[str] = (),
    cuda_graphs: bool = False,
) -> str:
    """config.pbtxt for the model (Triton's ModelConfig message in protobuf text format);
    `comments` open it as `# ...` lines (the text format's comments: Triton ignores them)."""
    dims = ", ".join(str(d) for d in contract.INPUT_SHAPE)
    lines = [
        *(f"# {line}" for line in comments),
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


Log = Callable[[str], None]


def _builder(model_file: Path, platform: str,
             built_by: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """For a plan: {tensorrt, gpu, compute_capability} of its builder (`built_by`, else the
    engine's sidecar NAME.json; None values where unknown); None for an ONNX model."""
    if platform != "tensorrt_plan":
        return None
    if built_by is None:
        built_by = {}
        side = model_file.with_suffix(".json")
        if side.is_file():
            try:
                found = contract.read_engine_sidecar(side)
            except contract.SidecarError as exc:
                raise ExportError(str(exc)) from None
            built_by = {"tensorrt": found.tensorrt_version, "gpu": found.gpu_name,
                        "compute_capability": found.compute_capability}
    return {key: (str(built_by[key]) if built_by.get(key) is not None else None)
            for key in BUILDER_KEYS}


def _describe(builder: Dict[str, Any]) -> str:
    """`TensorRT 10.3.0 on NVIDIA Orin (compute 8.7)`, with `unknown` for what is not known."""
    gpu = builder.get("gpu") or "an unknown GPU"
    return (f"TensorRT {builder.get('tensorrt') or 'unknown'} on {gpu} "
            f"(compute {builder.get('compute_capability') or 'unknown'})")


def _read_record(folder: Path) -> Optional[Dict[str, Any]]:
    """The model folder's grefel.json, or None (absent, unreadable, or not grefel's)."""
    try:
        doc = json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("format") == RECORD_FORMAT else None


def _refuse_mix(repo: Path, folder: Path, builder: Optional[Dict[str, Any]]) -> None:
    """ExportError when `folder` holds a plan recorded as built by another TensorRT or GPU than
    the plan about to replace it (only facts known on both sides are compared)."""
    old = _read_record(folder)
    old_builder = old.get("built_by") if old and old.get("platform") == "tensorrt_plan" else None
    if builder is None or not isinstance(old_builder, dict):
        return
    differ = [k for k in BUILDER_KEYS
              if old_builder.get(k) is not None and builder.get(k) is not None
              and str(old_builder[k]) != str(builder[k])]
    if differ:
        raise ExportError(
            f"--triton {repo}: its {MODEL_NAME} model is a plan built by "
            f"{_describe(old_builder)}, this engine was built by {_describe(builder)}; a plan "
            "runs only on the TensorRT and GPU that built it, so one repository does not mix "
            f"them: give --triton another folder, or remove {folder} to replace it (the "
            "engine itself is in --out)")


def _stage_dir(real: Path) -> Path:
    """Where the work folders go: beside DIR (same filesystem), else inside DIR (a mount point,
    or a parent that is not writable)."""
    parent = real.parent
    if (parent != real and os.access(parent, os.W_OK | os.X_OK)
            and os.stat(parent).st_dev == os.stat(real).st_dev):
        return parent
    return real


def remove_stale_work_dirs(repo: Path, log: Log = print) -> List[Path]:
    """Remove the work folders of repository writes that were killed: `.DIRNAME.grefel-work-*`
    and `.DIRNAME.grefel-old-*` beside DIR (and inside DIR, where its parent could not hold
    them), and the `.grefel-*` folders that earlier grefel versions made inside DIR. A `grefel`
    model that a kill left only in an old folder (between the two renames of the swap) is put
    back first. Returns the removed paths."""
    real = Path(repo).resolve()
    final = real / MODEL_NAME
    found = []
    for where in {real.parent, real}:
        for tag in (WORK_TAG, OLD_TAG):
            prefix = f".{real.name}{tag}"
            found += [(e, prefix) for e in sorted(where.glob(f"{glob.escape(prefix)}*"))]
    found += [(e, ".grefel-") for e in sorted(real.glob(".grefel-*"))]  # grefel <= 0.x layout
    removed = []
    for entry, prefix in found:
        if not left_by_dead_run(entry, prefix):
            continue
        kept = entry / MODEL_NAME
        if not final.exists() and kept.is_dir() and (kept / "config.pbtxt").is_file() and (
                OLD_TAG in entry.name or entry.name.startswith(".grefel-old-")):
            os.replace(kept, final)
            log(f"put {final} back from {entry}, where an export that was killed had left it")
        shutil.rmtree(entry, ignore_errors=True)
        if not entry.exists():
            removed.append(entry)
            log(f"removed {entry}, the work folder of a Triton repository write that was killed")
    return removed


def _new_dir(where: Path, prefix: str) -> Path:
    """A new folder `where/<prefix><random>` with the umask's permissions (tempfile.mkdtemp's
    0700 would become the model folder's mode: a Triton running as another user could not read
    it)."""
    while True:
        path = where / f"{prefix}{secrets.token_hex(4)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def write_model_repository(
    repo: Path,
    model_file: Path,
    onnx_path: Path,
    *,
    max_batch: int,
    max_queue_delay_us: int = 2000,
    instances: int = 1,
    built_by: Optional[Dict[str, Any]] = None,
    log: Log = print,
    cuda_graphs: bool = False,
) -> Path:
    """Write `repo/grefel` for `model_file` (an .engine/.plan or .onnx) whose graph is
    `onnx_path` (the ONNX itself, or the one the engine was built from); returns the folder.

    built_by: {tensorrt, gpu, compute_capability} of a plan's builder; default: read from the
    engine's sidecar. The work folders live beside `repo` (the module doc says why).
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
    builder = _builder(model_file, platform, built_by)
    target = "model.plan" if platform == "tensorrt_plan" else "model.onnx"
    comments = [f"written by grefel {__version__}; {RECORD} records what built 1/{target}"]
    if builder is not None:
        comments.append(f"1/{target} was built by {_describe(builder)}; it runs only there")
    text = config_text(platform=platform, max_batch=max_batch, outputs=outputs,
                       max_queue_delay_us=max_queue_delay_us, instances=instances,
                       comments=comments, cuda_graphs=cuda_graphs)
    record = {"format": RECORD_FORMAT, "grefel": __version__, "platform": platform,
              "model_file": f"1/{target}", "source": model_file.name,
              "model_sha256": sha256_file(model_file), "built_by": builder}
    repo.mkdir(parents=True, exist_ok=True)
    real = repo.resolve()
    final = repo / MODEL_NAME
    remove_stale_work_dirs(repo, log)
    _refuse_mix(repo, final, builder)
    stage = _stage_dir(real)
    if stage == real:
        log(f"--triton {repo}: its parent folder cannot hold the work folder (a mount point, or "
            "not writable); it is made inside the repository, where a killed export would leave "
            "a folder that Triton tries to load")
    work = _new_dir(stage, f".{real.name}{WORK_TAG}{os.getpid()}-")
    old = None
    try:
        (work / "1").mkdir()
        shutil.copyfile(model_file, work / "1" / target)
        (work / LABELS).write_text("\n".join(classes) + "\n", encoding="utf-8")
        (work / RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        (work / "config.pbtxt").write_text(text, encoding="utf-8")
        if final.exists():
            old = _new_dir(stage, f".{real.name}{OLD_TAG}{os.getpid()}-")
            os.replace(final, old / MODEL_NAME)
        os.replace(work, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        if old is not None and not final.exists():
            os.replace(old / MODEL_NAME, final)  # the good repository back in place
            shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
        if exc.errno == errno.EXDEV:  # cannot happen by _stage_dir; said plainly if it does
            raise ExportError(f"{repo}: the work folder {work} is on another filesystem") from None
        raise ExportError(f"{repo}: cannot write the Triton repository ({exc})") from None
    return final
