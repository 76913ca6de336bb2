"""The assembled GReFEL network (paper Fig. 2): streams, cross-attention, fusion ViT, MLP head
and reliability balancing.

Upstream for the feature extractor: POSTER V2 `pyramid_trans_expr2` (Talented-Q/POSTER_V2),
without its ~14.5M dead parameters and without the landmark GDC head. Reliability balancing:
paper §3.2-3.3, see `grefel.model.reliability`.

Input contract: float32 (B, 3, 112, 112), RGB in [0, 1]; each stream's normalisation happens
inside `forward`, so PyTorch, ONNX and TensorRT share one input. `forward` returns inference
outputs only (losses live in `grefel.model.losses`), and no output of a sample depends on the
other samples of the batch in eval mode.
"""

from __future__ import annotations

from typing import Iterable, List, NamedTuple, Optional, Tuple

import torch
from torch import nn

from grefel.config import VARIANTS, GReFELConfig
from grefel.model.fusion_vit import FusionViT
from grefel.model.ir50 import IR50Stream
from grefel.model.mobilefacenet import MobileFaceNetTrunk
from grefel.model.reliability import (
    AnchorCorrection,
    AttentiveCorrection,
    PrimaryHead,
    balance,
    confidence,
)
from grefel.model.window_attention import CrossAttentionLevel

__all__ = ["GReFEL", "GReFELOutput", "create_model"]


class GReFELOutput(NamedTuple):
    """What `GReFEL.forward` returns (the same names are the ONNX outputs)."""

    probs: torch.Tensor  # (B, C) L_final, eq. 19: the prediction
    primary: torch.Tensor  # (B, C) l, eq. 9
    geometric: Optional[torch.Tensor]  # (B, C) t_g, eq. 15; None without anchors
    attentive: Optional[torch.Tensor]  # (B, C) t_a, eq. 17; None without attention
    confidence: torch.Tensor  # (B,) C_f(probs), eq. 10
    embedding: torch.Tensor  # (B, D) e, the pooled embedding the anchors live in


class GReFEL(nn.Module):
    """GReFEL: POSTER++-style cross-attention ViT plus reliability balancing.

    Args:
        cfg: the network's configuration (`GReFELConfig.preset("paper" | "tiny", ...)`).
    """

    def __init__(self, cfg: GReFELConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d1, d2, d3 = cfg.dims
        for name in ("image_mean", "image_std", "landmark_mean", "landmark_std"):
            value = torch.tensor(getattr(cfg, name), dtype=torch.float32).view(1, 3, 1, 1)
            self.register_buffer(name, value, persistent=False)

        self.landmark = MobileFaceNetTrunk((d1, d2), cfg.mfn_blocks, cfg.mfn_out)
        self.landmark_proj = nn.Conv2d(cfg.mfn_out, d3, 3, 1, 1)  # POSTER V2 `last_face_conv`
        self.image = IR50Stream(cfg.dims, cfg.ir_units)
        self.levels = nn.ModuleList(
            CrossAttentionLevel(dim, heads, win, dp, cfg.layer_scale_init, cfg.mlp_ratio)
            for dim, heads, win, dp in zip(cfg.dims, cfg.heads, cfg.windows, cfg.drop_path)
        )
        tokens_per_level = (cfg.image_size // 16) ** 2
        self.fusion = FusionViT(
            cfg.dims, cfg.embed_dim, cfg.vit_depth, cfg.vit_heads, cfg.mlp_ratio, tokens_per_level
        )
        for part in (self.levels, self.fusion):
            part.apply(_init_linear)
        # The parts every Table 2 variant has are created (and initialised) before the ones a
        # variant adds: under one torch seed all variants start from the same shared weights.
        self.head = PrimaryHead(cfg.embed_dim, cfg.num_classes, cfg.head_hidden, cfg.head_dropout)
        self.anchor = (
            AnchorCorrection(cfg.num_classes, cfg.anchors_per_class, cfg.embed_dim, cfg.delta)
            if cfg.use_anchors
            else None
        )
        self.attentive = (
            AttentiveCorrection(cfg.embed_dim, cfg.attn_heads, cfg.num_classes)
            if cfg.use_attention
            else None
        )
        if self.attentive is not None:
            self.attentive.apply(_init_linear)
        self.frozen: Tuple[str, ...] = ()
        self.set_frozen(cfg.frozen)

    @property
    def anchors(self) -> Optional[nn.Parameter]:
        """The anchors a^{ij}, (C, K, D), or None when the anchor correction is off."""
        return self.anchor.anchors if self.anchor is not None else None

    def set_frozen(self, parts: Iterable[str]) -> None:
        """Freeze pretrained parts ("landmark", "image"): no gradient, BatchNorm in eval mode."""
        parts = tuple(parts)
        unknown = set(parts) - {"landmark", "image"}
        if unknown:
            raise ValueError(f"unknown parts to freeze: {sorted(unknown)}")
        self.frozen = parts
        for module in self._pretrained_modules(("landmark", "image")):
            module.requires_grad_(True)
        for module in self._pretrained_modules(parts):
            module.requires_grad_(False)
        self.train(self.training)

    def _pretrained_modules(self, parts: Iterable[str]) -> List[nn.Module]:
        modules: List[nn.Module] = []
        if "landmark" in parts:
            modules.append(self.landmark)
        if "image" in parts:
            im = self.image
            modules += [im.input_layer, im.body1, im.body2, im.body3]
        return modules

    def train(self, mode: bool = True) -> GReFEL:
        super().train(mode)
        for module in self._pretrained_modules(self.frozen):
            module.eval()  # frozen BatchNorm statistics must not drift while the rest trains
        return self

    def forward_streams(
        self, images: torch.Tensor
    ) -> Tuple[Tuple[torch.Tensor, ...], Tuple[torch.Tensor, ...]]:
        """images (B, 3, 112, 112) in [0, 1] -> the two pretrained streams' maps (Fig. 2, left).

        Returns (image maps, landmark maps): (B, d1, 28, 28), (B, d2, 14, 14), (B, d3, 7, 7) of
        the IR-50 stages, and (B, d1, 28, 28), (B, d2, 14, 14), (B, mfn_out, 7, 7) of the
        MobileFaceNet trunk (level 3 before `landmark_proj`, which trains with the fusion).
        """
        x_img = (images - self.image_mean) / self.image_std
        x_lm = (images - self.landmark_mean) / self.landmark_std
        return tuple(self.image(x_img)), tuple(self.landmark(x_lm))

    def fuse(
        self, imgs: Tuple[torch.Tensor, ...], lms: Tuple[torch.Tensor, ...]
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The streams' maps (`forward_streams`) -> fused tokens (B, 148, D), embedding (B, D):
        window cross-attention per level (eqs. 1-5), then the fusion ViT (eqs. 6-8)."""
        l1, l2, l3 = lms
        fused = []
        for level, img, lm in zip(self.levels, imgs, (l1, l2, self.landmark_proj(l3))):
            _, C, H, W = img.shape
            tokens = level(img, lm)  # (B, H*W, C)
            fused.append(tokens.transpose(1, 2).reshape(-1, C, H, W))  # (B, C, H, W)
        return self.fusion(*fused)

    def forward_features(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """images (B, 3, 112, 112) in [0, 1] -> fused tokens (B, 148, D), embedding e (B, D)."""
        return self.fuse(*self.forward_streams(images))

    def forward_head(self, tokens: torch.Tensor, embedding: torch.Tensor) -> GReFELOutput:
        """Eqs. 9-19 on the fused tokens (B, N, D) and the embedding (B, D)."""
        primary = self.head(embedding).softmax(dim=-1)  # eq. 9
        geometric = self.anchor(embedding) if self.anchor is not None else None
        attentive = self.attentive(tokens) if self.attentive is not None else None
        probs = balance(primary, geometric, attentive)
        return GReFELOutput(probs, primary, geometric, attentive, confidence(probs), embedding)

    def forward(self, images: torch.Tensor) -> GReFELOutput:
        return self.forward_head(*self.forward_features(images))


def _init_linear(module: nn.Module) -> None:
    """ViT-style init for the transformer parts: trunc-normal(0.02) weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def create_model(preset: str = "paper", variant: str = "both", **overrides) -> GReFEL:
    """A GReFEL for one preset and one row of the paper's Table 2.

    Args:
        preset: "paper" or "tiny".
        variant: "no_rb", "anchors", "mhsa" or "both" (Table 2).
        overrides: further `GReFELConfig` fields, e.g. num_classes=8.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {sorted(VARIANTS)}")
    return GReFEL(GReFELConfig.preset(preset, **{**VARIANTS[variant], **overrides}))
