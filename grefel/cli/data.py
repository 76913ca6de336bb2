"""`grefel data synth` and `grefel data split`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from grefel.cli.app import data
from grefel.cli.common import (
    check_outputs,
    float_range,
    ranged_type,
    user_error,
    write_json,
    wrote,
)
from grefel.config import TrainConfig
from grefel.contract import INPUT_SIZE


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
@click.option("--seed", type=ranged_type(TrainConfig, "seed"), default=0,
              help="Same seed and options give the same bytes.")
@click.option("--noise", type=float_range(0.0, 1.0, max_open=True), default=0.0,
              help="Fraction of TRAIN labels flipped to another class (val/test stay clean).")
@click.option("--imbalance", type=click.Choice(["rafdb", "uniform"]), default="rafdb",
              help="Class frequencies: RAF-DB basic train counts, or equal.")
@click.option("--contempt/--no-contempt", default=False, help="Add contempt as an 8th class.")
@click.option("--size", type=click.IntRange(min=32), default=INPUT_SIZE,
              help="Image side in pixels.")
@click.option("--difficulty", type=float_range(0.0, 1.0), default=1.0,
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
        raise user_error(e) from None
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
    wrote(path, f"{n} images, train/val/test CSVs, classes.txt, README.txt")


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
    check_outputs([Input("ROOT", path, "the dataset folder", folder=True)],
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
        write_json(json_path, record, "split record JSON")
