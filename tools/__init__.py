"""Checks we run from a checkout, never shipped in the wheel: the fault campaigns and their
corpus, the GPU device check, the peak-memory check of `grefel predict` (tools/README.md).

Each module is a command (`python -m tools.<name>`) run from the repository root; records go to
tools/results/. The installed product (grefel, export, benchmarks) never imports this package
(tests/test_imports.py).
"""
