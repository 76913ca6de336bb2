"""Which torch device a command runs on: one rule for `grefel train` and `grefel eval`.

A module of its own so that evaluation does not import the training loop for it (no
`grefel.train` <-> `grefel.evaluate` cycle).
"""

from __future__ import annotations

import torch

from grefel.errors import GrefelError

__all__ = ["DeviceError", "resolve_device"]


class DeviceError(GrefelError, ValueError):
    """A device that this torch cannot use; the message names the option value."""


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """auto -> this rank's GPU when CUDA is available, else the CPU; cuda -> cuda:local_rank."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"--device {name} asked for, but this torch sees no CUDA GPU")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise DeviceError(f"--device {name!r}: not a torch device ({exc}); use auto, cpu, "
                          "cuda or cuda:N") from None
