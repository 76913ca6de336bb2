"""`grefel serve`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import click

from grefel.cli.app import cli
from grefel.cli.common import (
    SERVE,
    check_outputs,
    model_or_default,
)


@cli.command(
    "serve",
    epilog="""\b
Examples:
  grefel serve                             # the model that ships inside grefel
  grefel serve --weights runs/demo/engines/best.onnx
  grefel serve -w engines/best_fp16_b8.engine --host 0.0.0.0 --max-batch 8 --instances 2
  curl -s -o /dev/null -w '%{http_code}\\n' localhost:8000/v2/health/ready  # 200: models answer
  curl -s localhost:8002/metrics
""",
)
@click.option("--weights", "-w", type=click.Path(dir_okay=False, path_type=Path),
              help="A .engine (TensorRT), .onnx (ONNX Runtime) or .safetensors checkpoint "
                   "[default: the model that ships inside grefel, docs/models.md].")
@SERVE
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              help="ONNX Runtime / PyTorch device (an engine always runs on the GPU).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for tritonserver's log, tritonserver.log [default: a new "
                   "runs/serve/MODEL, -2, ...].")
@click.option("--verbose", "-v", is_flag=True,
              help="tritonserver's log on stdout instead of in a file.")
def serve_command(weights: Path, device: str, out: Optional[Path], verbose: bool,
                  **opts: Any) -> None:
    """Serve WEIGHTS (default: the model that ships inside grefel) on NVIDIA Triton (PyTriton):
    models `grefel` (float32 images) and
    `grefel_image` (encoded image bytes), HTTP + gRPC, dynamic batching, metrics.

    grefel_image finds and prepares each image's face as `grefel predict` does for a still
    image, with the same --detector, --det-size, --align, --margin, --min-face and --aligned,
    and answers for the first face (predict's first record); no face: face false and no label.
    Readiness probe: GET /v2/health/ready (200 once every model answers).
    """
    from grefel._lazy import MissingDependency
    from grefel.runtime import BackendError
    from grefel.serve import ServeError, serve

    weights = model_or_default(weights)
    from grefel.fileio import Output, model_inputs

    check_outputs(model_inputs("--weights", weights),
                   [Output("--out", out, folder=True, writes=("tritonserver.log",),
                           owner="serve")])
    log_file = None
    if not verbose:
        from grefel.fileio import RUNS, claim_run_folder, display_path, new_run_folder

        try:
            folder = out if out is not None else new_run_folder("serve", weights.stem)
            claim_run_folder(folder, "serve")
        except OSError as exc:
            where = f"--out {display_path(out)}" if out is not None else str(RUNS / "serve")
            raise click.ClickException(f"{where}: cannot create the folder for tritonserver's "
                                       f"log ({exc.strerror or exc})") from None
        log_file = folder / "tritonserver.log"  # serve says where once its checks pass
    try:
        serve(weights, SERVE.build(opts, device=None if device == "auto" else device,
                                   log_file=log_file),
              on_ready=lambda line: click.echo(line, err=True))
    except (ServeError, BackendError, MissingDependency) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("stopped", err=True)
