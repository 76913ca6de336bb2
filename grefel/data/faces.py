"""Procedurally drawn faces with ground-truth landmarks (numpy + PIL only), for SynthFER.

Every face is drawn with PIL's ImageDraw at twice the output size and downsampled:

- identity (fixed per identity id): face width/height, jaw squareness, chin shape, eye spacing,
  size and tilt, brow thickness/arch/gap, nose length and width, mouth height/width, lip
  thickness, a resting mouth curve and brow height, hair style and colour, iris colour, and a skin
  tone from five buckets (returned as attrs `skin`, so bias reports have a demographic attribute);
- expression through geometry, scaled by a per-sample intensity in [0.4, 1] so classes overlap:
  brow height/angle/squeeze, eye openness and lower-lid raise, mouth corner curve, opening,
  width, upper-lip raise and lip pressing, nose wrinkle (disgust), asymmetric smirk (contempt),
  plus intensity-weighted wrinkles (forehead lines, frown lines, nasolabial folds);
- pose: yaw and pitch (rotation of a shallow ellipsoid face, orthographic), roll, scale, shift;
- lighting gradient, brightness and tint, background clutter, blur, pixel noise, and occlusions
  (bars, blobs, a hand, sunglasses, a face mask).

The 68 ground-truth landmarks (iBUG-68 order: jaw 0-16, brows 17-26, nose 27-35, eyes 36-47,
mouth 48-67) are computed from the same canonical geometry and projection that draws the face.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from grefel.contract import INPUT_SIZE

__all__ = [
    "SKIN_TONES", "Identity", "Pose", "expression_params", "landmarks68", "make_identity",
    "project", "render_face",
]

SKIN_TONES: Tuple[Tuple[str, Tuple[int, int, int]], ...] = (
    ("very_light", (246, 218, 196)), ("light", (230, 186, 150)), ("medium", (196, 146, 106)),
    ("brown", (146, 98, 64)), ("dark", (92, 62, 44)),
)
_HAIR = ((30, 22, 18), (70, 45, 25), (120, 80, 40), (190, 150, 90), (110, 110, 110), (15, 15, 15))
_IRIS = ((70, 45, 30), (100, 70, 40), (60, 90, 125), (80, 110, 70), (35, 28, 24))
_OCCLUSIONS = ("none", "bar", "blob", "hand", "sunglasses", "mask")
_OCCLUSION_P = (0.76, 0.07, 0.05, 0.05, 0.03, 0.04)


@dataclass(frozen=True)
class Identity:
    """Face geometry and colours of one identity, in face units (half face width ~ 1)."""

    fw: float  # half width
    fh: float  # half height (centre to chin)
    jaw_sq: float  # exponent of the jaw outline: smaller = squarer
    chin: float  # exponent: larger = pointier chin
    eye_y: float
    eye_sep: float  # half distance between eye centres
    eye_w: float  # half eye width
    eye_h: float  # upper-lid height at rest
    eye_tilt: float
    brow_gap: float
    brow_th: float
    brow_arch: float
    nose_y: float  # nose tip
    nose_w: float
    mouth_y: float
    mouth_w: float  # half width
    lip_up: float
    lip_low: float
    rest_curve: float  # resting mouth-corner lift
    rest_brow: float  # resting brow lift
    skin: int  # index into SKIN_TONES
    skin_rgb: Tuple[int, int, int]
    hair_rgb: Tuple[int, int, int]
    hair_style: int  # 0 short, 1 fringe, 2 side part, 3 long
    iris_rgb: Tuple[int, int, int]


def make_identity(rng: np.random.Generator) -> Identity:
    """Draw one identity."""
    u = rng.uniform
    skin = int(rng.integers(len(SKIN_TONES)))
    base = np.array(SKIN_TONES[skin][1], dtype=np.float64) + rng.normal(0, 6, 3)
    return Identity(
        fw=u(0.9, 1.04), fh=u(1.2, 1.42), jaw_sq=u(0.55, 0.95), chin=u(0.8, 1.3),
        eye_y=u(-0.12, 0.0), eye_sep=u(0.37, 0.45), eye_w=u(0.17, 0.21), eye_h=u(0.07, 0.09),
        eye_tilt=u(-0.015, 0.03), brow_gap=u(0.16, 0.22), brow_th=u(0.035, 0.075),
        brow_arch=u(0.01, 0.05), nose_y=u(0.36, 0.48), nose_w=u(0.13, 0.19),
        mouth_y=u(0.7, 0.8), mouth_w=u(0.36, 0.44), lip_up=u(0.04, 0.06),
        lip_low=u(0.05, 0.075), rest_curve=rng.normal(0, 0.012), rest_brow=rng.normal(0, 0.012),
        skin=skin, skin_rgb=tuple(int(v) for v in base.clip(0, 255)),
        hair_rgb=_HAIR[int(rng.integers(len(_HAIR)))], hair_style=int(rng.integers(4)),
        iris_rgb=_IRIS[int(rng.integers(len(_IRIS)))],
    )


# --- expressions --------------------------------------------------------------------------------

# Geometry deltas of each expression at intensity 1 (face units; eo/ll/mwd/lt are relative).
#   bi/bo: inner/outer brow raise, bsq: brows drawn together, eo: eye opening, ll: lower lid up,
#   mc: mouth corners up, mo: mouth opening, mwd: mouth width, ulr: upper-lip raise,
#   lt: lip thickness, nw: nose wrinkle, chk: cheek raise / smile folds, fl: forehead lines,
#   frl: frown lines, asym: one corner up (contempt).
_EXPRESSIONS: Dict[str, Dict[str, float]] = {
    "neutral": {},
    "happiness": {"mc": 0.17, "mwd": 0.22, "mo": 0.1, "eo": -0.35, "ll": 0.4, "chk": 1.0},
    "sadness": {"bi": 0.12, "bo": -0.05, "bsq": 0.03, "mc": -0.13, "mwd": -0.08, "eo": -0.25,
                "lt": 0.2},
    "surprise": {"bi": 0.16, "bo": 0.15, "eo": 0.8, "mo": 0.32, "mwd": -0.28, "fl": 1.0},
    "fear": {"bi": 0.14, "bo": 0.03, "bsq": 0.05, "eo": 0.6, "mo": 0.12, "mwd": 0.25,
             "mc": -0.04, "fl": 0.7},
    "disgust": {"bi": -0.07, "bo": -0.02, "bsq": 0.03, "eo": -0.35, "ll": 0.35, "ulr": 0.08,
                "mo": 0.04, "mc": -0.06, "nw": 1.0, "mwd": -0.05},
    "anger": {"bi": -0.13, "bo": 0.02, "bsq": 0.06, "eo": -0.2, "ll": 0.4, "lt": -0.6,
              "mwd": -0.15, "frl": 1.0, "mc": -0.03},
    "contempt": {"asym": 0.13, "eo": -0.15, "lt": -0.25, "mwd": -0.04},
}
_KEYS = ("bi", "bo", "bsq", "eo", "ll", "mc", "mo", "mwd", "ulr", "lt", "nw", "chk", "fl", "frl",
         "asym")


def expression_params(name: str, intensity: float, rng: np.random.Generator) -> Dict[str, float]:
    """The deltas of `name` scaled by `intensity`, with small per-sample jitter."""
    base = _EXPRESSIONS[name]
    e = {k: intensity * base.get(k, 0.0) for k in _KEYS}
    for k in ("bi", "bo", "mc", "mo"):
        e[k] += rng.normal(0, 0.008)
    e["mo"] = max(e["mo"], 0.0)
    if name == "anger" and rng.random() < 0.3:  # shouting anger: open mouth, teeth
        e["mo"] += 0.16 * intensity
        e["lt"] = -0.2
    if name == "happiness" and rng.random() < 0.4:  # closed-mouth smile
        e["mo"] = 0.0
    e["side"] = 1.0 if rng.random() < 0.5 else -1.0  # which corner a smirk lifts
    return e


# --- canonical geometry -------------------------------------------------------------------------


def _lower_outline(f: Identity, t: np.ndarray, mo: float) -> np.ndarray:
    """Jaw outline at angles t in [0, pi] (0 = right ear, pi/2 = chin); the chin drops with mo."""
    c, s = np.cos(t), np.sin(t)
    x = f.fw * np.sign(c) * np.abs(c) ** f.jaw_sq
    y = f.fh * np.abs(s) ** f.chin + 0.6 * mo * s ** 2
    return np.stack([x, y], 1)


def _upper_outline(f: Identity, n: int) -> np.ndarray:
    """Top of the head from the right ear over the crown to the left ear (excluding both ends)."""
    t = np.linspace(2 * math.pi, math.pi, n + 2)[1:-1]
    c, s = np.cos(t), np.sin(t)
    return np.stack([f.fw * np.sign(c) * np.abs(c) ** 0.8, -1.05 * f.fh * np.abs(s) ** 0.9], 1)


def _eye_curves(f: Identity, e: Dict[str, float], cx: float, u: np.ndarray
                ) -> Tuple[np.ndarray, np.ndarray]:
    """Upper and lower lid points at u in [-1, 1] (image left to right) for the eye at cx."""
    up = f.eye_h * max(1.0 + e["eo"], 0.25)
    low = 0.55 * f.eye_h * max(1.0 + 0.6 * e["eo"], 0.3) * (1.0 - min(e["ll"], 0.7))
    outer = -1.0 if cx < 0 else 1.0  # u of the outer corner
    tilt = f.eye_tilt * (u * outer + 1) / 2  # outer corner higher
    shape = np.cos(u * math.pi / 2) ** 0.8
    x = cx + u * f.eye_w
    upper = np.stack([x, f.eye_y - tilt - up * shape], 1)
    lower = np.stack([x, f.eye_y - tilt + low * shape], 1)
    return upper, lower


def _brow(f: Identity, e: Dict[str, float], cx: float, u: np.ndarray) -> np.ndarray:
    """Brow centre line at u in [0, 1] (0 = outer end, 1 = inner end) above the eye at cx."""
    side = -1.0 if cx < 0 else 1.0
    outer_x = cx + side * 1.15 * f.eye_w
    inner_x = cx - side * (0.9 * f.eye_w + e["bsq"])
    x = outer_x + (inner_x - outer_x) * u
    lift = e["bo"] * (1 - u) + e["bi"] * u + f.rest_brow
    y = f.eye_y - f.brow_gap - f.brow_arch * np.sin(math.pi * (0.15 + 0.7 * u)) - lift
    return np.stack([x, y], 1)


def _mouth_fns(f: Identity, e: Dict[str, float]):
    """Functions x -> y of the mouth's midline, inner and outer lip edges, and its half width."""
    mw = f.mouth_w * (1.0 + e["mwd"])
    cl = e["mc"] + f.rest_curve + (e["asym"] if e["side"] < 0 else 0.0)
    cr = e["mc"] + f.rest_curve + (e["asym"] if e["side"] > 0 else 0.0)
    o, thick = e["mo"], max(1.0 + e["lt"], 0.25)

    def mid(x: np.ndarray) -> np.ndarray:
        c = np.where(x < 0, cl, cr)
        return f.mouth_y - c * (x / mw) ** 2

    def opening(x: np.ndarray) -> np.ndarray:
        return np.sqrt(np.clip(1 - (x / (0.86 * mw)) ** 2, 0, 1))

    def upper_in(x):
        return mid(x) - (0.3 * o + e["ulr"]) * opening(x)

    def lower_in(x):
        return mid(x) + 0.7 * o * opening(x)

    def upper_out(x):
        bow = 0.012 * np.exp(-((x / (0.12 * mw)) ** 2))  # cupid's bow dip
        lip = f.lip_up * thick * (0.35 + 0.65 * opening(x)) * np.clip(1 - np.abs(x) / mw, 0, 1)
        return upper_in(x) - lip * 1.6 + bow

    def lower_out(x):
        lip = f.lip_low * thick * (0.35 + 0.65 * opening(x)) * np.clip(1 - np.abs(x) / mw, 0, 1)
        return lower_in(x) + lip * 1.6

    return mw, mid, upper_in, lower_in, upper_out, lower_out


def landmarks68(f: Identity, e: Dict[str, float]) -> np.ndarray:
    """The 68 iBUG landmarks [68, 2] in canonical face units, from the drawing geometry."""
    pts = np.zeros((68, 2))
    pts[0:17] = _lower_outline(f, np.linspace(math.pi, 0, 17), e["mo"])
    u_brow = np.linspace(0, 1, 5)
    pts[17:22] = _brow(f, e, -f.eye_sep, u_brow)  # right brow, outer -> inner
    pts[22:27] = _brow(f, e, f.eye_sep, u_brow[::-1])  # left brow, inner -> outer
    nose_top = f.eye_y
    pts[27:31, 0] = 0.0
    pts[27:31, 1] = nose_top + (f.nose_y - nose_top) * np.array([0.0, 1 / 3, 2 / 3, 1.0])
    nw = f.nose_w * (1 + 0.25 * e["nw"])
    base = f.nose_y + 0.06 - 0.035 * e["nw"]
    pts[31:36, 0] = nw * np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
    pts[31:36, 1] = base + np.array([-0.02, 0.01, 0.02, 0.01, -0.02])
    for start, cx in ((36, -f.eye_sep), (42, f.eye_sep)):
        # both eyes: corner, upper lid, upper lid, corner (image left to right), then lower lid
        # back from right to left: 36-41 = outer..inner, 42-47 = inner..outer in iBUG order
        pts[start:start + 4] = _eye_curves(f, e, cx, np.array([-1.0, -1 / 3, 1 / 3, 1.0]))[0]
        pts[start + 4:start + 6] = _eye_curves(f, e, cx, np.array([1 / 3, -1 / 3]))[1]
    mw, mid, ui, li, uo, lo = _mouth_fns(f, e)
    xo = mw * np.array([-1.0, -0.6, -0.25, 0.0, 0.25, 0.6, 1.0])
    pts[48:55] = np.stack([xo, np.r_[mid(xo[:1]), uo(xo[1:6]), mid(xo[6:])]], 1)
    xl = mw * np.array([0.6, 0.25, 0.0, -0.25, -0.6])
    pts[55:60] = np.stack([xl, lo(xl)], 1)
    xi = mw * np.array([-0.86, -0.4, 0.0, 0.4, 0.86])
    pts[60:65] = np.stack([xi, np.r_[mid(xi[:1]), ui(xi[1:4]), mid(xi[4:])]], 1)
    xj = mw * np.array([0.4, 0.0, -0.4])
    pts[65:68] = np.stack([xj, li(xj)], 1)
    return pts


# --- projection ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pose:
    yaw: float  # radians
    pitch: float
    roll: float
    scale: float  # pixels per face unit (on the drawing canvas)
    cx: float  # canvas position of the face origin
    cy: float


def _depth(f: Identity, p: np.ndarray) -> np.ndarray:
    """Depth of canonical points on a shallow ellipsoid, plus the nose's protrusion."""
    x, y = p[:, 0], p[:, 1]
    z = 0.8 * np.sqrt(np.maximum(1 - (x / f.fw) ** 2 - (y / (1.1 * f.fh)) ** 2, 0))
    along = np.minimum(np.maximum((y - f.eye_y) / (f.nose_y - f.eye_y + 1e-6), 0), 1.1)
    nose = np.exp(-((x / (0.7 * f.nose_w)) ** 2)) * along * (y < f.nose_y + 0.1)
    return z + 0.35 * nose


def project(f: Identity, pose: Pose, p: np.ndarray) -> np.ndarray:
    """Canonical [N,2] -> canvas pixels [N,2]: yaw, then pitch (orthographic), roll, scale, shift.

    With (x, y, z) the point and its depth: x1 = x cos(yaw) + z sin(yaw),
    y1 = y cos(pitch) + (x sin(yaw) - z cos(yaw)) sin(pitch), then a roll rotation of (x1, y1).
    """
    cy, sy = math.cos(pose.yaw), math.sin(pose.yaw)
    cp, sp = math.cos(pose.pitch), math.sin(pose.pitch)
    cr, sr = math.cos(pose.roll), math.sin(pose.roll)
    a = np.array([[cy, 0.0, sy], [sy * sp, cp, -cy * sp]])  # [2,3] yaw then pitch
    m = pose.scale * (np.array([[cr, -sr], [sr, cr]]) @ a)  # [2,3] with roll and scale
    p = np.asarray(p, dtype=np.float64)
    out = p @ m[:, :2].T + _depth(f, p)[:, None] * m[:, 2]  # [N,2]
    return out + np.array([pose.cx, pose.cy])


# --- drawing ------------------------------------------------------------------------------------


def _pts(a: np.ndarray) -> List[float]:
    """[N,2] -> the flat x0, y0, x1, y1... list that ImageDraw takes."""
    return np.asarray(a, dtype=np.float64).reshape(-1).tolist()


def _canvas_pts(f: Identity, pose: Pose, a: object) -> List[float]:
    """Canonical points -> the flat canvas coordinate list ImageDraw takes."""
    return _pts(project(f, pose, np.asarray(a, dtype=np.float64)))


def _shade(rgb: Sequence[int], k: float, add: Sequence[float] = (0, 0, 0)) -> Tuple[int, ...]:
    return tuple(int(min(max(c * k + a, 0), 255)) for c, a in zip(rgb, add))


def _masked_fill(img: Image.Image, poly: np.ndarray, other: np.ndarray, ellipse: bool,
                 fill: Tuple[int, int, int]) -> None:
    """Fill the intersection of polygon `poly` [N,2] with polygon (or ellipse box) `other`."""
    (x0, y0), (x1, y1) = poly.min(0).astype(int) - 1, poly.max(0).astype(int) + 2
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, img.width), min(y1, img.height)
    if x1 <= x0 or y1 <= y0:
        return
    ma, mb = Image.new("L", (x1 - x0, y1 - y0), 0), Image.new("L", (x1 - x0, y1 - y0), 0)
    off = np.array([x0, y0])
    ImageDraw.Draw(ma).polygon(_pts(poly - off), fill=255)
    draw_b = ImageDraw.Draw(mb)
    if ellipse:
        draw_b.ellipse(_pts(other - off), fill=255)
    else:
        draw_b.polygon(_pts(other - off), fill=255)
    img.paste(fill, (x0, y0, x1, y1), mask=ImageChops.multiply(ma, mb))


def _background(rng: np.random.Generator, side: int, difficulty: float = 1.0) -> Image.Image:
    """A colour gradient with random clutter (rectangles, ellipses, lines; more with difficulty)."""
    c0, c1 = rng.uniform(20, 235, 3), rng.uniform(20, 235, 3)
    t = np.linspace(0, 1, side)[:, None, None]
    column = (c0 * (1 - t) + c1 * t).astype(np.uint8)  # [side,1,3]
    img = Image.fromarray(column, "RGB").resize((side, side), Image.NEAREST)
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(0, 2 + round(6 * difficulty)))):
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        x0, y0 = rng.uniform(-0.2, 1.0, 2) * side
        w, h = rng.uniform(0.05, 0.5, 2) * side
        kind = rng.integers(3)
        if kind == 0:
            d.rectangle([x0, y0, x0 + w, y0 + h], fill=col)
        elif kind == 1:
            d.ellipse([x0, y0, x0 + w, y0 + h], fill=col)
        else:
            d.line([x0, y0, x0 + w, y0 + h], fill=col, width=int(rng.integers(2, 8)))
    return img


def _draw_head(d: ImageDraw.ImageDraw, f: Identity, pose: Pose, e: Dict[str, float],
               rng: np.random.Generator) -> None:
    """Shoulders, hair behind, ears, face shape and the hair in front."""
    P = functools.partial(_canvas_pts, f, pose)
    cloth = tuple(int(v) for v in rng.integers(0, 256, 3))
    d.polygon(P([[-2.4, 3.0], [-2.2, 2.0], [-0.5, 1.6], [0.5, 1.6], [2.2, 2.0], [2.4, 3.0]]),
              fill=cloth)
    d.polygon(P([[-0.42, 0.6], [0.42, 0.6], [0.45, 1.9], [-0.45, 1.9]]),
              fill=_shade(f.skin_rgb, 0.82))
    top = _upper_outline(f, 20) * 1.12
    if f.hair_style == 3:  # long hair behind the face
        d.polygon(P(np.r_[top, [[-1.25 * f.fw, 1.3], [1.25 * f.fw, 1.3]][::-1]]), fill=f.hair_rgb)
    for side in (-1, 1):
        ear = np.array([side * f.fw, f.eye_y + 0.15]) + np.array(
            [[np.cos(a) * 0.12, np.sin(a) * 0.22] for a in np.linspace(0, 2 * math.pi, 10)])
        d.polygon(P(ear), fill=_shade(f.skin_rgb, 0.9))
    jaw = _lower_outline(f, np.linspace(math.pi, 0, 25), e["mo"])
    d.polygon(P(np.r_[jaw, _upper_outline(f, 24)]), fill=f.skin_rgb)
    hairline = f.eye_y - f.brow_gap - 0.3 - rng.uniform(0.0, 0.25)
    crown = _upper_outline(f, 24) * 1.04
    xs = np.linspace(f.fw, -f.fw, 9)
    if f.hair_style == 2:  # side part: the hairline slopes
        edge = hairline + 0.18 * (xs / f.fw)
    else:
        edge = hairline + rng.uniform(-0.04, 0.04, len(xs)) * (f.hair_style == 1)
    if f.hair_style == 0:
        edge = edge - 0.15
    d.polygon(P(np.r_[np.stack([xs, edge], 1)[::-1], crown]), fill=f.hair_rgb)


def _draw_wrinkles(d: ImageDraw.ImageDraw, f: Identity, pose: Pose, e: Dict[str, float],
                   lm: np.ndarray, w: int) -> None:
    """Forehead lines, frown lines, nose wrinkles and smile folds, darker with intensity."""
    P = functools.partial(_canvas_pts, f, pose)
    brow_y = min(lm[19, 1], lm[24, 1])
    if e["fl"] > 0.2:
        col = _shade(f.skin_rgb, 1 - 0.25 * min(e["fl"], 1))
        for k in range(3):
            y = brow_y - 0.1 - 0.07 * k
            d.line(P([[x, y - 0.03 * math.cos(x * 2)] for x in np.linspace(-0.45, 0.45, 7)]),
                   fill=col, width=w)
    if e["frl"] > 0.2:
        col = _shade(f.skin_rgb, 1 - 0.3 * min(e["frl"], 1))
        for x in (-0.06, 0.06):
            d.line(P([[x, lm[21, 1] - 0.02], [x * 0.7, lm[21, 1] + 0.13]]), fill=col, width=w)
    if e["nw"] > 0.2:
        col = _shade(f.skin_rgb, 1 - 0.3 * min(e["nw"], 1))
        for k in range(3):
            y = f.eye_y + 0.06 + 0.05 * k
            d.line(P([[-0.07, y], [0.0, y + 0.015], [0.07, y]]), fill=col, width=w)
    fold = max(e["chk"], 0.6 * e["nw"])
    if fold > 0.2:
        col = _shade(f.skin_rgb, 1 - 0.3 * min(fold, 1))
        for s, corner in ((-1, lm[48]), (1, lm[54])):
            a = np.array([s * (f.nose_w + 0.06), f.nose_y])
            b = corner + np.array([s * 0.07, 0.06])
            m = (a + b) / 2 + np.array([s * 0.06, 0.0])
            d.line(P([a, m, b]), fill=col, width=w, joint="curve")
        for start in (36, 42):  # raised cheeks: a crease under each eye
            under = lm[[start + 5, start + 4]] + np.array([0.0, 0.06])
            d.line(P(under), fill=col, width=max(w - 1, 1))


def _draw_eyes(img: Image.Image, d: ImageDraw.ImageDraw, f: Identity, pose: Pose,
               e: Dict[str, float], rng: np.random.Generator, w: int) -> None:
    """Sclera, iris (clipped to the eye opening), pupil, lids and lashes."""
    P = functools.partial(_canvas_pts, f, pose)
    u = np.linspace(-1, 1, 11)
    gaze = rng.normal(0, 0.03, 2)
    for cx in (-f.eye_sep, f.eye_sep):
        up, low = _eye_curves(f, e, cx, u)
        outline = project(f, pose, np.r_[up, low[::-1]])
        d.polygon(_pts(outline), fill=(238, 236, 230))
        centre = project(f, pose, np.array([[cx + gaze[0], f.eye_y + gaze[1]]]))[0]
        r = 0.085 * pose.scale
        for rad, col in ((r, f.iris_rgb), (r * 0.45, (10, 10, 10))):
            box = np.stack([centre - rad, centre + rad])
            _masked_fill(img, outline, box, True, col)
        d.line(P(up), fill=(25, 20, 20), width=w + 1, joint="curve")
        d.line(P(low), fill=_shade(f.skin_rgb, 0.6), width=max(w - 1, 1))


def _draw_brows_nose(d: ImageDraw.ImageDraw, f: Identity, pose: Pose, e: Dict[str, float],
                     lm: np.ndarray, w: int) -> None:
    P = functools.partial(_canvas_pts, f, pose)
    u = np.linspace(0, 1, 9)
    brow_col = _shade(f.hair_rgb, 0.8)
    for cx in (-f.eye_sep, f.eye_sep):
        line = _brow(f, e, cx, u)
        th = f.brow_th * (0.55 + 0.45 * u)[:, None] * np.array([0.0, 0.5])
        d.polygon(P(np.r_[line - th, (line + th)[::-1]]), fill=brow_col)
    shadow = _shade(f.skin_rgb, 0.72)
    side = 1.0 if pose.yaw > 0 else -1.0  # shade the side turned away
    d.line(P(lm[27:31] + np.array([side * 0.05, 0.0])), fill=_shade(f.skin_rgb, 0.85), width=w)
    d.line(P(lm[31:36]), fill=shadow, width=w, joint="curve")
    for k in (32, 34):
        c = project(f, pose, lm[k:k + 1] + np.array([[0.0, -0.015]]))[0]
        rx, ry = 0.035 * pose.scale, 0.018 * pose.scale
        d.ellipse([c[0] - rx, c[1] - ry, c[0] + rx, c[1] + ry], fill=_shade(f.skin_rgb, 0.35))


def _draw_mouth(img: Image.Image, d: ImageDraw.ImageDraw, f: Identity, pose: Pose,
                e: Dict[str, float], w: int) -> None:
    """Mouth cavity with teeth when open, then the two lips."""
    P = functools.partial(_canvas_pts, f, pose)
    mw, mid, ui, li, uo, lo = _mouth_fns(f, e)
    xi = np.linspace(-0.86 * mw, 0.86 * mw, 13)
    lip = _shade(f.skin_rgb, 0.8, (45, -10, -5))
    cavity = project(f, pose, np.r_[np.stack([xi, ui(xi)], 1), np.stack([xi, li(xi)], 1)[::-1]])
    if e["mo"] + e["ulr"] > 0.02:
        d.polygon(_pts(cavity), fill=(60, 15, 25))
        teeth = np.r_[np.stack([xi, ui(xi)], 1), np.stack([xi, ui(xi) + 0.07], 1)[::-1]]
        _masked_fill(img, cavity, project(f, pose, teeth), False, (235, 232, 222))
    xo = np.linspace(-mw, mw, 17)
    up = np.r_[np.stack([xo, uo(xo)], 1), np.stack([xi, ui(xi)], 1)[::-1]]
    low = np.r_[np.stack([xo, lo(xo)], 1), np.stack([xi, li(xi)], 1)[::-1]]
    d.polygon(P(up), fill=lip)
    d.polygon(P(low), fill=_shade(lip, 1.08))
    d.line(P(np.stack([xo, mid(xo)], 1)), fill=_shade(lip, 0.55), width=w, joint="curve")


def _draw_occlusion(d: ImageDraw.ImageDraw, f: Identity, pose: Pose, kind: str,
                    rng: np.random.Generator, lm_px: np.ndarray) -> None:
    """One occluder over the face (canvas coordinates)."""
    s = pose.scale
    col = tuple(int(v) for v in rng.integers(0, 256, 3))
    if kind == "bar":
        a, b = lm_px[int(rng.integers(68))], lm_px[int(rng.integers(68))]
        ang = rng.uniform(0, math.pi)
        dv = np.array([math.cos(ang), math.sin(ang)]) * s * 1.5
        d.line(_pts(np.stack([a - dv, b + dv])), fill=col, width=int(s * rng.uniform(0.12, 0.3)))
    elif kind in ("blob", "hand"):
        c = lm_px[int(rng.integers(68))]
        rx, ry = s * rng.uniform(0.2, 0.45, 2)
        fill = _shade(f.skin_rgb, 0.95) if kind == "hand" else col
        d.ellipse([c[0] - rx, c[1] - ry, c[0] + rx, c[1] + ry], fill=fill)
        if kind == "hand":  # fingers
            for k in range(4):
                x = c[0] - rx + (k + 0.5) * rx / 2
                d.rounded_rectangle([x - rx / 5, c[1] - ry * 1.8, x + rx / 5, c[1]],
                                    radius=rx / 5, fill=fill)
    elif kind == "sunglasses":
        for k in (36, 42):
            c = lm_px[k:k + 6].mean(0)
            d.ellipse([c[0] - 0.24 * s, c[1] - 0.15 * s, c[0] + 0.24 * s, c[1] + 0.15 * s],
                      fill=(15, 15, 20))
        d.line(_pts(lm_px[[39, 42]]), fill=(15, 15, 20), width=max(int(0.04 * s), 1))
    elif kind == "mask":
        top = lm_px[29]
        poly = np.r_[lm_px[[2]], top[None], lm_px[[14, 12, 8, 4]]]
        d.polygon(_pts(poly), fill=tuple(int(v) for v in rng.integers(150, 256, 3)))


def _finish(
    img: Image.Image, size: int, rng: np.random.Generator, difficulty: float = 1.0
) -> Image.Image:
    """Downsample, blur sometimes, lighting gradient, brightness, tint, pixel noise."""
    img = img.resize((size, size), Image.BOX)
    if rng.random() < 0.3 * difficulty:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.9)))
    a = np.asarray(img, dtype=np.float32)
    ramp = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    ang = rng.uniform(0, 2 * math.pi)
    k = rng.uniform(0, 0.6) * difficulty
    light = 1 + k * (math.cos(ang) * ramp[None, :] + math.sin(ang) * ramp[:, None])  # [S,S]
    gain = (rng.uniform(0.7, 1.1) * rng.uniform(0.93, 1.07, 3)).astype(np.float32)
    sigma = np.float32(rng.uniform(0, 6) * difficulty)
    a = a * light[..., None] * gain + sigma * rng.standard_normal(a.shape, dtype=np.float32)
    return Image.fromarray(a.clip(0, 255).astype(np.uint8), "RGB")


def render_face(
    rng: np.random.Generator,
    ident: Identity,
    expression: str,
    size: int = INPUT_SIZE,
    difficulty: float = 1.0,
) -> Tuple[Image.Image, np.ndarray, Dict[str, str]]:
    """Draw one face -> (RGB image size x size, landmarks [68,2] in its pixels, attrs).

    `difficulty` in [0, 1] scales every nuisance: the spread of expression intensity (down to
    0.4 at 1, always 1 at 0), pose ranges, clutter, occlusion rate, blur, lighting and noise.
    """
    canvas = 2 * size
    dif = float(difficulty)
    low = 1.0 - 0.6 * dif
    intensity = 0.0 if expression == "neutral" else float(rng.uniform(low, 1.0))
    e = expression_params(expression, intensity, rng)
    u = rng.uniform
    pose = Pose(
        yaw=u(-0.35, 0.35) * dif, pitch=u(-0.15, 0.15) * dif,
        roll=math.radians(u(-15, 15) * dif), scale=canvas * u(0.35 - 0.06 * dif, 0.35),
        cx=canvas * (0.5 + u(-0.06, 0.06) * dif), cy=canvas * (0.45 + u(-0.05, 0.05) * dif),
    )
    lm = landmarks68(ident, e)  # [68,2] canonical
    lm_px = project(ident, pose, lm)  # [68,2] canvas pixels
    w = max(int(round(pose.scale * 0.025)), 1)
    img = _background(rng, canvas, dif)
    d = ImageDraw.Draw(img)
    _draw_head(d, ident, pose, e, rng)
    _draw_wrinkles(d, ident, pose, e, lm, w)
    _draw_brows_nose(d, ident, pose, e, lm, w)
    _draw_eyes(img, d, f=ident, pose=pose, e=e, rng=rng, w=w)
    _draw_mouth(img, d, ident, pose, e, w)
    occlusion = _OCCLUSIONS[int(rng.choice(len(_OCCLUSIONS), p=_OCCLUSION_P))]
    if rng.random() >= dif:
        occlusion = "none"
    _draw_occlusion(d, ident, pose, occlusion, rng, lm_px)
    attrs = {"skin": SKIN_TONES[ident.skin][0], "occlusion": occlusion,
             "intensity": f"{intensity:.2f}"}
    return _finish(img, size, rng, dif), lm_px * (size / canvas), attrs
