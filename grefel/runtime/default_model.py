"""The model that ships inside grefel: what `grefel predict`, `eval`, `serve` and `export` use
when no model file is given, and what `grefel info` names.

    path = default_model("onnx")          # the FP32 ONNX: torch-free, run by ONNX Runtime
    path = default_model("checkpoint")    # the grefel checkpoint (.safetensors + .json)

It is the tiny preset trained on real labelled photos (muxspace/facial_expressions, Apache-2.0)
with the recipe and split of docs/models.md, its model card. Both files are the same weights:
the ONNX is `grefel export`'s FP32 file of the checkpoint, checked against it by export's parity
gate. predict, eval and serve run the ONNX (ONNX Runtime is one of grefel's own dependencies,
and a Jetson without torch has it), so a face gets the same answer from every command; export
starts from the checkpoint where torch is installed (every target and option), else from the
ONNX. Torch-free module.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

from grefel.errors import GrefelError

__all__ = ["DEFAULT_MODEL", "DefaultModelError", "default_model", "describe", "model_card"]

DEFAULT_MODEL = "grefel-tiny-muxspace"
_SUFFIX = {"onnx": ".onnx", "checkpoint": ".safetensors", "sidecar": ".json"}


class DefaultModelError(GrefelError, FileNotFoundError):
    """The packaged model is missing (a broken install); the message names the file."""


def _folder() -> Path:
    from grefel.runtime.detectors import MODELS

    return MODELS


def default_model(kind: str = "onnx") -> Path:
    """The packaged model's file of `kind`: "onnx", "checkpoint" or "sidecar"."""
    if kind not in _SUFFIX:
        raise ValueError(f"kind must be one of {', '.join(_SUFFIX)}, got {kind!r}")
    path = _folder() / (DEFAULT_MODEL + _SUFFIX[kind])
    if not path.is_file():
        raise DefaultModelError(f"{path}: the default model is missing from this grefel "
                                "install; reinstall grefel, or pass a model file (--weights)")
    return path


def model_card() -> Dict[str, Any]:
    """The checkpoint sidecar's `model_card` (data, split, recipe, test metrics), {} if none."""
    try:
        meta = json.loads(default_model("sidecar").read_text())
    except (OSError, ValueError):
        return {}
    card = meta.get("model_card")
    return card if isinstance(card, dict) else {}


def describe(path: Optional[Path] = None) -> str:
    """One line naming the default model, its file and what it was trained on."""
    card = model_card()
    where = path if path is not None else _folder() / (DEFAULT_MODEL + ".onnx")
    data = card.get("data", "real labelled photos")
    test = card.get("test", {})
    score = (f"; test macro-F1 {test['macro_f1']:.3f}, accuracy {test['accuracy']:.3f}"
             if {"macro_f1", "accuracy"} <= set(test) else "")
    return f"default model {DEFAULT_MODEL} ({where}): trained on {data}{score}; docs/models.md"
