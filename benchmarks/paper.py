"""The paper's published numbers, as data (GReFEL paper Table 2; POSTER V2 README).

The paper's "FLOPs" are thop MACs (POSTER V2's `compute_param_flop()` prints thop.profile's MAC
count as "G FLOPs"); its parameter counts are thop's, which skip raw nn.Parameters and modules
never called in forward. See docs/model.md.
"""

from __future__ import annotations

from typing import Dict

__all__ = ["POSTER_V2", "TABLE2"]

# Table 2 "Reliability Balancing Setups" (Aff-Wild2): accuracy, F1, params (M), "FLOPS" (G MAC).
TABLE2: Dict[str, Dict[str, float]] = {
    "no_rb": {"accuracy": 68.15, "f1": 0.632, "params_m": 43.6, "gmacs": 8.32},
    "anchors": {"accuracy": 70.36, "f1": 0.678, "params_m": 43.74, "gmacs": 8.36},
    "mhsa": {"accuracy": 69.05, "f1": 0.657, "params_m": 43.8, "gmacs": 8.43},
    "both": {"accuracy": 72.48, "f1": 0.731, "params_m": 43.84, "gmacs": 8.51},
}

# POSTER V2 as used (reference_models.md §5): the feature extractor GReFEL builds on.
POSTER_V2: Dict[str, float] = {
    "backbone_params": 43_748_558,  # used in forward, without the GDC head and the 7-way head
    "flops": 17_184_797_696,  # torch.utils.flop_counter, batch 1 (2 FLOPs per MAC)
    "thop_gmacs": 8.482,  # the README's "8.4G FLOPs"
    "thop_params_m": 43.724,
}
