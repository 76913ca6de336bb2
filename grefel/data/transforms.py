"""Image transforms: the paper's heavy training augmentation and the eval resize (paper §4.1).

Both start from the decoded image of `grefel.contract.decode_image` (RGB uint8 (H, W, 3)) and
resize it with `grefel.contract.resize`, the one antialiased resize of every path: the eval
transform is exactly `grefel.contract.to_model_input`, what `grefel predict` feeds a backend.
The augmentation after that first resize uses torch tensor ops (affine_grid / grid_sample)
instead of torchvision: PyPI's torchvision wheels fail to import beside the CPU
torch 2.13.0 this project pins, and NVIDIA's Jetson torch wheels ship without a matching
torchvision, so depending on it would break training on both. Each step is a few lines and
tested (shape, range, determinism under a seeded generator).

    train: resize to 128 (the paper's 256 -> 224 crop ratio at our 112 scale), random crop 112,
           horizontal flip, rotation within +-10 degrees, colour jitter (brightness, contrast,
           saturation), random erasing.
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

__all__ = ["EvalTransform", "TrainTransform", "make_transforms"]

ImageLike = Union[np.ndarray, Image.Image]

# Luma weights (ITU-R BT.601), as PIL's "L" conversion uses.
_LUMA = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)


def _rgb_array(img: ImageLike) -> np.ndarray:
    """RGB uint8 (H, W, 3) from a decoded array or a PIL image of any mode."""
    if isinstance(img, Image.Image):
        return np.asarray(contract.to_rgb(img), dtype=np.uint8)
    return img


def _tensor(a: np.ndarray) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> float32 [3,H,W] in [0,1]."""
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))).float().div_(255.0)


def _uniform(lo: float, hi: float, g: Optional[torch.Generator]) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate [3,H,W] about its centre, reflecting at the borders."""
    a = math.radians(degrees)
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]])
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
    """Resize, random crop, flip, rotation, colour jitter, random erasing (paper §4.1).

    Args:
        size: output side (112).
        resize_to: side before cropping; default round(size * 256 / 224) = 128 at 112.
        flip_p: probability of a horizontal flip.
        max_degrees: rotation drawn uniformly in [-max_degrees, max_degrees].
        jitter: maximum relative change of brightness, contrast and saturation.
        erase_p: probability of erasing one box (area 2-20 %, aspect 0.3-3.3) to black.
    """

    def __init__(
        self,
        size: int = contract.INPUT_SIZE,
        resize_to: Optional[int] = None,
        flip_p: float = 0.5,
        max_degrees: float = 10.0,
        jitter: float = 0.3,
        erase_p: float = 0.25,
    ) -> None:
        self.size = size
        self.resize_to = resize_to if resize_to is not None else int(round(size * 256 / 224))
        self.flip_p = flip_p
        self.max_degrees = max_degrees
        self.jitter = jitter
        self.erase_p = erase_p

    def __call__(self, img: ImageLike, generator: Optional[torch.Generator] = None
                 ) -> torch.Tensor:
        g, s = generator, self.size
        x = _tensor(contract.resize(_rgb_array(img), self.resize_to))  # [3,R,R]
        top = int(torch.randint(0, self.resize_to - s + 1, (), generator=g))
        left = int(torch.randint(0, self.resize_to - s + 1, (), generator=g))
        x = x[:, top:top + s, left:left + s]  # [3,S,S]
        if float(torch.rand((), generator=g)) < self.flip_p:
            x = x.flip(-1)
        x = _rotate(x, _uniform(-self.max_degrees, self.max_degrees, g))
        j = self.jitter
        x = _color_jitter(x, *(_uniform(1 - j, 1 + j, g) for _ in range(3)))
        if float(torch.rand((), generator=g)) < self.erase_p:
            box = _erase_box(s, s, (0.02, 0.2), (0.3, 3.3), g)
            if box is not None:
                t, lft, eh, ew = box
                x[:, t:t + eh, lft:lft + ew] = 0.0
        return x.contiguous()

    def __repr__(self) -> str:
        return (f"TrainTransform(size={self.size}, resize_to={self.resize_to}, "
                f"flip_p={self.flip_p}, max_degrees={self.max_degrees}, jitter={self.jitter}, "
                f"erase_p={self.erase_p})")


def make_transforms(train: bool, image_size: int = contract.INPUT_SIZE):
    """The training augmentation (train=True) or the eval resize, at `image_size`."""
    return TrainTransform(image_size) if train else EvalTransform(image_size)
