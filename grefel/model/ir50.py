"""Image stream: IR-50 stages 1-3 (paper §3.1, Fig. 2 "image backbone").

Upstream: face.evoLVe `backbone/model_irse.py` (IR-50, `bottleneck_IR` units), as truncated by
POSTER V2 (`models/ir50.py`: `input_layer`, `body1/2/3`; the 512-channel fourth stage and the
`output_layer` are not part of the model). The three stage outputs are reduced by one strided
3x3 convolution each (POSTER V2's `conv1/2/3`) so that they line up with the landmark maps:

    112x112 -> input_layer 64x112x112 -> stage1 64x56x56 -> stage2 128x28x28 -> stage3 256x14x14
    reduce: 64x28x28, 128x14x14, 256x7x7       (paper preset; widths are `dims`)
"""

from __future__ import annotations

from typing import List, Sequence

import torch
from torch import nn

__all__ = ["BottleneckIR", "IR50Stream"]


class BottleneckIR(nn.Module):
    """One `bottleneck_IR` unit: BN-Conv3x3-PReLU-Conv3x3(stride)-BN plus a shortcut.

    Args:
        in_chs: input channels.
        out_chs: output channels.
        stride: stride of the second convolution (and of the shortcut).
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        # Upstream's shortcut is MaxPool2d(1, stride) or Conv2d(1x1, stride) + BN. Both only
        # read every stride-th pixel, so eager forward subsamples by slicing first and the
        # shortcut runs at stride 1: same values and state-dict keys, no pooling pass, and the
        # 1x1 conv stays on oneDNN's fast path (strided 1x1 convs fall back to a slow im2col
        # kernel). The ONNX export writes upstream's strided form instead (`_strided_shortcut`):
        # a strided Slice has no blocked-layout (NCHWc) kernel in ONNX Runtime, which then
        # reorders the map out of and back into its blocked layout around every such Slice.
        if in_chs == out_chs:
            self.shortcut_layer: nn.Module = nn.Identity()
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_chs, out_chs, 1, 1, bias=False), nn.BatchNorm2d(out_chs)
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_chs),
            nn.Conv2d(in_chs, out_chs, 3, 1, 1, bias=False),
            nn.PReLU(out_chs),
            nn.Conv2d(out_chs, out_chs, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_chs),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        if s > 1 and torch.onnx.is_in_onnx_export():
            return self.res_layer(x) + self._strided_shortcut(x)
        return self.res_layer(x) + self.shortcut_layer(x[:, :, ::s, ::s] if s > 1 else x)

    def _strided_shortcut(self, x: torch.Tensor) -> torch.Tensor:
        """The shortcut as upstream computes it: MaxPool(1, stride), or the 1x1 conv with the
        stride then BN. The same values as slicing first (a 1x1 window reads one pixel)."""
        s = self.stride
        if isinstance(self.shortcut_layer, nn.Identity):
            return nn.functional.max_pool2d(x, kernel_size=1, stride=s)
        conv, bn = self.shortcut_layer[0], self.shortcut_layer[1]
        return bn(nn.functional.conv2d(x, conv.weight, None, stride=s))


def _stage(in_chs: int, out_chs: int, units: int) -> nn.Sequential:
    """face.evoLVe `get_block`: the first unit strides by 2, the rest keep the size."""
    blocks = [BottleneckIR(in_chs, out_chs, 2)]
    blocks += [BottleneckIR(out_chs, out_chs, 1) for _ in range(units - 1)]
    return nn.Sequential(*blocks)


class IR50Stream(nn.Module):
    """IR-50 stages 1-3 and the per-level reduction convolutions.

    Args:
        dims: channels of the three stages (64, 128, 256 in IR-50).
        units: units per stage (3, 4, 14 in IR-50).
    """

    def __init__(self, dims: Sequence[int] = (64, 128, 256), units: Sequence[int] = (3, 4, 14)):
        super().__init__()
        d1, d2, d3 = dims
        self.input_layer = nn.Sequential(
            nn.Conv2d(3, d1, 3, 1, 1, bias=False), nn.BatchNorm2d(d1), nn.PReLU(d1)
        )
        self.body1 = _stage(d1, d1, units[0])
        self.body2 = _stage(d1, d2, units[1])
        self.body3 = _stage(d2, d3, units[2])
        # POSTER V2 conv1/2/3: halve each map so the levels are 28, 14, 7 at 112 input.
        self.reduce = nn.ModuleList(nn.Conv2d(d, d, 3, 2, 1) for d in (d1, d2, d3))

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """x: (B, 3, H, W) normalised image -> [(B, d1, H/4, W/4), (B, d2, H/8), (B, d3, H/16)]."""
        x = self.input_layer(x)  # (B, d1, H, W)
        f1 = self.body1(x)  # (B, d1, H/2, W/2)
        f2 = self.body2(f1)  # (B, d2, H/4, W/4)
        f3 = self.body3(f2)  # (B, d3, H/8, W/8)
        return [conv(f) for conv, f in zip(self.reduce, (f1, f2, f3))]
