"""Every `grefel ...` command line the documentation shows parses against the real CLI.

The lines come from the shell code blocks of README.md and docs/*.md and from the `Examples:`
of every command's `--help`. Each is parsed by Click itself (`Command.make_context`, no
callback run beyond the options' own converters): the command must exist, every option must
exist and take the value given (types, choices, ranges, counts). Paths need not exist: the
documents name files the reader will have. Line continuations are joined; comments, shell
operators (`|`, `&&`, `;`, redirections) and what follows them are dropped; lines that do not
run grefel (pip, curl, `python -m benchmarks...`) are skipped.
"""

from __future__ import annotations

import contextlib
import re
import shlex
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import click
import pytest

from grefel.cli import cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_FENCES = {"", "bash", "sh", "shell", "console", "zsh"}
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```",
                   re.M | re.S)
OPERATOR = re.compile(r"^[();<>|&]+$")  # shlex's punctuation tokens: |, &&, ;, >, 2>&1's >&, ...
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_]\w*=")


class Example:
    """One logical command line and where it was found (`file:line` or `grefel CMD --help`)."""

    def __init__(self, where: str, line: str) -> None:
        self.where, self.line = where, line

    def __repr__(self) -> str:
        return f"{self.where}: {self.line}"


def _logical_lines(text: str, first_line: int) -> Iterator[Tuple[int, str]]:
    """(line number, line) with backslash continuations joined; the number is the first line's."""
    number, pending, start = first_line, "", first_line
    for raw in text.splitlines():
        if not pending:
            start = number
        stripped = raw.strip()
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
        else:
            yield start, pending + stripped
            pending = ""
        number += 1
    if pending:
        yield start, pending


def grefel_args(line: str) -> Optional[List[str]]:
    """The arguments after `grefel` if the line runs grefel (`grefel ...`, `VAR=x grefel ...`,
    `torchrun ... -m grefel ...`), up to the first shell operator; else None."""
    if not re.search(r"(^|\s)grefel(\s|$)", line):
        return None
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        tokens = list(lexer)
    except ValueError as exc:  # unbalanced quotes
        if line.lstrip().startswith("grefel"):
            raise AssertionError(f"cannot split {line!r}: {exc}") from None
        return None
    for i, token in enumerate(tokens):
        if OPERATOR.match(token):
            return None
        if token != "grefel":
            continue
        if all(ENV_ASSIGNMENT.match(t) for t in tokens[:i]) or (i and tokens[i - 1] == "-m"):
            args = tokens[i + 1:]
            cut = next((j for j, t in enumerate(args) if OPERATOR.match(t)), len(args))
            return args[:cut]
        return None
    return None


def doc_examples(paths: Sequence[Path] = DOCS) -> List[Example]:
    """The grefel command lines of the shell code blocks of `paths`."""
    found = []
    for path in paths:
        text = path.read_text()
        for block in FENCE.finditer(text):
            if block.group("lang").lower() not in SHELL_FENCES:
                continue
            first = text.count("\n", 0, block.start("body")) + 1
            for number, line in _logical_lines(block.group("body"), first):
                if grefel_args(line) is not None:
                    found.append(Example(f"{path.relative_to(ROOT)}:{number}", line))
    return found


def _commands(group: click.Group = cli, path: Tuple[str, ...] = ("grefel",)
              ) -> Iterator[Tuple[Tuple[str, ...], click.Command]]:
    """(path, command) for the group and every command under it."""
    yield path, group
    ctx = click.Context(group, info_name=path[-1])
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            yield from _commands(command, path + (name,))
        elif command is not None:
            yield path + (name,), command


def help_examples() -> List[Example]:
    """The grefel command lines of the `Examples:` block of every command's epilog."""
    found = []
    for path, command in _commands():
        epilog = command.epilog or ""
        match = re.search(r"^Examples:\n(.*?)(?:\n\s*\n|\Z)", epilog, flags=re.M | re.S)
        for _, line in _logical_lines(match.group(1) if match else "", 1):
            if grefel_args(line) is not None:
                found.append(Example(f"{' '.join(path)} --help", line))
    return found


@contextlib.contextmanager
def _paths_need_not_exist() -> Iterator[None]:
    """Every click.Path of the CLI accepts a path that does not exist, for the duration."""
    relaxed = [param.type for _, command in _commands() for param in command.params
               if isinstance(param.type, click.Path) and param.type.exists]
    for kind in relaxed:
        kind.exists = False
    try:
        yield
    finally:
        for kind in relaxed:
            kind.exists = True


def parse(args: Sequence[str]) -> Tuple[str, ...]:
    """Parse `grefel ARGS` as Click would run it, without running it; returns the command path.
    Raises click.UsageError (NoSuchOption, BadParameter, MissingParameter, ...) as Click does."""
    command: click.Command = cli
    ctx = click.Context(cli, info_name="grefel")
    path, rest = ("grefel",), list(args)
    while isinstance(command, click.Group):
        if not rest:
            raise click.UsageError(f"{' '.join(path)}: no command given", ctx)
        if rest[0].startswith("-"):  # a group option: --help or --version, both end the line
            if rest[0] not in {o for p in command.get_params(ctx) for o in p.opts}:
                raise click.NoSuchOption(rest[0], ctx=ctx)
            return path
        sub = command.get_command(ctx, rest[0])
        if sub is None:
            raise click.UsageError(f"{' '.join(path)}: no such command {rest[0]!r}", ctx)
        path, command, rest = path + (rest[0],), sub, rest[1:]
        ctx = click.Context(command, info_name=path[-1], parent=ctx)
    if {"-h", "--help"} & set(rest):  # help ends parsing wherever it stands
        return path
    with _paths_need_not_exist():
        command.make_context(path[-1], rest, parent=ctx.parent)
    return path


DOC_EXAMPLES = doc_examples()
HELP_EXAMPLES = help_examples()


@pytest.mark.parametrize("example", DOC_EXAMPLES + HELP_EXAMPLES, ids=repr)
def test_every_documented_command_line_parses(example: Example, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # relative paths in the line name nothing that exists
    try:
        parse(grefel_args(example.line) or [])
    except click.UsageError as exc:
        pytest.fail(f"{example.where}: `{example.line}` does not parse: {exc.format_message()}")


def test_the_documents_and_every_help_show_commands() -> None:
    pages = {e.where.split(":")[0] for e in DOC_EXAMPLES}
    for page in ("README.md", "docs/train.md", "docs/eval.md", "docs/export.md",
                 "docs/predict.md", "docs/serve.md", "docs/bench.md", "docs/weights.md"):
        assert page in pages, f"{page}: no grefel command line found in its code blocks"
    shown = {parse(grefel_args(e.line) or []) for e in HELP_EXAMPLES}
    leaves = {path for path, command in _commands() if not isinstance(command, click.Group)}
    assert not leaves - shown, f"commands whose --help shows no example of themselves: " \
                               f"{sorted(' '.join(p) for p in leaves - shown)}"


@pytest.mark.parametrize("line, message", [
    ("grefel train --data d --epochs-typo 3", "No such option"),
    ("grefel predict photo.jpg --wieghts model.onnx", "No such option"),
    ("grefel trian --data d", "no such command"),
    ("grefel train --epochs four", "is not a valid integer"),
    ("grefel train --preset huge", "is not one of"),
    ("grefel bench --batch-sizes 1,x", "not a comma-separated list of int"),
    ("grefel export model.onnx --max-batch", "requires an argument"),
    ("grefel weights import w.pth --kind ir50", "Missing (option|parameter)"),
])
def test_a_broken_line_does_not_parse(line: str, message: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(click.UsageError, match=message):
        parse(grefel_args(line) or [])


def test_what_counts_as_a_grefel_line() -> None:
    assert grefel_args("grefel predict a.jpg   # a comment --bogus") == ["predict", "a.jpg"]
    assert grefel_args("GREFEL_MAX_PIXELS=0 grefel predict a.jpg | head") == ["predict", "a.jpg"]
    assert grefel_args("torchrun --nproc_per_node 2 -m grefel train --out r") == [
        "train", "--out", "r"]
    assert grefel_args('grefel predict "a ! b" -w m.onnx > out.jsonl') == [
        "predict", "a ! b", "-w", "m.onnx"]
    assert grefel_args("pip install --no-deps -e .   # grefel without torch") is None
    assert grefel_args("python -m benchmarks.pipeline --make-video x.avi") is None
    text = "grefel train --data d \\\n    --out r   # two lines\ngrefel info\n"
    assert list(_logical_lines(text, 7)) == [
        (7, "grefel train --data d --out r   # two lines"), (9, "grefel info")]
