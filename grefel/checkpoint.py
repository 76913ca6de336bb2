"""Checkpoints: `NAME.safetensors` (weights) + `NAME.json` (config, classes, preprocessing,
metrics), and a separate resumable training state `NAME.state.pt`.

Nothing here unpickles arbitrary objects: weights are safetensors, the training state is read
with `torch.load(..., weights_only=True)`. Loading is strict: a missing, unexpected or
mis-shaped tensor is an error naming the file, never a silent partial load.

torch and safetensors (grefel's train extra) are imported when weights are saved or loaded:
reading a sidecar needs neither, and a torch-free install that is handed a checkpoint gets a
MissingDependency naming the extra.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple, Union

from grefel import __version__
from grefel._lazy import require
from grefel.config import GReFELConfig
from grefel.contract import input_spec
from grefel.errors import GrefelError
from grefel.fileio import atomic_write_bytes, atomic_write_json, sha256_file
from grefel.finite import NonFiniteError, require_finite

if TYPE_CHECKING:
    import torch

    from grefel.model.grefel import GReFEL

__all__ = [
    "FORMAT",
    "CheckpointError",
    "NonFiniteError",
    "load_checkpoint",
    "load_weights_into",
    "misfit",
    "read_meta",
    "save_checkpoint",
    "sidecar_path",
    "verify_weights",
]

FORMAT = "grefel-checkpoint/1"
PREPROCESSING = input_spec()  # the input contract, carried in every checkpoint sidecar

PathLike = Union[str, Path]


class CheckpointError(GrefelError, ValueError):
    """A checkpoint that cannot be used as asked; the message names the file and the problem."""


def sidecar_path(weights: PathLike) -> Path:
    return Path(weights).with_suffix(".json")


def save_checkpoint(
    path: PathLike,
    model: GReFEL,
    metrics: Optional[Dict[str, Any]] = None,
    face_alignment: Optional[Dict[str, Any]] = None,
    **extra: Any,
) -> Path:
    """Write `path` (.safetensors) and its JSON sidecar atomically; returns the weights path.

    face_alignment: how the training images became faces (`grefel train --align-faces`), kept
    in the sidecar's `preprocessing` beside the input contract.

    A model holding NaN or inf is refused (grefel.finite.NonFiniteError) before a byte is
    written: an existing file at `path` (the last good epoch's) stays as it was.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: checkpoints are .safetensors files")
    save = _safetensors_torch(f"saving {path.name} (a PyTorch checkpoint)").save
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    require_finite(state, f"{path}: the model's weights",
                   "not written (nothing non-finite is saved as a checkpoint)")
    # Serialised in memory, written by fileio: a full disk is then an OSError naming the file
    # (safetensors' own writer reports it as a SafetensorError without one).
    atomic_write_bytes(path, save(state, metadata={"format": FORMAT}))
    meta = {
        "format": FORMAT,
        "grefel_version": __version__,
        "config": model.cfg.to_dict(),
        "class_names": list(model.cfg.class_names),
        "preprocessing": PREPROCESSING if face_alignment is None
        else {**PREPROCESSING, "face_alignment": dict(face_alignment)},
        "metrics": metrics or {},
        "weights_sha256": sha256_file(path),
        **extra,
    }
    atomic_write_json(sidecar_path(path), meta)
    return path


def read_meta(path: PathLike) -> Dict[str, Any]:
    """The sidecar of checkpoint `path`, checked for format."""
    path = Path(path)
    side = sidecar_path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not side.is_file():
        raise CheckpointError(f"{path}: its sidecar {side.name} is missing (config and classes)")
    try:
        meta = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{side}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{side}: holds a JSON {type(meta).__name__}, not the object "
                              "grefel writes beside a checkpoint")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{side}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def verify_weights(path: PathLike, meta: Dict[str, Any]) -> None:
    """The weights file must be the one its sidecar describes (`weights_sha256`: the
    SHA-256 of the whole file); a mismatch is an error naming both files."""
    path = Path(path)
    expected = meta.get("weights_sha256")
    if not isinstance(expected, str):
        raise CheckpointError(f"{sidecar_path(path)}: no weights_sha256 to check {path.name} "
                              "against; re-save the checkpoint with grefel")
    actual = sha256_file(path)
    if actual != expected:
        raise CheckpointError(
            f"{path} does not match its sidecar {sidecar_path(path)}: the weights' SHA-256 is "
            f"{actual[:16]}..., the sidecar records {expected[:16]}... (a damaged file, or the "
            "two files are from different saves); use a matching pair")


def _safetensors_torch(needed_for: str) -> Any:
    """`safetensors.torch`, or MissingDependency saying that `needed_for` needs torch."""
    require("torch", needed_for)
    return require("safetensors.torch", needed_for)


def load_weights_into(model: torch.nn.Module, path: PathLike) -> None:
    """Strictly load safetensors `path` into `model`; every mismatch is reported."""
    load_file = _safetensors_torch(f"{Path(path).name} (PyTorch weights)").load_file
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    problems = misfit(model.state_dict(), state)
    if problems:
        raise CheckpointError(f"{path}: weights do not fit the model: {problems}")
    # the same check as every writer's: a model with NaN/inf weights computes only NaN
    require_finite(state, str(path), "a broken checkpoint that no command can use; train it "
                   "again (with a lower --lr) or use another file", error=CheckpointError)
    model.load_state_dict(state, strict=True)


def misfit(own: Dict[str, Any], state: Dict[str, Any]) -> str:
    """"" when `state` has exactly the keys and shapes of `own` (a model's state dict), else
    the missing, unexpected and mis-shaped keys (counts and the first five of each)."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if getattr(state[k], "shape", None) != own[k].shape
    )
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if items:
            more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:5])}{more}")
    return "; ".join(parts)


def load_checkpoint(
    path: PathLike, preset: Optional[str] = None, map_location: str = "cpu"
) -> Tuple[GReFEL, Dict[str, Any]]:
    """Build the model its sidecar describes and load its weights (eval mode).

    Args:
        path: the .safetensors file.
        preset: when given, the checkpoint must be of this preset.
        map_location: device for the model.
    """
    meta = read_meta(path)
    _safetensors_torch(f"{Path(path).name} (a PyTorch checkpoint)")
    verify_weights(path, meta)
    try:
        cfg = GReFELConfig.from_dict(meta["config"])
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{sidecar_path(path)}: bad config ({exc})") from None
    if preset is not None and cfg.name != preset:
        raise CheckpointError(
            f"{path}: checkpoint of preset {cfg.name!r}, but preset {preset!r} was asked for"
        )
    shown = meta.get("class_names", list(cfg.class_names))
    if list(shown) != list(cfg.class_names):  # the sidecar's two copies must agree
        raise CheckpointError(
            f"{sidecar_path(path)}: class_names {list(shown)} disagrees with config.class_names "
            f"{list(cfg.class_names)} (the names the model was trained with); restore the "
            "sidecar written with the checkpoint")
    from grefel.model.grefel import GReFEL

    model = GReFEL(cfg)
    load_weights_into(model, path)
    return model.to(map_location).eval(), meta
