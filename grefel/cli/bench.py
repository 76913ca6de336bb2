"""`grefel bench`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Tuple

import click

from grefel.cli.app import cli
from grefel.cli.common import (
    BENCH,
    check_outputs,
    wrote,
)


@cli.command(
    epilog="""\b
Examples:
  grefel bench                                   # random-init paper model: torch + ONNX Runtime
  grefel bench --weights runs/demo/train/best.safetensors --batch-sizes 1,8 --iters 10 --seconds 2
  grefel bench --weights engines/best_fp16_b8.engine --backends trt --batch-sizes 1,8,32
  grefel bench --compare benchmarks/results/bench_20260101-120000_orin.json
  grefel bench --weights model.onnx --source clip.avi --detectors auto,haar --det-every 1,3
"""
)
@click.option(
    "--weights",
    "-w",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Model files to time (repeatable); none: random init.",
)
@BENCH
@click.option(
    "--compare",
    "compare_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="An earlier run's JSON: print ratios against it.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the JSON and Markdown record [default: a new runs/bench/MODEL, -2, ...].",
)
def bench(
    weights: Tuple[Path, ...], compare_path: Optional[Path], out: Optional[Path], **params: Any
) -> None:
    """Params/FLOPs vs the paper's Table 2, latency per backend and batch size, environment;
    with --source, end-to-end FPS and ms per stage of the predict pipeline on a video.

    --out is checked writable before timing; each row is written there as it is measured; a
    backend or batch size that cannot run gets a row saying why.
    """
    from grefel.runtime.torch_backend import prefer_passive_openmp

    prefer_passive_openmp()  # before anything imports torch (docs/predict.md, --threads)
    from benchmarks.report import BenchError, compare, load_record, run_bench, to_text
    from grefel.fileio import display_path

    try:
        previous = load_record(compare_path) if compare_path else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--compare") from None
    opts = BENCH.build(params)
    source = opts.source
    if source is not None and not weights:
        raise click.BadParameter("the pipeline rows need model files", param_hint="--weights")
    from grefel.fileio import Input, Output, model_inputs, new_run_folder

    check_outputs(
        [*(i for w in weights for i in model_inputs("--weights", w)),
         Input("--compare", compare_path, "the earlier record"),
         Input("--source", source if source and Path(source).exists() else None, "the video")],
        [Output("--out", out, folder=True, owner="bench")])
    if out is None:
        out = new_run_folder("bench", weights[0].stem if weights else "random-init")
    try:
        record, paths = run_bench(weights=list(weights), opts=opts, out_dir=out,
                                  progress=lambda m: click.echo(m, err=True))
    except BenchError as exc:
        raise click.ClickException(display_path(str(exc))) from None
    except OSError as exc:  # --out filled up or became unwritable while timing
        raise click.ClickException(f"--out {out}: cannot write the record "
                                   f"({exc.strerror or exc}); rows measured so far are in it"
                                   ) from None
    for row in record["latency"]:
        if row["status"] != "ok":
            click.echo(f"{row['backend']} {row['model']} batch {row['batch']}: {row['status']}",
                       err=True)
    click.echo(to_text(record))
    if previous is not None:
        click.echo(f"\nCompared with {compare_path}:\n" + compare(record, previous))
    wrote(paths[0], "bench record, JSON")
    wrote(paths[1], "bench record, Markdown")
