"""`grefel info` and `grefel check`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import click

from benchmarks.options import CheckOptions
from grefel.cli.app import cli
from grefel.cli.common import (
    check_outputs,
    ranged_type,
    write_json,
    wrote,
)


@cli.command(
    epilog="""\b
Examples:
  grefel info
  grefel info --json env.json
"""
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path))
def info(json_path: Optional[Path]) -> None:
    """Versions, CPU, GPU, TensorRT, Jetson model and power mode, and the default model."""
    from benchmarks.env import environment
    from benchmarks.report import env_lines
    from grefel.fileio import Output, model_inputs
    from grefel.runtime.default_model import DefaultModelError, default_model, describe

    env = environment()
    try:
        shipped = default_model("onnx")
        env["default_model"] = describe(shipped)
    except DefaultModelError as exc:
        shipped, env["default_model"] = None, f"missing: {exc}"
    check_outputs(model_inputs("grefel", shipped, "the model that ships inside grefel"),
                   [Output("--json", json_path)])
    click.echo("\n".join(env_lines(env)))
    click.echo(env["default_model"])
    if json_path:
        write_json(json_path, env, "environment JSON")


@cli.command(
    "check",
    epilog="""\b
Examples:
  grefel check                             # what this machine has, what grefel can do here
  grefel check --json check.json
  grefel check --run                       # on the Jetson or GPU: build, verify, time
  grefel check --run --sections engine-fp16,latency-b1 --out runs/check/orin
""",
)
@click.option("--run", "run_sections", is_flag=True,
              help="Also run the sections on this machine (engines built, verified, timed), "
                   "each in its own process under a hard time limit; exit 0 all passed, 1 one "
                   "failed or timed out, 2 none failed but one was skipped.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="--run: report folder (check.json, check.md, logs/) [default: a new "
                   "runs/check/DEVICE, -2, ...].")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the preflight facts as JSON here.")
@click.option("--model", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="--run: the .onnx (or .safetensors) whose engines are built [default: the "
                   "model that ships inside grefel].")
@click.option("--calib-data", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="--run: INT8 calibration face crops [default: SynthFER faces drawn there].")
@click.option("--sections", default=None, help="--run: comma-separated sections [default: all: "
              "engine-fp16, latency-b1, latency-b8, latency-b32, trtexec, engine-int8, "
              "paper-fp16].")
@click.option("--time-limit", type=ranged_type(CheckOptions, "time_limit_s"), default=None,
              help="--run: seconds each section may take [default: each section's own].")
def check_command(run_sections: bool, out: Optional[Path], json_path: Optional[Path],
                  model: Optional[Path], calib_data: Optional[Path], sections: Optional[str],
                  time_limit: Optional[float]) -> None:
    """What this machine has for grefel (GPU, CUDA, TensorRT, Jetson, detector, default model)
    and what grefel can therefore do; with --run, the engine path proved here, most valuable
    first, in one JSON + Markdown report to attach to an issue."""
    from benchmarks import check
    from benchmarks.env import device_label
    from grefel.fileio import Input, Output, claim_run_folder, model_inputs, new_run_folder

    given = {"--out": out, "--model": model, "--calib-data": calib_data,
             "--sections": sections, "--time-limit": time_limit}
    if not run_sections and any(v is not None for v in given.values()):
        used = ", ".join(k for k, v in given.items() if v is not None)
        raise click.UsageError(f"{used}: only with --run")
    chosen = None if sections is None else [s.strip() for s in sections.split(",") if s.strip()]
    unknown = [s for s in chosen or [] if s not in check.SECTION_NAMES]
    if unknown or chosen == []:
        raise click.BadParameter(f"{', '.join(unknown) or 'none given'}: choose from "
                                 f"{', '.join(check.SECTION_NAMES)}", param_hint="--sections")
    check_outputs([*model_inputs("--model", model),
                    Input("--calib-data", calib_data, "the calibration images", folder=True)],
                   [Output("--out", out, folder=True, owner="check",
                           writes=("check.json", "check.md", "logs")),
                    Output("--json", json_path)])
    facts = check.preflight()
    click.echo(check.preflight_text(facts))
    if json_path:
        write_json(json_path, facts, "preflight facts JSON")
    if not run_sections:
        return
    folder = claim_run_folder(out, "check") if out else new_run_folder("check",
                                                                        device_label(facts))
    click.echo(f"\nrunning {', '.join(chosen or check.SECTION_NAMES)} into {folder}", err=True)
    opts = check.CheckOptions(out=folder, model=model, calib_data=calib_data, sections=chosen,
                              time_limit_s=time_limit)
    report = check.run_check(facts, opts, on_result=lambda r: click.echo(r.line(), err=True))
    wrote(folder / "check.json", "check report, JSON")
    wrote(folder / "check.md", "check report, Markdown: attach it to an issue")
    sys.exit(report["exit_code"])
