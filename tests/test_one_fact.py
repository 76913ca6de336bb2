"""One fact in one place: the input size, the opset rule and the TensorRT target list.

Each is defined once in `grefel.contract` (INPUT_SIZE / INPUT_SHAPE; OPSET, OPSET_RANGE,
opset_for_target; TENSORRT_TARGETS) and derived everywhere else: export's lint table and
`--target auto`, `ExportOptions.opset`'s range, the CLI's `--target` choices and `--opset` help.
A copy that reappears would drift silently the day the fact changes (a new TensorRT target the
CLI refuses, a help text naming the wrong opset), so these tests read the code itself:

- the CLI's choices and help are compared with the home;
- an AST scan of the product packages finds every integer 112 and every string holding 112 that
  is not a docstring (docstrings and comments may explain the contract in prose), every string
  that is exactly a target name, and every `opset=` given as a number; only the home and the
  allow-lists below (each with its reason) may hold them.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, Iterator, List, Tuple

import pytest

from grefel import contract

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("grefel", "export", "benchmarks")
HOME = "grefel/contract.py"

# (file, value) -> why a 112 there is not a copy of the input size. Empty today: 0x0112 (the
# EXIF orientation tag) is the integer 274 to the AST and is not matched.
UNRELATED_112: Dict[Tuple[str, str], str] = {}
# (file, target name) -> why that file names one target on its own. Empty today: export's
# build target without TensorRT (AUTO_TARGET_WITHOUT_TENSORRT) lives in the home too.
TARGET_NAMED: Dict[Tuple[str, str], str] = {}

_112 = re.compile(r"(?<![\d.])112(?!\d)")


def _files() -> Iterator[Path]:
    for package in PRODUCT:
        yield from sorted((ROOT / package).rglob("*.py"))


def _docstrings(tree: ast.AST) -> set:
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, kinds) and node.body and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)}


def input_size_copies(source: str) -> List[Tuple[int, str]]:
    """(line, value) of every integer 112 and every non-docstring string holding 112."""
    tree = ast.parse(source)
    docs = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Constant) or id(node) in docs:
            continue
        value = node.value
        if (type(value) is int and value == contract.INPUT_SIZE) or (
                isinstance(value, str) and _112.search(value)):
            found.append((node.lineno, repr(value)))
    return found


def target_copies(source: str) -> List[Tuple[int, str]]:
    """(line, what) of every string that is exactly a target name and every numeric opset given
    as `opset=N` / `opset_version=N` or as a parameter `opset`'s default."""
    tree = ast.parse(source)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and node.value in contract.TENSORRT_TARGETS:
            found.append((node.lineno, node.value))
        elif (isinstance(node, ast.keyword) and node.arg in ("opset", "opset_version")
              and isinstance(node.value, ast.Constant) and type(node.value.value) is int):
            found.append((node.value.lineno, f"{node.arg}={node.value.value}"))
        elif isinstance(node, ast.arguments):
            args = [*node.posonlyargs, *node.args]
            pairs = [*zip(args[len(args) - len(node.defaults):], node.defaults),
                     *zip(node.kwonlyargs, node.kw_defaults)]
            found += [(d.lineno, f"{a.arg}={d.value}") for a, d in pairs
                      if a.arg == "opset" and isinstance(d, ast.Constant)
                      and type(d.value) is int]
    return found


def test_the_scanners_see_copies_and_skip_prose() -> None:
    """The checker itself: it must be able to fail."""
    source = '''"""A docstring may say 112."""
SIZE = 112  # a comment may say 112 too
SHAPE = (1, 3, 112, 112)
HELP = "onto the 5-point 112 px template"
EXIF = 0x0112
OK = "1120 and 11.2 and 3.112"
def f(opset: int = 17, x: int = 16):
    """The 112 px crop."""
    g(target="trt8.5", opset=16)
'''
    assert sorted(line for line, _ in input_size_copies(source)) == [2, 3, 3, 4]
    assert sorted(what for _, what in target_copies(source)) == ["opset=16", "opset=17",
                                                                 "trt8.5"]


def test_the_literal_112_lives_only_in_the_contract() -> None:
    copies, homes = [], []
    for path in _files():
        rel = path.relative_to(ROOT).as_posix()
        for line, value in input_size_copies(path.read_text(encoding="utf-8")):
            if rel == HOME:
                homes.append(line)
            elif (rel, value) not in UNRELATED_112:
                copies.append(f"{rel}:{line}: {value}")
    assert not copies, ("the input size is grefel.contract.INPUT_SIZE (or INPUT_SHAPE); read it "
                        "instead of writing 112:\n" + "\n".join(copies))
    assert len(homes) == 1, f"{HOME} should define INPUT_SIZE once, found 112 at lines {homes}"


def test_target_names_and_opsets_live_only_in_the_contract() -> None:
    copies = []
    for path in _files():
        rel = path.relative_to(ROOT).as_posix()
        if rel == HOME:
            continue
        copies += [f"{rel}:{line}: {what}" for line, what in
                   target_copies(path.read_text(encoding="utf-8"))
                   if (rel, what) not in TARGET_NAMED]
    assert not copies, ("TensorRT targets and their opsets are grefel.contract.TENSORRT_TARGETS "
                        "and opset_for_target / OPSET; read them:\n" + "\n".join(copies))


def _export_param(name: str):
    from grefel.cli import cli

    return next(p for p in cli.commands["export"].params if p.name == name)


def test_cli_target_choices_are_the_targets() -> None:
    from export.lint import TARGETS

    assert list(_export_param("target").type.choices) == ["auto", *contract.TENSORRT_TARGETS]
    assert TARGETS is contract.TENSORRT_TARGETS


def test_cli_opset_help_and_range_state_the_rule() -> None:
    from click.testing import CliRunner

    from export.options import ExportOptions
    from grefel.cli import cli
    from grefel.ranges import range_of

    help_text = _export_param("opset").help
    assert contract.opset_rule() in help_text
    for target in contract.TENSORRT_TARGETS:  # every target's opset is what the help says
        opset = contract.opset_for_target(target)
        assert f"{target}: {opset}" in help_text or (
            opset == contract.OPSET and f"else {opset}" in help_text), (target, help_text)
    lo, hi = contract.OPSET_RANGE
    rule = range_of(ExportOptions, "opset")
    assert (rule.min, rule.max) == (lo, hi)
    res = CliRunner().invoke(cli, ["export", "--opset", str(hi + 1), "--onnx-only"])
    assert res.exit_code == 2 and f"from {lo} to {hi}" in res.output


@pytest.mark.parametrize("target", list(contract.TENSORRT_TARGETS))
def test_auto_target_reaches_every_target_from_its_own_version(target: str) -> None:
    from export.pipeline import resolve_target

    major, minor = contract.TENSORRT_TARGETS[target].since
    trt = SimpleNamespace(__version__=f"{major}.{minor}.0")
    assert resolve_target("auto", trt) == (target, [target])


def test_the_docs_name_only_known_targets_and_table_them_all() -> None:
    """The docs' words are not generated, so they are held to the home: every `trtN` they name
    is a target, and docs/tensorrt.md's table lists every target in order."""
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    unknown = sorted({f"{p.name}: {name}" for p in docs
                      for name in re.findall(r"\btrt\d+(?:\.\d+)?\b", p.read_text("utf-8"))
                      if name not in contract.TENSORRT_TARGETS})
    assert not unknown, unknown
    table = re.findall(r"^\| `(trt[\d.]+)` \|", (ROOT / "docs" / "tensorrt.md").read_text("utf-8"),
                       flags=re.M)
    assert table == list(contract.TENSORRT_TARGETS)
