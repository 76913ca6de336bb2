"""Primary label distribution and reliability balancing (paper eqs. 9-19).

No upstream code matches the paper here: ARBEx (`takihasan/ARBEx`, the authors' predecessor)
attends across the minibatch, zero-initialises the anchors and divides the entropy without a
guard. This file follows the paper with the readings recorded in docs/model.md:

    l    = softmax(MLP(e))                                     eq. 9   (primary)
    C_f  = 1 - H(p) / log C                                    eqs. 10-11 (entropy / log C, so a
                                                               uniform p has confidence 0)
    d_ij = ||e - a_ij||_2                                      eq. 13
    s_ij = softmax_{all C*K anchors}(-d_ij / delta)            eq. 14
    t_g  = sum_j s_ij, per class i                             eq. 15
    t_a  = softmax(W MHSA(tokens) pooled)                      eqs. 16-17, within one sample
    t    = (c_g t_g + c_a t_a) / (c_g + c_a)                   eq. 18
    L    = (c_l l + c_t t) / (c_l + c_t)                       eq. 19  (final prediction)

Every log, division and square root is guarded so that one-hot and uniform inputs give finite
results in FP32 and FP16: logs of probabilities clamp at the dtype's smallest normal number,
confidence-weighted means add the dtype's epsilon to every weight (equal weights when both
confidences are 0), and distances take the root of a clamped sum of squares.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from grefel.model.fusion_vit import SelfAttention

__all__ = [
    "AnchorCorrection",
    "AttentiveCorrection",
    "PrimaryHead",
    "balance",
    "confidence",
    "confidence_weighted",
]


def confidence(p: torch.Tensor) -> torch.Tensor:
    """Eqs. 10-11: C_f(p) = 1 - H(p) / log C, in [0, 1]. p: (B, C) -> (B,)."""
    tiny = torch.finfo(p.dtype).tiny
    entropy = -(p * p.clamp_min(tiny).log()).sum(dim=-1)  # 0 * log(tiny) = 0 for one-hot p
    return (1.0 - entropy / math.log(p.shape[-1])).clamp(0.0, 1.0)


def confidence_weighted(
    a: torch.Tensor, ca: torch.Tensor, b: torch.Tensor, cb: torch.Tensor
) -> torch.Tensor:
    """Eqs. 18/19: (ca a + cb b) / (ca + cb) with a guard; a, b: (B, C), ca, cb: (B,)."""
    eps = torch.finfo(a.dtype).eps
    wa = (ca + eps) / (ca + cb + 2 * eps)  # in (0, 1); 1/2 when both confidences are 0
    wa = wa.unsqueeze(-1)
    return wa * a + (1.0 - wa) * b


class PrimaryHead(nn.Module):
    """Eq. 9's MLP f: hidden layers Linear-ReLU-BatchNorm-Dropout, then Linear to C logits.

    Args:
        in_dim: embedding width D.
        num_classes: C.
        hidden: widths of the hidden layers ((64, 64) in the paper).
        dropout: drop probability of every hidden layer (0.5 in the paper).
    """

    def __init__(
        self, in_dim: int, num_classes: int, hidden: Sequence[int] = (64, 64), dropout: float = 0.5
    ) -> None:
        super().__init__()
        layers = []
        width = in_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.BatchNorm1d(h), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        """e: (B, D) -> logits (B, C)."""
        return self.net(e)


class AnchorCorrection(nn.Module):
    """Geometric correction t_g from K learnable anchors per class (eqs. 12-15).

    Args:
        num_classes: C.
        anchors_per_class: K.
        dim: embedding width D.
        delta: softmax steepness of eq. 14.
    """

    def __init__(self, num_classes: int, anchors_per_class: int, dim: int, delta: float = 1.0):
        super().__init__()
        self.delta = delta
        # Small random anchors: equal (zero) anchors give a uniform t_g and no anchor-loss gradient.
        self.anchors = nn.Parameter(torch.randn(num_classes, anchors_per_class, dim) * 0.02)

    def distances(self, e: torch.Tensor) -> torch.Tensor:
        """Eq. 13: Euclidean distance of e (B, D) to every anchor -> (B, C, K)."""
        diff = e[:, None, None, :] - self.anchors.unsqueeze(0)  # (B, C, K, D)
        return diff.pow(2).sum(-1).clamp_min(torch.finfo(e.dtype).tiny).sqrt()

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        """e: (B, D) -> t_g (B, C), a distribution over classes."""
        C, K = self.anchors.shape[:2]
        d = self.distances(e)  # (B, C, K)
        s = (-d / self.delta).reshape(-1, C * K).softmax(dim=-1)  # eq. 14, one softmax over C*K
        return s.reshape(-1, C, K).sum(dim=-1)  # eq. 15: m^{ij} is one-hot in class i


class AttentiveCorrection(nn.Module):
    """Attentive correction t_a: MHSA over one sample's own fused tokens (eqs. 16-17).

    Self-attention runs within each sample's token sequence, never across the batch (the
    paper's requirement; ARBEx attends across the minibatch). The attended tokens are averaged
    and projected to C classes.

    Args:
        dim: token width D (d_model).
        heads: n_heads; head size d_model / n_heads (64 in the paper).
        num_classes: C.
    """

    def __init__(self, dim: int, heads: int, num_classes: int) -> None:
        super().__init__()
        self.attn = SelfAttention(dim, heads)  # W^(Q,K,V)_i and W_o of eq. 16
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (B, N, D) -> t_a (B, C)."""
        pooled = self.attn(tokens).mean(dim=1)  # (B, D)
        return self.classifier(pooled).softmax(dim=-1)  # eq. 17


def balance(
    primary: torch.Tensor, geometric: Optional[torch.Tensor], attentive: Optional[torch.Tensor]
) -> torch.Tensor:
    """Eqs. 18-19: the final distribution from l and whichever corrections are on."""
    if geometric is None and attentive is None:
        return primary
    if geometric is not None and attentive is not None:
        t = confidence_weighted(geometric, confidence(geometric), attentive, confidence(attentive))
    else:
        t = geometric if geometric is not None else attentive
    return confidence_weighted(primary, confidence(primary), t, confidence(t))
