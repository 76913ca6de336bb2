"""GReFEL configuration: one frozen dataclass per concern, and the presets.

`GReFELConfig` is the model contract: every shape, width and switch of the network in
`grefel.model`, plus the loss weights of eq. 23. It is the only home of these defaults; modules
receive plain keyword arguments taken from it (see `grefel.model.grefel.GReFEL`).

Presets:
    paper  the architecture of the paper / POSTER V2 (dims 64/128/256, heads 2/4/8, windows
           28/14/7, 147 tokens of 768, fusion ViT depth 2 with 8 heads, SE block, MLP head with two
           hidden layers of 64, K = 10 anchors per class, delta = 1, MHSA head size 64).
    tiny   the same code with small widths and depths, trains on a CPU in minutes.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

from grefel.contract import INPUT_SIZE, ClassNamesError, check_class_names
from grefel.ranges import Range, check_choices, check_ranges, range_of, ranged, setting

__all__ = [
    "ALIGN_MODES",
    "AUGMENT_POLICIES",
    "PHOTO_DATASETS",
    "DATASET_CLASSES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PRESETS",
    "LANDMARK_SOURCES",
    "PRETRAIN_TASKS",
    "SEED_MAX",
    "THREADS_MAX",
    "INFERENCE_THREADS",
    "VARIANTS",
    "EvalOptions",
    "FaceAlignment",
    "GReFELConfig",
    "PretrainConfig",
]

# Class names, in label-index order, of every dataset reader in grefel.data.
DATASET_CLASSES: Dict[str, Tuple[str, ...]] = {
    # RAF-DB basic: labels 1..7 in list_patition_label.txt map to these (index = label - 1).
    "rafdb": ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"),
    "affectnet7": ("neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger"),
    "affectnet8": (
        "neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger", "contempt",
    ),
    "ferplus": (
        "neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
    ),
    "fergdb": ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"),
    "affwild2": (
        "neutral", "anger", "disgust", "fear", "happiness", "sadness", "surprise", "other",
    ),
    "jaffe": ("neutral", "happiness", "sadness", "surprise", "anger", "disgust", "fear"),
    # muxspace/facial_expressions (grefel.data.muxspace): the 7 basic expressions, + contempt
    "muxspace": ("neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger"),
    "muxspace8": (
        "neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger", "contempt",
    ),
    "synthfer": ("neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger"),
    "synthfer8": (
        "neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger", "contempt",
    ),
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# face.evoLVe trained IR-50 on MS-Celeb-1M with (x - 0.5) / 0.5.
FACE_EVOLVE_MEAN = (0.5, 0.5, 0.5)
FACE_EVOLVE_STD = (0.5, 0.5, 0.5)

Triple = Tuple[int, int, int]

# Bounds shared by several settings: a seed is what numpy's generators take (0 .. 2**32 - 1); a
# thread count past this is a typo, and the C int of torch / ONNX Runtime / OpenCV would
# overflow on a larger one.
SEED_MAX = 2**32 - 1
THREADS_MAX = 1024
# The CPU threads an inference command may be given (predict, serve; None: all)
INFERENCE_THREADS = Range(kind=int, min=1, max=THREADS_MAX)


@dataclass(frozen=True)
class GReFELConfig:
    """Everything that fixes the GReFEL network and its loss (paper §3, Fig. 2).

    Build one with `GReFELConfig.preset("paper" | "tiny", **overrides)`.
    """

    name: str = "paper"  # the preset this config was made from
    num_classes: int = ranged(7, min=2)
    class_names: Tuple[str, ...] = DATASET_CLASSES["rafdb"]
    # The input side, fixed by the contract (grefel.contract.INPUT_SIZE = 112: both streams see
    # 112x112, POSTER V2 decimates 224 -> 112 in forward). Recorded in every checkpoint; another
    # value is refused, because export, the engines and every preprocessing path feed 112.
    image_size: int = INPUT_SIZE

    # Per-stream input normalisation, applied inside the model to RGB in [0, 1].
    image_mean: Tuple[float, float, float] = FACE_EVOLVE_MEAN
    image_std: Tuple[float, float, float] = FACE_EVOLVE_STD
    landmark_mean: Tuple[float, float, float] = IMAGENET_MEAN  # what POSTER V2 feeds MobileFaceNet
    landmark_std: Tuple[float, float, float] = IMAGENET_STD

    # Image stream: IR-50 stages 1-3 (face.evoLVe `body.0-20`); widths are the level dims.
    dims: Triple = (64, 128, 256)  # channels of the three cross-attention levels
    ir_units: Triple = (3, 4, 14)
    # Landmark stream: MobileFaceNet trunk up to conv_6_sep.
    mfn_blocks: Triple = (4, 6, 2)  # residual blocks in conv_3, conv_4, conv_5
    mfn_out: int = 512  # conv_6_sep channels
    # Window cross-attention (eqs. 1-5).
    heads: Triple = (2, 4, 8)
    windows: Triple = (28, 14, 7)  # window side per level; maps are 28, 14, 7 at 112 input
    drop_path: Tuple[float, float, float] = (0.0, 0.125, 0.25)
    layer_scale_init: float = 1e-5
    # Multi-scale tokens and fusion ViT (eqs. 6-8).
    embed_dim: int = 768
    vit_depth: int = 2
    vit_heads: int = 8
    mlp_ratio: float = 4.0
    # MLP head (eq. 9).
    head_hidden: Tuple[int, ...] = (64, 64)
    head_dropout: float = ranged(0.5, min=0, max=1, max_open=True)
    # Reliability balancing (eqs. 10-19).
    use_anchors: bool = True
    use_attention: bool = True
    anchors_per_class: int = ranged(10, min=1)  # K
    delta: float = ranged(1.0, min=0, min_open=True)  # softmax steepness of eq. 14
    attn_head_dim: int = 64  # d_Q = d_K = d_V of eq. 16
    # Loss weights (eq. 23); 0 drops a term (an ablation), a negative weight would maximise it.
    lambda_cls: float = ranged(1.0, min=0)
    lambda_anchor: float = ranged(1.0, min=0)
    lambda_center: float = ranged(1.0, min=0)
    # Parts frozen at construction: requires_grad off and BatchNorm kept in eval mode.
    frozen: Tuple[str, ...] = ("landmark",)

    def __post_init__(self) -> None:
        check_ranges(self)
        problems = []
        if len(self.class_names) != self.num_classes:
            problems.append(
                f"class_names has {len(self.class_names)} names but num_classes is "
                f"{self.num_classes}"
            )
        try:  # the one check of class names (grefel.contract), for every saved model
            check_class_names(self.class_names, "class_names")
        except ClassNamesError as exc:
            problems.append(str(exc))
        if self.embed_dim % self.vit_heads:
            problems.append(f"embed_dim {self.embed_dim} is not divisible by vit_heads")
        if self.embed_dim % self.attn_head_dim:
            problems.append(f"embed_dim {self.embed_dim} is not divisible by attn_head_dim")
        for dim, heads in zip(self.dims, self.heads):
            if dim % heads:
                problems.append(f"level dim {dim} is not divisible by its {heads} heads")
        maps = (self.image_size // 4, self.image_size // 8, self.image_size // 16)
        for side, win in zip(maps, self.windows):
            if side % win:
                problems.append(f"window {win} does not tile the {side}x{side} feature map")
        if self.image_size != INPUT_SIZE:
            problems.append(
                f"image_size is fixed at {INPUT_SIZE} (the input contract that export, the "
                f"engines and every preprocessing path share), got {self.image_size}"
            )
        unknown = set(self.frozen) - {"landmark", "image"}
        if unknown:
            problems.append(f"unknown frozen parts {sorted(unknown)} (use landmark, image)")
        if problems:
            raise ValueError("invalid GReFELConfig: " + "; ".join(problems))

    @property
    def attn_heads(self) -> int:
        """Heads of the attentive-correction MHSA (eq. 16): d_model / 64 in the paper."""
        return self.embed_dim // self.attn_head_dim

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> GReFELConfig:
        """The named preset with keyword overrides, e.g. `preset("paper", num_classes=8)`.

        When `num_classes` is overridden without `class_names`, generic names are generated
        (or the 8-class AffectNet list when it has 8 classes and the preset's list has 7).
        """
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
        values = dict(PRESETS[name])
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown GReFELConfig fields: {sorted(unknown)}")
        values.update(overrides)
        if "num_classes" in overrides and "class_names" not in overrides:
            n = int(overrides["num_classes"])
            base = values.get("class_names", DATASET_CLASSES["rafdb"])
            if len(base) != n:
                generic = tuple(f"class{i}" for i in range(n))
                values["class_names"] = DATASET_CLASSES["affectnet8"] if n == 8 else generic
        for key in ("class_names", "frozen", "head_hidden"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(name=name, **values)

    def replace(self, **changes: Any) -> GReFELConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> GReFELConfig:
        """Inverse of `to_dict`; unknown keys are an error (a config of another version)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"config has unknown fields {sorted(unknown)}")
        values = {}
        for f in dataclasses.fields(cls):
            if f.name in data:
                v = data[f.name]
                values[f.name] = tuple(v) if isinstance(v, list) else v
        return cls(**values)


PRESETS: Dict[str, Dict[str, Any]] = {
    "paper": {},
    "tiny": {
        "dims": (16, 32, 64),
        "ir_units": (1, 1, 2),
        "mfn_blocks": (1, 1, 1),
        "mfn_out": 128,
        "heads": (1, 2, 4),
        # 7x7 windows on every level (16 + 4 + 1 windows at 112 input): level 1's attention
        # is 16 times cheaper than one 28x28 window, which makes CPU training ~20% faster.
        "windows": (7, 7, 7),
        "embed_dim": 96,
        "vit_depth": 1,
        "vit_heads": 4,
        "head_hidden": (64, 64),
        "attn_head_dim": 32,
        "drop_path": (0.0, 0.05, 0.1),
    },
}

# The four rows of the paper's Table 2 (reliability-balancing ablation).
VARIANTS: Dict[str, Dict[str, bool]] = {
    "no_rb": {"use_anchors": False, "use_attention": False},
    "anchors": {"use_anchors": True, "use_attention": False},
    "mhsa": {"use_anchors": False, "use_attention": True},
    "both": {"use_anchors": True, "use_attention": True},
}


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


# How dataset images become faces (`grefel train` / `eval --align-faces`): "off" takes them as
# given (aligned crops, or a reader's face box); "detect" runs `grefel predict`'s detector and
# 5-point alignment on each image once and caches the 112 px crops (grefel.align_data); "auto"
# is detect for the readers of unaligned photos (PHOTO_DATASETS), off for the others.
ALIGN_MODES = ("auto", "off", "detect")
AUGMENT_POLICIES = ("paper", "light")  # grefel.data.transforms.AUGMENT_POLICIES
PHOTO_DATASETS = ("muxspace", "muxspace8")


def _detector_names() -> Tuple[str, ...]:
    """grefel.runtime.detectors.DETECTORS, read when a command line is built (not on import)."""
    from grefel.runtime.detectors import DETECTORS

    return tuple(DETECTORS)


@dataclass(frozen=True)
class FaceAlignment:
    """How faces are found and prepared: the one home of these settings, their defaults and
    help, contained by `DataConfig.face` (the dataset path of `grefel train` / `grefel eval`,
    grefel.align_data), `grefel.predict.PredictOptions.face` and
    `grefel.serve.ServeOptions.face` (grefel_image), so every command prepares a face alike.
    One factory builds the face pipeline from it (grefel.pipeline.face_pipeline), and the
    command-line options of train, eval, predict and serve are generated from these fields
    (grefel.cli.options): a new face setting is one field here.

    mode: only the dataset path reads it (predict and serve detect unless --aligned); "auto" is
        resolved per dataset by `for_dataset`.
    """

    mode: str = setting(
        "auto", choices=ALIGN_MODES, option="--align-faces",
        help=f"detect: find and align each image's face as `grefel predict` does a still image "
             f"(--detector, --det-size, --align, --margin, --min-face; the whole image when no "
             f"face is found), once, cached as {INPUT_SIZE} px crops; off: images are used as "
             f"given (aligned faces); auto: detect for datasets of photos (muxspace), off for "
             f"the others.")
    detector: str = setting(
        "auto", choices=_detector_names,
        help="Face detector: BlazeFace (keypoints; its models ship inside grefel), Haar (no "
             "keypoints); auto: BlazeFace full range, then short range for close-up faces "
             "(docs/predict.md).")
    det_size: int = setting(640, min=0, help="Longest side of the frame the detector sees "
                                             "(0: full size).")
    align: bool = setting(True, help=f"Warp faces with keypoints onto the 5-point {INPUT_SIZE} "
                                     f"px template.")
    margin: Optional[float] = setting(
        None, kind=float, min=0,
        help="Crop margin, fraction of the face side [0.2 square crops, 0 aligned].")
    min_face: int = setting(16, min=0, help="Smallest face side kept, frame pixels.")

    def __post_init__(self) -> None:
        check_ranges(self)
        _require(self.mode in ALIGN_MODES, f"align_faces must be one of "
                 f"{', '.join(ALIGN_MODES)}, got {self.mode!r}")
        check_choices(self)

    def for_dataset(self, kind: str) -> FaceAlignment:
        """This alignment with mode "auto" resolved for the reader `kind` (a resolved kind,
        not "auto"): detect for PHOTO_DATASETS, off for the others."""
        if self.mode != "auto":
            return self
        return dataclasses.replace(self, mode="detect" if kind in PHOTO_DATASETS else "off")

    @classmethod
    def coerce(cls, value: Any) -> FaceAlignment:
        """A FaceAlignment from itself or its dict (a saved config.json's `face`)."""
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"face must be a FaceAlignment or a dict of its fields, not "
                             f"{value!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise ValueError(f"face: unknown setting {', '.join(unknown)}; one of "
                             f"{', '.join(sorted(names))}")
        return cls(**value)


# The keys of DataConfig's face settings before they were one nested FaceAlignment (config.json
# files of earlier runs, `--set data.face_min_face=20`): old key -> FaceAlignment field.
LEGACY_FACE_KEYS: Dict[str, str] = {
    "align_faces": "mode", "face_detector": "detector", "face_det_size": "det_size",
    "face_align": "align", "face_margin": "margin", "face_min_face": "min_face",
}


@dataclass(frozen=True)
class DataConfig:
    """Where the training images come from and how they are batched (`grefel train`)."""

    root: str = setting(
        "data/synthfer", option="--data", path="dir", cli_default=None,
        help="Dataset folder (e.g. from `grefel data synth`); required unless --resume.")
    dataset: str = setting("auto", help="Reader kind (auto detects).")  # a load_samples kind
    train_split: str = setting("train", cli=False, help="Training split.")
    val_split: str = setting("val", help='Validation split; "" = none (best = best training '
                                         'accuracy).')
    batch_size: int = setting(32, min=2, help="Per process.")
    workers: int = setting(0, min=0, max=256, help="DataLoader workers.")
    refine_per_class: int = setting(0, min=0, help="Data refinement B per class per epoch "
                                                   "(paper 4.1); 0 = plain shuffle.")
    refine_per_group: int = setting(0, min=0, help="Data refinement N_pg per face group / "
                                                   "video; 0 = no cap.")
    refine_repeat: bool = setting(True, help="A class with fewer than B images: repeat them up "
                                             "to B (the paper's B per class), or take each once.")
    strict: bool = setting(False, help="Unreadable images are an error.")
    augment: bool = setting(True, help="Training augmentation (off: eval resize only).")
    augment_policy: str = setting(
        "paper", choices=AUGMENT_POLICIES,
        help="paper: shift 8 px, rotation 10 deg, flip, colour jitter 0.3, erasing; light: "
             "shift 4 px, flip, jitter 0.2.")
    # How the images become faces (grefel.align_data)
    face: FaceAlignment = dataclasses.field(default_factory=FaceAlignment)
    align_cache: str = setting(
        "", path="dir", help="Folder of the cached aligned crops (keyed by image content and "
                             "settings).",
        help_default="$XDG_CACHE_HOME/grefel/aligned, else ~/.cache/grefel/aligned")

    def __post_init__(self) -> None:
        check_ranges(self)
        object.__setattr__(self, "face", FaceAlignment.coerce(self.face))
        _require(self.augment_policy in AUGMENT_POLICIES, f"augment_policy must be one of "
                 f"{', '.join(AUGMENT_POLICIES)}, got {self.augment_policy!r}")
        _require(self.refine_per_group == 0 or self.refine_per_class > 0,
                 "refine_per_group needs refine_per_class (refinement draws B per class)")

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> DataConfig:
        """A DataConfig from its dict (config.json's "data"), the face settings of runs saved
        before they were nested (`align_faces`, `face_*`: LEGACY_FACE_KEYS) included."""
        return cls(**upgrade_data_dict(data))


def upgrade_data_dict(data: Dict[str, Any]) -> Dict[str, Any]:
    """`data` (a DataConfig's fields as a dict) with the old flat face keys (LEGACY_FACE_KEYS)
    moved into its nested `face` dict; a dict already nested is returned as it is."""
    data = dict(data)
    face = data.get("face")
    face = dict(dataclasses.asdict(face) if isinstance(face, FaceAlignment) else face or {})
    for old, new in LEGACY_FACE_KEYS.items():
        if old in data:
            face.setdefault(new, data.pop(old))
    if face:
        data["face"] = face
    return data


def _criteria_names() -> Tuple[str, ...]:
    """`grefel eval --criteria`: auto and grefel.agreement's CRITERIA (read when a command line
    is built or an EvalOptions is made, not when this module is imported)."""
    from grefel.agreement import CRITERIA

    return ("auto", *CRITERIA)


@dataclass(frozen=True)
class EvalOptions:
    """How `grefel eval` reads the split and runs the model (grefel.evaluate.evaluate_model);
    the files (the model, the data, --out, --reference) and the face alignment are given beside
    it."""

    dataset: str = setting("auto", help="Reader kind (auto detects).")
    split: str = setting("test", help="Split to evaluate.")
    batch_size: int = setting(64, min=1, help="Images per batch.")
    workers: int = setting(0, like=range_of(DataConfig, "workers"), help="DataLoader workers.")
    device: str = setting("auto", help="auto, cpu, cuda or cuda:N.")
    threads: Optional[int] = setting(None, like=INFERENCE_THREADS,
                                     help="CPU threads of ONNX Runtime / PyTorch.",
                                     help_default="the library's")
    strict: bool = setting(False, help="Unreadable images are an error.")
    criteria: str = setting("auto", choices=_criteria_names,
                            help="Agreement criteria with --reference (auto: int8 for a quantized "
                                 "model, else fp16, the FP16 gate's).")

    def __post_init__(self) -> None:
        check_ranges(self)
        check_choices(self, functions=True)  # grefel.agreement: an eval imports it anyway



@dataclass(frozen=True)
class SynthConfig:
    """`grefel data synth`: how SynthFER, the bundled drawn dataset, is made
    (grefel.data.synthfer.generate_synthfer, whose defaults these are)."""

    n: int = setting(2000, min=3, help="Number of images.")
    seed: int = setting(0, min=0, max=SEED_MAX, help="Same seed and options give the same bytes.")
    noise: float = setting(0.0, min=0, max=1, max_open=True,
                           help="Fraction of TRAIN labels flipped to another class (val/test "
                                "stay clean).")
    imbalance: str = setting("rafdb", choices=("rafdb", "uniform"),
                             help="Class frequencies: RAF-DB basic train counts, or equal.")
    contempt: bool = setting(False, option="--contempt/--no-contempt",
                             help="Add contempt as an 8th class.")
    size: int = setting(INPUT_SIZE, min=32, help="Image side in pixels.")
    difficulty: float = setting(1.0, min=0, max=1,
                                help="Scale of pose, clutter, occlusion, blur, noise and weak "
                                     "expressions (the CPU demo uses a lower value).")
    overwrite: bool = setting(False, help="Replace what --out holds (without it, a folder that "
                                          "is not empty is refused).")

    def __post_init__(self) -> None:
        check_ranges(self)
        check_choices(self)


# TrainConfig fields that override GReFELConfig fields (None keeps the preset's value).
MODEL_OVERRIDES = (
    "lambda_cls", "lambda_anchor", "lambda_center", "anchors_per_class", "delta", "head_dropout",
)


FREEZE_CHOICES = ("auto", "landmark", "image", "none")  # TrainConfig.freeze
CLASS_WEIGHTS = ("none", "inverse")  # TrainConfig.class_weights
SELECT_BY = ("accuracy", "macro_f1")  # TrainConfig.select
# Steps of the image-stream warm-up when TrainConfig.image_warmup is auto: make demo's (with it
# the tiny preset learns from the first epoch; without it, it stays at chance: docs/research.md)
AUTO_IMAGE_WARMUP = 150


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, regularisation and bookkeeping of one training run (paper §4.2).

    The only home of the training defaults: Adam lr 3e-4, exponential decay 0.995 per epoch,
    gradient clipping at norm 5; the landmark stream frozen when it starts from pretrained
    weights, and the image-stream warm-up whenever that stream trains on a fresh model (without
    it the tiny preset stays at chance: docs/research.md).
    """

    out: str = setting(
        "", path="dir", help="Run folder (checkpoints, metrics, config) [default: a new "
                             "runs/train/PRESET, -2, -3, ...; under torchrun runs/train/PRESET].")
    preset: str = setting("tiny", choices=tuple(PRESETS), help="Model preset.")
    variant: str = setting("both", choices=tuple(VARIANTS), help="Row of the paper's Table 2.")
    epochs: int = setting(10, min=1, help="Training epochs.")
    lr: float = setting(3e-4, min=0, min_open=True, help="Adam learning rate.")
    gamma: float = setting(0.995, min=0, max=1, min_open=True, help="LR decay per epoch.")
    label_smoothing: float = setting(
        0.0, min=0, max=1, max_open=True,
        help="Eq. 20 smoothing; the paper supplement's \"smoothing term 11\" reads as 0.11 to "
             "us.")
    class_weights: str = setting("none", choices=CLASS_WEIGHTS,
                                 help="inverse: inverse frequency, mean 1.")
    clip_grad: float = setting(5.0, min=0, help="Max grad norm; 0 off.")
    precise_bn: int = setting(512, min=0, help="Training images to recompute BatchNorm "
                                               "statistics on after each epoch; 0 = off.")
    freeze: str = setting(
        "auto", choices=FREEZE_CHOICES,
        help="Stream kept frozen; only a stream with weights (--pretrained-mobilefacenet, "
             "--pretrained-ir50, --init). auto: landmark when it has them, else none.")
    amp: bool = setting(True, help="Mixed precision (CUDA only).")  # autocast + GradScaler
    seed: int = setting(0, min=0, max=SEED_MAX, help="Random seed.")
    device: str = setting("auto", help="auto, cpu, cuda or cuda:N.")
    threads: int = setting(0, min=0, max=THREADS_MAX,
                           help="torch CPU threads per process; 0 = torch's default.")
    # the command line's --resume (its help is grefel.train_state.resume_help)
    resume: bool = setting(False, cli=False, help="Continue the run in out.")
    # GReFELConfig overrides (MODEL_OVERRIDES; None keeps the preset's), with its ranges
    lambda_cls: Optional[float] = setting(None, like=range_of(GReFELConfig, "lambda_cls"),
                                          help="Eq. 23 weight [preset: 1].")
    lambda_anchor: Optional[float] = setting(None, like=range_of(GReFELConfig, "lambda_anchor"),
                                             help="Eq. 23 weight [preset: 1].")
    lambda_center: Optional[float] = setting(None, like=range_of(GReFELConfig, "lambda_center"),
                                             help="Eq. 23 weight [preset: 1].")
    anchors_per_class: Optional[int] = setting(
        None, like=range_of(GReFELConfig, "anchors_per_class"), help="K [preset: 10].")
    delta: Optional[float] = setting(None, like=range_of(GReFELConfig, "delta"),
                                     help="Eq. 14 softmax steepness [preset: 1].")
    head_dropout: Optional[float] = setting(None, like=range_of(GReFELConfig, "head_dropout"),
                                            help="Eq. 9 MLP dropout [preset: 0.5].")
    pretrained_ir50: str = setting(
        "", path="file", help="face.evoLVe / POSTER V2 IR-50 weights for the image stream.")
    pretrained_mobilefacenet: str = setting(
        "", path="file", help="pytorch_face_landmark MobileFaceNet weights (landmark stream).")
    # A grefel checkpoint to fine-tune from (grefel.train.init_from_checkpoint)
    init: str = setting(
        "", path="file",
        help="Fine-tune from this grefel checkpoint (e.g. from `grefel weights import --kind "
             "posterv2`): its architecture, every tensor that fits (strict), fresh "
             "class-dependent tensors when the classes differ; writes init.json.")
    # Steps that train the image stream alone before epoch 1 (grefel.train.warm_up_image_stream);
    # None = auto: AUTO_IMAGE_WARMUP unless the image stream is frozen or comes from init.
    image_warmup: Optional[int] = setting(
        None, kind=int, min=0,
        help="Steps that train the image stream alone (pooled linear classifier, then dropped) "
             "before epoch 1: a stand-in for a pretrained IR-50 when there is none (the tiny "
             "preset); 0: off.",
        help_default=f"{AUTO_IMAGE_WARMUP}, 0 with --freeze image or --init")
    # what best.safetensors is chosen by (train accuracy without val)
    select: str = setting("accuracy", choices=SELECT_BY,
                          help="What best.safetensors is chosen by on the validation split "
                               "(macro_f1 for imbalanced data).")

    def __post_init__(self) -> None:
        check_ranges(self)
        _require(self.preset in PRESETS, f"unknown preset {self.preset!r}")
        _require(self.variant in VARIANTS, f"unknown variant {self.variant!r}")
        _require(self.class_weights in CLASS_WEIGHTS,
                 f"class_weights: {' or '.join(CLASS_WEIGHTS)}")
        _require(self.freeze in FREEZE_CHOICES, f"freeze: {', '.join(FREEZE_CHOICES)}")
        _require(self.select in SELECT_BY, f"select: {' or '.join(SELECT_BY)}")
        _require(not (self.image_warmup and self.frozen_stream() == "image"),
                 "image_warmup trains the image stream, which freeze=image keeps frozen")
        _require(not (self.init and (self.pretrained_ir50 or self.pretrained_mobilefacenet)),
                 "init loads a whole grefel checkpoint; pretrained stream weights are for a "
                 "fresh model (give one or the other)")
        _require(self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda"),
                 f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")

    def frozen_stream(self) -> str:
        """The stream kept frozen: `freeze`, with auto resolved (landmark when that stream starts
        from weights: pretrained_mobilefacenet or init; else none)."""
        if self.freeze != "auto":
            return self.freeze
        return "landmark" if self.pretrained_mobilefacenet or self.init else "none"

    def warmup_steps(self) -> int:
        """The image-stream warm-up's steps: `image_warmup`, with None (auto) resolved to
        AUTO_IMAGE_WARMUP unless the image stream is frozen or comes from `init`."""
        if self.image_warmup is not None:
            return self.image_warmup
        return 0 if self.frozen_stream() == "image" or self.init else AUTO_IMAGE_WARMUP

    def unweighted_frozen_stream(self) -> Optional[str]:
        """The frozen stream that has no weights to keep (it would stay random), or None.
        `init` gives every stream weights; pretrained_* gives its own stream."""
        stream = self.frozen_stream()
        weights = {"landmark": self.pretrained_mobilefacenet, "image": self.pretrained_ir50}
        if stream == "none" or self.init or weights[stream]:
            return None
        return stream

    def model_config(self, class_names: Sequence[str]) -> GReFELConfig:
        """The preset, the Table 2 variant, the dataset's classes and this config's overrides."""
        overrides = {k: getattr(self, k) for k in MODEL_OVERRIDES if getattr(self, k) is not None}
        frozen = () if self.frozen_stream() == "none" else (self.frozen_stream(),)
        return GReFELConfig.preset(
            self.preset, **VARIANTS[self.variant], num_classes=len(class_names),
            class_names=tuple(class_names), frozen=frozen, **overrides,
        )


PRETRAIN_TASKS = ("landmarks", "identity")  # grefel pretrain landmarks | identity
LANDMARK_SOURCES = ("auto", "file", "mesh")  # grefel pretrain landmarks --landmarks


@dataclass(frozen=True)
class PretrainConfig:
    """One `grefel pretrain` run (grefel.pretrain); the only home of its defaults."""

    task: str = setting(cli=False, choices=PRETRAIN_TASKS, help="landmarks or identity.")
    data: str = setting(
        path="dir", help="Dataset folder with identities (SynthFER from grefel data synth, "
                         "muxspace/facial_expressions, or any reader's layout).")
    out: str = setting(path="file", help="Checkpoint to write (.safetensors + .json sidecar).")
    preset: str = setting("tiny", choices=tuple(PRESETS),
                          help="GReFEL preset whose stream is trained (widths, depths).")
    steps: int = setting(300, min=1, help="Optimisation steps.")
    batch_size: int = setting(32, min=2, help="Images per step.")
    lr: float = setting(1e-3, like=range_of(TrainConfig, "lr"), help="Adam learning rate.")
    seed: int = setting(0, like=range_of(TrainConfig, "seed"), help="Random seed.")
    device: str = setting("cpu", help="cpu, cuda or cuda:N.")
    threads: int = setting(0, like=range_of(TrainConfig, "threads"),
                           help="torch CPU threads; 0 = torch's default.")
    augment: bool = setting(True, help="landmarks: brightness/contrast jitter; identity: flips "
                                       "and shifts.")
    dataset: str = setting("auto", help="Reader kind (auto detects).")  # a load_samples kind
    # landmarks only: the targets
    landmarks: str = setting(
        "auto", choices=LANDMARK_SOURCES,
        help="Targets: file = the dataset's landmarks.csv (SynthFER's 68 ground-truth points); "
             "mesh = MediaPipe's 468-point face mesh (shipped in grefel) run on each face; auto "
             "= the file where there is one and faces are not aligned.")
    # the stream trained: "auto" = the task's own (landmarks: the landmark stream MobileFaceNet;
    # identity: the image stream IR-50); `grefel pretrain landmarks` names it (landmark)
    stream: str = setting(
        "auto", choices=("auto", "landmark", "image"), cli_default="landmark",
        help="landmark: the MobileFaceNet trunk (the paper's landmark stream; "
             "--pretrained-mobilefacenet); image: IR-50 stages 1-3, the image stream "
             "(--pretrained-ir50), where no face-recognition IR-50 exists (tiny).")
    # How the images become faces: as `grefel train` (auto: aligned for datasets of photos)
    alignment: FaceAlignment = FaceAlignment()
    align_cache: str = ""  # folder of the aligned crops; "" = grefel.align_data.default_cache()
    # identity only
    margin_head: str = setting("arcface", choices=("arcface", "cosface"),
                               help="face.evoLVe's margin heads.")
    scale: float = setting(64.0, min=0, min_open=True,
                           help="s of the margin head.")  # face.evoLVe: 64
    margin: Optional[float] = setting(None, kind=float, min=0, max=1, max_open=True,
                                      option="--head-margin",
                                      help="m of the margin head [default: 0.5 ArcFace, 0.35 "
                                           "CosFace].")
    embedding: int = setting(512, min=2, help="Embedding size of the output layer.")
    holdout_every: int = setting(5, min=2, help="Every k-th image of each training identity is "
                                                "held out for the accuracy.")
    precise_bn: int = setting(512, like=range_of(TrainConfig, "precise_bn"),
                              help="Training images for the BatchNorm statistics before "
                                   "evaluation.")
    reuse: bool = setting(False, help="Keep an existing --out made with the same settings from "
                                      "the same data.")

    def __post_init__(self) -> None:
        check_ranges(self)
        problems = []
        if self.task not in PRETRAIN_TASKS:
            problems.append(f"task must be one of {PRETRAIN_TASKS}, got {self.task!r}")
        if self.preset not in PRESETS:
            problems.append(f"unknown preset {self.preset!r}; choose from {sorted(PRESETS)}")
        if self.margin_head not in ("arcface", "cosface"):
            problems.append(f"margin_head must be arcface or cosface, got {self.margin_head!r}")
        if self.stream not in ("auto", "landmark", "image"):
            problems.append(f"stream must be auto, landmark or image, got {self.stream!r}")
        elif self.task == "identity" and self.stream == "landmark":
            problems.append("identity pretraining trains the image stream (stream image/auto)")
        if self.landmarks not in LANDMARK_SOURCES:
            problems.append(f"landmarks must be one of {LANDMARK_SOURCES}, got "
                            f"{self.landmarks!r}")
        if not str(self.out).endswith(".safetensors"):
            problems.append(f"out must end in .safetensors, got {self.out!r}")
        if problems:
            raise ValueError("invalid pretraining settings: " + "; ".join(problems))

    @property
    def margin_value(self) -> float:
        if self.margin is not None:
            return self.margin
        return 0.5 if self.margin_head == "arcface" else 0.35
