"""grefel benchmarks: sizes and FLOPs against the paper's Table 2, latency, ablations.

Each module is a command (`python -m benchmarks.<name>`) that measures and records; results go
to benchmarks/results/.
"""
