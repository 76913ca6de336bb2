"""`grefel data synth` and `grefel data split`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import click

from grefel.cli.app import data
from grefel.cli.common import (
    check_outputs,
    user_error,
    write_json,
    wrote,
)
from grefel.cli.options import OptionGroup
from grefel.config import SynthConfig

SYNTH = OptionGroup(SynthConfig)


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
@SYNTH
def data_synth(out: str, **params: Any) -> None:
    """Generate SynthFER, the bundled procedurally drawn expression dataset."""
    import dataclasses
    import time

    from grefel.data.synthfer import generate_synthfer, split_identities

    opts = SYNTH.build(params)
    start = time.perf_counter()
    click.echo(f"drawing {opts.n} faces into {out} ...", err=True)
    try:
        path = generate_synthfer(out, **dataclasses.asdict(opts))
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
    wrote(path, f"{opts.n} images, train/val/test CSVs, classes.txt, README.txt")


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
