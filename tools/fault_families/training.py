"""Issue 27, families 3 and 6: no non-finite model is saved, and training never silently
changes meaning.

27.3: a run whose weights become NaN/inf (an infinite or huge learning rate, in `grefel train`
and both `grefel pretrain` tasks) stops with one line naming the step and what to do, and
writes no checkpoint; a checkpoint, training state or weights file holding one NaN/inf is
refused by every command that reads it (eval, predict, export, bench, --init, --resume,
weights import); legitimate zero weights still load.

27.6: a class of the class list with no training sample is refused, one with no validation
sample is warned about; --resume refuses data that changed since the run started (a label
flipped, an image added) and resumes on the same data; malformed CSV rows and class lists are
one line naming the file and line; --lambda-cls -1 is refused (by the option validation of
grefel.config).

Each case trains at most one step on the campaign's tiny CSV dataset (TINY_TRAIN).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any, Callable, List

from tools.fault_campaign import (
    SEVEN,
    TINY_TRAIN,
    Case,
    Proc,
    _csv_dataset,
    _good_labels,
    _tiny_checkpoint,
    grefel,
)

FAMILY = "27.3+6 no non-finite model saved; training never silently changes meaning"
SIDE = "training"


# Slower variants of a case CI runs (another training or pretraining step, another reader of
# the same checkpoint loader): the campaign runs them, CI the rest (tests/test_fault_families.py).
CAMPAIGN_ONLY = {
    "pretrain landmarks --lr 1e30 --steps 1 (val NME NaN)",
    "predict with an inf-weight checkpoint",
    "export of an inf-weight checkpoint",
    "bench of a NaN-weight checkpoint",
    "train --init with a NaN-weight checkpoint",
    "--resume after an image was added",
    "--resume on unchanged data (rows reordered) goes on",
    "class with no validation sample (trains, with a warning)",
    "train.csv row without its label field",
    "classes.txt with an empty line between names",
}


def _case(name: str, item: str, expect: str, run: Callable[[Path], List[Proc]],
          check: Callable[[List[Proc], Path], str] = lambda procs, work: "") -> Case:
    return Case(name, SIDE, item, expect, run, check, ci=name not in CAMPAIGN_ONLY)


def _poisoned(src: Path, dst: Path, value: float, zero: bool = False) -> Path:
    """A copy of checkpoint `src` with its first floating tensor's first value set to `value`
    (or, with `zero`, that whole tensor set to 0), written as a foreign tool would (safetensors
    and a sidecar with the matching SHA-256): grefel's own writer refuses NaN/inf."""
    from safetensors.torch import load_file, save_file

    from grefel.fileio import sha256_file

    state = load_file(str(src))
    key = sorted(k for k, v in state.items() if v.is_floating_point())[0]
    state[key] = state[key].clone()
    if zero:
        state[key].zero_()
    else:
        state[key].view(-1)[0] = value
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(dst), metadata={"format": "grefel-checkpoint/1"})
    meta = json.loads(src.with_suffix(".json").read_text())
    meta["weights_sha256"] = sha256_file(dst)
    dst.with_suffix(".json").write_text(json.dumps(meta))
    return dst


def _nothing_saved(where: bool = True, folder: str = "run") -> Callable[[List[Proc], Path], str]:
    """The check of a run that had to stop: no checkpoint or state in its folder, and (`where`)
    its one line says where it stopped or what to change."""

    def check(procs: List[Proc], work: Path) -> str:
        saved = sorted(p.name for p in (work / folder).glob("*.safetensors"))
        saved += [p.name for p in (work / folder).glob("*.state.pt")]
        if saved:
            return f"non-finite run saved {saved}"
        line = " ".join(procs[-1].error_lines())
        if where and line and not any(w in line for w in ("step", "epoch", "--lr")):
            return f"the error does not say where the run stopped: {line[:200]}"
        return ""

    return check


def _absent(*names: str) -> Callable[[List[Proc], Path], str]:
    def check(procs: List[Proc], work: Path) -> str:
        there = [n for n in names if (work / n).exists()]
        return f"written although the model is non-finite: {there}" if there else ""

    return check


def cases(scratch: Path) -> List[Case]:
    scratch.mkdir(parents=True, exist_ok=True)
    good = {"train": _good_labels(), "val": _good_labels(7), "test": _good_labels(7)}
    data = _csv_dataset(scratch / "data", good, SEVEN)
    ckpt = _tiny_checkpoint(scratch / "ckpt" / "tiny.safetensors")
    nan_ckpt = _poisoned(ckpt, scratch / "ckpt" / "nan.safetensors", math.nan)
    inf_ckpt = _poisoned(ckpt, scratch / "ckpt" / "inf.safetensors", math.inf)
    zero_ckpt = _poisoned(ckpt, scratch / "ckpt" / "zero.safetensors", 0.0, zero=True)
    image = data / "img" / "val_0.png"
    out: List[Case] = []

    def train(w: Path, root: Path, *extra: Any, run: str = "run") -> Proc:
        return grefel("train", "--data", root, "--out", w / run, *TINY_TRAIN, *extra)

    # --- 27.3 non-finite models are never written ------------------------------------------
    for lr in ("inf", "1e30"):
        out.append(_case(f"train --lr {lr} (one step)", "27.3", "error",
                         lambda w, lr=lr: [train(w, data, "--lr", lr)], _nothing_saved()))
    out.append(_case("train --lr nan", "27.3", "error",
                     lambda w: [train(w, data, "--lr", "nan")], _nothing_saved(where=False)))

    def synth(root: Path) -> Path:
        if not root.exists():
            from grefel.data.synthfer import generate_synthfer

            generate_synthfer(root, 60, seed=0, size=32)
        return root

    faces = scratch / "synth"
    pre = ["--steps", "1", "--batch-size", "8", "--precise-bn", "8", "--threads", "1",
           "--device", "cpu"]
    out.append(_case("pretrain identity --lr inf --steps 1", "27.3", "error",
                     lambda w: [grefel("pretrain", "identity", "--data", synth(faces), "--out",
                                       w / "ir.safetensors", "--lr", "inf", *pre)],
                     _absent("ir.safetensors", "ir.json")))
    out.append(_case("pretrain landmarks --lr 1e30 --steps 1 (val NME NaN)", "27.3", "error",
                     lambda w: [grefel("pretrain", "landmarks", "--data", synth(faces), "--out",
                                       w / "lm.safetensors", "--lr", "1e30", *pre)],
                     _absent("lm.safetensors", "lm.json")))
    out.append(_case("eval of a checkpoint with one NaN weight", "27.3", "error",
                     lambda w: [grefel("eval", nan_ckpt, "--data", data, "--out", w / "ev")],
                     _absent("ev")))
    out.append(_case("predict with an inf-weight checkpoint", "27.3", "error",
                     lambda w: [grefel("predict", image, "-w", inf_ckpt, "--aligned", "--out",
                                       w / "p.jsonl")], _absent("p.jsonl")))
    out.append(_case("export of an inf-weight checkpoint", "27.3", "error",
                     lambda w: [grefel("export", inf_ckpt, "--onnx-only", "--fp32", "--out",
                                       w / "e")],
                     lambda p, w: "an ONNX was written" if list(w.glob("e/*.onnx")) else ""))
    out.append(_case("bench of a NaN-weight checkpoint", "27.3", "error",
                     lambda w: [grefel("bench", "-w", nan_ckpt, "--presets", "tiny",
                                       "--backends", "onnx", "--out", w / "b")]))
    out.append(_case("train --init with a NaN-weight checkpoint", "27.3", "error",
                     lambda w: [train(w, data, "--init", nan_ckpt)], _nothing_saved(False)))

    def import_inf(w: Path) -> List[Proc]:
        import torch
        from safetensors.torch import save_file

        from grefel.model import create_model
        from grefel.weights import export_posterv2_state_dict

        torch.manual_seed(0)
        state = {k: v.contiguous().clone()
                 for k, v in export_posterv2_state_dict(create_model("tiny")).items()}
        state[sorted(state)[0]].view(-1)[0] = math.inf
        save_file(state, str(w / "poster_inf.safetensors"))
        return [grefel("weights", "import", w / "poster_inf.safetensors", "--kind", "posterv2",
                       "--preset", "tiny", "--out", w / "x.safetensors")]

    out.append(_case("weights import of a file with an inf weight", "27.3", "error", import_inf,
                     _absent("x.safetensors", "x.json")))

    def resume_nan_state(w: Path) -> List[Proc]:
        import torch

        first = train(w, data)
        path = w / "run" / "last.state.pt"
        if not path.is_file():  # the first run failed: that is the outcome to classify
            return [first]
        state = torch.load(path, weights_only=True)
        key = sorted(k for k, v in state["model"].items() if v.is_floating_point())[0]
        state["model"][key].view(-1)[0] = math.nan
        torch.save(state, path)
        return [first, train(w, data, "--resume", "--epochs", "2")]

    def epoch_one_kept(procs: List[Proc], work: Path) -> str:
        meta = work / "run" / "last.json"
        if not meta.exists():
            return "lost: last.safetensors of epoch 1"
        return "" if json.loads(meta.read_text()).get("epoch") == 1 else "last.json was replaced"

    out.append(_case("--resume of a training state with a NaN weight", "27.3", "error",
                     resume_nan_state, epoch_one_kept))

    def zero_ok(procs: List[Proc], work: Path) -> str:
        return "" if list((work / "ev").glob("*.json")) else "no eval report"

    out.append(_case("eval of a checkpoint with a zeroed tensor (finite: fine)", "27.3", "ok",
                     lambda w: [grefel("eval", zero_ckpt, "--data", data, "--out", w / "ev")],
                     zero_ok))

    # --- 27.6 training never silently changes meaning ----------------------------------------
    no_anger = _csv_dataset(scratch / "data_no_anger",
                            {"train": [i % 6 for i in range(14)], "val": _good_labels(7)}, SEVEN)
    out.append(_case("class in classes.txt with no training sample", "27.6", "error",
                     lambda w: [train(w, no_anger)],
                     lambda p, w: "" if "anger" in " ".join(p[-1].error_lines()) else
                     "the error does not name the class"))
    val_gap = _csv_dataset(scratch / "data_val_gap",
                           {"train": _good_labels(), "val": [i % 6 for i in range(6)]}, SEVEN)

    def warned(procs: List[Proc], work: Path) -> str:
        said = [x for x in procs[-1].stderr.splitlines() if x.startswith("warning:")
                and "anger" in x and "'val'" in x]
        return "" if said else "no warning about the class missing from the val split"

    out.append(_case("class with no validation sample (trains, with a warning)", "27.6", "ok",
                     lambda w: [train(w, val_gap)], warned))

    def resume_after(change: Callable[[Path], None]) -> Callable[[Path], List[Proc]]:
        def run(w: Path) -> List[Proc]:
            root = w / "data"
            shutil.copytree(data, root)
            first = train(w, root)
            change(root)
            return [first, train(w, root, "--resume", "--epochs", "2")]

        return run

    def flip_label(root: Path) -> None:
        rows = (root / "train.csv").read_text().splitlines()
        path, label = rows[1].rsplit(",", 1)
        rows[1] = f"{path},{(int(label) + 1) % 7}"
        (root / "train.csv").write_text("\n".join(rows) + "\n")

    def add_image(root: Path) -> None:
        shutil.copyfile(root / "img" / "train_0.png", root / "img" / "extra.png")
        with open(root / "train.csv", "a") as f:
            f.write("img/extra.png,0\n")

    def said_what_changed(procs: List[Proc], work: Path) -> str:
        line = " ".join(procs[-1].error_lines())
        if line and "train" not in line:
            return f"the refusal does not say what changed: {line[:200]}"
        return epoch_one_kept(procs, work)

    out.append(_case("--resume after a label flipped in train.csv", "27.6", "error",
                     resume_after(flip_label), said_what_changed))
    out.append(_case("--resume after an image was added", "27.6", "error",
                     resume_after(add_image), said_what_changed))

    def resumed(procs: List[Proc], work: Path) -> str:
        meta = work / "run" / "last.json"
        return "" if meta.exists() and json.loads(meta.read_text()).get("epoch") == 2 else \
            "the resume on unchanged data did not train epoch 2"

    def reorder(root: Path) -> None:
        header, *rows = (root / "train.csv").read_text().splitlines()
        (root / "train.csv").write_text("\n".join([header, *reversed(rows)]) + "\n")

    out.append(_case("--resume on unchanged data (rows reordered) goes on", "27.6", "ok",
                     resume_after(reorder), resumed))
    out.append(_case("train --lambda-cls -1 (a negated loss)", "27.6", "error",
                     lambda w: [train(w, data, "--lambda-cls", "-1")]))

    # malformed CSVs and class lists: one line naming the file (and line)
    def variant(name: str, edit: Callable[[Path], None]) -> Path:
        root = scratch / name
        if not root.exists():
            shutil.copytree(data, root)
            edit(root)
        return root

    def append_row(row: str) -> Callable[[Path], None]:
        def edit(root: Path) -> None:
            with open(root / "train.csv", "a") as f:
                f.write(row + "\n")

        return edit

    def names_line(line: str) -> Callable[[List[Proc], Path], str]:
        def check(procs: List[Proc], work: Path) -> str:
            said = " ".join(procs[-1].error_lines())
            return "" if not said or line in said else f"the error does not name {line!r}"

        return check

    comma = variant("data_comma", append_row("img/a,b.png,0"))
    out.append(_case("unquoted comma in a train.csv row", "27.6", "error",
                     lambda w: [train(w, comma)], names_line("train.csv: line 16")))
    short = variant("data_short", append_row("img/train_0.png"))
    out.append(_case("train.csv row without its label field", "27.6", "error",
                     lambda w: [train(w, short)], names_line("train.csv: line 16")))
    header = variant("data_header", lambda r: (r / "train.csv").write_text(
        "file,class\n" + "".join((r / "train.csv").read_text().splitlines(True)[1:])))
    out.append(_case("train.csv with another header (file,class)", "27.6", "error",
                     lambda w: [train(w, header)], names_line("train.csv")))
    dup = variant("data_dup", lambda r: (r / "classes.txt").write_text(
        "\n".join([*SEVEN, "happiness"]) + "\n"))
    out.append(_case("classes.txt with a duplicate name", "27.6", "error",
                     lambda w: [train(w, dup)], names_line("happiness")))
    blank = variant("data_blank", lambda r: (r / "classes.txt").write_text(
        "\n".join([*SEVEN[:3], "", *SEVEN[3:]]) + "\n"))
    out.append(_case("classes.txt with an empty line between names", "27.6", "error",
                     lambda w: [train(w, blank)], names_line("line 4")))
    spaced = variant("data_spaced", lambda r: (r / "train.csv").write_text(
        "path, label \n" + "".join(f"{p}, {SEVEN[int(k)]} \n" for p, k in (
            row.rsplit(",", 1) for row in (r / "train.csv").read_text().splitlines()[1:]))))

    def trained(procs: List[Proc], work: Path) -> str:
        return "" if (work / "run" / "last.safetensors").exists() else "no checkpoint"

    out.append(_case("label names padded with spaces (header and cells)", "27.6", "ok",
                     lambda w: [train(w, spaced)], trained))
    return out
