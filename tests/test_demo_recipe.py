"""`make demo` is what docs/train.md says it is, and it runs the paper's stream recipe: the files
`grefel pretrain` writes are the ones `grefel train` imports, the landmark stream frozen. The
`--help` examples and docs/train.md train with the Makefile's recipes (`make demo`, `make
real-model`)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("grefel data synth", "grefel pretrain", "grefel train", "grefel eval")


def _logical_lines(text: str) -> List[str]:
    """Lines with backslash continuations joined and whitespace collapsed."""
    return [" ".join(line.split()) for line in re.sub(r"\\\n", " ", text).splitlines()]


def _makefile_demo() -> List[str]:
    """The demo target's grefel commands, with the Makefile's defaults substituted."""
    text = (ROOT / "Makefile").read_text()
    defaults: Dict[str, str] = dict(re.findall(r"^(\w+) \?= (.*)$", text, flags=re.M))
    defaults["GREFEL"] = "grefel"
    body = re.search(r"^demo:.*\n((?:\t.*\n)+)", text, flags=re.M)
    assert body, "the Makefile has no demo target"
    commands = []
    for line in _logical_lines(body.group(1)):
        line = re.sub(r"\$\((\w+)\)", lambda m: defaults.get(m.group(1), m.group(0)), line)
        if line.startswith(STAGES):
            commands.append(line)
    return commands


def _docs_demo() -> List[str]:
    """The commands of docs/train.md's "make demo runs" block."""
    text = (ROOT / "docs" / "train.md").read_text()
    block = re.search(r"`make demo` runs \(see the Makefile.*?\n```bash\n(.*?)```", text,
                      flags=re.S)
    assert block, "docs/train.md: no \"`make demo` runs\" block"
    return [line for line in _logical_lines(block.group(1)) if line.startswith(STAGES)]


def test_the_docs_show_the_demo_the_makefile_runs():
    assert _docs_demo() == _makefile_demo()


def _help_lines(*names: str) -> List[str]:
    """The logical lines of the `Examples:` of `grefel NAMES --help`, comments dropped."""
    from grefel.cli import cli

    command = cli
    for name in names:
        command = command.commands[name]
    examples = (command.epilog or "").split("Examples:", 1)[1].split("\n\n", 1)[0]
    return [" ".join(line.split("#", 1)[0].split()) for line in _logical_lines(examples)]


def test_the_help_trains_with_the_demo_recipe():
    train = [c for c in _makefile_demo() if c.startswith("grefel train")]
    for names in [(), ("train",)]:
        shown = [line for line in _help_lines(*names)
                 if line.startswith("grefel train --data runs/demo/synthfer")]
        assert shown == train, f"grefel {' '.join(names)} --help"
    pretrain = [c for c in _makefile_demo() if c.startswith("grefel pretrain")]
    shown = [line for names in [(), ("pretrain", "landmarks"), ("pretrain", "identity")]
             for line in _help_lines(*names) if "--data runs/demo/synthfer" in line
             and line.startswith("grefel pretrain")]
    assert sorted(set(shown)) == sorted(pretrain)


def _options(line: str) -> Dict[str, object]:
    """`--name value` / `--flag` pairs of a command line (positionals left out)."""
    tokens, found = shlex.split(line, comments=True), {}
    for i, token in enumerate(tokens):
        if token.startswith("--"):
            nxt = tokens[i + 1] if i + 1 < len(tokens) else "--"
            found[token] = True if nxt.startswith("--") else nxt
    return found


def _makefile_real_train() -> Dict[str, object]:
    """The options of the real-model target's `grefel train`, Makefile defaults substituted."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Makefile").read_text())
    variables: Dict[str, str] = dict(re.findall(r"^(\w+) \??= (.*)$", text, flags=re.M))
    line = re.search(r"^\t.*\$\(GREFEL\) train .*$", text.split("\nreal-model:", 1)[1],
                     flags=re.M).group(0)
    for _ in range(3):  # REAL_TRAIN holds $(REAL_EPOCHS)
        line = re.sub(r"\$\((\w+)\)", lambda m: variables.get(m.group(1), m.group(0)), line)
    line = line.split("train ", 1)[1].split("||")[0].replace("$$seed", "0")
    return _options(line)


def test_the_docs_and_the_help_train_with_the_real_model_recipe():
    recipe = _makefile_real_train()
    assert recipe["--gamma"] == "0.85" and recipe["--select"] == "macro_f1", recipe
    text = (ROOT / "docs" / "train.md").read_text()
    block = re.search(r"## The real-faces recipe.*?```bash\n(.*?)```", text, flags=re.S)
    assert block, "docs/train.md: no real-faces recipe block"
    docs = [_options(line) for line in _logical_lines(block.group(1))
            if line.startswith("grefel train")]
    shown = [_options(line) for line in _help_lines("train")
             if line.startswith("grefel train --data data/facial_expressions")]
    assert docs == [recipe]
    assert [dict(o, **{"--seed": "0"}) for o in shown] == [recipe]


def test_the_demo_trains_on_the_streams_it_pretrained_with_the_landmark_stream_frozen():
    commands = [shlex.split(c) for c in _makefile_demo()]
    written = {c[2]: c[c.index("--out") + 1] for c in commands if c[1] == "pretrain"}
    assert set(written) == {"landmarks", "identity"}
    train = next(c for c in commands if c[1] == "train")
    option = {name: train[train.index(name) + 1] for name in
              ("--pretrained-mobilefacenet", "--pretrained-ir50", "--freeze")}
    assert option["--pretrained-mobilefacenet"] == written["landmarks"]
    assert option["--pretrained-ir50"] == written["identity"]
    assert option["--freeze"] == "landmark"
    order = [c[1] for c in commands]
    assert order.index("pretrain") < order.index("train")
