"""Trim full TensorRT API dumps to the classes grefel uses, and derive the 8.5.2 snapshot.

Usage: python tests/data/trt_api/make_snapshots.py DUMP_DIR

DUMP_DIR holds `trt-VERSION.json` for 8.6.1, 10.3.0, 10.13.0.35 and 11.4.0.106: every class of
the real `tensorrt_bindings` module with its members (pybind signatures) and enum values, dumped
by importing the PyPI bindings wheel with stand-in native libraries (the method of
`tests/test_trt_real_bindings.py`). Regenerate when a TensorRT version is added.

TensorRT 8.5.2 (JetPack 5.1) has no wheel on PyPI. Its snapshot is the 8.6.1 one minus what 8.6
added. From a check of NVIDIA's OSS sources at tag 8.5.2 (`python/src/infer/pyGraph.cpp`,
`python/packaging/tensorrt/__init__.py`): no `LayerType.NORMALIZATION`, and `nptype` builds
`np.bool`, which numpy 1.24-1.26 (what Python 3.8 on JetPack 5 gets) no longer has
(`"nptype_uses_np_bool"`). From the 8.6 feature list (TensorRT's changelog / compatibility
notes, not checked against an 8.5.2 binary): `INormalizationLayer`, `ILayer.metadata`, builder
optimisation level, auxiliary streams, hardware and version compatibility, ONNX parser flags,
`DataType.FP8`. grefel guards every one of these, so a member wrongly removed here only makes
the 8.5 fake stricter than the real 8.5.2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

CLASSES = [
    "Logger", "ILogger", "Builder", "INetworkDefinition", "OnnxParser", "ParserError",
    "IBuilderConfig", "IOptimizationProfile", "ITimingCache", "IHostMemory", "ILayer", "ITensor",
    "Runtime", "ICudaEngine", "IExecutionContext", "EngineInspector", "Dims",
    "DataType", "NetworkDefinitionCreationFlag", "BuilderFlag", "MemoryPoolType", "DeviceType",
    "LayerType", "TensorIOMode", "ProfilingVerbosity", "LayerInformationFormat",
]
SEVERITY = {"INTERNAL_ERROR": 0, "ERROR": 1, "WARNING": 2, "INFO": 3, "VERBOSE": 4}
REMOVED_IN_852 = {
    "LayerType": ["NORMALIZATION"],
    "DataType": ["FP8"],
    "ILayer": ["metadata"],
    "INetworkDefinition": ["add_normalization"],
    "BuilderFlag": ["VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME"],
    "IBuilderConfig": ["builder_optimization_level", "hardware_compatibility_level",
                       "max_aux_streams", "plugins_to_serialize"],
    "OnnxParser": ["set_flag", "clear_flag", "get_flag", "flags"],
    "ICudaEngine": ["hardware_compatibility_level", "num_aux_streams"],
    "IExecutionContext": ["set_aux_streams"],
    "Runtime": ["engine_host_code_allowed"],
}


def trim(full: dict) -> dict:
    classes = {}
    for name in CLASSES:
        cls = full["classes"].get(name)
        if cls is None:
            continue
        members = {}
        for member, info in cls["members"].items():
            if member.startswith("__") and member != "__init__":
                continue
            kept = {"kind": info["kind"]}
            if info["kind"] == "property":
                kept["settable"] = bool(info.get("settable"))
            if "sig" in info:
                kept["sig"] = info["sig"]
            if info["kind"] == "enum_member":
                kept["value"] = info["value"]
            members[member] = kept
        entry = {"members": members}
        if "enum" in cls:
            entry["enum"] = cls["enum"]
        if name in ("Logger", "ILogger"):
            entry["enum"] = {k: v for k, v in SEVERITY.items() if k in members}
        classes[name] = entry
    constants = {}
    for key, text in full["other"].items():  # float32: "<DataType.FLOAT: 0>"
        if text.startswith("<DataType."):
            constants[key] = text[len("<DataType."):].split(":")[0]
    return {"version": full["version"], "classes": classes, "constants": constants,
            "functions": sorted(full["functions"]), "nptype_uses_np_bool": False}


def derive_852(snap86: dict) -> dict:
    snap = json.loads(json.dumps(snap86))
    snap["version"] = "8.5.2.2"
    snap["nptype_uses_np_bool"] = True
    for cls, names in REMOVED_IN_852.items():
        entry = snap["classes"].get(cls)
        for name in names if entry else ():
            entry["members"].pop(name, None)
            entry.get("enum", {}).pop(name, None)
    snap["constants"].pop("fp8", None)
    return snap


def main(src: Path, dest: Path) -> None:
    for path in sorted(src.glob("trt-*.json")):
        snap = trim(json.loads(path.read_text()))
        (dest / path.name).write_text(json.dumps(snap, indent=1, sort_keys=True) + "\n")
        if snap["version"] == "8.6.1":
            snap852 = derive_852(snap)
            (dest / "trt-8.5.2.json").write_text(json.dumps(snap852, indent=1, sort_keys=True)
                                                 + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(__file__).resolve().parent)
