"""Issue 27 family 8: no error escapes as a traceback.

Every numeric option is refused while the command line is parsed, from the range its settings
dataclass declares (grefel.ranges): negative, zero, nan, inf, a float for an int, a huge value,
in each command. Every `--json` goes through one writer (grefel.fileio.write_record), and an
output that cannot be written (a file where its folder should be, /dev/full) ends in one line
naming the option. The net under all of it, grefel.cli.main, is tested in process
(tests/test_cli_errors.py): no real input is known that raises an unexpected error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, List

from tools.fault_campaign import Case, Proc, grefel

FAMILY = "27.8 no error escapes as a traceback"
SIDE = "tracebacks"
FULL = Path("/dev/full")  # every write fails with ENOSPC (Linux)


def _names(*words: str) -> Callable[[List[Proc], Path], str]:
    """A check: the last command's Error: line names each of `words` (the option, the path)."""
    def check(procs: List[Proc], work: Path) -> str:
        lines = procs[-1].error_lines()
        missing = [w for w in words if not any(w in line for line in lines)]
        return f"the Error: line does not name {missing}" if lines and missing else ""

    return check


def _case(name: str, run: Callable[[Path], List[Proc]], *words: str) -> Case:
    return Case(name, SIDE, "27.8", "error", run, _names(*words))


def cases(scratch: Path) -> List[Case]:
    from tools import fault_corpus as fc

    scratch.mkdir(parents=True, exist_ok=True)
    mini = fc.mini_onnx(scratch / "mini.onnx")
    image = scratch / "plain.png"
    if not image.exists():
        import numpy as np
        from PIL import Image

        from grefel.contract import INPUT_SIZE

        Image.fromarray(np.full((INPUT_SIZE, INPUT_SIZE, 3), 128, np.uint8)).save(image)
    blocker = scratch / "a_file"
    blocker.write_text("not a folder")
    data = scratch / "no_data"  # never read: the options are refused before

    def cmd(*args: Any) -> Callable[[Path], List[Proc]]:
        return lambda w: [grefel(*args, timeout=120)]

    out: List[Case] = []
    # The examples, then one bad number of each kind in each command.
    ranges = [
        ("train --head-dropout 1.5", ("train", "--data", data, "--head-dropout", "1.5")),
        ("train --anchors-per-class 0", ("train", "--data", data, "--anchors-per-class", "0")),
        ("train --threads -1", ("train", "--data", data, "--threads", "-1")),
        ("train --lambda-cls -1 (a negated loss)", ("train", "--data", data, "--lambda-cls",
                                                     "-1")),
        ("train --lr nan", ("train", "--data", data, "--lr", "nan")),
        ("train --epochs 2.5 (a float for an int)", ("train", "--data", data, "--epochs",
                                                      "2.5")),
        ("train --seed 1e30-sized (huge)", ("train", "--data", data, "--seed",
                                            "99999999999999999999")),
        ("pretrain identity --lr inf", ("pretrain", "identity", "--data", data, "--out",
                                        scratch / "p.safetensors", "--lr", "inf")),
        ("pretrain identity --head-margin 1", ("pretrain", "identity", "--data", data, "--out",
                                               scratch / "p.safetensors", "--head-margin", "1")),
        ("eval --workers -1", ("eval", "--data", data, "--workers", "-1")),
        ("predict --threads -1", ("predict", image, "-w", mini, "--threads", "-1")),
        ("predict --smooth nan", ("predict", image, "-w", mini, "--smooth", "nan")),
        ("predict --threads 100000 (huge)", ("predict", image, "-w", mini, "--threads",
                                             "100000")),
        ("export --workspace -1", ("export", mini, "--workspace", "-1", "--out",
                                   scratch / "e")),
        ("bench --seconds inf", ("bench", "-w", mini, "--seconds", "inf")),
        ("serve --queue-delay-us 0.5 (a float for an int)", ("serve", "-w", mini,
                                                             "--queue-delay-us", "0.5")),
    ]
    for label, args in ranges:
        option = next(a for a in args if isinstance(a, str) and a.startswith("--")
                      and a not in ("--data", "--out") and a != "-w")
        out.append(_case(label, cmd(*args), f"'{option}'"))

    # --json into a place that cannot take it: one writer, one line naming --json and the path.
    out.append(_case("info --json under a file", cmd("info", "--json", blocker / "env.json"),
                     "--json", "a_file"))
    out.append(_case("export --json under a file",
                     lambda w: [grefel("export", mini, "--onnx-only", "--fp32", "--no-simplify",
                                       "--out", w / "e", "--json", blocker / "g.json")],
                     "--json", "a_file"))
    out.append(_case("predict --json under a file",
                     cmd("predict", image, "-w", mini, "--aligned", "--json",
                         blocker / "s.json"), "--json", "a_file"))
    out.append(_case("export --triton DIR under a file",
                     lambda w: [grefel("export", mini, "--onnx-only", "--fp32", "--no-simplify",
                                       "--out", w / "e", "--triton", blocker / "repo")],
                     "--triton", "a_file"))
    out.append(_case("export --out is a file", cmd("export", mini, "--onnx-only", "--fp32",
                                                   "--out", blocker), "a_file"))
    if FULL.exists():  # a full disk, without filling one
        out.append(_case("predict --out /dev/full (disk full)",
                         cmd("predict", image, "-w", mini, "--aligned", "--out", FULL),
                         "--out", "/dev/full"))
        out.append(_case("predict --json /dev/full (disk full)",
                         cmd("predict", image, "-w", mini, "--aligned", "--json", FULL),
                         "--json", "/dev/full"))
        out.append(_case("info --json /dev/full (disk full)",
                         cmd("info", "--json", FULL), "--json", "/dev/full"))
    return out
