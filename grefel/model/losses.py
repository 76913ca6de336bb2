"""GReFEL's training objective (paper eqs. 20-23).

    L_cls    = -sum_j y_j log L_final_j                     eq. 20, optionally label-smoothed and
                                                            class-weighted; mean over the batch
    L_a      = -mean_{pairs} (1 - exp(-||a - a'||^2 / D))   eq. 21, over all pairs of distinct
                                                            anchors: normalised by D and bounded
                                                            in [-1, 0], so it cannot run to -inf
    L_c      = mean_i min_k ||e_i - a_{y_i k}||^2 / D        eq. 22
    L_total  = l_cls L_cls + l_a L_a + l_c L_c              eq. 23

Eq. 21 as printed is unbounded below (ARBEx's version runs to minus infinity and has zero
gradient at its zero init); the saturating form keeps its gradient at small distances (slope 1
at 0, as the squared distance) and stops rewarding anchors that are already far apart.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import nn

from grefel.config import GReFELConfig
from grefel.model.grefel import GReFEL, GReFELOutput

__all__ = ["GReFELLoss", "LossTerms", "anchor_loss", "center_loss", "class_distribution_loss"]


class LossTerms(NamedTuple):
    total: torch.Tensor
    cls: torch.Tensor
    anchor: torch.Tensor
    center: torch.Tensor


def class_distribution_loss(
    probs: torch.Tensor,
    targets: torch.Tensor,
    class_weights: Optional[torch.Tensor] = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Eq. 20: negative log-likelihood of L_final. probs (B, C), targets (B,) int64 -> scalar."""
    log_p = probs.clamp_min(torch.finfo(probs.dtype).tiny).log()  # (B, C), guarded log
    nll = -log_p.gather(1, targets[:, None]).squeeze(1)  # (B,)
    if label_smoothing > 0:
        nll = (1 - label_smoothing) * nll - label_smoothing * log_p.mean(dim=-1)
    if class_weights is None:
        return nll.mean()
    w = class_weights.to(probs)[targets]  # (B,)
    return (w * nll).sum() / w.sum().clamp_min(torch.finfo(probs.dtype).eps)


def anchor_loss(anchors: torch.Tensor) -> torch.Tensor:
    """Eq. 21, normalised and bounded: anchors (C, K, D) -> scalar in [-1, 0]."""
    C, K, D = anchors.shape
    a = anchors.reshape(C * K, D)
    sq = (a[:, None, :] - a[None, :, :]).pow(2).sum(-1) / D  # (CK, CK)
    off_diagonal = ~torch.eye(C * K, dtype=torch.bool, device=a.device)
    return -(1.0 - torch.exp(-sq[off_diagonal])).mean()


def center_loss(
    embedding: torch.Tensor, targets: torch.Tensor, anchors: torch.Tensor
) -> torch.Tensor:
    """Eq. 22: squared distance of each embedding (B, D) to its class's nearest anchor, / D."""
    own = anchors[targets]  # (B, K, D)
    sq = (embedding[:, None, :] - own).pow(2).sum(-1)  # (B, K)
    return sq.min(dim=1).values.mean() / anchors.shape[-1]


class GReFELLoss(nn.Module):
    """L_total of eq. 23 with the weights of `cfg` (lambda_cls, lambda_anchor, lambda_center).

    Args:
        cfg: the model's configuration.
        class_weights: optional (C,) weights of eq. 20 (e.g. inverse class frequency).
        label_smoothing: optional smoothing of eq. 20's one-hot targets.
    """

    def __init__(
        self,
        cfg: GReFELConfig,
        class_weights: Optional[torch.Tensor] = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.label_smoothing = label_smoothing
        self.register_buffer("class_weights", class_weights, persistent=False)

    def forward(self, out: GReFELOutput, targets: torch.Tensor, model: GReFEL) -> LossTerms:
        cls = class_distribution_loss(out.probs, targets, self.class_weights, self.label_smoothing)
        anchors = model.anchors
        if anchors is None:
            zero = cls.new_zeros(())
            anchor = center = zero
        else:
            anchor = anchor_loss(anchors)
            center = center_loss(out.embedding, targets, anchors)
        c = self.cfg
        total = c.lambda_cls * cls + c.lambda_anchor * anchor + c.lambda_center * center
        return LossTerms(total, cls, anchor, center)
