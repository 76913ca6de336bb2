"""Pretraining the two streams on a dataset's own labels, the paper's way (paper §3.1, §4.2).

GReFEL's landmark stream is the trunk of a MobileFaceNet trained to find 68 facial landmarks
(pytorch_face_landmark, frozen in GReFEL) and its image stream the first three stages of an
IR-50 trained to recognise identities (face.evoLVe, MS-Celeb-1M, with a margin loss). Neither
set of weights exists for the tiny preset, so grefel trains them on the dataset at hand:

- landmarks: SynthFER's ground-truth iBUG-68 points (`landmarks.csv`); on real photos without
  landmarks (muxspace/facial_expressions), the 468 points of MediaPipe's face mesh run on each
  face as train and predict see it (`--landmarks auto|file|mesh`; grefel.runtime.face_mesh);
- identities: each image's `group` (no identity is in two splits).

`pretrain_landmarks` and `pretrain_identity` write checkpoints that `grefel train
--pretrained-mobilefacenet` and `--pretrained-ir50` take:

    landmarks  MobileFaceNet trunk (conv1 ... conv_6_sep) + its GDC landmark head
               (output_layer: depthwise 7x7, Linear -> 2K, BatchNorm1d), regressing the K
               (x, y) points in [0, 1] of the face (L2 loss). Reported: NME on the validation
               split (held-out identities), normalised by the inter-ocular distance (outer eye
               corners: 36 and 45 of iBUG-68, the 300-W convention; 33 and 263 of the mesh),
               beside the NME of the mean training shape. `--stream image`: the same task for
               IR-50 stages 1-3 (ImageLandmarkNet): the image stream's pretraining of the
               real-faces recipe (docs/models.md).
    identity   IR-50 stages 1-3 (input_layer, body1-3) + face.evoLVe's output layer
               (BatchNorm2d, Dropout, Flatten, Linear -> embedding, BatchNorm1d) + a margin
               head: ArcFace (cos(theta + m), s = 64, m = 0.5, face.evoLVe's `ArcFace`) or
               CosFace (cos(theta) - m, s = 64, m = 0.35). Trained on the training split's
               identities with every `holdout_every`-th image of each identity held out;
               reported: identification accuracy (argmax cosine, no margin) on those held-out
               images, beside chance.

Faces are the images as given (decoded and resized), or, for datasets of photos (`--align-faces
auto`, as `grefel train`), the aligned crops of grefel.align_data that train and eval use.

The weights are written under the upstream key names (pytorch_face_landmark's MobileFaceNet,
POSTER V2's renumbered IR-50 `body1/2/3`), so `grefel.weights` imports them through the same
strict key maps as the published files; the heads (`output_layer.*`) are in the file and are
"not used by GReFEL" there. The margin head's class weights are not saved. Each stream is fed
the input normalisation its import sets (IR-50: (x - 0.5) / 0.5; MobileFaceNet: ImageNet
statistics; `grefel.weights`), so the imported stream sees what it was trained on.

    OUT.safetensors  the stream (+ head) weights, written atomically
    OUT.json         sidecar: format, kind, preset, config of the stream, normalisation,
                     metrics, steps and settings, the data folder's fingerprint, weights sha256

Faces are made once (decoded and resized by the input contract, or aligned) and kept as uint8
in memory; batches are drawn with a seeded generator, so the same settings give the
same weights. BatchNorm statistics are recomputed on training images before every evaluation
(`grefel.train_utils.recalibrate_batchnorm`).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from grefel import __version__, contract
from grefel._lazy import MissingDependency
from grefel.config import PRETRAIN_TASKS as TASKS
from grefel.config import GReFELConfig, PretrainConfig
from grefel.errors import GrefelError
from grefel.fileio import (
    atomic_path,
    atomic_write_json,
    read_user_text,
    sha256_file,
)
from grefel.finite import require_finite
from grefel.model.ir50 import IR50Stream
from grefel.model.mobilefacenet import MobileFaceNetTrunk
from grefel.train_utils import recalibrate_batchnorm, seed_everything
from grefel.weights import PRETRAINED_FORMAT as FORMAT

__all__ = [
    "FORMAT",
    "TASKS",
    "IdentityNet",
    "ImageLandmarkNet",
    "LandmarkNet",
    "MarginHead",
    "PretrainConfig",
    "PretrainError",
    "make_config",
    "inter_ocular_nme",
    "pretrain",
]

KIND = {"landmark": "mobilefacenet", "image": "ir50"}  # the grefel.weights kind a stream feeds
NUM_POINTS = 68
OUTER_EYE_CORNERS = (36, 45)  # iBUG-68 indices: the 300-W inter-ocular distance
MESH_MIN_PRESENCE = 0.5  # face-mesh labels of a crop it finds no face in are not used
_EPS = 1e-6

PathLike = Union[str, Path]


class PretrainError(GrefelError, ValueError):
    """A pretraining run that cannot start or finish; the message names the file or option."""


def stream_of(cfg: PretrainConfig) -> str:
    """The stream a run trains: cfg.stream, "auto" being the task's own (landmarks: the
    landmark stream, identity: the image stream)."""
    if cfg.stream != "auto":
        return cfg.stream
    return "landmark" if cfg.task == "landmarks" else "image"


def make_config(**options: Any) -> PretrainConfig:
    """`PretrainConfig(**options)`, its validation errors as `PretrainError`."""
    try:
        return PretrainConfig(**options)
    except ValueError as exc:
        raise PretrainError(str(exc)) from None


# --- the networks ------------------------------------------------------------------------------


class GDCHead(nn.Module):
    """pytorch_face_landmark's GDC output layer: depthwise conv over the whole map + BN,
    Linear, BatchNorm1d.

    Args:
        chs: channels of the map (conv_6_sep's).
        outputs: 2 x the landmark count.
        side: the map's side (7 for MobileFaceNet's conv_6_sep, 14 for IR-50's stage 3).
    """

    def __init__(self, chs: int, outputs: int = 2 * NUM_POINTS, side: int = 7) -> None:
        super().__init__()
        self.conv_6_dw = nn.Sequential()  # keys conv_6_dw.conv / conv_6_dw.bn, as upstream
        self.conv_6_dw.add_module("conv", nn.Conv2d(chs, chs, side, groups=chs, bias=False))
        self.conv_6_dw.add_module("bn", nn.BatchNorm2d(chs))
        self.linear = nn.Linear(chs, outputs, bias=False)
        self.bn = nn.BatchNorm1d(outputs)

    @torch.no_grad()
    def start_at(self, targets: torch.Tensor) -> None:
        """Start the final BatchNorm's affine at the targets' mean and std (N, outputs).

        Its output is standardised per batch, so from weight 1 / bias 0 the head first has to
        shrink to the small spread of landmark positions (~0.02 of the image side), ~1000 Adam
        steps at lr 1e-3; from here it starts at the mean shape with the right spread.
        """
        self.bn.bias.copy_(targets.mean(dim=0))
        self.bn.weight.copy_(targets.std(dim=0).clamp_min(_EPS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, chs, 7, 7) -> (B, outputs)."""
        return self.bn(self.linear(self.conv_6_dw(x).flatten(1)))  # (B, chs) -> (B, outputs)


class LandmarkNet(nn.Module):
    """MobileFaceNet trunk of `cfg` + GDC head: (B, 3, 112, 112) in [0, 1] -> (B, K, 2).

    Args:
        cfg: the GReFEL config whose landmark stream this is.
        points: K, the landmarks regressed (68 iBUG points; 468 for the face mesh).
    """

    def __init__(self, cfg: GReFELConfig, points: int = NUM_POINTS) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(cfg.landmark_mean).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(cfg.landmark_std).view(1, 3, 1, 1), False)
        self.trunk = MobileFaceNetTrunk(cfg.dims[:2], cfg.mfn_blocks, cfg.mfn_out)
        self.output_layer = GDCHead(cfg.mfn_out, 2 * points)
        self.points = points

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        level3 = self.trunk((images - self.mean) / self.std)[2]  # (B, mfn_out, 7, 7)
        return self.output_layer(level3).view(-1, self.points, 2)  # (B, K, 2)

    def stream_state_dict(self) -> Dict[str, torch.Tensor]:
        """pytorch_face_landmark's names: conv1 ... conv_6_sep, output_layer.*."""
        state = {k[len("trunk."):]: v for k, v in self.state_dict().items()
                 if k.startswith("trunk.")}
        state.update({k: v for k, v in self.state_dict().items()
                      if k.startswith("output_layer.")})
        return state


class _IR50Stages(nn.Module):
    """IR-50 stages 1-3 of `cfg` behind the image stream's input normalisation, under POSTER V2's
    renumbered IR-50 names (input_layer, body1/2/3); a subclass adds `output_layer`, a head on
    stage 3's map (d3 x 14 x 14 at 112 input: GReFEL has no stage 4)."""

    def __init__(self, cfg: GReFELConfig) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(cfg.image_mean).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(cfg.image_std).view(1, 3, 1, 1), False)
        stream = IR50Stream(cfg.dims, cfg.ir_units)
        self.input_layer, self.body1 = stream.input_layer, stream.body1
        self.body2, self.body3 = stream.body2, stream.body3

    def stage3(self, images: torch.Tensor) -> torch.Tensor:
        x = self.input_layer((images - self.mean) / self.std)  # (B, d1, 112, 112)
        return self.body3(self.body2(self.body1(x)))  # (B, d3, 14, 14)

    def stream_state_dict(self) -> Dict[str, torch.Tensor]:
        """input_layer, body1/2/3 and the head's output_layer.*."""
        return dict(self.state_dict())


class IdentityNet(_IR50Stages):
    """IR-50 stages 1-3 of `cfg` + face.evoLVe's output layer: images -> embedding (B, E)."""

    def __init__(self, cfg: GReFELConfig, embedding: int = 512) -> None:
        super().__init__(cfg)
        d3, side = cfg.dims[2], cfg.image_size // 8
        self.output_layer = nn.Sequential(  # indices 0, 3, 4 hold weights, as upstream
            nn.BatchNorm2d(d3), nn.Dropout(), nn.Flatten(),
            nn.Linear(d3 * side * side, embedding), nn.BatchNorm1d(embedding),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.output_layer(self.stage3(images))  # (B, E)


class ImageLandmarkNet(_IR50Stages):
    """IR-50 stages 1-3 of `cfg` + a GDC head on stage 3: images -> landmarks (B, K, 2).

    The image stream trained on landmarks (`grefel pretrain landmarks --stream image`): where no
    face-recognition IR-50 exists for a preset (tiny), the face mesh's points put the geometry
    of each face into the stream's maps. POSTER's stride-2 reductions to the level maps
    (`IR50Stream.reduce`) train with GReFEL; the head's output_layer.* is reported by
    `--pretrained-ir50` as not used by GReFEL.
    """

    def __init__(self, cfg: GReFELConfig, points: int = NUM_POINTS) -> None:
        super().__init__(cfg)
        self.output_layer = GDCHead(cfg.dims[2], 2 * points, side=cfg.image_size // 8)
        self.points = points

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.output_layer(self.stage3(images)).view(-1, self.points, 2)  # (B, K, 2)


class MarginHead(nn.Module):
    """Additive-margin softmax logits for identity classification (face.evoLVe `head/metrics`).

    ArcFace (Deng et al. 2019): s * cos(theta_y + m) for the true class, s * cos(theta_j)
    otherwise, with face.evoLVe's fallback cos(theta) - sin(pi - m) * m where theta_y + m would
    pass pi. CosFace (Wang et al. 2018): s * (cos(theta_y) - m). Every norm and square root is
    guarded.

    Args:
        embedding: input size E.
        classes: number of identities.
        kind: "arcface" or "cosface".
        scale: s.
        margin: m.
    """

    def __init__(self, embedding: int, classes: int, kind: str = "arcface",
                 scale: float = 64.0, margin: float = 0.5) -> None:
        super().__init__()
        self.kind, self.scale, self.margin = kind, scale, margin
        self.weight = nn.Parameter(torch.empty(classes, embedding))
        nn.init.xavier_uniform_(self.weight)

    def cosine(self, emb: torch.Tensor) -> torch.Tensor:
        """(B, E) -> cos(theta) (B, classes), in [-1, 1]."""
        cos = F.normalize(emb, dim=1, eps=_EPS) @ F.normalize(self.weight, dim=1, eps=_EPS).t()
        return cos.clamp(-1.0, 1.0)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Training logits (B, classes) with the margin on each sample's own class."""
        cos = self.cosine(emb)
        target = cos.gather(1, labels[:, None])  # (B, 1)
        m = self.margin
        if self.kind == "cosface":
            with_margin = target - m
        else:
            sin = torch.sqrt((1.0 - target * target).clamp_min(_EPS))
            phi = target * math.cos(m) - sin * math.sin(m)  # cos(theta + m)
            with_margin = torch.where(target > math.cos(math.pi - m), phi,
                                      target - math.sin(math.pi - m) * m)
        return self.scale * cos.scatter(1, labels[:, None], with_margin)


def inter_ocular_nme(pred: torch.Tensor, target: torch.Tensor,
                     corners: Tuple[int, int] = OUTER_EYE_CORNERS) -> torch.Tensor:
    """Per-sample NME: mean point distance / outer-eye-corner distance; (B, K, 2) -> (B,).

    corners: the indices of the outer eye corners among the K points (iBUG-68: 36, 45; the
        468-point face mesh: 33, 263). The distance is clamped at 1e-6 (of the image side) so
        a degenerate face gives a large, finite value instead of inf.
    """
    a, b = corners
    iod = (target[:, a] - target[:, b]).norm(dim=-1).clamp_min(_EPS)  # (B,)
    return (pred - target).norm(dim=-1).mean(dim=1) / iod


# --- data ---------------------------------------------------------------------------------------


@dataclass
class Faces:
    """One split's faces as the streams see them.

    images: uint8 (N, 3, 112, 112), the input contract before the 1/255 scale.
    samples: the reader's samples, in the same order.
    sizes: each image's original (w, h) when the faces are the images as given (decoded and
        resized), None when they are aligned crops (`--align-faces detect`).
    """

    images: torch.Tensor
    samples: list
    sizes: Optional[List[Tuple[int, int]]]


def _decode(paths: Sequence[str]) -> Tuple[torch.Tensor, List[Tuple[int, int]]]:
    """Decode and resize (the input contract) -> uint8 (N, 3, 112, 112), original (w, h)."""
    from grefel.data.datasets import load_image

    images = np.empty((len(paths), 3, contract.INPUT_SIZE, contract.INPUT_SIZE), np.uint8)
    sizes = []
    for i, path in enumerate(paths):
        try:
            rgb = load_image(path)  # DatasetError naming the file
        except ValueError as exc:
            raise PretrainError(str(exc)) from None
        sizes.append((rgb.shape[1], rgb.shape[0]))
        images[i] = contract.resize(rgb).transpose(2, 0, 1)
    return torch.from_numpy(images), sizes


def load_faces(cfg: PretrainConfig, split: str) -> Faces:
    """The `split` of `cfg.data` as faces: decoded and resized as given, or, where the face
    alignment resolves to detect (`--align-faces auto` on a dataset of photos), the aligned
    crops of `grefel.align_data` (the cache `grefel train` and `grefel eval` share)."""
    from grefel.data import load_samples
    from grefel.data.datasets import resolve_kind

    root = Path(cfg.data).expanduser()
    try:
        samples = load_samples(root, cfg.dataset, split)[0]
        alignment = cfg.alignment.for_dataset(resolve_kind(root, cfg.dataset, split))
    except ValueError as exc:  # DatasetError
        raise PretrainError(str(exc)) from None
    if alignment.mode == "off":
        images, sizes = _decode([s.path for s in samples])
        return Faces(images, samples, sizes)
    from grefel.align_data import AlignError, align_samples

    try:
        aligned = align_samples(samples, alignment, cfg.align_cache or None,
                                progress=lambda line: _log(f"{split}: {line}"))
    except AlignError as exc:
        raise PretrainError(f"--align-faces {alignment.mode}: {exc}") from None
    _log(aligned.describe(f"{root} split {split!r}"))
    if aligned.failures:
        raise PretrainError(next(iter(aligned.failures.values())))
    crops = np.stack([aligned(i) for i in range(len(samples))])  # (N, 112, 112, 3)
    return Faces(torch.from_numpy(crops.transpose(0, 3, 1, 2).copy()), samples, None)


def read_landmarks(root: Path) -> Dict[str, np.ndarray]:
    """ROOT/landmarks.csv -> {absolute image path: (68, 2) pixel coordinates}."""
    path = root / "landmarks.csv"
    if not path.is_file():
        raise PretrainError(f"{path}: no such file; --landmarks file needs a SynthFER folder "
                            "with ground-truth landmarks (grefel data synth --out ...), "
                            "--landmarks mesh labels the faces with MediaPipe's face mesh")
    out: Dict[str, np.ndarray] = {}
    text = read_user_text(path, error=PretrainError)
    for row_no, row in enumerate(csv.reader(io.StringIO(text, newline=""))):
        if row_no == 0:
            continue
        if len(row) != 1 + 2 * NUM_POINTS:
            raise PretrainError(f"{path}: row {row_no + 1} has {len(row)} columns, expected "
                                f"path + {2 * NUM_POINTS} coordinates")
        try:
            xy = np.asarray(row[1:], dtype=np.float32).reshape(NUM_POINTS, 2)
        except ValueError:
            raise PretrainError(f"{path}: row {row_no + 1} has a non-numeric coordinate"
                                ) from None
        out[str((root / row[0]).resolve())] = xy
    return out


@dataclass
class Landmarks:
    """Training targets of the landmark stream: points (N, K, 2) in [0, 1] of the face side,
    which samples have them (a face mesh that finds no face labels nothing), the outer eye
    corners among the K points, and where they came from (for the sidecar)."""

    points: torch.Tensor
    keep: torch.Tensor  # bool (N,)
    corners: Tuple[int, int]
    source: Dict[str, Any]


def resolve_landmarks(cfg: PretrainConfig, faces: Faces) -> str:
    """cfg.landmarks with "auto" resolved: the dataset's landmarks.csv where there is one and
    the faces are the images as given, else the face mesh."""
    if cfg.landmarks != "auto":
        return cfg.landmarks
    has_file = (Path(cfg.data).expanduser() / "landmarks.csv").is_file()
    return "file" if has_file and faces.sizes is not None else "mesh"


def landmark_targets(cfg: PretrainConfig, faces: Faces, source: str) -> Landmarks:
    """The landmark targets of `faces` from `source` ("file" or "mesh")."""
    root = Path(cfg.data).expanduser()
    if source == "file":
        table = read_landmarks(root)
        if faces.sizes is None:
            raise PretrainError(f"{root / 'landmarks.csv'}: its points are in the original "
                                "images, the faces are aligned crops: use --landmarks mesh, or "
                                "--align-faces off")
        missing = [s.path for s in faces.samples if s.path not in table]
        if missing:
            raise PretrainError(f"{root / 'landmarks.csv'}: no landmarks for {len(missing)} "
                                f"image(s), e.g. {missing[0]}")
        wh = torch.tensor(faces.sizes, dtype=torch.float32)[:, None, :]  # (N, 1, 2)
        points = torch.from_numpy(np.stack([table[s.path] for s in faces.samples])) / wh
        return Landmarks(points, torch.ones(len(points), dtype=torch.bool), OUTER_EYE_CORNERS,
                         {"source": "file", "file": "landmarks.csv", "points": NUM_POINTS})
    from grefel.runtime.face_mesh import EYE_CORNERS, MESH_POINTS, FaceMesh

    try:
        mesh = FaceMesh(threads=cfg.threads or None)
    except (OSError, ValueError, MissingDependency) as exc:
        raise PretrainError(f"--landmarks mesh: {exc}") from None
    side = float(contract.INPUT_SIZE)
    points = torch.empty(len(faces.images), MESH_POINTS, 2)
    keep = torch.empty(len(faces.images), dtype=torch.bool)
    for i, image in enumerate(faces.images):
        xyz, presence = mesh.points(image.permute(1, 2, 0).numpy())
        points[i] = torch.from_numpy(xyz[:, :2] / side)
        keep[i] = presence >= MESH_MIN_PRESENCE
    return Landmarks(points, keep, EYE_CORNERS, {
        "source": "mesh", "points": MESH_POINTS, "model": mesh.model.name,
        "model_sha256": sha256_file(mesh.model), "min_presence": MESH_MIN_PRESENCE})


def identity_split(faces: Faces, holdout_every: int, where: str
                   ) -> Tuple[torch.Tensor, torch.Tensor, List[str]]:
    """Identity indices of the training faces, the held-out mask and the identity names.

    Every `holdout_every`-th image (in file order) of an identity with at least two images is
    held out, so each identity keeps training images.
    """
    samples = faces.samples
    if any(not s.group for s in samples):
        raise PretrainError(f"{where}: identity pretraining needs a group (identity) for every "
                            "image")
    names = sorted({s.group for s in samples})
    if len(names) < 2:
        raise PretrainError(f"{where}: {len(names)} identity; need at least 2")
    index = {name: i for i, name in enumerate(names)}
    labels = torch.tensor([index[s.group] for s in samples])
    seen: Dict[str, int] = {}
    held = []
    for s in samples:
        seen[s.group] = seen.get(s.group, 0) + 1
        held.append(seen[s.group] % holdout_every == 0)
    return labels, torch.tensor(held), names


def _fingerprint(cfg: PretrainConfig) -> str:
    """sha256 over what the task reads: the splits' samples (path, label, group), the landmark
    file where it is used. Same data, same value."""
    from grefel.data import load_samples

    root = Path(cfg.data).expanduser()
    h = hashlib.sha256()
    for split in ("train", "val") if cfg.task == "landmarks" else ("train",):
        try:
            samples = load_samples(root, cfg.dataset, split)[0]
        except ValueError as exc:
            raise PretrainError(str(exc)) from None
        for x in samples:
            h.update(f"{split}\0{x.path}\0{x.label}\0{x.group}\n".encode())
    if cfg.task == "landmarks" and (root / "landmarks.csv").is_file():
        h.update(sha256_file(root / "landmarks.csv").encode())
    return h.hexdigest()


# --- training -----------------------------------------------------------------------------------


def _as_float(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    return images.to(device).float().div_(255.0)  # uint8 -> the model input, [0, 1]


def _batches(n: int, batch: int, steps: int, g: torch.Generator):
    """`steps` index batches drawn from epochs of a seeded permutation (last short one dropped)."""
    done = 0
    while done < steps:
        order = torch.randperm(n, generator=g)
        for start in range(0, n - batch + 1, batch):
            if done == steps:
                return
            yield order[start:start + batch]
            done += 1
        if n < batch:
            yield order
            done += 1


def _photometric(x: torch.Tensor, g: torch.Generator, amount: float = 0.2) -> torch.Tensor:
    """Per-sample brightness and contrast jitter (geometry unchanged): (B, 3, H, W)."""
    b = 1 + amount * (2 * torch.rand(len(x), 1, 1, 1, generator=g) - 1)
    c = 1 + amount * (2 * torch.rand(len(x), 1, 1, 1, generator=g) - 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x * b - mean) * c + mean).clamp(0.0, 1.0)


def _flip_shift(x: torch.Tensor, g: torch.Generator, pixels: int = 6) -> torch.Tensor:
    """Random horizontal flip and a shift of up to `pixels` (reflect padding): (B, 3, H, W)."""
    flip = torch.rand(len(x), generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    _, _, H, W = x.shape
    padded = F.pad(x, (pixels,) * 4, mode="reflect")  # (B, 3, H + 2p, W + 2p)
    dy, dx = (int(v) for v in torch.randint(0, 2 * pixels + 1, (2,), generator=g))
    return padded[:, :, dy:dy + H, dx:dx + W]  # one shift per batch


def _require_finite(values: Any, what: str, cfg: PretrainConfig) -> None:
    """PretrainError "WHAT: N of M values ... are NaN or inf; the run stops ..." unless every
    floating tensor of `values` is finite (grefel.finite: the check of every model writer)."""
    require_finite(values, what, "the run stops and writes nothing (nothing non-finite is "
                   f"saved); lower --lr (now {cfg.lr:g})", error=PretrainError)


def _log(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def _train_landmarks(cfg: PretrainConfig, model_cfg: GReFELConfig,
                     device: torch.device) -> Tuple[nn.Module, Dict[str, Any]]:
    train_faces, val_faces = load_faces(cfg, "train"), load_faces(cfg, "val")  # held-out people
    source = resolve_landmarks(cfg, train_faces)
    train_t, val_t = landmark_targets(cfg, train_faces, source), landmark_targets(
        cfg, val_faces, source)
    train_x, train_y = train_faces.images[train_t.keep], train_t.points[train_t.keep]
    val_x, val_y = val_faces.images[val_t.keep], val_t.points[val_t.keep]
    if len(train_x) < 2 or len(val_x) == 0:
        raise PretrainError(f"{cfg.data}: {len(train_x)} training and {len(val_x)} validation "
                            f"faces with {source} landmarks; need 2 and 1")
    net_class = LandmarkNet if stream_of(cfg) == "landmark" else ImageLandmarkNet
    net = net_class(model_cfg, train_y.shape[1]).to(device)
    net.output_layer.start_at(train_y.flatten(1))
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    g = torch.Generator().manual_seed(cfg.seed)
    losses = []
    net.train()
    for step, idx in enumerate(_batches(len(train_x), cfg.batch_size, cfg.steps, g), start=1):
        x, y = _as_float(train_x[idx], device), train_y[idx].to(device)
        if cfg.augment:
            x = _photometric(x, g)
        loss = F.mse_loss(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            raise PretrainError(f"landmark pretraining, step {step}: non-finite loss "
                                f"({losses[-1]}); the run stops and writes nothing; lower --lr "
                                f"(now {cfg.lr:g})")
        _require_finite(dict(net.named_parameters()),
                        f"landmark pretraining, step {step}: the weights became non-finite in "
                        f"the optimizer step (the loss, {losses[-1]:.4g}, was finite)", cfg)
        if step % 50 == 0 or step == cfg.steps:
            _log(f"landmarks step {step}/{cfg.steps}  loss {np.mean(losses[-50:]):.5f}")
    _recalibrate(net, train_x, cfg, device)
    pred = _predict(net, val_x, device)
    a, b = train_t.corners
    nme = inter_ocular_nme(pred, val_y, train_t.corners)
    mean_shape = train_y.mean(dim=0, keepdim=True).expand_as(val_y)
    metrics = {
        "val_nme": float(nme.mean()), "val_nme_median": float(nme.median()),
        "val_nme_mean_shape": float(inter_ocular_nme(mean_shape, val_y, train_t.corners).mean()),
        "val_images": len(val_x), "train_images": len(train_x),
        "unlabelled_images": {"train": int((~train_t.keep).sum()),
                              "val": int((~val_t.keep).sum())},
        "first_loss": losses[0], "last_loss": float(np.mean(losses[-max(len(losses) // 10, 1):])),
        "normaliser": f"inter-ocular distance (outer eye corners {a}-{b})",
        "landmarks": train_t.source,
    }
    return net, metrics


def _train_identity(cfg: PretrainConfig, model_cfg: GReFELConfig,
                    device: torch.device) -> Tuple[nn.Module, Dict[str, Any]]:
    faces = load_faces(cfg, "train")
    where = f"{cfg.data} (train split)"
    labels, held, names = identity_split(faces, cfg.holdout_every, where)
    train_x, train_y = faces.images[~held], labels[~held]
    test_x, test_y = faces.images[held], labels[held]
    if len(test_x) == 0:
        raise PretrainError(f"{where}: no identity has {cfg.holdout_every} images, so none is "
                            "held out; lower --holdout-every")
    net = IdentityNet(model_cfg, cfg.embedding).to(device)
    head = MarginHead(cfg.embedding, len(names), cfg.margin_head, cfg.scale,
                      cfg.margin_value).to(device)
    opt = torch.optim.Adam([*net.parameters(), *head.parameters()], lr=cfg.lr)
    g = torch.Generator().manual_seed(cfg.seed)
    losses, hits, seen = [], 0, 0
    net.train()
    for step, idx in enumerate(_batches(len(train_x), cfg.batch_size, cfg.steps, g), start=1):
        x, y = _as_float(train_x[idx], device), train_y[idx].to(device)
        if cfg.augment:
            x = _flip_shift(x, g)
        emb = net(x)
        loss = F.cross_entropy(head(emb, y), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            raise PretrainError(f"identity pretraining, step {step}: non-finite loss "
                                f"({losses[-1]}); the run stops and writes nothing; lower --lr "
                                f"(now {cfg.lr:g})")
        _require_finite({"net": dict(net.named_parameters()),
                         "head": dict(head.named_parameters())},
                        f"identity pretraining, step {step}: the weights became non-finite in "
                        f"the optimizer step (the loss, {losses[-1]:.4g}, was finite)", cfg)
        if step > cfg.steps - max(cfg.steps // 4, 1):  # the last quarter's train accuracy
            hits += int((head.cosine(emb).argmax(dim=1) == y).sum())
            seen += len(y)
        if step % 50 == 0 or step == cfg.steps:
            _log(f"identity step {step}/{cfg.steps}  loss {np.mean(losses[-50:]):.3f}")
    _recalibrate(net, train_x, cfg, device)
    emb = _predict(net, test_x, device)
    with torch.no_grad():
        pred = head.cosine(emb.to(device)).argmax(dim=1).cpu()
    metrics = {
        "heldout_id_acc": float((pred == test_y).float().mean()),
        "chance": 1.0 / len(names), "identities": len(names),
        "train_images": len(train_x), "heldout_images": len(test_x),
        "train_id_acc_last_quarter": hits / max(seen, 1),
        "first_loss": losses[0], "last_loss": float(np.mean(losses[-max(len(losses) // 10, 1):])),
        "margin_head": cfg.margin_head, "scale": cfg.scale, "margin": cfg.margin_value,
    }
    return net, metrics


def _recalibrate(net: nn.Module, images: torch.Tensor, cfg: PretrainConfig,
                 device: torch.device) -> None:
    g = torch.Generator().manual_seed(cfg.seed + 1)
    order = torch.randperm(len(images), generator=g)
    batches = (_as_float(images[order[i:i + cfg.batch_size]], device)
               for i in range(0, len(images), cfg.batch_size))
    recalibrate_batchnorm(net, batches, cfg.precise_bn)


@torch.no_grad()
def _predict(net: nn.Module, images: torch.Tensor, device: torch.device,
             batch: int = 64) -> torch.Tensor:
    net.eval()
    out = [net(_as_float(images[i:i + batch], device)).float().cpu()
           for i in range(0, len(images), batch)]
    return torch.cat(out)


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def _settings(cfg: PretrainConfig) -> Dict[str, Any]:
    """The settings that decide the weights (not where they go, nor how many threads)."""
    skip = ("out", "data", "device", "threads", "reuse", "align_cache")
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in skip}


def _reusable(out: Path, cfg: PretrainConfig, fingerprint: str) -> Optional[Dict[str, Any]]:
    """The sidecar of an existing OUT made with these settings from this data, else an error."""
    import json

    side = _sidecar(out)
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError):
        raise PretrainError(f"{out} exists but its sidecar {side.name} is missing or unreadable; "
                            "remove both files or choose another --out") from None
    same = (meta.get("format") == FORMAT and meta.get("settings") == _settings(cfg)
            and meta.get("data_fingerprint") == fingerprint
            and meta.get("weights_sha256") == sha256_file(out))
    if not same:
        raise PretrainError(f"{out} exists but was made with other settings, other data or has "
                            "changed since; remove it (and its .json) or choose another --out")
    return meta


def pretrain(cfg: PretrainConfig) -> Dict[str, Any]:
    """Run one pretraining task; returns the sidecar dict (metrics included).

    An existing `cfg.out` is an error, unless `cfg.reuse` and it was made with the same
    settings from the same data (then it is returned as it is).
    """
    out, root = Path(cfg.out), Path(cfg.data).expanduser()
    if not root.is_dir():
        raise PretrainError(f"{root}: dataset folder does not exist")
    fingerprint = _fingerprint(cfg)
    if out.exists():
        if cfg.reuse:
            meta = _reusable(out, cfg, fingerprint)
            _log(f"reusing {out} (same settings and data)")
            return {**meta, "reused": True}
        raise PretrainError(f"{out} already exists; remove it, choose another --out, or pass "
                            "--reuse to keep it when its settings and data match")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        device = torch.device(cfg.device)
    except RuntimeError:
        raise PretrainError(f"--device {cfg.device!r}: use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PretrainError(f"--device {cfg.device}: this torch sees no CUDA GPU")
    seed_everything(cfg.seed)
    model_cfg = GReFELConfig.preset(cfg.preset)
    start = time.perf_counter()
    train = _train_landmarks if cfg.task == "landmarks" else _train_identity
    net, metrics = train(cfg, model_cfg, device)
    metrics["seconds"] = round(time.perf_counter() - start, 1)
    state = {k: v.detach().cpu().contiguous() for k, v in net.stream_state_dict().items()}
    _require_finite(state, f"{out}: the trained weights and BatchNorm statistics", cfg)
    _require_finite({k: np.asarray(v, dtype=np.float64) for k, v in metrics.items()
                     if isinstance(v, float)},
                    f"{out}: the metrics on held-out images (the model computes NaN or inf "
                    "there)", cfg)
    with atomic_path(out) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT})
    stream = stream_of(cfg)
    meta = {
        "format": FORMAT, "grefel_version": __version__, "task": cfg.task,
        "kind": KIND[stream], "stream": stream, "preset": cfg.preset,
        "stream_config": {k: getattr(model_cfg, k) for k in (
            ("dims", "mfn_blocks", "mfn_out") if stream == "landmark" else ("dims", "ir_units"))},
        "normalisation": {"mean": list(getattr(model_cfg, f"{stream}_mean")),
                          "std": list(getattr(model_cfg, f"{stream}_std"))},
        "metrics": metrics, "settings": _settings(cfg), "data": str(root),
        "data_fingerprint": fingerprint, "weights_sha256": sha256_file(out),
    }
    atomic_write_json(_sidecar(out), meta)
    return meta
