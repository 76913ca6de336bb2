"""Torch model -> FP32 ONNX with a batch dimension that really is dynamic.

The TorchScript exporter (`dynamo=False`) is used on purpose: the dynamo exporter of torch 2.x
emits opset >= 18 (and the single `Gelu` op at 20) that TensorRT 8.5 / 8.6 cannot parse
(docs/tensorrt.md, "ONNX export"). Opset 16 for TensorRT 8.5 (no LayerNormalization importer, so
LayerNorm is exported decomposed), 17 for every later version (one LayerNormalization node that
TensorRT computes in FP32).

`GReFEL.forward` returns a NamedTuple whose correction fields may be None; `_SelectOutputs`
returns the exported tensors in a fixed order so the ONNX outputs have stable names.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Dict, List, Sequence, Union

import onnx
import torch
from torch import nn

from export import ExportError
from grefel import __version__
from grefel.contract import INPUT_NAME, INPUT_SHAPE, OPSET, input_spec, opset_for_target
from grefel.contract import OUTPUTS as BASE_OUTPUTS
from grefel.fileio import atomic_path

__all__ = [
    "BASE_OUTPUTS",
    "INPUT_NAME",
    "export_onnx",
    "onnx_metadata",
    "opset_for_target",
    "output_names",
]

INPUT_SPEC = input_spec()


def output_names(embedding: bool = False) -> List[str]:
    return list(BASE_OUTPUTS) + (["embedding"] if embedding else [])


class _SelectOutputs(nn.Module):
    """Returns the chosen fields of `GReFELOutput` as a tuple, in `names` order."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.names = tuple(names)

    def forward(self, images: torch.Tensor):
        out = self.model(images)
        return tuple(getattr(out, n) for n in self.names)


def onnx_metadata(cfg, names: Sequence[str], opset: int) -> Dict[str, str]:
    """metadata_props of the exported model: classes, input spec, outputs, version, config."""
    return {
        "grefel.version": __version__,
        "grefel.class_names": json.dumps(list(cfg.class_names)),
        "grefel.input": json.dumps(INPUT_SPEC),
        "grefel.outputs": json.dumps(list(names)),
        "grefel.opset": str(opset),
        "grefel.config": json.dumps(cfg.to_dict(), sort_keys=True),
    }


def set_metadata(model: onnx.ModelProto, meta: Dict[str, str]) -> None:
    """Replace/add metadata_props entries of `model` in place."""
    keep = [p for p in model.metadata_props if p.key not in meta]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)


def export_onnx(
    model: nn.Module,
    path: Union[str, Path],
    *,
    opset: int = OPSET,
    batch: int = 2,
    dynamic: bool = True,
    embedding: bool = False,
) -> Path:
    """Export `model` (a GReFEL, FP32) to `path`, written atomically.

    Args:
        model: the network; exported in eval mode, its own mode restored afterwards.
        path: the .onnx file.
        opset: ONNX opset (`opset_for_target`).
        batch: batch size of the example input (the static batch with dynamic=False).
        dynamic: a symbolic batch dimension on the input and every output.
        embedding: also export the pooled embedding e.
    """
    names = output_names(embedding)
    wrapper = _SelectOutputs(model, names).eval()  # export restores the wrapper's mode
    was_training = model.training
    model.eval()
    example = torch.rand(batch, *INPUT_SHAPE)
    axes = {n: {0: "batch"} for n in [INPUT_NAME, *names]} if dynamic else None
    path = Path(path)
    try:
        with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings():
            # Chosen on purpose (see the module doc); the one trace-time constant is log(C).
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(
                wrapper, (example,), str(tmp), dynamo=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=names, dynamic_axes=axes,
                do_constant_folding=True,
            )
            proto = onnx.load(str(tmp))
            set_metadata(proto, onnx_metadata(model.cfg, names, opset))
            onnx.save(proto, str(tmp))
    except Exception as exc:  # the exporter raises many types; name the model and the cause
        raise ExportError(f"{path}: ONNX export failed ({type(exc).__name__}: {exc})") from exc
    finally:
        model.train(was_training)
    return path
