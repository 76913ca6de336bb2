"""The project's imports, read from the source with `ast`: the one reader behind the import rules
(tests/test_imports.py) and the picture of docs/architecture.md (tools/architecture.py).

Every `import` and `from ... import` of every module of the packages is read, the lazy ones
inside functions included. An import runs at module level (`top`) unless it sits in a function
or class body; one under `if TYPE_CHECKING:` never runs (`type_checking`): the rules count it as
lazy, the picture leaves it out.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Set

__all__ = ["PACKAGES", "ROOT", "Import", "graph", "imports", "modules", "resolve"]

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("grefel", "export", "benchmarks", "tools", "research")


class Import(NamedTuple):
    name: str  # the module imported (for `from M import x`: M.x when that is a module, else M)
    top: bool  # runs when the importing module is imported
    type_checking: bool  # under `if TYPE_CHECKING:`: never runs


def modules(root: Path = ROOT, packages: Sequence[str] = PACKAGES) -> Dict[str, Path]:
    """Dotted module name -> its file, for every package of `packages` present under `root`."""
    found: Dict[str, Path] = {}
    for package in packages:
        if not (root / package / "__init__.py").is_file():
            continue
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def resolve(name: str, known: Dict[str, Path]) -> Optional[str]:
    """The project module `name` refers to: itself, or its longest project prefix."""
    parts = name.split(".")
    while parts:
        if ".".join(parts) in known:
            return ".".join(parts)
        parts.pop()
    return None


def _type_checking(node: ast.AST) -> bool:
    """An `if TYPE_CHECKING:` block (without else): never run."""
    if not isinstance(node, ast.If) or node.orelse:
        return False
    test = node.test
    return (test.attr if isinstance(test, ast.Attribute) else getattr(test, "id", "")) \
        == "TYPE_CHECKING"


def imports(module: str, known: Dict[str, Path]) -> List[Import]:
    """Every import statement of `module` (one of `known`), project modules or not."""
    tree = ast.parse(known[module].read_text(encoding="utf-8"))
    never: Set[int] = set()
    eager: Set[int] = set()
    for top in tree.body:
        inner = {id(n) for n in ast.walk(top)}
        if _type_checking(top):
            never |= inner
        elif not isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            eager |= inner
    is_package = known[module].name == "__init__.py"
    out: List[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: None if is_package else -1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [full if resolve(full, known) == full else base
                     for full in (f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        out += [Import(name, id(node) in eager, id(node) in never) for name in names]
    return out


def graph(known: Dict[str, Path], top_level_only: bool = False) -> Dict[str, Set[str]]:
    """Project module -> the project modules it imports (self-imports dropped); with
    `top_level_only`, only the imports that run when it is imported."""
    out: Dict[str, Set[str]] = {}
    for module in known:
        targets = {resolve(i.name, known) for i in imports(module, known)
                   if i.top or not top_level_only}
        out[module] = {t for t in targets if t is not None and t != module}
    return out
