"""GReFEL network, one file per stage of the paper's Figure 2.

Names are loaded on first use, so importing `grefel.model.grefel` (the network, what a
checkpoint loader or the torch backend needs) does not import the training losses.
"""

from __future__ import annotations

from grefel._lazy import lazy_exports

__all__ = ["GReFEL", "GReFELLoss", "GReFELOutput", "LossTerms", "create_model"]

_LAZY = {
    "GReFEL": "grefel.model.grefel",
    "GReFELOutput": "grefel.model.grefel",
    "create_model": "grefel.model.grefel",
    "GReFELLoss": "grefel.model.losses",
    "LossTerms": "grefel.model.losses",
}

__getattr__ = lazy_exports(__name__, _LAZY)
