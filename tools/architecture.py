"""The picture of docs/architecture.md, drawn from the code: the import graph of the packages.

    python -m tools.architecture           rewrite the generated block of docs/architecture.md
    python -m tools.architecture --check   exit 1 when that block is not what the code gives

Every `import` and `from ... import` of every module of grefel, export, benchmarks (and tools
and research where they exist) is read by tools.import_graph (the reader the import rules use:
the lazy ones inside functions included; those under `if TYPE_CHECKING:` never run and are left
out here) and resolved to the project module it names. Modules are then grouped into nodes, so
the picture shows the layout, not 100 files:

- a top-level package other than grefel is one node (export, benchmarks, tools, research);
- in grefel, a subpackage is one node (model, data, runtime; cli, whether a module or a folder),
  and the top-level modules are grouped by role (`ROLES`); a module no role names is a node of
  its own, so a new module shows up rather than hides.

An edge A -> B says some module of A imports some module of B: solid when one of those imports
runs when A's module is imported, dashed when all of them are lazy (inside a function). Edges
into `common` (errors, file writing, ...) are left out: every node uses it.

The picture is a Mermaid `flowchart` (GitHub renders it) between two marker comments; the
rest of the page is written by hand. tests/test_architecture_doc.py runs `--check`, so the
picture cannot go stale.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from tools.import_graph import ROOT, imports, modules, resolve

__all__ = ["ROLES", "generated_block", "import_graph", "main", "node_of", "node_graph"]

DOC = ROOT / "docs" / "architecture.md"
BEGIN = "<!-- BEGIN GENERATED: import graph (python -m tools.architecture) -->"
END = "<!-- END GENERATED: import graph -->"

# grefel's top-level modules by role: node -> modules (without the `grefel.` prefix).
ROLES: Dict[str, Tuple[str, ...]] = {
    "cli": ("cli", "__main__"),
    "contract": ("contract",),
    "config": ("config", "ranges"),
    "predict": ("predict", "pipeline"),
    "serve": ("serve",),
    "training": ("train", "train_utils", "train_state", "pretrain", "devices"),
    "evaluate": ("evaluate", "metrics"),
    "checkpoint": ("checkpoint", "weights", "unpickle"),
    "common": ("", "errors", "fileio", "finite", "progress", "timeline", "crash", "_lazy"),
}
COMMON = "common"
_ROLE_OF = {module: node for node, modules in ROLES.items() for module in modules}


def node_of(module: str) -> str:
    """The node a project module is drawn in: see the module docstring."""
    top, _, rest = module.partition(".")
    if top != "grefel":
        return top
    first = rest.split(".")[0]
    return _ROLE_OF.get(first, first)


def import_graph(root: Path = ROOT) -> Dict[str, Dict[str, bool]]:
    """module -> {imported project module: whether some import of it runs at import time}."""
    known = modules(root)
    graph: Dict[str, Dict[str, bool]] = {}
    for module in known:
        edges = graph.setdefault(module, {})
        for found in imports(module, known):
            target = resolve(found.name, known)
            if found.type_checking or target is None or target == module:
                continue  # an import under `if TYPE_CHECKING:` never runs: no edge
            edges[target] = edges.get(target, False) or found.top
    return graph


def node_graph(graph: Dict[str, Dict[str, bool]]) -> Dict[str, Dict[str, bool]]:
    """The module graph grouped into nodes (`node_of`), self-edges and edges into `common`
    dropped: node -> {node: solid}."""
    nodes: Dict[str, Dict[str, bool]] = {}
    for module, targets in graph.items():
        edges = nodes.setdefault(node_of(module), {})
        for target, eager in targets.items():
            a, b = node_of(module), node_of(target)
            if a != b and b != COMMON:
                edges[b] = edges.get(b, False) or eager
    return nodes


# --- drawing -------------------------------------------------------------------------------------


def _label(node: str, members: Sequence[str]) -> str:
    """A node's text: its folder, or the modules of a grefel role (no counts: the picture
    changes when the structure does, not with every new file)."""
    if members[0].split(".")[0] != "grefel":
        return f"{node}/"
    shorts: List[str] = []
    for module in members:
        first = module.split(".")[1] if "." in module else "__init__"
        folder = any(m.startswith(f"grefel.{first}.") for m in members)
        short = f"{first}/" if folder else first
        if short not in shorts:
            shorts.append(short)
    if shorts == [node]:
        return node
    if shorts == [f"{node}/"]:
        return f"{node}/"
    return f"{node}: {', '.join(shorts)}"


def _ident(node: str) -> str:
    return "n_" + re.sub(r"\W", "_", node)


def mermaid(graph: Dict[str, Dict[str, bool]]) -> str:
    """The Mermaid flowchart of the module graph `graph`."""
    members: Dict[str, List[str]] = {}
    for module in sorted(graph):
        members.setdefault(node_of(module), []).append(module)
    nodes = node_graph(graph)
    lines = ["flowchart TD"]
    inside = [n for n in sorted(nodes) if members[n][0].split(".")[0] == "grefel"]
    lines.append('  subgraph grefel_pkg["grefel/"]')
    lines += [f'    {_ident(n)}["{_label(n, members[n])}"]' for n in inside]
    lines.append("  end")
    lines += [f'  {_ident(n)}["{_label(n, members[n])}"]' for n in sorted(nodes)
              if n not in inside]
    for a in sorted(nodes):
        for b in sorted(nodes[a]):
            lines.append(f"  {_ident(a)} {'-->' if nodes[a][b] else '-.->'} {_ident(b)}")
    return "\n".join(lines)


def generated_block(root: Path = ROOT) -> str:
    """What goes between the markers: the flowchart and how to read it."""
    return "\n".join([
        BEGIN,
        "```mermaid",
        mermaid(import_graph(root)),
        "```",
        "",
        "A --> B: a module of A imports one of B when it is imported; A -.-> B: only inside a "
        f"function (lazy). Edges into `{COMMON}` are left out (every node uses it).",
        END,
    ])


def _splice(text: str, block: str) -> str:
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{DOC.relative_to(ROOT)}: no {BEGIN!r} ... {END!r} markers")
    head, rest = text.split(BEGIN, 1)
    return head + block + rest.split(END, 1)[1]


def main(argv: Optional[Sequence[str]] = None, doc: Path = DOC, root: Path = ROOT) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.architecture",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when the page's picture is not what the code gives")
    args = parser.parse_args(argv)
    text = doc.read_text(encoding="utf-8")
    new = _splice(text, generated_block(root))
    if args.check:
        if new != text:
            print(f"{doc}: the import graph is stale; run python -m tools.architecture",
                  file=sys.stderr)
            return 1
        return 0
    if new != text:
        doc.write_text(new, encoding="utf-8")
        print(f"wrote {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
