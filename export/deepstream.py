"""A DeepStream `nvinfer` config: grefel as a secondary classifier on a face detector's faces.

`write_deepstream_config(folder, ...)` writes into `folder`:

    config_infer_secondary_grefel.txt   the [property] group nvinfer reads (GLib key file)
    labels_grefel.txt                   one line per output layer, its labels separated by ';'
    NAME.int8.trt.onnx                  (INT8 only) the QDQ ONNX in the form TensorRT parses

Every value comes from the checked ONNX itself: the input's shape, colour order and range (its
grefel metadata: RGB in [0, 1], normalisation inside the model, so nvinfer's
y = net-scale-factor * (x - offsets) is x / 255 with zero offsets), the output names in the
graph's order and the class names. Every key written is one of nvinfer's documented keys
(`export/data/deepstream_nvinfer_keys.json`, with its sources) and the keys a secondary
classifier needs are all there (`check_properties`).

DeepStream's default classifier parser reports one attribute per output layer of the engine, in
the engine's order: probs (the expression, eq. 19), primary (the eq. 9 head) and confidence
(C_f, eq. 10); labels_grefel.txt has a line for each. Not run on DeepStream here (no GPU).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from export import ExportError, checked_classes
from grefel.fileio import atomic_write_bytes

__all__ = [
    "CONFIG_NAME",
    "KEYS_PATH",
    "LABELS_NAME",
    "DeepStreamOptions",
    "check_properties",
    "documented_keys",
    "nvinfer_properties",
    "write_deepstream_config",
]

CONFIG_NAME = "config_infer_secondary_grefel.txt"
LABELS_NAME = "labels_grefel.txt"  # a name of its own: never a user's labels.txt
KEYS_PATH = Path(__file__).with_name("data") / "deepstream_nvinfer_keys.json"
NETWORK_MODE = {"fp32": 0, "int8": 1, "fp16": 2}  # nvinfer's network-mode values
Property = Tuple[str, str, str]  # key, value, comment ("" for none)


@dataclass(frozen=True)
class DeepStreamOptions:
    """Where grefel sits in the pipeline.

    Attributes:
        detector_gie_id: gie-unique-id of the primary face detector (operate-on-gie-id).
        face_class_ids: the detector's class ids that are faces (operate-on-class-ids).
        batch_size: faces per inference, at most the engine's profile max batch.
        precision: "fp32", "fp16" or "int8": the engine's (network-mode).
        dla_core: the DLA core the engine was built for, if any.
    """

    detector_gie_id: int = 1
    face_class_ids: Tuple[int, ...] = (0,)
    batch_size: int = 8
    precision: str = "fp16"
    dla_core: Optional[int] = None


@lru_cache(maxsize=1)
def documented_keys() -> Dict[str, Any]:
    """The documented nvinfer keys (`KEYS_PATH`): property keys, class-attrs keys, sources."""
    with open(KEYS_PATH) as f:
        return json.load(f)


def _onnx_facts(onnx_path: Path) -> Dict[str, Any]:
    """Input shape, colour, range, output names and class names of a grefel ONNX."""
    import onnx

    from export.sidecar import onnx_meta

    model = onnx.load(str(onnx_path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    dims = [d.dim_value if d.HasField("dim_value") else None
            for d in inputs[0].type.tensor_type.shape.dim]
    meta = onnx_meta(onnx_path)
    spec = meta.get("input") if isinstance(meta.get("input"), dict) else {}
    classes = meta.get("class_names")
    if len(dims) != 4 or None in dims[1:] or not spec or not isinstance(classes, list):
        raise ExportError(f"{onnx_path}: no grefel input spec or class names in its metadata; "
                          "export it with `grefel export`")
    return {"shape": dims[1:], "color": spec.get("color"), "range": spec.get("range"),
            "layout": spec.get("layout", "NCHW"), "outputs": [o.name for o in model.graph.output],
            "classes": checked_classes(classes, onnx_path)}


def _scaling(facts: Dict[str, Any], onnx_path: Path) -> Tuple[str, str, str]:
    """(model-color-format, net-scale-factor, offsets) for nvinfer's y = s * (x - offsets)."""
    color = {"RGB": "0", "BGR": "1"}.get(str(facts["color"]).upper())
    lo, hi = (float(v) for v in facts["range"])
    if color is None or lo != 0.0 or hi <= 0.0 or facts["layout"] != "NCHW":
        raise ExportError(f"{onnx_path}: input {facts['color']} {facts['layout']} in "
                          f"[{lo:g}, {hi:g}] cannot be written as nvinfer's one scale and "
                          "offsets; DeepStream needs RGB or BGR NCHW starting at 0")
    channels = facts["shape"][0]
    return color, repr(hi / 255.0), ";".join(["0"] * channels)


def _relative(path: Path, folder: Path) -> str:
    """`path` relative to the config's folder: nvinfer resolves relative paths against it."""
    return os.path.relpath(Path(path).resolve(), Path(folder).resolve())


def nvinfer_properties(folder: Path, *, engine: Path, onnx: Path, labels: Path,
                       facts: Dict[str, Any], opts: DeepStreamOptions,
                       engine_note: str = "") -> List[Property]:
    """The [property] group, in file order, as (key, value, comment)."""
    color, scale, offsets = _scaling(facts, onnx)
    ids = sorted(set(opts.face_class_ids))
    props: List[Property] = [
        ("gie-unique-id", str(opts.detector_gie_id + 1),
         "this classifier's id (> 0, not the detector's)"),
        ("process-mode", "2", "secondary: runs on the objects of an upstream detector"),
        ("operate-on-gie-id", str(opts.detector_gie_id), "the face detector's gie-unique-id"),
        ("operate-on-class-ids", ";".join(map(str, ids)), "the face detector's face class"),
        ("network-type", "1", "classifier"),
        ("classifier-type", "grefel-expression",
         "NvDsClassifierMeta.classifier_type of the results"),
        ("classifier-threshold", "0.0",
         "every output layer reports its top class; filter on the confidence attribute"),
        ("model-engine-file", _relative(engine, folder), engine_note),
        ("onnx-file", _relative(onnx, folder),
         "DeepStream builds its own engine from this when model-engine-file is missing or "
         "does not load (named <onnx>_b<batch>_gpu<id>_<mode>.engine): without grefel's FP16 "
         "gate and --verify, prefer grefel's engine"),
        ("labelfile-path", _relative(labels, folder),
         "one line per output layer: " + ", ".join(facts["outputs"])),
        ("batch-size", str(opts.batch_size), "at most the engine's max batch"),
        ("network-mode", str(NETWORK_MODE[opts.precision]),
         f"{opts.precision.upper()}: the engine's precision"),
        ("infer-dims", ";".join(map(str, facts["shape"])), "the ONNX input, CHW"),
        ("network-input-order", "0", "NCHW"),
        ("model-color-format", color, f"{facts['color']}, what the ONNX takes"),
        ("net-scale-factor", scale,
         f"y = net-scale-factor * (x - offsets): x / 255, the [0, {facts['range'][1]:g}] input "
         "the ONNX takes (its per-stream normalisation is inside the model)"),
        ("offsets", offsets, "no mean subtraction"),
        ("maintain-aspect-ratio", "1",
         "no distortion, as grefel's square face crop (padding is black, not the image)"),
        ("symmetric-padding", "1", "the face stays centred"),
        ("scaling-filter", "1", "bilinear, as grefel's resize (which also antialiases)"),
        ("output-blob-names", ";".join(facts["outputs"]), "the ONNX outputs, in engine order"),
    ]
    if opts.dla_core is not None:
        props += [("enable-dla", "1", "the engine was built for DLA"),
                  ("use-dla-core", str(opts.dla_core), "")]
    return props


def check_properties(props: Sequence[Property]) -> None:
    """Every key is a documented nvinfer [property] key, none twice, the required ones present;
    values are single-line and have no '#' (GKeyFile reads it as part of the value)."""
    doc = documented_keys()
    known = set(doc["property_keys"]) | set(doc["property_keys_later_releases"]["keys"])
    keys = [k for k, _, _ in props]
    unknown = [k for k in keys if k not in known]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    missing = [k for k in doc["required_for_secondary_classifier"] if k not in keys]
    bad = [k for k, v, _ in props if "#" in v or "\n" in v or v != v.strip() or not v]
    for problem, names in (("undocumented keys", unknown), ("keys written twice", twice),
                           ("required keys missing", missing), ("malformed values", bad)):
        if names:
            raise ExportError(f"DeepStream config: {problem}: {', '.join(names)}")


def _render(props: Sequence[Property], header: Sequence[str]) -> str:
    lines = [f"# {h}" if h else "#" for h in header] + ["[property]"]
    for key, value, comment in props:
        lines += [f"# {key}: {comment}"] if comment else []
        lines.append(f"{key}={value}")
    return "\n".join(lines) + "\n"


def write_deepstream_config(folder: Path, *, engine: Path, onnx: Path, opts: DeepStreamOptions,
                            engine_built: bool, build_command: str = "") -> List[Path]:
    """Write the nvinfer config and labels into `folder` (created); returns the written paths.

    Args:
        folder: the DeepStream config folder (--deepstream DIR).
        engine: the TensorRT engine (built, or the path `build_command` writes on the device).
        onnx: the checked ONNX the engine is (or will be) built from; for INT8 the QDQ ONNX.
        opts: the detector ids, batch size and precision.
        engine_built: False when no TensorRT was here: the config says how to build it.
        build_command: the grefel command that builds `engine` on the device.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"--deepstream {folder}: cannot write there "
                          f"({exc.strerror or exc})") from None
    facts = _onnx_facts(onnx)
    written: List[Path] = []
    parsed = onnx
    if opts.precision == "int8":  # uint8 activations, int32 biases: TensorRT takes neither
        from export.trt_form import for_tensorrt

        parsed = for_tensorrt(onnx, folder)
        written += [parsed] if parsed != onnx else []
    labels = folder / LABELS_NAME
    label_lines = [";".join(facts["classes"]) if out in ("probs", "primary") else out
                   for out in facts["outputs"]]
    note = ("built by grefel export" if engine_built else
            "not built here (no TensorRT): the path the engine gets when it is built on the "
            f"device with: {build_command}")
    props = nvinfer_properties(folder, engine=engine, onnx=parsed, labels=labels, facts=facts,
                               opts=opts, engine_note=note)
    check_properties(props)
    header = [
        "DeepStream Gst-nvinfer config: grefel facial-expression classifier (secondary GIE)",
        f"on the faces of the detector with gie-unique-id {opts.detector_gie_id}, written by "
        "grefel export.",
        "Relative paths are resolved against this file's folder. Keys: docs/export.md#deepstream.",
        "Attributes per face, in output order: " + ", ".join(facts["outputs"]) + ".",
    ]
    atomic_write_bytes(labels, ("\n".join(label_lines) + "\n").encode())
    config = folder / CONFIG_NAME
    atomic_write_bytes(config, _render(props, header).encode())
    return [config, labels, *written]
