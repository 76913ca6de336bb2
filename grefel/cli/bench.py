"""`grefel bench`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

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
    from benchmarks.report import BenchError, load_record, run_bench
    from grefel.fileio import display_path

    try:
        previous = load_record(compare_path) if compare_path else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--compare") from None
    opts = BENCH.build(params)
    source = opts.source
    if source is not None and not weights:
        raise click.BadParameter("the pipeline rows need model files", param_hint="--weights")
    _check_io(weights, compare_path, source, out)
    if out is None:
        from grefel.fileio import new_run_folder

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
    _report(record, previous, compare_path, paths)


def _check_io(weights: Sequence[Path], compare_path: Optional[Path], source: Optional[str],
              out: Optional[Path]) -> None:
    """The models, the earlier record and the video against --out, before any timing."""
    from grefel.fileio import Input, Output, model_inputs

    check_outputs(
        [*(i for w in weights for i in model_inputs("--weights", w)),
         Input("--compare", compare_path, "the earlier record"),
         Input("--source", source if source and Path(source).exists() else None, "the video")],
        [Output("--out", out, folder=True, owner="bench")])


def _report(record: Dict[str, Any], previous: Optional[Dict[str, Any]],
            compare_path: Optional[Path], paths: Sequence[Path]) -> None:
    """A line per row that could not run, the table, the ratios to --compare, the files."""
    from benchmarks.report import compare, to_text

    for row in record["latency"]:
        if row["status"] != "ok":
            click.echo(f"{row['backend']} {row['model']} batch {row['batch']}: {row['status']}",
                       err=True)
    click.echo(to_text(record))
    if previous is not None:
        click.echo(f"\nCompared with {compare_path}:\n" + compare(record, previous))
    wrote(paths[0], "bench record, JSON")
    wrote(paths[1], "bench record, Markdown")
