"""Image transforms: the paper's heavy training augmentation and the eval resize (paper §4.1).

Both start from the decoded image of `grefel.contract.decode_image` (RGB uint8 (H, W, 3)) and
resize it with `grefel.contract.resize`, the one antialiased resize of every path: the eval
transform is exactly `grefel.contract.to_model_input`, what `grefel predict` feeds a backend.
The augmentation after that first resize uses torch tensor ops (affine_grid / grid_sample)
instead of torchvision: PyPI's torchvision wheels fail to import beside the CPU
torch 2.13.0 this project pins, and NVIDIA's Jetson torch wheels ship without a matching
torchvision, so depending on it would break training on both. Each step is a few lines and
tested (shape, range, determinism under a seeded generator).

    train: the eval resize to 112, then a random shift within +-8 px and a rotation within
           +-10 degrees (one affine warp, reflecting at the borders), horizontal flip, colour
           jitter (brightness, contrast, saturation), random erasing. The face keeps the
           scale it has at eval and in deployment (POSTER V2 likewise trains on
           `RandomCrop(224, padding=32)` of its eval resize); until 2026-12-04 the crop was
           112 of a 128 resize, so every training face was 1.14 x larger than any the model
           was evaluated or deployed on.
    eval:  antialiased resize to 112 (`grefel.contract.to_model_input`).

Every transform maps an RGB uint8 array (H, W, 3) (or a PIL image, converted by
`grefel.contract.to_rgb`) to a float32 tensor [3,S,S] in [0,1] and takes an optional
`torch.Generator` so a seeded call is reproducible.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from grefel import contract

__all__ = ["AUGMENT_POLICIES", "EvalTransform", "TrainTransform", "make_transforms"]

ImageLike = Union[np.ndarray, Image.Image]

# Luma weights (ITU-R BT.601), as PIL's "L" conversion uses.
_LUMA = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)


def _rgb_array(img: ImageLike) -> np.ndarray:
    """RGB uint8 (H, W, 3) from a decoded array or a PIL image of any mode."""
    if isinstance(img, Image.Image):
        return np.asarray(contract.to_rgb(img), dtype=np.uint8)
    return img


def _uniform(lo: float, hi: float, g: Optional[torch.Generator]) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _warp(x: torch.Tensor, degrees: float, dx: float, dy: float) -> torch.Tensor:
    """Rotate [3,H,W] about its centre by `degrees` and shift it by (dx, dy) pixels (right,
    down), reflecting at the borders; an integer shift without rotation moves pixels exactly."""
    a = math.radians(degrees)
    _, h, w = x.shape
    # affine_grid maps output to input coordinates in [-1, 1]: a shift of the content by +dx
    # pixels samples the input at -dx, i.e. -2 dx / W in normalised units.
    theta = torch.tensor([[math.cos(a), -math.sin(a), -2.0 * dx / w],
                          [math.sin(a), math.cos(a), -2.0 * dy / h]])
    grid = F.affine_grid(theta[None], [1, *x.shape], align_corners=False)  # [1,H,W,2]
    y = F.grid_sample(x[None], grid, mode="bilinear", padding_mode="reflection",
                      align_corners=False)
    return y[0]


def _color_jitter(x: torch.Tensor, b: float, c: float, s: float) -> torch.Tensor:
    """Brightness factor b, contrast factor c (about the mean grey), saturation factor s."""
    x = x * b
    grey = (x * _LUMA).sum(0, keepdim=True)  # [1,H,W]
    x = (x - grey.mean()) * c + grey.mean()
    grey = (x * _LUMA).sum(0, keepdim=True)
    x = (x - grey) * s + grey
    return x.clamp(0.0, 1.0)


def _erase_box(
    h: int, w: int, scale: Tuple[float, float], ratio: Tuple[float, float],
    g: Optional[torch.Generator],
) -> Optional[Tuple[int, int, int, int]]:
    """A random (top, left, height, width) box of area fraction in `scale`, or None (10 tries)."""
    for _ in range(10):
        area = _uniform(*scale, g) * h * w
        r = math.exp(_uniform(math.log(ratio[0]), math.log(ratio[1]), g))
        eh, ew = int(round(math.sqrt(area * r))), int(round(math.sqrt(area / r)))
        if 0 < eh < h and 0 < ew < w:
            top = int(torch.randint(0, h - eh + 1, (), generator=g))
            left = int(torch.randint(0, w - ew + 1, (), generator=g))
            return top, left, eh, ew
    return None


class EvalTransform:
    """`grefel.contract.to_model_input`: the antialiased resize to `size`, deterministic."""

    def __init__(self, size: int = contract.INPUT_SIZE) -> None:
        self.size = size

    def __call__(self, img: ImageLike, generator: Optional[torch.Generator] = None
                 ) -> torch.Tensor:
        return torch.from_numpy(contract.to_model_input(_rgb_array(img), self.size))  # [3,S,S]

    def __repr__(self) -> str:
        return f"EvalTransform(size={self.size})"


class TrainTransform:
    """Eval resize, random shift and rotation, flip, colour jitter, random erasing (§4.1).

    Args:
        size: output side (112).
        max_shift: shift drawn uniformly in [-max_shift, max_shift] pixels, each axis (whole
            pixels; the +-8 px of the former 128 -> 112 crop).
        flip_p: probability of a horizontal flip.
        max_degrees: rotation drawn uniformly in [-max_degrees, max_degrees].
        jitter: maximum relative change of brightness, contrast and saturation.
        erase_p: probability of erasing one box (area 2-20 %, aspect 0.3-3.3) to black.
    """

    def __init__(
        self,
        size: int = contract.INPUT_SIZE,
        max_shift: int = 8,
        flip_p: float = 0.5,
        max_degrees: float = 10.0,
        jitter: float = 0.3,
        erase_p: float = 0.25,
    ) -> None:
        self.size = size
        self.max_shift = max_shift
        self.flip_p = flip_p
        self.max_degrees = max_degrees
        self.jitter = jitter
        self.erase_p = erase_p

    def __call__(self, img: ImageLike, generator: Optional[torch.Generator] = None
                 ) -> torch.Tensor:
        g, s, m = generator, self.size, self.max_shift
        x = torch.from_numpy(contract.to_model_input(_rgb_array(img), s))  # [3,S,S], as eval
        dx, dy = (int(torch.randint(-m, m + 1, (), generator=g)) for _ in range(2))
        if float(torch.rand((), generator=g)) < self.flip_p:
            x = x.flip(-1)
        degrees = _uniform(-self.max_degrees, self.max_degrees, g)
        if degrees or dx or dy:
            x = _warp(x, degrees, dx, dy)
        j = self.jitter
        x = _color_jitter(x, *(_uniform(1 - j, 1 + j, g) for _ in range(3)))
        if float(torch.rand((), generator=g)) < self.erase_p:
            box = _erase_box(s, s, (0.02, 0.2), (0.3, 3.3), g)
            if box is not None:
                t, lft, eh, ew = box
                x[:, t:t + eh, lft:lft + ew] = 0.0
        return x.contiguous()

    def __repr__(self) -> str:
        return (f"TrainTransform(size={self.size}, max_shift={self.max_shift}, "
                f"flip_p={self.flip_p}, max_degrees={self.max_degrees}, jitter={self.jitter}, "
                f"erase_p={self.erase_p})")


# TrainTransform settings per augmentation policy (grefel.config.AUGMENT_POLICIES names them).
# "light": on muxspace/facial_expressions' real photos at a CPU budget the paper's augmentation
# kept the tiny model near chance for the first epochs (as on SynthFER:
# research/results/recipe_2026-12-04.md); a small shift, the flip and mild jitter do not.
AUGMENT_POLICIES = {
    "paper": {},
    "light": {"max_shift": 4, "max_degrees": 0.0, "jitter": 0.2, "erase_p": 0.0},
}


def make_transforms(train: bool, image_size: int = contract.INPUT_SIZE, policy: str = "paper"):
    """The training augmentation of `policy` (train=True) or the eval resize, at `image_size`."""
    if not train:
        return EvalTransform(image_size)
    return TrainTransform(image_size, **AUGMENT_POLICIES[policy])
