"""grefel's own benchmarks, shipped in the wheel: what `grefel bench`, `grefel check` and
`grefel info` run (sizes and FLOPs against the paper's Table 2, latency, the pipeline, the
environment), and the serve load benchmark (`python -m benchmarks.serve_load`).

The project's own records of these go to benchmarks/results/. Checks run from a checkout live in
tools/, the research probes in research/; neither is in the wheel.
"""
