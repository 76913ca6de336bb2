"""The `grefel` command line: train, eval, export, predict, bench, info and helpers.

Heavy libraries (torch, onnxruntime, TensorRT) are imported inside the command callbacks, so
`grefel --help` and the engine-only commands run on a Jetson without torch. Each callback maps
its options to one library call.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

import click
from click.core import ParameterSource

# The settings dataclasses own every numeric option's range (grefel.ranges); all torch-free.
from benchmarks.check import CheckOptions
from benchmarks.options import BenchOptions
from export.options import ExportOptions, TritonRepoOptions
from grefel.cli.options import OptionGroup
from grefel.config import DataConfig, FaceAlignment, GReFELConfig, PretrainConfig, TrainConfig
from grefel.contract import INPUT_SIZE
from grefel.evaluate import EvalOptions
from grefel.predict import PredictOptions
from grefel.serve import ServeOptions

# The options generated from the settings dataclasses (grefel.cli.options): how faces are found
# and prepared (predict, serve), the same with the dataset mode --align-faces (train, eval,
# pretrain), and the commands' own settings around them.
FACE = OptionGroup(FaceAlignment, prefix="face_", skip=("mode",))
ALIGN = OptionGroup(FaceAlignment, prefix="face_", when="[--align-faces detect/auto] ",
                    plain=("mode",))
PREDICT = OptionGroup(PredictOptions, nested={"face": FACE})
SERVE = OptionGroup(ServeOptions, nested={"face": FACE})
BENCH = OptionGroup(BenchOptions)
EVAL = OptionGroup(EvalOptions)
EXPORT = OptionGroup(ExportOptions,
                     nested={"triton_repo": OptionGroup(TritonRepoOptions, prefix="triton_")})

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True, "max_content_width": 100}


def _float_range(min: float, max: Optional[float] = None, max_open: bool = False) -> Any:
    """A finite float range for an option no dataclass owns (data synth's, passed straight to
    generate_synthfer; bench's --seconds): click.FloatRange alone lets nan and inf through its
    comparisons."""
    from grefel.ranges import Range, range_type

    return range_type(Range(kind=float, min=min, max=max, max_open=max_open))


def _ranged(cls: type, name: str) -> Any:
    """The Click type of the option for field `name` of the dataclass `cls` that owns it: its
    declared range (grefel.ranges), so the command line refuses a value while parsing with the
    rule the dataclass applies as a library; never retyped here."""
    from grefel.ranges import click_type

    return click_type(cls, name)


@click.group(
    context_settings=CONTEXT,
    epilog="""\b
Examples:
  grefel predict photo.jpg                 # the model that ships inside grefel
  grefel data synth --out runs/demo/synthfer --n 3000 --imbalance uniform --difficulty 0.3
  grefel pretrain landmarks --data runs/demo/synthfer --steps 200 \\
      --out runs/demo/pretrained/mobilefacenet.safetensors
  grefel pretrain identity --data runs/demo/synthfer --steps 150 \\
      --out runs/demo/pretrained/ir50.safetensors
  grefel train --data runs/demo/synthfer --preset tiny --epochs 8 --batch-size 32 --lr 1e-3 \\
      --freeze landmark --pretrained-mobilefacenet runs/demo/pretrained/mobilefacenet.safetensors \\
      --pretrained-ir50 runs/demo/pretrained/ir50.safetensors --image-warmup 150 --no-augment \\
      --out runs/demo/train
  grefel eval runs/demo/train/best.safetensors --data runs/demo/synthfer
  grefel export runs/demo/train/best.safetensors --fp16
  grefel predict photo.jpg --weights engines/best_fp16_b8.engine
  grefel bench --weights runs/demo/train/best.safetensors
""",
)
@click.version_option(package_name="grefel")
def cli() -> None:
    """GReFEL facial-expression recognition: train, export to TensorRT, run and benchmark."""


@cli.group(context_settings=CONTEXT)
def data() -> None:
    """Datasets: generate the bundled synthetic SynthFER dataset."""


@cli.group(context_settings=CONTEXT)
def weights() -> None:
    """Pretrained weights: import face.evoLVe / MobileFaceNet / POSTER V2 files."""


# --- train, eval, data synth (issue 3) ---------------------------------------------------------


@data.command(
    "synth",
    epilog="""\b
Examples:
  grefel data synth --out data/synthfer --n 2000
  grefel data synth --out data/synthfer_noisy --n 2000 --noise 0.2
  grefel data synth --out data/synthfer8 --n 4000 --imbalance uniform --contempt
""",
)
@click.option("--out", "out", type=click.Path(file_okay=False), required=True,
              help="Folder to write images/, train/val/test.csv, classes.txt, landmarks.csv.")
@click.option("--n", "n", type=click.IntRange(min=3), default=2000, help="Number of images.")
@click.option("--seed", type=_ranged(TrainConfig, "seed"), default=0,
              help="Same seed and options give the same bytes.")
@click.option("--noise", type=_float_range(0.0, 1.0, max_open=True), default=0.0,
              help="Fraction of TRAIN labels flipped to another class (val/test stay clean).")
@click.option("--imbalance", type=click.Choice(["rafdb", "uniform"]), default="rafdb",
              help="Class frequencies: RAF-DB basic train counts, or equal.")
@click.option("--contempt/--no-contempt", default=False, help="Add contempt as an 8th class.")
@click.option("--size", type=click.IntRange(min=32), default=INPUT_SIZE,
              help="Image side in pixels.")
@click.option("--difficulty", type=_float_range(0.0, 1.0), default=1.0,
              help="Scale of pose, clutter, occlusion, blur, noise and weak expressions "
                   "(the CPU demo uses a lower value).")
@click.option("--overwrite", is_flag=True,
              help="Replace what --out holds (without it, a folder that is not empty is refused).")
def data_synth(out: str, n: int, seed: int, noise: float, imbalance: str, contempt: bool,
               size: int, difficulty: float, overwrite: bool) -> None:
    """Generate SynthFER, the bundled procedurally drawn expression dataset."""
    import time

    from grefel.data.synthfer import generate_synthfer, split_identities

    start = time.perf_counter()
    click.echo(f"drawing {n} faces into {out} ...", err=True)
    try:
        path = generate_synthfer(out, n, seed=seed, noise=noise, imbalance=imbalance,
                                 contempt=contempt, size=size, difficulty=difficulty,
                                 overwrite=overwrite)
    except FileExistsError as e:
        raise click.BadParameter(str(e), param_hint="--out") from None
    except OSError as e:
        raise _user_error(e) from None
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"done in {time.perf_counter() - start:.1f} s", err=True)
    click.echo((path / "README.txt").read_text(), nl=False)
    few = [f"{name} {k}" for name, k in split_identities(path).items() if k < 2]
    if few:
        click.echo(f"warning: one identity in a split ({', '.join(few)}): its metrics measure one "
                   "face, not faces the model never saw; a larger --n gives each split more",
                   err=True)
    _warn_absent_classes(path)
    _wrote(path, f"{n} images, train/val/test CSVs, classes.txt, README.txt")


def _warn_absent_classes(root: Path) -> None:
    """A warning line per split of a new dataset that lacks a class (grefel.data
    .absent_classes): `grefel train` refuses a training split without one, so the user hears it
    now, with the fix, rather than at the first training."""
    from grefel.data import absent_classes, load_samples

    for split in ("train", "val", "test"):
        samples, classes = load_samples(root, "csv", split)
        absent = absent_classes(samples, classes)
        if absent:
            then = ("grefel train will refuse it" if split == "train" else
                    "its per-class scores leave them out")
            click.echo(f"warning: split {split!r} has no image of {', '.join(absent)} ({then}); "
                       "a larger --n (or --imbalance uniform) gives every class images", err=True)


@data.command(
    "split",
    epilog="""\b
Examples:
  grefel data split data/facial_expressions     # muxspace/facial_expressions, as cloned
  grefel data split data/facial_expressions --json split.json
""",
)
@click.argument("root", type=click.Path(file_okay=False))
@click.option("--json", "json_path", type=click.Path(dir_okay=False),
              help="Also write the split record (counts per class and split) as JSON.")
def data_split(root: str, json_path: Optional[str]) -> None:
    """Show (and on first use write) the identity-disjoint split of a real-faces folder.

    The split of muxspace/facial_expressions is stratified by class and written into ROOT as
    grefel_split.csv + grefel_split.json the first time any command reads ROOT; every later
    command uses those files. Prints the images per class and split and flags the classes
    with fewer than 10 test images.
    """
    from grefel.data import DatasetError
    from grefel.data.muxspace import looks_muxspace, muxspace_split, split_table
    from grefel.fileio import Input, Output

    path = Path(root).expanduser()
    if not looks_muxspace(path):
        raise click.BadParameter(f"{path}: not a muxspace/facial_expressions folder (needs "
                                 "data/legend.csv and images/)", param_hint="ROOT")
    _check_outputs([Input("ROOT", path, "the dataset folder", folder=True)],
                   [Output("--json", json_path)])
    try:
        _, _, record = muxspace_split(path)
    except DatasetError as e:
        raise click.ClickException(str(e)) from None
    click.echo(split_table(record))
    missing = record.get("listed_images_missing") or []
    if missing:  # every command that reads the split leaves them out: say so now
        shown = ", ".join(missing[:5]) + (f", ... and {len(missing) - 5} more"
                                          if len(missing) > 5 else "")
        click.echo(f"warning: {len(missing)} image(s) listed in data/legend.csv are missing from "
                   f"images/ and are left out of every split when read: {shown}", err=True)
    flagged = record["flagged_fewer_than_10_test_images"]
    if flagged:
        click.echo("flagged (fewer than 10 test images: their test metrics are noise): "
                   + ", ".join(f"{c} {n}" for c, n in flagged.items()))
    if json_path:
        _write_json(json_path, record, "split record JSON")


def _model_or_default(path: Optional[Any], kind: str = "onnx") -> Path:
    """`path`, or the model that ships inside grefel (grefel.runtime.default_model), named on
    stderr."""
    if path is not None:
        return Path(path)
    from grefel.runtime.default_model import DefaultModelError, default_model, describe

    try:
        found = default_model(kind)
    except DefaultModelError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"using the {describe(found)}", err=True)
    return found


def _default_train_folder(preset: str) -> str:
    """A new runs/train/PRESET (-2, ...); under torchrun every rank must name the same folder,
    so there it is runs/train/PRESET itself (rank 0 locks it; a second run there is refused)."""
    import os

    from grefel.fileio import RUNS, new_run_folder

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return str(RUNS / "train" / preset)
    return str(new_run_folder("train", preset))


def _wrote(path: Any, what: str) -> None:
    """The one line per output that every command prints on stderr: `wrote PATH (what)`."""
    from grefel.fileio import display_path

    click.echo(f"wrote {display_path(str(path))} ({what})", err=True)


def _write_json(path: Any, record: Any, what: str) -> None:
    """Write a command's `--json` record: the one writer every command uses (atomic, through
    grefel.fileio.write_record); a path that cannot be written ends the command in one line
    naming --json and the path. Then the usual `wrote PATH (what)` line."""
    from grefel.errors import OutputPathError
    from grefel.fileio import write_record

    try:
        write_record(path, record, "--json")
    except OutputPathError as exc:
        raise click.ClickException(str(exc)) from None
    _wrote(path, what)


def _user_error(exc: BaseException) -> click.ClickException:
    """A ClickException from a library error; a DataLoader worker's traceback is cut off, an
    OSError becomes "FILE: what went wrong"."""
    if isinstance(exc, OSError) and exc.strerror:
        return click.ClickException(f"{exc.filename or ''}: {exc.strerror}".lstrip(": "))
    text = str(exc).strip()
    if "Original Traceback" in text:  # re-raised from a DataLoader worker process
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return click.ClickException(text)


def _check_outputs(inputs: Sequence[Any], outputs: Sequence[Any]) -> None:
    """grefel.fileio.check_outputs, its refusal as the one error line: every command that writes
    calls this once, before it opens anything for writing, with its inputs (a model's sidecar
    and a dataset folder included) and its outputs."""
    from grefel.fileio import OutputClash, check_outputs

    try:
        check_outputs(inputs, outputs)
    except OutputClash as exc:
        raise click.ClickException(str(exc)) from None


def _resume_epilog() -> str:
    """The --resume table of `grefel train --help`, from grefel.train_state (torch-free)."""
    from grefel.train_state import RESUME_MAY_CHANGE

    rows = "\n".join(f"  {k.split('.', 1)[1]:<9} {why}" for k, why in RESUME_MAY_CHANGE.items())
    return ("\n\b\n--resume: options not given keep the run's values (OUT/config.json); a "
            "resume may change\n" + rows + "\n  anything else (lr, gamma, batch size, preset, "
            "variant, loss weights, data,\n  augmentation, seed, ...) changes what the run "
            "means: refused, with the list\n  of differences. config.json records each resume "
            "and what it changed.\n")


def _align_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """train, eval and pretrain: `--align-faces` and the face options (ALIGN, generated from
    grefel.config.FaceAlignment, the settings predict and serve share), and `--align-cache`."""
    func = click.option(
        "--align-cache", "align_cache", type=click.Path(file_okay=False), default="",
        show_default=False,
        help="Folder of the cached aligned crops (keyed by image content and settings) "
             "[default: $XDG_CACHE_HOME/grefel/aligned, else ~/.cache/grefel/aligned].")(func)
    return ALIGN(func)


def _check_align_options(ctx: click.Context, mode: str, data: Optional[str],
                         dataset: str) -> None:
    """UsageError for face alignment settings given while --align-faces is off, or auto on a
    dataset where auto means off (a layout the library then reports if it cannot tell)."""
    given = [name for name in ALIGN.given_options(ctx) if name != "--align-faces"]
    if ctx.get_parameter_source("align_cache") is not ParameterSource.DEFAULT:
        given.append("--align-cache")
    if not given or mode == "detect":
        return
    if mode == "auto" and data:
        from grefel.data import DatasetError
        from grefel.data.datasets import resolve_kind

        try:
            kind = resolve_kind(data, dataset)
        except DatasetError:
            return
        if FaceAlignment(mode=mode).for_dataset(kind).mode == "detect":
            return
        raise click.UsageError(f"{', '.join(given)}: face alignment settings, but --align-faces "
                               f"auto is off for a {kind} dataset (faces as given): pass "
                               "--align-faces detect to align them")
    raise click.UsageError(f"{', '.join(given)}: face alignment settings, used with "
                           "--align-faces detect or auto (it is off)")


def _with_options(options: Callable[[], List[Any]]) -> Callable[[Any], Any]:
    """A decorator adding the click options `options()` returns, in their order."""
    def decorate(func: Any) -> Any:
        for option in reversed(options()):
            func = option(func)
        return func

    return decorate


def _train_options(func):
    """The `grefel train` options; defaults come from grefel.config.DataConfig / TrainConfig."""
    from grefel.config import (
        AUGMENT_POLICIES,
        AUTO_IMAGE_WARMUP,
        FREEZE_CHOICES,
    )
    from grefel.train_state import resume_help

    d, t = DataConfig(), TrainConfig()
    options = [
        click.option("--data", "root", type=click.Path(file_okay=False),
                     help="Dataset folder (e.g. from `grefel data synth`); required unless "
                          "--resume."),
        click.option("--dataset", default=d.dataset, help="Reader kind (auto detects)."),
        click.option("--val-split", default=d.val_split, help='Validation split; "" = none.'),
        click.option("--preset", type=click.Choice(["tiny", "paper"]), default=t.preset),
        click.option("--variant", type=click.Choice(["no_rb", "anchors", "mhsa", "both"]),
                     default=t.variant, help="Row of the paper's Table 2."),
        click.option("--epochs", type=_ranged(TrainConfig, "epochs"), default=t.epochs),
        click.option("--batch-size", type=_ranged(DataConfig, "batch_size"), default=d.batch_size,
                     help="Per process."),
        click.option("--out", type=click.Path(file_okay=False), default=t.out,
                     help="Run folder (checkpoints, metrics, config) [default: a new "
                          "runs/train/PRESET, -2, -3, ...; under torchrun runs/train/PRESET]."),
        click.option("--lr", type=_ranged(TrainConfig, "lr"),
                     default=t.lr, help="Adam learning rate."),
        click.option("--gamma", type=_ranged(TrainConfig, "gamma"),
                     default=t.gamma, help="LR decay per epoch."),
        click.option("--lambda-cls", type=_ranged(TrainConfig, "lambda_cls"),
                     help="Eq. 23 weight [preset: 1]."),
        click.option("--lambda-anchor", type=_ranged(TrainConfig, "lambda_anchor"),
                     help="Eq. 23 weight [preset: 1]."),
        click.option("--lambda-center", type=_ranged(TrainConfig, "lambda_center"),
                     help="Eq. 23 weight [preset: 1]."),
        click.option("--anchors-per-class", type=_ranged(TrainConfig, "anchors_per_class"),
                     help="K [preset: 10]."),
        click.option("--delta", type=_ranged(TrainConfig, "delta"),
                     help="Eq. 14 softmax steepness [preset: 1]."),
        click.option("--head-dropout", type=_ranged(TrainConfig, "head_dropout"),
                     help="Eq. 9 MLP dropout [preset: 0.5]."),
        click.option("--augment/--no-augment", default=d.augment,
                     help="Training augmentation (off: eval resize only)."),
        click.option("--augment-policy", type=click.Choice(list(AUGMENT_POLICIES)),
                     default=d.augment_policy,
                     help="paper: shift 8 px, rotation 10 deg, flip, colour jitter 0.3, erasing; "
                          "light: shift 4 px, flip, jitter 0.2."),
        click.option("--label-smoothing", type=_ranged(TrainConfig, "label_smoothing"),
                     default=t.label_smoothing,
                     help="Eq. 20 smoothing; the paper supplement's \"smoothing term 11\" "
                          "reads as 0.11 to us."),
        click.option("--class-weights", type=click.Choice(["none", "inverse"]),
                     default=t.class_weights, help="inverse: inverse frequency, mean 1."),
        click.option("--clip-grad", type=_ranged(TrainConfig, "clip_grad"),
                     default=t.clip_grad, help="Max grad norm; 0 off."),
        click.option("--precise-bn", type=_ranged(TrainConfig, "precise_bn"),
                     default=t.precise_bn,
                     help="Training images to recompute BatchNorm statistics on after each "
                          "epoch; 0 = off."),
        click.option("--freeze", type=click.Choice(list(FREEZE_CHOICES)), default=t.freeze,
                     help="Stream kept frozen; only a stream with weights (--pretrained-"
                          "mobilefacenet, --pretrained-ir50, --init). auto: landmark when it has "
                          "them, else none."),
        click.option("--amp/--no-amp", default=t.amp, help="Mixed precision (CUDA only)."),
        click.option("--select", type=click.Choice(["accuracy", "macro_f1"]), default=t.select,
                     help="What best.safetensors is chosen by on the validation split "
                          "(macro_f1 for imbalanced data)."),
        click.option("--refine-per-class", type=_ranged(DataConfig, "refine_per_class"),
                     default=d.refine_per_class,
                     help="Data refinement B per class per epoch (paper 4.1); 0 = plain shuffle."),
        click.option("--refine-per-group", type=_ranged(DataConfig, "refine_per_group"),
                     default=d.refine_per_group,
                     help="Data refinement N_pg per face group / video; 0 = no cap."),
        click.option("--refine-repeat/--no-refine-repeat", default=d.refine_repeat,
                     help="A class with fewer than B images: repeat them up to B (the paper's "
                          "B per class), or take each once."),
        click.option("--workers", type=_ranged(DataConfig, "workers"), default=d.workers,
                     help="DataLoader workers."),
        click.option("--seed", type=_ranged(TrainConfig, "seed"), default=t.seed),
        click.option("--device", default=t.device, help="auto, cpu, cuda or cuda:N."),
        click.option("--threads", type=_ranged(TrainConfig, "threads"), default=t.threads,
                     help="torch CPU threads per process; 0 = torch's default."),
        click.option("--resume", is_flag=True, help=resume_help()),
        click.option("--strict", is_flag=True, help="Unreadable images are an error."),
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                     help="Override any DataConfig/TrainConfig field (data.KEY for data)."),
        click.option("--pretrained-ir50", default="", type=click.Path(dir_okay=False),
                     help="face.evoLVe / POSTER V2 IR-50 weights for the image stream."),
        click.option("--image-warmup", type=_ranged(TrainConfig, "image_warmup"),
                     default=t.image_warmup,
                     show_default=False,
                     help="Steps that train the image stream alone (pooled linear classifier, "
                          "then dropped) before epoch 1: a stand-in for a pretrained IR-50 when "
                          "there is none (the tiny preset); 0: off [default: "
                          f"{AUTO_IMAGE_WARMUP}, 0 with --freeze image or --init]."),
        click.option("--pretrained-mobilefacenet", default="", type=click.Path(dir_okay=False),
                     help="pytorch_face_landmark MobileFaceNet weights (landmark stream)."),
        click.option("--init", default=t.init, type=click.Path(dir_okay=False),
                     help="Fine-tune from this grefel checkpoint (e.g. from `grefel weights "
                          "import --kind posterv2`): its architecture, every tensor that fits "
                          "(strict), fresh class-dependent tensors when the classes differ; "
                          "writes init.json."),
        click.option("--json", "json_path", type=click.Path(dir_okay=False),
                     help="Write the run summary as JSON."),
    ]
    func = _align_options(func)
    for option in reversed(options):
        func = option(func)
    return func


@cli.command(
    epilog="""\b
Examples:
  grefel train --data runs/demo/synthfer --preset tiny --epochs 8 --batch-size 32 --lr 1e-3 \\
      --freeze landmark --pretrained-mobilefacenet runs/demo/pretrained/mobilefacenet.safetensors \\
      --pretrained-ir50 runs/demo/pretrained/ir50.safetensors --image-warmup 150 --no-augment \\
      --out runs/demo/train   # make demo
  grefel train --data data/facial_expressions --preset tiny --freeze landmark --image-warmup 400 \\
      --refine-per-class 300 --no-refine-repeat --augment-policy light --select macro_f1 \\
      --epochs 20 --gamma 0.85 --batch-size 48 --lr 1e-3 --out runs/real/seed0 \\
      --pretrained-mobilefacenet runs/real/pretrained/mobilefacenet_mesh.safetensors \\
      --pretrained-ir50 runs/real/pretrained/ir50_mesh.safetensors       # make real-model
  grefel train --out runs/demo/train --resume --epochs 12
  grefel train --data data/rafdb --preset paper --refine-per-class 32 --label-smoothing 0.11
  grefel train --data data/rafdb --preset paper --init ckpt/poster_raf.safetensors --lr 1e-5 \\
      --out runs/finetune
  torchrun --nproc_per_node 2 -m grefel train --data data/rafdb --preset paper --out runs/ddp
"""
    + _resume_epilog()
)
@_train_options
def train(**opts) -> None:
    """Train GReFEL on a dataset folder (Adam, exponential LR decay, eq. 23 loss).

    Under torchrun it runs DDP (gloo on CPU, nccl on GPU); only rank 0 writes files.
    """
    import json

    from grefel.data import DatasetError
    from grefel.fileio import Input, Output, model_inputs
    from grefel.train import TrainingError, configs_from_options, run_training
    from grefel.train_state import RUN_FILES
    from grefel.weights import WeightsError

    json_path = opts.pop("json_path")
    if opts["root"] is None and not opts["resume"]:
        raise click.UsageError("Missing option '--data' (needed unless --resume).")
    if not opts["out"]:
        if opts["resume"]:
            raise click.UsageError("Missing option '--out' (the run folder to resume).")
        opts["out"] = _default_train_folder(opts["preset"])
    ctx = click.get_current_context()
    opts["face"] = ALIGN.build(opts)
    given = {k for k in opts if ctx.get_parameter_source(k) not in (None, ParameterSource.DEFAULT)}
    given |= {f"face.{name}" for name in ALIGN.given(ctx)}
    try:
        d, t = configs_from_options(opts, opts.pop("overrides"), given=given)
    except TrainingError as exc:
        raise _user_error(exc) from None
    except (TypeError, ValueError) as exc:
        raise click.BadParameter(str(exc)) from None
    _check_align_options(ctx, d.face.mode, d.root, d.dataset)
    _check_outputs(
        [Input("--data", d.root or None, "the dataset folder", folder=True),
         *model_inputs("--init", t.init or None, "the checkpoint"),
         *model_inputs("--pretrained-ir50", t.pretrained_ir50 or None, "the IR-50 weights"),
         *model_inputs("--pretrained-mobilefacenet", t.pretrained_mobilefacenet or None,
                       "the MobileFaceNet weights")],
        [Output("--out", t.out, folder=True, writes=RUN_FILES, owner="train"),
         Output("--json", json_path),
         Output("--align-cache", d.align_cache or None, folder=True)])
    try:
        summary = run_training(d, t)
    except (DatasetError, TrainingError, WeightsError, OSError) as exc:
        raise _user_error(exc) from None
    if summary["rank"] == 0:
        click.echo(json.dumps(summary, indent=2))
        _wrote(summary["out"], "run folder: best and last .safetensors, config.json, metrics")
        if json_path:
            _write_json(json_path, summary, "summary JSON")


@cli.command(
    "eval",
    epilog="""\b
Examples:
  grefel eval runs/demo/train/best.safetensors --data runs/demo/synthfer
  grefel eval --data data/facial_expressions   # the model that ships inside grefel
  grefel eval runs/demo/train/best.safetensors --data data/rafdb --split test --out runs/demo/eval
  grefel eval engines/best.onnx --data runs/demo/synthfer \\
      --reference runs/demo/train/best.safetensors
  grefel eval engines/best.int8.onnx --data runs/demo/synthfer --threads 2 \\
      --reference runs/demo/train/best.safetensors
  grefel eval engines/best_fp16_b8.engine --data runs/demo/synthfer   # on the GPU that built it
""",
)
@click.argument("checkpoint", metavar="[MODEL]", type=click.Path(dir_okay=False), required=False)
@click.option("--data", required=True, type=click.Path(file_okay=False), help="Dataset folder.")
@EVAL
@click.option("--out", type=click.Path(file_okay=False),
              help="Report folder [default: a new runs/eval/MODEL-SPLIT, -2, -3, ...].")
@click.option("--reference", type=click.Path(dir_okay=False),
              help="FP32 checkpoint to compare with over the same images: both accuracies and "
                   "the export gates' agreement (decisive flips, |dp|, NaN).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write JSON here.")
@_align_options
def eval_(checkpoint: Optional[str], data: str, out: Optional[str], reference: Optional[str],
          json_path: Optional[str], align_cache: str, **params: Any) -> None:
    """Accuracy, macro-F1, confusion, calibration, embedding and per-group bias of MODEL.

    MODEL is a checkpoint (.safetensors, PyTorch), an exported .onnx (FP32, FP16 or INT8; ONNX
    Runtime) or a TensorRT .engine, fed by the one preprocessing path; without MODEL, the
    default model that ships inside grefel (its ONNX). Prints a table on stdout; writes
    metrics.json, confusion.json and PNG plots to --out.
    """
    from grefel.runtime.torch_backend import prefer_passive_openmp

    prefer_passive_openmp()  # before anything imports torch (docs/predict.md, --threads)
    from grefel.checkpoint import CheckpointError
    from grefel.data import DatasetError
    from grefel.evaluate import (
        EvalError,
        alignment_mismatch,
        evaluate_model,
        format_report,
    )
    from grefel.progress import Progress
    from grefel.train_state import TrainingError

    alignment, opts = ALIGN.build(params), EVAL.build(params)
    _check_align_options(click.get_current_context(), alignment.mode, data, opts.dataset)
    model = _model_or_default(checkpoint)
    if not model.is_file():
        raise click.ClickException(f"{model}: no such model file")
    from grefel.evaluate import OUTPUT_NAMES
    from grefel.fileio import Input, Output, model_inputs, new_run_folder

    _check_outputs(
        [*model_inputs("MODEL", model), Input("--data", data, "the dataset folder", folder=True),
         *model_inputs("--reference", reference, "the reference checkpoint")],
        [Output("--out", out, folder=True, writes=OUTPUT_NAMES, owner="eval"),
         Output("--json", json_path),
         Output("--align-cache", align_cache or None, folder=True)])
    if out is None:
        out = str(new_run_folder("eval", f"{model.stem}-{opts.split}"))
    if reference is not None and not Path(reference).is_file():
        raise click.BadParameter(f"{reference}: no such checkpoint", param_hint="--reference")
    try:
        report = evaluate_model(model, data, opts, out=out, reference=reference,
                                alignment=alignment, align_cache=align_cache or None,
                                progress=lambda what, total: Progress(what, "images", total))
    except (CheckpointError, DatasetError, EvalError, TrainingError, OSError) as exc:
        raise _user_error(exc) from None
    click.echo(format_report(report))
    if alignment_mismatch(report):
        click.echo(f"\n{alignment_mismatch(report)}", err=True)
    _wrote(out, "metrics.json, confusion.json, PNG plots")
    if json_path:
        _write_json(json_path, report, "report JSON")


# --- weights import (issue 4) ------------------------------------------------------------------


@weights.command(
    "import",
    epilog="""\b
Examples:
  grefel weights import backbone_ir50_ms1m_epoch120.pth --kind ir50 --out ckpt/ir50.safetensors
  grefel weights import mobilefacenet_model_best.pth.tar --kind mobilefacenet --out mfn.safetensors
  grefel weights import raf-db-model_best.pth --kind posterv2 --out ckpt/poster_raf.safetensors
  grefel weights import raf-db-model_best.pth --kind posterv2 --linear-head --out ckpt/p.safetensors
""",
)
@click.argument("src", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--kind", type=click.Choice(["ir50", "mobilefacenet", "posterv2"]), required=True,
              help="Source layout family (face.evoLVe or POSTER V2 IR-50 / MobileFaceNet / full).")
@click.option("--preset", type=click.Choice(["paper", "tiny"]), default="paper")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Checkpoint to write (.safetensors + .json sidecar with the report).")
@click.option("--num-classes", type=_ranged(GReFELConfig, "num_classes"), default=None,
              help="Classes of the new model [default: the POSTER V2 head's, else 7].")
@click.option("--linear-head", is_flag=True,
              help="Primary head = one Linear (head_hidden=()), so POSTER V2's classifier fits.")
@click.option("--lenient", is_flag=True, help="Load what fits and list what was dropped.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the import report as JSON.")
def weights_import(src, kind, preset, out, num_classes, linear_head, lenient, json_path):
    """Import pretrained weights from SRC into a new GReFEL checkpoint, strictly and safely."""
    from grefel.checkpoint import save_checkpoint
    from grefel.fileio import Output, model_inputs
    from grefel.weights import WeightsError, import_weights

    if out.suffix != ".safetensors":
        raise click.BadParameter("must end in .safetensors", param_hint="--out")
    _check_outputs(model_inputs("SRC", src, "the source weights"),
                   [Output("--out", out),
                    Output("the sidecar of --out", out.with_suffix(".json"), beside=out),
                    Output("--json", json_path)])
    click.echo(f"reading {src} ({kind}) ...", err=True)
    overrides = {"head_hidden": ()} if linear_head else None
    try:
        model, report = import_weights(src, kind, preset, num_classes, lenient, overrides)
    except WeightsError as exc:
        if exc.report is not None:
            click.echo(exc.report.format(), err=True)
        raise click.ClickException(str(exc)) from None
    try:
        save_checkpoint(out, model, import_report=report.to_dict())
    except OSError as exc:
        raise _user_error(exc) from None
    click.echo(report.format())
    if json_path:
        _write_json(json_path, report.to_dict(), "import report JSON")
    click.echo(f"wrote {out} and {out.with_suffix('.json').name}")


# --- export (issue 5) --------------------------------------------------------------------------


@cli.command(
    "export",
    context_settings=CONTEXT,
    epilog="""\b
Examples:
  grefel export runs/demo/train/best.safetensors --fp16
  grefel export --onnx-only                # the model that ships inside grefel
  grefel export runs/demo/train/best.safetensors --target trt8.5 --onnx-only
  grefel export engines/best.onnx --fp16 --max-batch 8 --verify   # on the Jetson
  grefel export runs/demo/train/best.safetensors --int8 --calib-data runs/demo/synthfer --onnx-only
  grefel export engines/best.int8.onnx --int8 --max-batch 8 --verify   # on the Jetson
  grefel export runs/demo/train/best.safetensors --fp16 --triton model_repository
  grefel export runs/demo/train/best.safetensors --deepstream deepstream
""",
)
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                required=False)
@EXPORT
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the gate results as JSON here.")
@click.option("--max-pixels", type=click.IntRange(min=0),
              help="Largest --calib-data image decoded, in pixels (0 = no limit) [default: "
                   "$GREFEL_MAX_PIXELS, else 89,478,485].")
@click.option("-v", "--verbose", is_flag=True,
              help="Also print each stage's details (lint reports, per-batch parity, captured "
                   "third-party warnings); NAME.checks.json keeps them either way.")
@click.pass_context
def export_cmd(ctx: click.Context, source: Path, json_path: Optional[Path],
               max_pixels: Optional[int], verbose: bool, **params: Any) -> None:
    """Checkpoint (.safetensors) or ONNX -> checked ONNX -> TensorRT engine + sidecar.

    Without SOURCE, the default model that ships inside grefel: its checkpoint where torch is
    installed, else its ONNX. Work happens in a hidden `.export-<pid>-*` folder inside --out;
    the ones that killed exports left behind are removed first.
    """
    import dataclasses
    import importlib.util

    from export import ExportError
    from export.deepstream import CONFIG_NAME, LABELS_NAME
    from export.pipeline import planned_outputs, run_export
    from export.triton import MODEL_NAME
    from grefel.contract import set_max_pixels
    from grefel.fileio import Input, Output, display_path, model_inputs, new_run_folder

    if max_pixels is not None:
        set_max_pixels(max_pixels)
    if source is None:
        has_torch = importlib.util.find_spec("torch") is not None
        source = _model_or_default(None, "checkpoint" if has_torch else "onnx")
    opts = EXPORT.build(params)
    if opts.triton is not None and not opts.dynamic:
        raise click.BadParameter("a Triton repository with dynamic batching needs a dynamic "
                                 "batch: drop --static", param_hint="--triton")
    given = opts.out is not None  # else a new folder: nothing in it to replace
    _check_outputs(
        [*model_inputs("SOURCE", source),
         Input("--calib-data", opts.calib_data, "the calibration images", folder=True)],
        [Output("--out", opts.out, folder=True, owner="export",
                writes=planned_outputs(source, opts) if given else ()),
         Output("--json", json_path), Output("--timing-cache", opts.timing_cache),
         Output("--triton", opts.triton, folder=True, writes=(MODEL_NAME,)),
         Output("--deepstream", opts.deepstream, folder=True, writes=(CONFIG_NAME, LABELS_NAME))])
    if opts.triton is not None and given and _inside(opts.out, opts.triton):
        raise click.BadParameter(f"{display_path(opts.out)} is in the Triton repository "
                                 f"{display_path(opts.triton)}, where Triton takes every folder "
                                 "(the export's work folder too) for a model: give --out "
                                 "another folder", param_hint="--out")
    if not given:
        opts = dataclasses.replace(opts, out=new_run_folder("export", opts.name or source.stem))
    try:
        result = run_export(source, opts, log=lambda s: click.echo(s, err=True), verbose=verbose)
    except ExportError as exc:
        raise click.ClickException(str(exc)) from None
    if json_path is not None:
        _write_json(json_path, {"exit_code": result.exit_code, **result.gates}, "gate results JSON")
    click.echo(result.message)
    for path in result.artifacts:
        click.echo(str(path))
    ctx.exit(result.exit_code)


def _inside(path: Path, folder: Path) -> bool:
    """`path` is `folder` or lies inside it (both resolved; neither need exist)."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents


# --- predict, bench, info (issue 6) ------------------------------------------------------------


@cli.command(
    "predict",
    epilog="""\b
Examples:
  grefel predict photo.jpg                 # the model that ships inside grefel
  grefel predict photo.jpg --weights engines/best_fp16_b8.engine
  grefel predict faces/ -w runs/demo/train/best.safetensors --aligned --format csv --out p.csv
  grefel predict clip.mp4 --weights model.onnx --annotate clip_annotated.avi
  grefel predict 0 --weights engines/best_fp16_b8.engine --max-frames 300   # camera 0
  grefel predict clip.mp4 -w model.onnx --det-every 3 --det-size 320 --json summary.json
  grefel predict rtsp://camera.local:554/stream1 -w engines/best_fp16_b8.engine --show
  grefel predict group.jpg -w model.onnx --detector haar --margin 0.3
"""
)
@click.argument("src")
@click.option(
    "--weights",
    "-w",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A .engine (TensorRT), .onnx (ONNX Runtime) or .safetensors checkpoint [default: the "
         "model that ships inside grefel, docs/models.md].",
)
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Records file, written line by line as produced; stdout when absent.",
)
@click.option(
    "--annotate",
    type=click.Path(path_type=Path),
    help="Annotated copy, written to exactly this name: .png/.jpg for an image, a folder for "
         "a folder, .avi/.mp4 for a video or camera (anything else is refused).",
)
@PREDICT
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    help="ONNX Runtime / PyTorch device (an engine always runs on the GPU).",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the run summary (counts, skipped files, FPS, ms per stage) as JSON.",
)
@click.option(
    "--max-pixels",
    type=click.IntRange(min=0),
    help="Largest image or video frame decoded, in pixels (0 = no limit) [default: "
         "$GREFEL_MAX_PIXELS, else 89,478,485].",
)  # fmt: skip
@click.pass_context
def predict_command(
    ctx: click.Context,
    src: str,
    weights: Path,
    fmt: str,
    out: Optional[Path],
    annotate: Optional[Path],
    device: str,
    json_path: Optional[Path],
    max_pixels: Optional[int],
    **opts: Any,
) -> None:
    """Classify the faces in SRC: an image, a folder (recursive), a video file or a camera index.

    SIGTERM, SIGHUP and Ctrl-C end the run after writing the records so far and the summary;
    the exit status is then 128 + the signal number (143, 129, 130).
    """
    from grefel.runtime.torch_backend import prefer_passive_openmp

    prefer_passive_openmp()  # before anything imports torch (docs/predict.md, --threads)
    from grefel._lazy import MissingDependency
    from grefel.contract import ImageError, set_max_pixels
    from grefel.fileio import Input, Output, display_path, model_inputs
    from grefel.predict import (
        OutputError,
        ShowError,
        annotated_what,
        plot_target,
        run_predict,
        signals_end_run,
    )
    from grefel.runtime import BackendError
    from grefel.runtime.sources import SourceError, classify_source, media_suffixes

    if max_pixels is not None:
        set_max_pixels(max_pixels)
    weights = _model_or_default(weights)
    try:
        source = classify_source(src)
        kind = source.kind
        _check_outputs(
            [Input("SRC", src if source.is_path else None, f"the input {kind}"
                   if kind != "folder" else "the source folder", folder=kind == "folder",
                   suffixes=media_suffixes()),
             *model_inputs("--weights", weights)],
            [Output("--out", out), Output("--annotate", annotate, folder=kind == "folder"),
             Output("--json", json_path),
             Output("the expression plot of --out", plot_target(out, source), beside=out)])
        with signals_end_run():
            summary = run_predict(
                source, weights, PREDICT.build(opts), fmt=fmt, out=out, annotate=annotate,
                device=None if device == "auto" else device,
                on_skip=lambda file, why: click.echo(f"skipped {file}: {why}", err=True),
            )  # fmt: skip
    except (BackendError, SourceError, MissingDependency, OutputError, ImageError,
            ShowError) as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt as exc:  # a signal before the stream began (loading the model)
        signum = getattr(exc, "signum", 2)
        click.echo(f"interrupted before any record was written (signal {signum})", err=True)
        ctx.exit(128 + signum)
    click.echo(summary.describe(), err=True)
    if out is not None:
        _wrote(out, f"records, {fmt}")
    if annotate is not None and summary.frames:
        _wrote(annotate, annotated_what(source))
    if summary.plot is not None:
        _wrote(summary.plot, "expression-over-time plot, PNG")
    elif summary.faces == 0 and plot_target(out, source) is not None:
        click.echo("no expression-over-time plot: no face was found in any frame", err=True)
    if json_path:
        _write_json(json_path, summary.to_dict(), "summary JSON")
    if summary.signal:
        ctx.exit(128 + int(summary.signal))
    if summary.ended:  # a video that stopped before its declared end: records kept, exit 1
        raise click.ClickException(summary.ended)
    if summary.frames == 0:
        raise click.ClickException(f"{display_path(src)}: no readable image or frame")


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

    _check_outputs(
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
    _wrote(paths[0], "bench record, JSON")
    _wrote(paths[1], "bench record, Markdown")


# --- serve (issue 17) --------------------------------------------------------------------------


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

    weights = _model_or_default(weights)
    from grefel.fileio import Output, model_inputs

    _check_outputs(model_inputs("--weights", weights),
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
    _check_outputs(model_inputs("grefel", shipped, "the model that ships inside grefel"),
                   [Output("--json", json_path)])
    click.echo("\n".join(env_lines(env)))
    click.echo(env["default_model"])
    if json_path:
        _write_json(json_path, env, "environment JSON")


# --- check (issue 29) ---------------------------------------------------------------------------


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
@click.option("--time-limit", type=_ranged(CheckOptions, "time_limit_s"), default=None,
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
    _check_outputs([*model_inputs("--model", model),
                    Input("--calib-data", calib_data, "the calibration images", folder=True)],
                   [Output("--out", out, folder=True, owner="check",
                           writes=("check.json", "check.md", "logs")),
                    Output("--json", json_path)])
    facts = check.preflight()
    click.echo(check.preflight_text(facts))
    if json_path:
        _write_json(json_path, facts, "preflight facts JSON")
    if not run_sections:
        return
    folder = claim_run_folder(out, "check") if out else new_run_folder("check",
                                                                        device_label(facts))
    click.echo(f"\nrunning {', '.join(chosen or check.SECTION_NAMES)} into {folder}", err=True)
    opts = check.CheckOptions(out=folder, model=model, calib_data=calib_data, sections=chosen,
                              time_limit_s=time_limit)
    report = check.run_check(facts, opts, on_result=lambda r: click.echo(r.line(), err=True))
    _wrote(folder / "check.json", "check report, JSON")
    _wrote(folder / "check.md", "check report, Markdown: attach it to an issue")
    sys.exit(report["exit_code"])


# --- pretrain (issue 16) -----------------------------------------------------------------------


@cli.group(context_settings=CONTEXT)
def pretrain() -> None:
    """Pretrain the landmark / image stream on landmarks / identities (paper 3.1)."""


def _pretrain_defaults() -> dict:
    """grefel.config.PretrainConfig's defaults (torch-free), for the option declarations."""
    import dataclasses

    from grefel.config import PretrainConfig

    return {f.name: f.default for f in dataclasses.fields(PretrainConfig)}


_PRETRAIN_DEFAULTS = _pretrain_defaults()


def _pretrain_options(func):
    """Options both pretraining commands share; defaults from grefel.config.PretrainConfig."""
    c = _PRETRAIN_DEFAULTS
    options = [
        click.option("--data", required=True, type=click.Path(file_okay=False),
                     help="Dataset folder with identities (SynthFER from grefel data synth, "
                          "muxspace/facial_expressions, or any reader's layout)."),
        click.option("--dataset", default=c["dataset"], help="Reader kind (auto detects)."),
        click.option("--out", required=True, type=click.Path(dir_okay=False),
                     help="Checkpoint to write (.safetensors + .json sidecar)."),
        click.option("--preset", type=click.Choice(["tiny", "paper"]), default=c["preset"],
                     help="GReFEL preset whose stream is trained (widths, depths)."),
        click.option("--steps", type=_ranged(PretrainConfig, "steps"), default=c["steps"]),
        click.option("--batch-size", type=_ranged(PretrainConfig, "batch_size"),
                     default=c["batch_size"]),
        click.option("--lr", type=_ranged(PretrainConfig, "lr"), default=c["lr"],
                     help="Adam learning rate."),
        click.option("--seed", type=_ranged(PretrainConfig, "seed"), default=c["seed"]),
        click.option("--device", default=c["device"], help="cpu, cuda or cuda:N."),
        click.option("--threads", type=_ranged(PretrainConfig, "threads"), default=c["threads"],
                     help="torch CPU threads; 0 = torch's default."),
        click.option("--augment/--no-augment", default=c["augment"],
                     help="landmarks: brightness/contrast jitter; identity: flips and shifts."),
        click.option("--precise-bn", type=_ranged(PretrainConfig, "precise_bn"),
                     default=c["precise_bn"],
                     help="Training images for the BatchNorm statistics before evaluation."),
        click.option("--reuse", is_flag=True,
                     help="Keep an existing --out made with the same settings from the same data."),
        click.option("--json", "json_path", type=click.Path(dir_okay=False),
                     help="Also write the sidecar (metrics, settings) as JSON here."),
    ]
    func = _align_options(func)
    for option in reversed(options):
        func = option(func)
    return func


def _run_pretrain(task: str, json_path: Optional[str], **opts: Any) -> None:
    import json

    from grefel.fileio import Input, Output
    from grefel.pretrain import PretrainError, make_config, pretrain

    alignment = ALIGN.build(opts)
    _check_align_options(click.get_current_context(), alignment.mode, opts["data"],
                         opts["dataset"])
    _check_outputs([Input("--data", opts["data"], "the dataset folder", folder=True)],
                   [Output("--out", opts["out"]),
                    Output("the sidecar of --out", Path(opts["out"]).with_suffix(".json"),
                           beside=Path(opts["out"])),
                    Output("--json", json_path),
                    Output("--align-cache", opts["align_cache"] or None, folder=True)])
    try:
        meta = pretrain(make_config(task=task, alignment=alignment, **opts))
    except PretrainError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(meta["metrics"], indent=2))
    if meta.get("reused"):
        click.echo(f"kept {opts['out']} (pretrained weights, reused)", err=True)
    else:
        _wrote(opts["out"], "pretrained weights and their JSON sidecar")
    if json_path:
        _write_json(json_path, meta, "metrics JSON")


@pretrain.command(
    "landmarks",
    epilog="""\b
Examples:
  grefel pretrain landmarks --data runs/demo/synthfer --steps 200 \\
      --out runs/demo/pretrained/mobilefacenet.safetensors                       # make demo
  grefel pretrain landmarks --data data/facial_expressions --steps 1000 --batch-size 64 \\
      --out runs/real/pretrained/mobilefacenet_mesh.safetensors                  # make real-model
  grefel pretrain landmarks --data data/facial_expressions --stream image --steps 1000 \\
      --batch-size 64 --out runs/real/pretrained/ir50_mesh.safetensors           # make real-model
  (then grefel train --pretrained-mobilefacenet / --pretrained-ir50 FILE: see grefel train -h)
""",
)
@_pretrain_options
@click.option("--landmarks", type=click.Choice(["auto", "file", "mesh"]),
              default=_PRETRAIN_DEFAULTS["landmarks"],
              help="Targets: file = the dataset's landmarks.csv (SynthFER's 68 ground-truth "
                   "points); mesh = MediaPipe's 468-point face mesh (shipped in grefel) run on "
                   "each face; auto = the file where there is one and faces are not aligned.")
@click.option("--stream", type=click.Choice(["landmark", "image"]), default="landmark",
              help="landmark: the MobileFaceNet trunk (the paper's landmark stream; "
                   "--pretrained-mobilefacenet); image: IR-50 stages 1-3, the image stream "
                   "(--pretrained-ir50), where no face-recognition IR-50 exists (tiny).")
def pretrain_landmarks(json_path: Optional[str], **opts: Any) -> None:
    """MobileFaceNet trunk (or, with --stream image, IR-50 stages 1-3) + GDC head regressing
    facial landmarks.

    The targets are a dataset's own landmarks (SynthFER's 68 ground-truth points), or, for
    real photos without them, the 468 points of MediaPipe's face mesh on each (aligned) face.
    Reports the NME on the validation split (held-out identities), normalised by the
    inter-ocular distance, beside the NME of the mean training shape.
    """
    _run_pretrain("landmarks", json_path, **opts)


@pretrain.command(
    "identity",
    epilog="""\b
Examples:
  grefel pretrain identity --data runs/demo/synthfer --steps 150 \\
      --out runs/demo/pretrained/ir50.safetensors                                # make demo
  grefel pretrain identity --data data/synthfer --margin-head cosface --out ir.safetensors
  (then grefel train --pretrained-ir50 FILE: see grefel train -h)
""",
)
@_pretrain_options
@click.option("--margin-head", type=click.Choice(["arcface", "cosface"]),
              default=_PRETRAIN_DEFAULTS["margin_head"], help="face.evoLVe's margin heads.")
@click.option("--scale", type=_ranged(PretrainConfig, "scale"),
              default=_PRETRAIN_DEFAULTS["scale"],
              help="s of the margin head.")
@click.option("--head-margin", "margin", type=_ranged(PretrainConfig, "margin"), default=None,
              help="m of the margin head [default: 0.5 ArcFace, 0.35 CosFace].")
@click.option("--embedding", type=_ranged(PretrainConfig, "embedding"),
              default=_PRETRAIN_DEFAULTS["embedding"],
              help="Embedding size of the output layer.")
@click.option("--holdout-every", type=_ranged(PretrainConfig, "holdout_every"),
              default=_PRETRAIN_DEFAULTS["holdout_every"],
              help="Every k-th image of each training identity is held out for the accuracy.")
def pretrain_identity(json_path: Optional[str], **opts: Any) -> None:
    """IR-50 stages 1-3 on identity classification with an ArcFace / CosFace margin loss.

    Reports the identification accuracy on held-out images of the training identities.
    """
    _run_pretrain("identity", json_path, **opts)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """The `grefel` console script, and the net under every command: no error escapes as a
    traceback.

    - a bad option or usage: Click's own message, exit status 2;
    - an expected error (grefel.errors.GrefelError: every library error class derives from it;
      an OSError; an optional package that is missing: MissingDependency, or a
      ModuleNotFoundError of one in grefel._lazy.OPTIONAL): one `Error: ...` line, exit 1;
    - Ctrl-C: `interrupted`, exit 130 (predict ends its run itself and says so);
    - stdout closed by its reader (`grefel ... | head`): a quiet exit;
    - anything else is a bug: one line `Error: internal error (<Type>: <message>); a report was
      saved to <path>` (grefel.crash: the traceback, command line and versions), exit 1.
    """
    import errno

    from grefel._lazy import OPTIONAL, MissingDependency, install_hint
    from grefel.errors import GrefelError
    from grefel.fileio import display_path

    def fail(line: str, code: int = 1) -> None:
        click.echo(line, err=True)
        sys.exit(code)

    try:
        from grefel.environment import check_environment

        check_environment()  # a bad GREFEL_* value is one line, before any command reads it
        code = cli.main(args=None if argv is None else list(argv), standalone_mode=False)
    except click.exceptions.Abort as exc:  # Click's form of KeyboardInterrupt and EOFError
        interrupted = isinstance(exc.__cause__ or exc.__context__, KeyboardInterrupt)
        fail("interrupted" if interrupted else "Aborted!", 130 if interrupted else 1)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except MissingDependency as exc:
        fail(f"Error: {exc}")
    except ModuleNotFoundError as exc:
        name = (exc.name or "").split(".")[0]
        if name not in OPTIONAL:
            _internal_error(exc, argv)
        fail(f"Error: this command needs {name}, which is not installed. Install "
             f"{install_hint(name)}.")
    except GrefelError as exc:
        fail(f"Error: {exc}")
    except OSError as exc:
        if exc.errno == errno.EPIPE:  # the reader of stdout went away: nothing left to say
            _silence_stdout()
            sys.exit(1)
        where = f"{display_path(exc.filename)}: " if exc.filename else ""
        fail(f"Error: {where}{exc.strerror or exc}")
    except Exception as exc:  # noqa: BLE001 - the net: a bug, reported once, with its report
        _internal_error(exc, argv)
    sys.exit(code if isinstance(code, int) else 0)


def _internal_error(exc: BaseException, argv: Optional[Sequence[str]]) -> None:
    """One line naming the unexpected error and the saved crash report (grefel.crash); exit 1.
    When the report cannot be saved, the traceback is shown instead: it is the only record."""
    import traceback

    from grefel.crash import crash_dir, save_report
    from grefel.fileio import display_path

    first = (str(exc).strip().splitlines() or [""])[0]
    what = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    args = None if argv is None else [sys.argv[0], *argv]
    try:
        path = save_report(exc, args)
    except OSError as why:
        traceback.print_exception(type(exc), exc, exc.__traceback__)
        click.echo(f"Error: internal error ({what}); the report could not be saved to "
                   f"{display_path(crash_dir())} ({why.strerror or why}): the traceback is "
                   "above", err=True)
        sys.exit(1)
    click.echo(f"Error: internal error ({what}); a report was saved to {display_path(path)}",
               err=True)
    sys.exit(1)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush of a closed pipe does not
    print "Exception ignored ... BrokenPipeError" (Python's documented remedy)."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    main()
