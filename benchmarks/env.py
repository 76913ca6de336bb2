"""The environment block of a benchmark record: machine, accelerator, versions, power mode.

Versions come from package metadata (no heavy import just to read a version), except CUDA and
GPU facts, which are read from torch or nvidia-smi when those exist. `grefel info`, `grefel
bench` and `grefel check` (which adds what TensorRT and the CUDA layer say: benchmarks.check)
share it. Jetson facts: /proc/device-tree/model, /etc/nv_tegra_release, `nvpmodel -q` and
`jetson_clocks --show` when those tools exist (their output is recorded as is; "unreadable" when
they need root).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any, Dict, Optional

__all__ = ["TRTEXEC_DIRS", "device_label", "environment", "trtexec_path"]

# Where TensorRT installs trtexec outside PATH: JetPack's apt package and NVIDIA's containers.
TRTEXEC_DIRS = ("/usr/src/tensorrt/bin",)


def _version(dist: str) -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _first_version(*dists: str) -> Optional[str]:
    for d in dists:
        v = _version(d)
        if v:
            return v
    return None


def _read(path: str) -> Optional[str]:
    try:
        return Path(path).read_text(errors="replace").replace("\x00", "").strip() or None
    except OSError:
        return None


def _run(cmd: list) -> Optional[str]:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unreadable ({exc})"
    text = (out.stdout or "").strip()
    return text if out.returncode == 0 and text else f"unreadable (exit {out.returncode})"


def _cpu_model() -> str:
    info = _read("/proc/cpuinfo") or ""
    for line in info.splitlines():
        if line.lower().startswith(("model name", "hardware", "cpu model")):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _gpu() -> Dict[str, Any]:
    """GPU name / compute capability / CUDA from torch (if it sees CUDA), else nvidia-smi."""
    gpu: Dict[str, Any] = {}
    try:
        import torch

        gpu["torch_cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            gpu["name"] = torch.cuda.get_device_name(0)
            gpu["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    except ImportError:
        pass
    toolkit = _read("/usr/local/cuda/version.json")
    if toolkit:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            gpu["cuda"] = json.loads(toolkit)["cuda"]["version"]
    smi = _run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"])
    if smi and not smi.startswith("unreadable"):
        name, _, driver = smi.splitlines()[0].partition(",")
        gpu.setdefault("name", name.strip())
        gpu["driver"] = driver.strip()
    return gpu


def _jetson() -> Optional[Dict[str, Any]]:
    model = _read("/proc/device-tree/model")
    release = _read("/etc/nv_tegra_release")
    if not (release or (model and "jetson" in model.lower())):
        return None
    return {
        "model": model,
        "l4t": release.splitlines()[0] if release else None,
        "nvpmodel": _run(["nvpmodel", "-q"]),
        "jetson_clocks": _run(["jetson_clocks", "--show"]),
    }


def environment() -> Dict[str, Any]:
    """A JSON-ready description of this machine and the software that ran the benchmark."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    ort_providers = None
    try:
        import onnxruntime

        ort_providers = onnxruntime.get_available_providers()
    except ImportError:
        pass
    return {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_cores": cores,
        "gpu": _gpu(),
        "jetson": _jetson(),
        "trtexec": trtexec_path(),
        "versions": {
            "grefel": _version("grefel") or __import__("grefel").__version__,
            "torch": _version("torch"),
            "onnxruntime": _first_version("onnxruntime", "onnxruntime-gpu"),
            "onnxruntime_providers": ort_providers,
            "tensorrt": _first_version("tensorrt", "tensorrt-cu12", "tensorrt-cu13")
            or _trt_module_version(),
            "pycuda": _version("pycuda"),
            # NVIDIA's CUDA Python bindings (`from cuda.bindings import driver`), the wheel-only
            # alternative to pycuda; cuda-python before 12.6 shipped them as `cuda-python`
            "cuda_bindings": _first_version("cuda-bindings", "cuda-python"),
            "onnxsim": _version("onnxsim"),
            "numpy": _version("numpy"),
            "opencv": _first_version("opencv-python-headless", "opencv-python"),
        },
    }


def trtexec_path() -> Optional[str]:
    """TensorRT's trtexec: on PATH, else where JetPack installs it (not on PATH there)."""
    found = shutil.which("trtexec")
    if found:
        return found
    for folder in TRTEXEC_DIRS:
        path = Path(folder) / "trtexec"
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return None


def _trt_module_version() -> Optional[str]:
    """JetPack's apt TensorRT has no pip metadata: ask the module when it imports."""
    try:
        import tensorrt

        return getattr(tensorrt, "__version__", None)
    except Exception:  # ImportError, or OSError from a missing libnvinfer
        return None


def device_label(env: Dict[str, Any]) -> str:
    """A file-name-safe label: the Jetson model when on a Jetson, else the host name."""
    raw = (env.get("jetson") or {}).get("model") or env.get("host") or "host"
    return "".join(c if c.isalnum() else "-" for c in raw).strip("-").lower()[:40] or "host"
