"""The probes that chose grefel's recipes and defaults, run from a checkout and never shipped in
the wheel: ablations, linear probes, detector and ONNX timings, and the recipe that builds the
shipped model (research/README.md, docs/research.md).

Each module is a command (`python -m research.<name>`) run from the repository root; records go
to research/results/. The installed product (grefel, export, benchmarks) never imports this
package (tests/test_imports.py).
"""
