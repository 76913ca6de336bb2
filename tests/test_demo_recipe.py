"""`make demo` is what docs/train.md says it is, and it runs the paper's stream recipe: the files
`grefel pretrain` writes are the ones `grefel train` imports, the landmark stream frozen."""

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
