"""Parameters, FLOPs and MACs of the four Table 2 variants beside the paper's figures, and of
the model `grefel bench` times (`count` for a torch model, `onnx_sizes` for an .onnx).

    python -m benchmarks.flops                       # paper preset, 7 classes
    python -m benchmarks.flops --presets paper tiny --json benchmarks/results/flops.json

FLOPs come from `torch.utils.flop_counter.FlopCounterMode` at batch 1 (2 FLOPs per multiply-add;
convolutions and matrix products, elementwise work not counted). The paper's "FLOPs" are thop
MACs, so compare its column with GMACs = GFLOPs / 2. torch is imported when a model is measured
(a MissingDependency naming grefel's train extra without it), so `grefel bench` imports this
module on a torch-free install too.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import click

from benchmarks.paper import POSTER_V2, TABLE2
from grefel._lazy import MissingDependency, require
from grefel.config import VARIANTS

__all__ = ["count", "measure", "measure_variants", "onnx_sizes", "render"]

# Top-level children of GReFEL outside the POSTER V2 feature extractor.
RELIABILITY_PARTS = ("head", "anchor", "attentive")


def measure(
    preset: str = "paper", variant: str = "both", num_classes: int = 7, batch: int = 1
) -> Dict[str, Any]:
    """Build one variant, count its parameters per component and its FLOPs on one batch."""
    require("torch", "the params/FLOPs table")
    from grefel.model import create_model

    model = create_model(preset, variant, num_classes=num_classes).eval()
    return {"preset": preset, "variant": variant, "num_classes": num_classes,
            **count(model=model, batch=batch)}


def count(model: Any, batch: int = 1) -> Dict[str, Any]:
    """Parameters (total, backbone, per component) and FLOPs / MACs of one forward of `model`
    (a GReFEL) on a random batch of `batch` images."""
    torch = require("torch", "the params/FLOPs of a model")
    from torch.utils.flop_counter import FlopCounterMode

    per_component = {name: sum(p.numel() for p in child.parameters())
                     for name, child in model.named_children()}
    images = torch.rand(batch, 3, model.cfg.image_size, model.cfg.image_size)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        t0 = time.perf_counter()
        model(images)
        seconds = time.perf_counter() - t0
    flops = int(counter.get_total_flops())
    total = sum(per_component.values())
    return {
        "batch": batch,
        "params_total": total,
        "params_backbone": total - sum(per_component.get(k, 0) for k in RELIABILITY_PARTS),
        "params_per_component": per_component,
        "flops": flops,
        "macs": flops // 2,
        "first_forward_s": round(seconds, 3),
    }


# Initializer types that hold weights (float, and the 8-bit integers of a quantized model);
# int32 / int64 initializers are shapes, axes and indices.
_WEIGHT_TYPES = ("FLOAT", "FLOAT16", "BFLOAT16", "DOUBLE", "INT8", "UINT8")


def onnx_sizes(path: Path) -> Dict[str, Any]:
    """Parameters of an ONNX model, the elements of its weight initializers (torch-free), and
    with torch the FLOPs / MACs of the architecture its `grefel.config` metadata names (FLOPs do
    not depend on the weights); `note` says what was not computed and why."""
    import onnx

    try:
        model = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError, OSError, ...: one row
        return {"params_total": None, "params_from": None, "flops": None, "macs": None,
                "note": f"not read: not a loadable ONNX model ({type(exc).__name__}: "
                        f"{str(exc)[:120]})"}
    kinds = {getattr(onnx.TensorProto, name) for name in _WEIGHT_TYPES}
    params = 0
    for init in model.graph.initializer:
        if init.data_type in kinds:
            n = 1
            for d in init.dims:
                n *= int(d)
            params += n
    row: Dict[str, Any] = {"params_total": params, "params_from": "ONNX weight initializers",
                           "flops": None, "macs": None, "note": ""}
    config = {p.key: p.value for p in model.metadata_props}.get("grefel.config")
    if config is None:
        row["note"] = "FLOPs not computed: the ONNX has no grefel.config metadata"
        return row
    try:
        require("torch", "the FLOPs of an .onnx (counted on its architecture in PyTorch)")
    except MissingDependency as exc:
        row["note"] = f"FLOPs not computed: {exc}"
        return row
    from grefel.config import GReFELConfig
    from grefel.model.grefel import GReFEL

    try:
        arch = GReFEL(GReFELConfig.from_dict(json.loads(config))).eval()
    except (ValueError, TypeError, KeyError) as exc:  # metadata that names no grefel model
        row["note"] = f"FLOPs not computed: its grefel.config metadata is not a model ({exc})"
        return row
    counted = count(model=arch)
    row.update(flops=counted["flops"], macs=counted["macs"])
    return row


def measure_variants(preset: str = "paper", num_classes: int = 7) -> List[Dict[str, Any]]:
    """`measure` for the four rows of Table 2, each with the paper's figures beside it."""
    rows = []
    for variant in VARIANTS:
        row = measure(preset, variant, num_classes)
        if preset == "paper":
            paper = TABLE2[variant]
            row["paper_params_m"] = paper["params_m"]
            row["paper_gmacs"] = paper["gmacs"]
        rows.append(row)
    return rows


def render(rows: Sequence[Dict[str, Any]]) -> str:
    """A plain-text table of `measure_variants` rows."""
    head = (f"{'preset':6} {'variant':8} {'params M':>9} {'backbone M':>10} {'GFLOPs':>8} "
            f"{'GMACs':>7} {'paper params M':>14} {'paper GMACs*':>12} {'dGMACs':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        paper_p = r.get("paper_params_m")
        paper_g = r.get("paper_gmacs")
        delta = f"{r['macs'] / 1e9 - paper_g:+7.2f}" if paper_g is not None else f"{'-':>7}"
        lines.append(
            f"{r['preset']:6} {r['variant']:8} {r['params_total'] / 1e6:9.3f} "
            f"{r['params_backbone'] / 1e6:10.3f} {r['flops'] / 1e9:8.3f} {r['macs'] / 1e9:7.3f} "
            f"{paper_p if paper_p is not None else '-':>14} "
            f"{paper_g if paper_g is not None else '-':>12} {delta}"
        )
    lines.append(
        "* the paper's 'FLOPs' are thop MACs. POSTER V2 as used: "
        f"{POSTER_V2['backbone_params']:,} params, {POSTER_V2['flops'] / 1e9:.2f} GFLOPs "
        f"({POSTER_V2['thop_gmacs']} thop GMACs)."
    )
    return "\n".join(lines)


@click.command(context_settings={"show_default": True})
@click.option("--presets", "-p", multiple=True, default=("paper",),
              type=click.Choice(["paper", "tiny"]), help="Presets to measure (repeatable).")
@click.option("--num-classes", default=7, type=int)
@click.option("--threads", default=2, type=int, help="torch intra-op threads.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the rows as JSON.")
def main(presets: Sequence[str], num_classes: int, threads: int, json_path: Optional[Path]) -> None:
    """Params, FLOPs and MACs of the Table 2 variants beside the paper's numbers."""
    torch = require("torch", "benchmarks.flops")
    torch.set_num_threads(threads)
    rows = [row for preset in presets for row in measure_variants(preset, num_classes)]
    click.echo(render(rows))
    if json_path is not None:
        from grefel.fileio import atomic_write_json

        atomic_write_json(json_path, {"torch": torch.__version__, "rows": rows})
        click.echo(f"wrote {json_path}")


if __name__ == "__main__":
    main()
