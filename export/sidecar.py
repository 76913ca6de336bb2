"""The engine's JSON sidecar and the facts it records (versions, GPU, ONNX, gates).

The engine file itself is a plain plan with no header bytes (trtexec, DeepStream and C++
loaders read it); everything a consumer needs to know travels in `NAME_fp16_bMAX.json`. Its
schema (format `grefel-engine/1`) is `grefel.contract.engine_sidecar_doc`; `write_sidecar` here
is its one writer and `grefel.contract.read_engine_sidecar` its one reader (docs/contract.md).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, Optional, Union

from grefel import __version__
from grefel._lazy import MissingDependency
from grefel.contract import ENGINE_SIDECAR_FORMAT, engine_sidecar_doc
from grefel.fileio import atomic_write_json, sha256_file

__all__ = ["FORMAT", "device_info", "engine_stem", "onnx_meta", "write_sidecar"]

FORMAT = ENGINE_SIDECAR_FORMAT


def engine_stem(name: str, fp16: bool, max_batch: int, int8: bool = False) -> str:
    return f"{name}_{'int8' if int8 else 'fp16' if fp16 else 'fp32'}_b{max_batch}"


def onnx_meta(path: Union[str, Path]) -> Dict[str, Any]:
    """grefel.* metadata_props of an ONNX file, JSON values decoded, 'grefel.' stripped."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    out: Dict[str, Any] = {}
    for prop in model.metadata_props:
        if prop.key.startswith("grefel."):
            try:
                out[prop.key[7:]] = json.loads(prop.value)
            except json.JSONDecodeError:
                out[prop.key[7:]] = prop.value
    return out


def _cuda_facts() -> Dict[str, Any]:
    """GPU name, compute capability and CUDA driver version through the CUDA layer the engine
    runtime uses (cuda-bindings or pycuda: grefel.runtime.cuda_layer), so that the sidecar's GPU
    name is the string the runtime compares it with (nvidia-smi's differs on Jetson: "Orin
    (nvgpu)" against the driver's "Orin"); else nvidia-smi."""
    from grefel.runtime.cuda_layer import open_layer

    try:
        layer = open_layer()
        name, cc = layer.open(0)
        facts: Dict[str, Any] = {"gpu": name, "compute_capability": cc, "cuda_layer": layer.name}
        facts.update(layer.versions())
        layer.release()
        return facts
    except (MissingDependency, Exception) as exc:  # CudaError, or a binding's own error
        facts = {"cuda_layer": f"unavailable ({str(exc).splitlines()[0][:120]})"}
    try:
        line = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout.splitlines()[0]
        name, cc, driver = (s.strip() for s in line.split(","))
        facts.update(gpu=name, compute_capability=cc, nvidia_driver=driver)
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        facts.update(gpu=None, compute_capability=None)
    return facts


def device_info(trt: Any = None) -> Dict[str, Any]:
    """Versions and GPU facts of this machine, for the sidecar (unknowns are None)."""
    info: Dict[str, Any] = {"grefel": __version__,
                            "tensorrt": getattr(trt, "__version__", None) if trt else None}
    info.update(_cuda_facts())
    tegra = Path("/etc/nv_tegra_release")
    if tegra.is_file():
        info["l4t"] = tegra.read_text().splitlines()[0].strip()
    return info


def write_sidecar(
    path: Union[str, Path],
    *,
    engine: Path,
    onnx_built: Path,
    onnx_fp32: Path,
    build: Dict[str, Any],
    gates: Dict[str, Any],
    device: Dict[str, Any],
    meta: Optional[Dict[str, Any]] = None,
) -> Path:
    """Write the engine's sidecar atomically; returns its path."""
    meta = meta or {}
    doc = engine_sidecar_doc(
        engine=engine.name,
        engine_sha256=sha256_file(engine),
        onnx=onnx_built.name,
        onnx_sha256=sha256_file(onnx_built),
        onnx_fp32_sha256=sha256_file(onnx_fp32),
        class_names=meta.get("class_names") or [],
        outputs=meta.get("outputs"),
        model_config=meta.get("config"),
        versions=device,
        build=build,
        gates=gates,
        created_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    atomic_write_json(path, doc)
    return Path(path)
