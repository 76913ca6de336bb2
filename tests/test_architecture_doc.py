"""docs/architecture.md's picture is the code's import graph (tools/architecture.py), kept current.

The picture is generated, so it cannot drift from the code unnoticed: `--check` fails when a
module's imports, a new module or a moved one would change it. The generator groups modules by
package and role, so it must keep working when the CLI becomes a folder or benchmarks/ is
split into tools/ and research/: the synthetic tree below has both.
"""

from __future__ import annotations

from pathlib import Path

from tools import architecture
from tools.architecture import BEGIN, END, generated_block, import_graph, main, node_graph, node_of


def test_the_picture_is_current() -> None:
    assert main(["--check"]) == 0, "run: python -m tools.architecture"


def test_check_fails_on_a_stale_picture_and_the_rewrite_fixes_it(tmp_path: Path) -> None:
    doc = tmp_path / "architecture.md"
    text = architecture.DOC.read_text(encoding="utf-8")
    head, rest = text.split(BEGIN, 1)
    doc.write_text(head + BEGIN + "\nflowchart TD\n  old --> picture\n" + END
                   + rest.split(END, 1)[1], encoding="utf-8")
    assert main(["--check"], doc=doc) == 1
    assert main([], doc=doc) == 0
    assert main(["--check"], doc=doc) == 0
    assert doc.read_text(encoding="utf-8") == text


def test_nodes_follow_packages_and_roles() -> None:
    assert {node_of(m) for m in ("grefel.cli", "grefel.cli.export", "grefel.__main__")} == {"cli"}
    assert node_of("grefel.runtime.ort_backend") == "runtime" == node_of("grefel.runtime")
    assert node_of("grefel.train_state") == "training"
    assert node_of("grefel") == "common" == node_of("grefel.errors")
    assert node_of("grefel.brand_new") == "brand_new"  # unknown modules show up, not hide
    assert node_of("tools.fault.corpus") == "tools" and node_of("research.probe") == "research"
    assert node_of("export.pipeline") == "export"


def _write(root: Path, rel: str, text: str = "") -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_a_cli_folder_and_tools_and_research_packages_are_drawn(tmp_path: Path) -> None:
    for package in ("grefel", "export", "tools", "research"):
        _write(tmp_path, f"{package}/__init__.py")
    _write(tmp_path, "grefel/contract.py", "from grefel.errors import GrefelError\n")
    _write(tmp_path, "grefel/errors.py")
    _write(tmp_path, "grefel/cli/__init__.py", "from grefel.cli import export_cmd\n")
    _write(tmp_path, "grefel/cli/export_cmd.py",
           "from . import __name__ as _\nfrom grefel import contract\n"
           "def run():\n    from export.pipeline import run_export\n")
    _write(tmp_path, "export/pipeline.py", "from grefel.contract import INPUT_SIZE\n"
           "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import research.probe\n")
    _write(tmp_path, "research/probe.py", "import grefel.contract\n")
    _write(tmp_path, "tools/check.py", "from research import probe\n")

    nodes = node_graph(import_graph(tmp_path))
    assert nodes == {
        "cli": {"contract": True, "export": False},  # the lazy import: a dashed edge
        "contract": {},  # into common: left out
        "common": {},
        "export": {"contract": True},  # the TYPE_CHECKING import never runs: no edge
        "research": {"contract": True},
        "tools": {"research": True},
    }
    block = generated_block(tmp_path)
    assert 'n_cli["cli/"]' in block and "n_cli -.-> n_export" in block
    assert 'n_research["research/"]' in block and "n_tools --> n_research" in block
