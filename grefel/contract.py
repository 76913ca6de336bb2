"""The model's interface, from pixels to probabilities: one torch-free module (numpy + PIL).

Every path that turns a file into model input calls this module, so what `grefel eval` measures
is what `grefel predict` and an engine serve (docs/contract.md):

    dataset eval / train   grefel.data.datasets.load_image -> decode_image, crop_box
                           grefel.data.transforms (eval: to_model_input; train: resize first)
    --align-faces detect   grefel.align_data -> grefel.pipeline.Pipeline.prepare, as predict
    predict / bench        grefel.runtime.preprocess -> decode_image, square_crop, to_model_input
    FP16 gate              export.fp16.gate_images -> load_model_input
    export / runtime       INPUT_NAME, INPUT_SHAPE, OUTPUTS, input_spec(), the engine sidecar
                           (engine_sidecar_doc / read_engine_sidecar), the TensorRT targets
                           (TENSORRT_TARGETS) and their opset (opset_for_target)

Input: `images`, float32 (N, 3, 112, 112), NCHW, RGB, values in [0, 1]. 112 is what both
POSTER V2 streams really see (they decimate 224 to 112 inside forward); the resize to 112 is done
once, here. Per-stream normalisation is inside the model.

Preprocessing of one file:
    1. decode with PIL, refusing images of more than `max_pixels()` pixels from the header,
       before any pixel is decoded (decompression bombs); video and camera frames are held to
       the same limit from the capture's frame size (`check_pixels`). The limit is the
       environment variable GREFEL_MAX_PIXELS (default 89,478,485, PIL's own default; 0 = no
       limit), which a command's `--max-pixels` sets (`set_max_pixels`).
    2. EXIF orientation applied (tags 2-8).
    3. mode -> 8-bit RGB: grey and 1-bit replicated; 16-bit integer grey (I;16*, I) scaled by
       1/257 (65535 -> 255) and clipped; float grey (F) taken as [0, 1] when its maximum is <= 1,
       else as 0-255; palette, CMYK and YCbCr through PIL's conversion; any alpha (RGBA, LA, PA,
       palette transparency) composited over white.
    4. crop: a dataset's face box (`crop_box`, clipped to the image), or predict's square face
       crop with a margin (`square_crop`, the border replicated outside the image), or, where
       facial keypoints are known, the similarity warp of the face onto the canonical 5-point
       template at 112 px (`align_face`); none for aligned faces.
    5. antialiased resize to 112 x 112: PIL's bilinear filter, whose support grows with the
       reduction factor (a triangle low-pass when shrinking, plain bilinear when enlarging) on
       uint8, the same function for every path and for the training augmentation's first resize.
    6. uint8 HWC -> float32 CHW / 255.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from grefel.errors import GrefelError
from grefel.fileio import display_path

__all__ = [
    "CHANNEL_ORDER",
    "ENGINE_SIDECAR_FORMAT",
    "INPUT_DTYPE",
    "INPUT_NAME",
    "INPUT_RANGE",
    "INPUT_SHAPE",
    "INPUT_SIZE",
    "MAX_PIXELS_ENV",
    "OPSET",
    "OPSET_DECOMPOSED_LAYERNORM",
    "OPSET_RANGE",
    "OPTIONAL_OUTPUTS",
    "OUTPUTS",
    "ALIGN_TEMPLATE",
    "AUTO_TARGET_WITHOUT_TENSORRT",
    "Box",
    "ClassNamesError",
    "EngineSidecar",
    "ImageError",
    "SidecarError",
    "TENSORRT_TARGETS",
    "TensorRTTarget",
    "align_face",
    "align_template",
    "check_class_names",
    "crop_box",
    "decode_image",
    "decode_image_bytes",
    "engine_sidecar_doc",
    "input_spec",
    "load_model_input",
    "check_pixels",
    "max_pixels",
    "set_max_pixels",
    "opset_for_target",
    "opset_rule",
    "target_for_version",
    "read_engine_sidecar",
    "resize",
    "sidecar_classes",
    "similarity_transform",
    "square_crop",
    "to_model_input",
    "to_rgb",
]

# --- the tensor interface ------------------------------------------------------------------------

INPUT_NAME = "images"
INPUT_SIZE = 112
INPUT_SHAPE: Tuple[int, int, int] = (3, INPUT_SIZE, INPUT_SIZE)  # per sample, NCHW
INPUT_DTYPE = "float32"
INPUT_RANGE: Tuple[float, float] = (0.0, 1.0)
CHANNEL_ORDER = "RGB"
OUTPUTS: Tuple[str, ...] = ("probs", "primary", "confidence")  # every exported graph has these
OPTIONAL_OUTPUTS: Tuple[str, ...] = ("embedding",)

RESIZE = "PIL bilinear, antialiased (filter support scaled by the reduction), on uint8"

Box = Tuple[int, int, int, int]  # x1, y1, x2, y2 in pixels, x2/y2 exclusive


def input_spec() -> Dict[str, Any]:
    """The input contract as data: carried in ONNX metadata, checkpoint and engine sidecars."""
    return {
        "name": INPUT_NAME,
        "shape": ["batch", *INPUT_SHAPE],
        "dtype": INPUT_DTYPE,
        "layout": "NCHW",
        "color": CHANNEL_ORDER,
        "range": list(INPUT_RANGE),
        "normalisation": "inside the model (per-stream mean/std)",
        "resize": f"to {INPUT_SIZE}x{INPUT_SIZE} after the face crop: {RESIZE}",
        "exif_orientation": True,
        "alpha": "composited over white",
    }


class ClassNamesError(GrefelError, ValueError):
    """Class names that cannot label a model's outputs; the message names their file."""


def check_class_names(names: Any, source: Union[str, Path], width: Optional[int] = None,
                      fix: str = "") -> Tuple[str, ...]:
    """`names` as a tuple, checked once for every place class names come from (ONNX metadata,
    engine / checkpoint sidecars, a checkpoint's config, classes.txt): a list of strings, none
    empty, none holding a control or format character (a byte-order mark, a tab, a newline),
    no two equal after stripping spaces or in all but case, and exactly `width` of them when
    the model's output width is known. Else a ClassNamesError naming `source`, ending with
    `fix` (what to do).

    A wrong list is never used: records keyed by these names would silently lose or merge
    classes (5 names for 7 outputs; "happy" twice) or carry a name no one can type
    ("\ufeffneutral" from a classes.txt saved with a BOM)."""
    import unicodedata

    where, tail = display_path(source), f"; {fix}" if fix else ""
    if isinstance(names, (str, bytes)) or not isinstance(names, (list, tuple)) or not all(
            isinstance(n, str) for n in names):
        raise ClassNamesError(f"{where}: class names must be a list of names, got "
                              f"{names!r:.120}{tail}")
    names = tuple(names)
    problems = []
    if width is not None and len(names) != width:
        problems.append(f"{len(names)} class names for {width} model outputs")
    empty = [i for i, n in enumerate(names) if not n.strip()]
    if empty:
        problems.append(f"empty name(s) at position(s) {', '.join(map(str, empty))}")
    odd = [n for n in names if any(unicodedata.category(c) in ("Cc", "Cf") for c in n)]
    if odd:
        problems.append("control or invisible character(s) in " + ", ".join(map(ascii, odd))
                        + " (a byte-order mark or a tab?)")
    stripped = [n.strip() for n in names if n.strip()]
    twice = sorted({n for n in stripped if stripped.count(n) > 1})
    if twice:
        problems.append(f"name(s) given twice: {', '.join(twice)}")
    folded = [n.casefold() for n in stripped]  # "neutral" and "Neutral": one class, typed twice
    cased = sorted({n for n, f in zip(stripped, folded) if folded.count(f) > 1} - set(twice))
    if cased:
        problems.append(f"name(s) that differ only in case: {', '.join(cased)}")
    if problems:
        raise ClassNamesError(f"{where}: {'; '.join(problems)} (class names: "
                              f"{', '.join(map(repr, names))}){tail}")
    return names


# --- TensorRT targets and the ONNX opset ----------------------------------------------------------

# The TorchScript exporter (`dynamo=False`, docs/tensorrt.md) writes opsets 13 to 20: what
# `grefel export --opset N` accepts.
OPSET_RANGE: Tuple[int, int] = (13, 20)
# LayerNormalization is an ONNX op from opset 17 on: one node that TensorRT computes in FP32.
OPSET = 17
# The opset before it, for a parser without a LayerNormalization importer (LayerNorm exported
# decomposed: ReduceMean, Sub, Pow, Sqrt, Div).
OPSET_DECOMPOSED_LAYERNORM = 16


@dataclass(frozen=True)
class TensorRTTarget:
    """One TensorRT version an export is built and linted for (`grefel export --target`)."""

    description: str
    since: Tuple[int, int]  # the oldest TensorRT (major, minor) that `--target auto` maps here
    op_table: Optional[str]  # its entry in export's ONNX-TensorRT op table; None: the latest
    layernorm: bool = True  # whether its ONNX parser imports LayerNormalization (opset 17)


# Every target, oldest first: the one list that export's lint, `--target auto`, the CLI's
# choices and the opset rule read.
TENSORRT_TARGETS: Dict[str, TensorRTTarget] = {
    "trt8.5": TensorRTTarget("TensorRT 8.5 (JetPack 5.1.x, Xavier and Orin)", (0, 0), "8.5",
                             layernorm=False),
    "trt8.6": TensorRTTarget("TensorRT 8.6 (JetPack 6.0; desktop 8.6.1)", (8, 6), "8.6"),
    "trt10": TensorRTTarget("TensorRT 10.0-10.3 (JetPack 6.1/6.2)", (9, 0), "10.0-10.1"),
    # the op table for 10.12-10.16 is the 10.15 one
    "trt10.15": TensorRTTarget("TensorRT 10.12-10.16 (JetPack 7.0/7.1 ships 10.13)", (10, 12),
                               "10.15"),
    "trt11": TensorRTTarget("TensorRT 11.x (JetPack 7.2.2+)", (11, 0), None),
}


# Where no TensorRT is installed, `grefel export --target auto` builds for this one (and lints
# every target).
AUTO_TARGET_WITHOUT_TENSORRT = "trt10"


def opset_for_target(target: str) -> int:
    """ONNX opset for a TensorRT target (`TENSORRT_TARGETS`): `OPSET_DECOMPOSED_LAYERNORM` (16)
    for a parser with no LayerNormalization importer (TensorRT 8.5: LayerNorm is exported
    decomposed), else `OPSET` (17: one LayerNormalization node that TensorRT computes in FP32)."""
    known = TENSORRT_TARGETS.get(target)
    return OPSET if known is None or known.layernorm else OPSET_DECOMPOSED_LAYERNORM


def opset_rule() -> str:
    """`opset_for_target` in words, for help text and messages: "trt8.5: 16, else 17"."""
    special = [f"{t}: {opset_for_target(t)}" for t in TENSORRT_TARGETS
               if opset_for_target(t) != OPSET]
    return ", ".join([*special, f"else {OPSET}"])


def target_for_version(major: int, minor: int) -> str:
    """The target of an installed TensorRT `major.minor`: the newest whose `since` it reaches."""
    return [t for t, spec in TENSORRT_TARGETS.items() if (major, minor) >= spec.since][-1]


# --- decoding ------------------------------------------------------------------------------------

MAX_PIXELS_ENV = "GREFEL_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 89_478_485  # PIL's Image.MAX_IMAGE_PIXELS default (1 GiB / 4 / 3)

# EXIF orientation tag (0x0112) value -> the transpose that makes the image upright.
_EXIF_ORIENTATION = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class ImageError(GrefelError, ValueError):
    """A file that is not a decodable image (or is over the pixel limit); names the file."""


def max_pixels() -> int:
    """The pixel limit every decoder applies: $GREFEL_MAX_PIXELS, default 89,478,485; 0 = none."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        value = -1
    if value < 0:
        raise ImageError(f"{MAX_PIXELS_ENV}={raw!r}: expected a pixel count (an integer >= 0; "
                         "0 = no limit)")
    return value


def set_max_pixels(limit: int) -> None:
    """Set the pixel limit of this process and its children (a CLI's `--max-pixels`): every
    decoder reads it through `max_pixels()`. 0 = no limit."""
    if int(limit) < 0:
        raise ImageError(f"pixel limit {limit}: expected an integer >= 0 (0 = no limit)")
    os.environ[MAX_PIXELS_ENV] = str(int(limit))


def check_pixels(source: Union[str, Path], size: Tuple[int, int],
                 limit: Optional[int] = None) -> None:
    """ImageError naming `source` when a `(width, height)` frame is over the pixel limit
    (`max_pixels()` when `limit` is None): images from their header, video and camera frames
    from the capture's frame size, each before any pixel is decoded."""
    w, h = (int(v) for v in size)
    limit = max_pixels() if limit is None else limit
    if limit and w * h > limit:
        raise ImageError(
            f"{source}: {w}x{h} = {w * h:,} pixels is over the limit of {limit:,} (a possible "
            f"decompression bomb); to decode it, raise the limit: --max-pixels {w * h} "
            f"(or {MAX_PIXELS_ENV}={w * h})"
        )



def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB (step 3 of the module docstring)."""
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        a = np.asarray(im, dtype=np.float64)
        if im.mode == "F":
            scale = 255.0 if a.size and float(np.nanmax(a)) <= 1.0 else 1.0
        else:
            scale = 255.0 / 65535.0
        a = np.nan_to_num(a * scale, nan=0.0, posinf=255.0, neginf=0.0)
        im = Image.fromarray(np.rint(a).clip(0, 255).astype(np.uint8), "L")
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        im.mode == "P" and "transparency" in im.info
    )
    if has_alpha:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def decode_image(path: Union[str, Path]) -> np.ndarray:
    """Decode an image file -> RGB uint8 (H, W, 3), upright (EXIF), under the pixel limit.

    Raises ImageError naming the file: missing, unreadable, not an image, or too many pixels.
    """
    return _decode(path, display_path(path))  # a non-UTF-8 file name, escaped


def decode_image_bytes(data: bytes, name: str = "image bytes") -> np.ndarray:
    """Encoded image bytes (e.g. a `grefel serve` request) -> RGB uint8 (H, W, 3): the same
    steps and pixel limit as `decode_image`; ImageError messages start with `name`."""
    if not data:
        raise ImageError(f"{name}: empty (no image bytes)")
    return _decode(io.BytesIO(bytes(data)), name)


def _decode(path: Union[str, Path, IO[bytes]], name: Union[str, Path]) -> np.ndarray:
    """decode_image's steps 1-3 and EXIF for a file path or a binary stream; errors name `name`."""
    limit = max_pixels()
    pil_limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            # Our limit governs (one message for every decoder): PIL's own check is off while
            # the header is read and the size checked, and back on before any pixel is decoded.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = None
            with Image.open(path) as im:
                Image.MAX_IMAGE_PIXELS = pil_limit
                check_pixels(name, im.size, limit)
                orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
                im.load()
                rgb = to_rgb(im)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{name}: file not found") from None
    except IsADirectoryError:
        raise ImageError(f"{name}: a folder, not an image file") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name}: {exc}; to decode it, raise --max-pixels "
                         f"(or {MAX_PIXELS_ENV})") from None
    except PermissionError as exc:
        raise ImageError(f"{name}: cannot read ({exc.strerror or exc})") from None
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error...
        raise ImageError(f"{name}: not a decodable image ({exc})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = pil_limit
    if orientation in _TRANSPOSE:
        rgb = rgb.transpose(_TRANSPOSE[orientation])
    return np.asarray(rgb, dtype=np.uint8).copy()


# --- crop and resize -----------------------------------------------------------------------------


def crop_box(image: np.ndarray, box: Box) -> np.ndarray:
    """image[y1:y2, x1:x2] with the box clipped to the image (a dataset's face box)."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (int(v) for v in box)
    x1, x2 = min(max(x1, 0), w), min(max(x2, 0), w)
    y1, y2 = min(max(y1, 0), h), min(max(y2, 0), h)
    if x2 <= x1 or y2 <= y1:
        return image
    return image[y1:y2, x1:x2]


def square_crop(image: np.ndarray, box: Box, margin: float = 0.2) -> np.ndarray:
    """A square crop around `box`, grown by `margin` of its side on every side; parts outside
    the image replicate the border. RGB uint8 (H, W, 3) -> (S, S, 3)."""
    x1, y1, x2, y2 = box
    side = max(x2 - x1, y2 - y1) * (1.0 + 2.0 * margin)
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
    s = max(int(round(side)), 1)
    h, w = image.shape[:2]
    pad = max(0, -left, -top, left + s - w, top + s - h)
    if pad:
        image = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    return image[top + pad : top + pad + s, left + pad : left + pad + s]


# --- alignment (docs/contract.md, "Alignment") ----------------------------------------------------

# The canonical 5-point template of aligned 112 x 112 face crops (face.evoLVe's
# REFERENCE_FACIAL_POINTS for 96 x 112 shifted 8 px right for the square crop; the InsightFace /
# ArcFace template): the eye on the left of the image, the other eye, the nose tip, the mouth
# corner on the left, the other mouth corner; x, y in pixels of the 112 px crop.
ALIGN_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)
# Keypoint layouts a detector may give, as rows of the template: 5 points, or 4 where the
# detector gives the mouth centre (BlazeFace: eyes, nose tip, mouth centre) = the mean of the
# two template corners.
_LAYOUTS = {5: ALIGN_TEMPLATE, 4: np.vstack([ALIGN_TEMPLATE[:3], ALIGN_TEMPLATE[3:].mean(axis=0)])}


def align_template(points: int = 5, size: int = INPUT_SIZE, margin: float = 0.0) -> np.ndarray:
    """Template points (points, 2) for a `size` px crop; `margin` > 0 shrinks the face toward
    the centre by 1 / (1 + 2 margin), i.e. adds `margin` of the face's side on every side."""
    if points not in _LAYOUTS:
        raise ValueError(f"alignment takes 5 or 4 keypoints (eyes, nose, mouth), got {points}")
    if margin < 0:
        raise ValueError(f"the alignment margin must be >= 0, got {margin}")
    centre = INPUT_SIZE / 2.0
    t = (_LAYOUTS[points] - centre) / (1.0 + 2.0 * margin) + centre
    return t * (size / float(INPUT_SIZE))


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src -> dst
    (Umeyama 1991, eqs. 40-42): points (K, 2) each, K >= 2 -> the 2 x 3 matrix [sR | t].

    With centred points a = src - mean(src), b = dst - mean(dst) and the SVD U S V^T of
    Sigma = b^T a / K: R = U D V^T (D = diag(1, det(U V^T)), no reflection),
    s = tr(S D) / var(src), t = mean(dst) - s R mean(src).
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(f"expected two (K, 2) point sets, K >= 2; got {src.shape}, {dst.shape}")
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    a, b = src - mu_s, dst - mu_d
    var = float((a**2).sum()) / len(src)
    if not np.isfinite(var) or var <= 1e-12:
        raise ValueError("the keypoints coincide: no similarity transform")
    u, sig, vt = np.linalg.svd(b.T @ a / len(src))
    d = np.diag([1.0, 1.0 if np.linalg.det(u) * np.linalg.det(vt) >= 0 else -1.0])
    rot = u @ d @ vt
    scale = float(np.trace(np.diag(sig) @ d)) / var
    return np.hstack([scale * rot, (mu_d - scale * rot @ mu_s)[:, None]])


def align_face(
    image: np.ndarray, keypoints: np.ndarray, size: int = INPUT_SIZE, margin: float = 0.0
) -> np.ndarray:
    """Warp the face onto the canonical template: RGB uint8 (H, W, 3) and its keypoints (5 or 4
    rows of x, y in pixels, template order) -> (size, size, 3) uint8.

    The similarity `similarity_transform(keypoints, template)` is applied with PIL's bilinear
    affine warp, the border replicated. Shrinking by more than 2x is first done by an integer
    box reduction of the face's region, so the warp is antialiased like `resize`.
    """
    pts = np.asarray(keypoints, dtype=np.float64)
    m = similarity_transform(pts, align_template(len(pts), size=size, margin=margin))
    inv = np.linalg.inv(np.vstack([m, [0.0, 0.0, 1.0]]))  # output pixel -> input pixel
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))  # output px per input px
    corners = inv @ np.array([[0, size, 0, size], [0, 0, size, size], [1, 1, 1, 1]], float)
    x0, y0 = np.floor(corners[:2].min(axis=1)).astype(int) - 2
    x1, y1 = np.ceil(corners[:2].max(axis=1)).astype(int) + 2
    h, w = image.shape[:2]
    pad = int(max(0, -x0, -y0, x1 - w, y1 - h))
    if pad:
        image = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    region = np.ascontiguousarray(image[y0 + pad : y1 + pad, x0 + pad : x1 + pad], np.uint8)
    pil = Image.fromarray(region, "RGB")
    factor = int(1.0 / scale) if scale < 0.5 else 1
    if factor > 1:
        pil = pil.reduce(factor)
    # region pixel (u, v) = factor * reduced pixel; input pixel = region pixel + (x0, y0)
    to_region = np.array([[1.0 / factor, 0, -x0 / factor], [0, 1.0 / factor, -y0 / factor],
                          [0, 0, 1.0]])
    a = (to_region @ inv)[:2].ravel()
    out = pil.transform((size, size), Image.Transform.AFFINE, data=tuple(a),
                        resample=Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.uint8)


def resize(image: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> (size, size, 3), antialiased (step 5 of the module docstring)."""
    if image.shape[:2] == (size, size):
        return image
    pil = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), "RGB")
    return np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def to_model_input(image: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """RGB uint8 (H, W, 3), already cropped -> float32 (3, size, size) in [0, 1]."""
    chw = resize(image, size).transpose(2, 0, 1)  # (3, S, S)
    return np.ascontiguousarray(chw, dtype=np.float32) / np.float32(255.0)


def load_model_input(path: Union[str, Path]) -> np.ndarray:
    """An aligned face file -> float32 (3, 112, 112): decode, no crop, resize (the FP16 gate)."""
    return to_model_input(decode_image(path))


# --- the engine sidecar --------------------------------------------------------------------------

ENGINE_SIDECAR_FORMAT = "grefel-engine/1"
_CLASS_FORMATS = (ENGINE_SIDECAR_FORMAT, "grefel-checkpoint/1")  # sidecars that name classes


class SidecarError(GrefelError, ValueError):
    """A sidecar that is not the layout this version reads; the message names the file."""


def engine_sidecar_doc(
    *,
    engine: str,
    engine_sha256: str,
    onnx: str,
    onnx_sha256: str,
    onnx_fp32_sha256: str,
    class_names: Sequence[str],
    model_config: Optional[Dict[str, Any]],
    versions: Dict[str, Any],
    build: Dict[str, Any],
    gates: Dict[str, Any],
    created_utc: str,
    outputs: Optional[Sequence[str]] = None,
) -> Dict[str, Any]:
    """The engine sidecar document (format grefel-engine/1; docs/contract.md lists its keys).

    versions: grefel, tensorrt, gpu, compute_capability (+ CUDA / L4T facts) of the builder.
    """
    return {
        "format": ENGINE_SIDECAR_FORMAT,
        "engine": engine,
        "engine_sha256": engine_sha256,
        "onnx": onnx,
        "onnx_sha256": onnx_sha256,
        "onnx_fp32_sha256": onnx_fp32_sha256,
        "class_names": list(class_names),
        "input": input_spec(),
        "outputs": list(outputs) if outputs is not None else list(OUTPUTS),
        "model_config": model_config,
        "versions": dict(versions),
        "build": build,
        "gates": gates,
        "created_utc": created_utc,
    }


@dataclass(frozen=True)
class EngineSidecar:
    """What a consumer of an engine reads from its sidecar."""

    path: Path
    class_names: Tuple[str, ...]
    tensorrt_version: Optional[str]
    gpu_name: Optional[str]
    compute_capability: Optional[str]
    input: Dict[str, Any]
    doc: Dict[str, Any] = field(repr=False, default_factory=dict)


def _cc_string(value: Any) -> Optional[str]:
    """Compute capability as "8.7" from "8.7", [8, 7] or (8, 7)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return ".".join(str(int(v)) for v in value)
    return str(value)


def _load_json(path: Path) -> Dict[str, Any]:
    import json

    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SidecarError(f"{path}: unreadable sidecar JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise SidecarError(f"{path}: a sidecar is a JSON object, got {type(doc).__name__}")
    return doc


def read_engine_sidecar(path: Union[str, Path]) -> EngineSidecar:
    """Read and check an engine sidecar (`NAME.json`): its format version and input contract."""
    path = Path(path)
    doc = _load_json(path)
    if doc.get("format") != ENGINE_SIDECAR_FORMAT:
        raise SidecarError(
            f"{path}: sidecar format {doc.get('format')!r}, this grefel reads "
            f"{ENGINE_SIDECAR_FORMAT!r}; rebuild the engine with `grefel export`"
        )
    spec = doc.get("input")
    if not isinstance(spec, dict) or spec.get("name") != INPUT_NAME or [
        int(v) for v in list(spec.get("shape") or [])[1:] if isinstance(v, int)
    ] != list(INPUT_SHAPE):
        raise SidecarError(f"{path}: the engine's input is {spec!r}, this grefel feeds "
                           f"{INPUT_NAME!r} (N, {', '.join(map(str, INPUT_SHAPE))})")
    versions = doc.get("versions") if isinstance(doc.get("versions"), dict) else {}
    classes = doc.get("class_names")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise SidecarError(f"{path}: class_names must be a list of names, got {classes!r}")
    return EngineSidecar(
        path=path,
        class_names=tuple(classes),
        tensorrt_version=versions.get("tensorrt"),
        gpu_name=versions.get("gpu"),
        compute_capability=_cc_string(versions.get("compute_capability")),
        input=spec,
        doc=doc,
    )


def sidecar_classes(path: Union[str, Path]) -> Optional[Tuple[str, ...]]:
    """Class names from a grefel sidecar (engine or checkpoint) at `path`; None when absent."""
    path = Path(path)
    if not path.is_file():
        return None
    doc = _load_json(path)
    if doc.get("format") not in _CLASS_FORMATS:
        raise SidecarError(f"{path}: sidecar format {doc.get('format')!r}, expected one of "
                           f"{', '.join(_CLASS_FORMATS)}")
    classes = doc.get("class_names")
    return tuple(classes) if isinstance(classes, list) and classes else None
