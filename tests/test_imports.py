"""The import structure, read from the source (AST): no cycles, no forbidden edges.

Every `import` and `from ... import` of every module of grefel, export, benchmarks, tools and
research is read, the lazy ones inside functions included, and resolved to the project module it
names. The rules (docs/architecture.md):

- no cycle among project modules, lazy imports counted;
- the model (`grefel.model`) knows nothing of export, runtime, data, training or the CLI;
- data (`grefel.data`) does not know the network (`grefel.model`) nor training or serving;
- the runtime (`grefel.runtime`) never imports training code, not even through another module,
  and its modules for `.onnx` / `.engine` (and `grefel.contract`, `grefel.predict`) import no
  torch at module level, counting the parent packages Python imports first; so do the modules
  that `grefel eval`, `bench` and `info` import for an exported model (a torch-free install,
  tests/test_wheel_install.py). Imports under `if TYPE_CHECKING:` never run: they do not count;
- only the CLI ties everything: nothing in `grefel` but the package `grefel.cli` imports
  `export` or `benchmarks`, and nothing outside it imports `grefel.cli` but `grefel.__main__`;
- the product (`grefel`, `export`, `benchmarks`: what the wheel ships) never imports `tools` or
  `research` (checks and probes run from a checkout, not in the wheel).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import pytest

from tools.import_graph import graph, imports, modules

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("grefel", "export", "benchmarks")  # what the wheel ships (test_wheel_install.py)
CHECKOUT_ONLY = ("tools", "research")
PACKAGES = PRODUCT + CHECKOUT_ONLY

# Training code: what serving must never pull in.
TRAINING = ("grefel.train", "grefel.train_state", "grefel.train_utils", "grefel.evaluate",
            "grefel.weights", "grefel.pretrain", "grefel.unpickle", "grefel.data",
            "grefel.model.losses", "grefel.devices")
SERVING = ("grefel.runtime", "grefel.predict", "grefel.pipeline", "grefel.contract",
           "grefel.serve")
# Modules a torch-free Jetson imports to run .onnx / .engine files: predict, serve, and eval,
# bench and info of an exported model.
TORCH_FREE = ("grefel.contract", "grefel.predict", "grefel.pipeline", "grefel.runtime",
              "grefel.runtime.base", "grefel.runtime.detectors",
              "grefel.runtime.ort_backend", "grefel.runtime.trt_backend",
              "grefel.runtime.preprocess", "grefel.runtime.sources", "grefel.data.readers",
              "grefel.data.samples", "grefel.config", "grefel.serve", "grefel.cli",
              "grefel.evaluate", "grefel.checkpoint", "grefel.data.datasets",
              "grefel.align_data", "grefel.train_state", "export.compare", "benchmarks.report",
              "benchmarks.flops", "benchmarks.latency", "benchmarks.env", "benchmarks.check")
FORBIDDEN: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("grefel.model", ("export", "benchmarks", "grefel.runtime", "grefel.cli", "grefel.predict",
                      "grefel.data", "grefel.train", "grefel.evaluate", "grefel.checkpoint",
                      "grefel.weights")),
    ("grefel.data", ("grefel.model", "grefel.train", "grefel.evaluate", "grefel.checkpoint",
                     "grefel.runtime", "grefel.predict", "grefel.cli", "export", "benchmarks")),
    ("grefel.runtime", TRAINING + ("grefel.cli", "export", "benchmarks")),
    ("grefel.contract", ("grefel.model", "grefel.data", "grefel.runtime", "grefel.cli",
                         "export", "benchmarks") + TRAINING),
    ("export", ("benchmarks", "grefel.cli", "grefel.train")),
    ("benchmarks", ("grefel.cli",)),
    ("tools", ("grefel.cli",)),
    ("research", ("grefel.cli",)),
)


MODULES = modules(ROOT, PACKAGES)


def _imports(module: str) -> List[Tuple[str, bool]]:
    """(imported name, at module level) for every import statement of `module`; those under
    `if TYPE_CHECKING:` count as lazy (they never run)."""
    return [(i.name, i.top) for i in imports(module, MODULES)]


def _graph(top_level_only: bool = False) -> Dict[str, Set[str]]:
    """Project module -> the project modules it imports (self-imports dropped)."""
    return graph(MODULES, top_level_only)


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    state: Dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def _closure(graph: Dict[str, Set[str]], start: str) -> Set[str]:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        todo += sorted(graph[node])
        parts = node.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parents run first
    return seen


def test_every_module_parses_and_the_rules_name_real_modules() -> None:
    assert len(MODULES) > 40 and "grefel.contract" in MODULES
    for module in TORCH_FREE:
        assert module in MODULES, module
    for module in MODULES:
        _imports(module)


def test_no_import_cycle_lazy_imports_included() -> None:
    cycle = _find_cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("owner, banned", FORBIDDEN, ids=[f[0] for f in FORBIDDEN])
def test_no_forbidden_edge(owner: str, banned: Tuple[str, ...]) -> None:
    graph = _graph()
    bad = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items() if _within(module, owner)
        for target in targets if any(_within(target, b) for b in banned)
    )
    assert not bad, f"{owner} must not import {', '.join(banned)}: " + "; ".join(bad)


def test_the_product_never_imports_tools_or_research() -> None:
    """The wheel ships grefel, export and benchmarks only: an import of tools or research from
    them, even a lazy one, would fail on an installed grefel."""
    graph = _graph()
    bad = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items() if any(_within(module, p) for p in PRODUCT)
        for target in targets if any(_within(target, c) for c in CHECKOUT_ONLY)
    )
    assert not bad, "; ".join(bad)


def test_serving_never_reaches_training_code_even_indirectly() -> None:
    graph = _graph()
    for module in (m for m in MODULES if any(_within(m, s) for s in SERVING)):
        reached = _closure(graph, module)
        training = sorted(r for r in reached if any(_within(r, t) for t in TRAINING))
        assert not training, f"{module} reaches training code: {training}"


def test_only_the_cli_ties_everything() -> None:
    graph = _graph()
    bad = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items() if _within(module, "grefel")
        and not _within(module, "grefel.cli") and module != "grefel.__main__"
        for target in targets if _within(target, "export") or _within(target, "benchmarks")
        or _within(target, "grefel.cli")
    )
    assert not bad, "; ".join(bad)


@pytest.mark.parametrize("module", TORCH_FREE)
def test_runtime_for_onnx_and_engines_imports_no_torch(module: str) -> None:
    graph = _graph(top_level_only=True)
    for reached in sorted(_closure(graph, module)):
        heavy = sorted({name.split(".")[0] for name, top in _imports(reached) if top}
                       & {"torch", "tensorrt", "onnxruntime", "pycuda", "safetensors"})
        assert not heavy, f"{module} imports {heavy} at module level through {reached}"


def test_the_checker_sees_lazy_imports_and_cycles() -> None:
    """The reader itself: a lazy import inside a function is an edge, and a cycle is found."""
    names = [name for name, top in _imports("grefel.runtime") if not top]
    assert "grefel.runtime.trt_backend" in names
    checkpoint = dict(_imports("grefel.checkpoint"))
    assert checkpoint["torch"] is False and checkpoint["grefel.config"] is True
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None
