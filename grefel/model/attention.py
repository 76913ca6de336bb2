"""The one attention primitive of the network: scaled dot-product attention over heads.

Both attentions of the paper call it (timm keeps one `Attention` primitive the same way):
the window cross-attention of eqs. 1-3 (`grefel.model.window_attention.WindowCrossAttention`,
landmark queries, image keys and values, a relative position bias) and the multi-head
self-attention of eqs. 7 and 16 (`grefel.model.fusion_vit.SelfAttention`, used by the fusion
ViT and the attentive correction). Each module keeps its own projections and state-dict keys;
only the math below is shared:

    o = softmax((q * scale) k^T + b) v, heads merged           eq. 2 (b = 0 without a bias)

q is scaled before the matmul so that q k^T stays in FP16 range. The softmax is along the key
axis of one window / one sample: no sample ever attends to another sample of the batch.
"""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["attend"]


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    bias: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """q, k, v: (B, h, N, d); bias broadcastable to (B, h, N, N) -> (B, N, h * d)."""
    _, h, N, d = q.shape
    attn = (q * scale) @ k.transpose(-2, -1)  # (B, h, N, N)
    if bias is not None:
        attn = attn + bias
    attn = attn.softmax(dim=-1)
    return (attn @ v).transpose(1, 2).reshape(-1, N, h * d)  # (B, N, C), heads merged
