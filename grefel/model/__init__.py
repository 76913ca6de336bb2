"""GReFEL network, one file per stage of the paper's Figure 2."""

from grefel.model.grefel import GReFEL, GReFELOutput, create_model
from grefel.model.losses import GReFELLoss, LossTerms

__all__ = ["GReFEL", "GReFELLoss", "GReFELOutput", "LossTerms", "create_model"]
