"""The one finiteness guard of grefel's models: no NaN or inf is written as weights, or read as
weights, by any command.

A model whose weights hold NaN or inf computes NaN for every input, yet the file looks like any
other checkpoint: the metrics beside it (accuracy of argmax over NaN) mean nothing and every
later command trips over it somewhere else. So every writer of model or training state (the
checkpoint writer `grefel.checkpoint.save_checkpoint`, the resumable state of `grefel train`,
`grefel pretrain`'s stream files, `grefel weights import`) and every reader of one (the
checkpoint loader under eval / export / predict / bench, `--init`, `--resume`, `--pretrained-*`)
calls `require_finite` on the tensors, and the training loops call it on their weights after
every optimizer step, so a run stops at the step that broke it instead of evaluating garbage.

Only floating-point values are checked (float16, bfloat16, float32, float64 and complex; integer
buffers such as BatchNorm's `num_batches_tracked` cannot hold NaN): zero and large-but-finite
weights pass. Torch tensors and numpy arrays are both understood, so this module imports
neither torch nor anything heavy (the engine-only runtime uses it for its outputs check too).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

import numpy as np

from grefel.errors import GrefelError

__all__ = ["NonFiniteError", "describe_nonfinite", "nonfinite_counts", "require_finite",
           "total_values"]

Counts = Dict[str, Tuple[int, int]]  # name -> (NaN/inf values, all values) of a floating tensor


class NonFiniteError(GrefelError, ValueError):
    """Values that must be finite hold NaN or inf; the message names how many and where.

    `counts` keeps the per-tensor numbers for callers that word their own message."""

    def __init__(self, message: str, counts: Counts) -> None:
        super().__init__(message)
        self.counts = counts


def _leaves(value: Any, name: str) -> Iterator[Tuple[str, Any]]:
    """(dotted name, array) for every tensor / array in nested mappings and sequences (an
    optimizer's state_dict nests {"state": {0: {"exp_avg": tensor}}})."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _leaves(item, f"{name}.{key}" if name else str(key))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _leaves(item, f"{name}.{i}" if name else str(i))
    elif hasattr(value, "is_floating_point") and hasattr(value, "isfinite"):  # a torch tensor
        if value.is_floating_point() or value.is_complex():
            yield name, value
    elif isinstance(value, np.ndarray) and value.dtype.kind in "fc":
        yield name, value


def nonfinite_counts(values: Any) -> Counts:
    """{name: (NaN/inf count, size)} of the floating tensors in `values` that hold any; {} when
    all are finite. `values`: a state dict, an optimizer state, a dict of outputs (nested
    mappings and lists are walked; other leaves are ignored).

    Torch tensors are tested with one device synchronisation per device, cheap enough to run
    after every optimizer step: first the sum of every tensor's sum (a NaN or inf anywhere
    makes it NaN or inf, so a finite total proves every value finite: one read of the memory,
    ~8x faster than isfinite), and only when that total is not finite (a NaN, or finite values
    whose sum overflows) each tensor's isfinite; only the tensors that fail are counted.
    """
    leaves = list(_leaves(values, ""))
    bad: List[Tuple[str, Any]] = []
    torch_leaves = [(n, v) for n, v in leaves if not isinstance(v, np.ndarray)]
    by_device: Dict[Any, List[Tuple[str, Any]]] = {}
    for name, tensor in torch_leaves:
        by_device.setdefault(tensor.device, []).append((name, tensor))
    for group in by_device.values():
        import torch  # a torch leaf means torch is loaded

        total = torch.stack([(t.detach().abs() if t.is_complex() else t.detach()).sum().double()
                             for _, t in group]).sum()
        if bool(total.isfinite()):
            continue
        flags = torch.stack([t.detach().isfinite().all() for _, t in group]).cpu().tolist()
        bad += [item for item, ok in zip(group, flags) if not ok]
    bad += [(n, v) for n, v in leaves if isinstance(v, np.ndarray) and not np.isfinite(v).all()]
    counts: Counts = {}
    for name, value in bad:
        if isinstance(value, np.ndarray):
            counts[name] = (int(value.size - np.isfinite(value).sum()), int(value.size))
        else:
            counts[name] = (int((~value.detach().isfinite()).sum()), int(value.numel()))
    return counts


def describe_nonfinite(counts: Counts, total: int = 0, show: int = 3) -> str:
    """"N of M values in K tensors (a, b, c, ...)": the numbers of `nonfinite_counts`, with the
    first `show` names. `total`: all the values checked (the tensors that passed included)."""
    n = sum(k for k, _ in counts.values())
    size = total or sum(s for _, s in counts.values())
    names = sorted(counts)
    listed = ", ".join(names[:show]) + (f", ... {len(names) - show} more" if len(names) > show
                                        else "")
    return (f"{n:,} of {size:,} values in {len(names)} tensor{'s' if len(names) != 1 else ''} "
            f"({listed})")


def total_values(values: Any) -> int:
    """How many floating values `values` holds (for the 'N of M' of a message)."""
    return sum(int(v.size if isinstance(v, np.ndarray) else v.numel())
               for _, v in _leaves(values, ""))


def require_finite(values: Any, what: str, hint: str = "",
                   error: Optional[Callable[[str], BaseException]] = None) -> None:
    """NonFiniteError "WHAT: N of M values in K tensors (...) are NaN or inf; HINT" unless every
    floating tensor of `values` is finite. The one check behind every model writer and reader.

    error: the caller's own error class, raised with that message instead (a checkpoint
        reader's CheckpointError, a run's TrainingError)."""
    counts = nonfinite_counts(values)
    if counts:
        message = (f"{what}: {describe_nonfinite(counts, total_values(values))} are NaN or inf"
                   + (f"; {hint}" if hint else ""))
        raise error(message) if error is not None else NonFiniteError(message, counts)
