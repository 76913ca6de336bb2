"""Import the public pretrained weights into GReFEL: strictly, safely, with a full report.

Four source layouts (key and shape lists: `tests/data/poster_v2_state_dict.json`):

    kind           layout                       file as published
    ir50           face.evoLVe IR-50            backbone_ir50_ms1m_epoch120.pth: input_layer,
                                                body.0-23, output_layer (flat OrderedDict)
    ir50           POSTER V2 renumbered IR-50   models/pretrain/ir50.pth: input_layer, body1/2/3,
                                                output_layer (maybe under state_dict / module.)
    mobilefacenet  pytorch_face_landmark        mobilefacenet_model_best.pth.tar: {state_dict:
                                                conv1 ... conv_6_sep, output_layer (GDC head)}
    posterv2       POSTER V2 full checkpoint    {epoch, state_dict (module.), best_acc,
                                                recorder1, recorder (pickled RecorderMeter)}

`grefel pretrain landmarks|identity` (grefel.pretrain) writes the first two layouts as
`.safetensors` (read without pickle) with a sidecar naming its kind and input normalisation; a
file of one kind passed as the other is refused.

Each layout has one key map in the style of timm's `checkpoint_filter_fn`: a source key maps to
one of our keys, or is "not used by GReFEL" with the reason (the IR-50 fourth stage and output
layer, the landmark GDC head, POSTER V2's dead ViT members, derived index buffers), or is
unexpected. The load is strict and shape-asserting: every missing, unexpected or mis-shaped key
is reported and is an error (`WeightsError`) unless `lenient=True`, which loads what fits and
reports what it dropped. Nothing is filtered silently (POSTER V2's `load_pretrained_weights`
drops every non-matching key without a word). Files are read by `grefel.unpickle.safe_load`,
which executes nothing pickled in them.

Input normalisation follows what each stream's weights were trained with and is written into the
model's config (so into the checkpoint sidecar): face.evoLVe trained IR-50 on (x - 0.5) / 0.5;
POSTER V2 trained its whole network on ImageNet-normalised RGB (`main.py`: Normalize(mean=[0.485,
0.456, 0.406], std=[0.229, 0.224, 0.225]) for train and validation), so a POSTER V2 import uses
ImageNet statistics on both streams.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch

from grefel.config import (
    FACE_EVOLVE_MEAN,
    FACE_EVOLVE_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    GReFELConfig,
)
from grefel.errors import GrefelError
from grefel.finite import require_finite
from grefel.model.grefel import GReFEL
from grefel.unpickle import Inert, UnsafeFileError, safe_load

__all__ = [
    "KINDS",
    "ImportReport",
    "WeightsError",
    "export_posterv2_state_dict",
    "import_pretrained",
    "import_state_dict",
    "import_weights",
    "read_state_dict",
]

KINDS = ("ir50", "mobilefacenet", "posterv2")
PRETRAINED_FORMAT = "grefel-pretrained/1"  # the sidecar of `grefel pretrain` (grefel.pretrain)
PathLike = Union[str, Path]
Target = Tuple[Optional[str], Optional[str]]  # (our key, None) | (None, why unused) | (None, None)

_MAX_LISTED = 20  # keys listed per category in an error message (the report has all of them)


class WeightsError(GrefelError, ValueError):
    """Weights that do not fit; the message names the file and the keys, `.report` has all."""

    def __init__(self, message: str, report: Optional[ImportReport] = None) -> None:
        super().__init__(message)
        self.report = report


# --- key maps, one per source layout -------------------------------------------------------------

_IR50_UNITS = (3, 4, 14)  # face.evoLVe IR-50 units in stages 1-3; stage 4 is body.21-23
_MFN_TRUNK = (
    "conv1.", "conv2_dw.", "conv_23.", "conv_3.", "conv_34.", "conv_4.", "conv_45.", "conv_5.",
    "conv_6_sep.",
)
_UNUSED_IR_OUTPUT = "IR-50 output layer (BN, FC 25088->512, BN): not part of GReFEL"
_UNUSED_GDC = "MobileFaceNet GDC landmark head (68x2 coordinates): GReFEL uses the trunk maps only"


def _map_evolve_ir50(key: str) -> Target:
    """face.evoLVe: body.i -> body1.i (i < 3), body.(3+j) -> body2.j, body.(7+k) -> body3.k."""
    m = re.match(r"body\.(\d+)\.(.+)$", key)
    if m:
        n, rest = int(m.group(1)), m.group(2)
        for stage, units in enumerate(_IR50_UNITS, start=1):
            if n < units:
                return f"image.body{stage}.{n}.{rest}", None
            n -= units
        return None, "IR-50 stage 4 (body.21-23, 512 channels): not part of GReFEL"
    if key.startswith("input_layer."):
        return "image." + key, None
    if key.startswith("output_layer."):
        return None, _UNUSED_IR_OUTPUT
    return None, None


def _map_poster_ir50(key: str) -> Target:
    """POSTER V2 `ir50.pth`: already renumbered into body1/2/3."""
    if re.match(r"(input_layer|body[123])\.", key):
        return "image." + key, None
    if key.startswith("output_layer."):
        return None, _UNUSED_IR_OUTPUT
    return None, None


def _map_mobilefacenet(key: str) -> Target:
    """pytorch_face_landmark MobileFaceNet: trunk names are ours under `landmark.`."""
    if key.startswith(_MFN_TRUNK):
        return "landmark." + key, None
    if key.startswith("output_layer."):
        return None, _UNUSED_GDC
    return None, None


def _poster_renames() -> List[Tuple[str, str]]:
    """(POSTER V2 prefix, our prefix) pairs; a prefix without a trailing dot is a whole key."""
    pairs = [
        ("face_landback.", "landmark."),
        ("ir_back.", "image."),
        ("last_face_conv.", "landmark_proj."),
        ("embed_q.", "fusion.embed_q."),
        ("embed_k.0.", "fusion.embed_k."),
        ("embed_v.proj.", "fusion.embed_v."),
        ("VIT.cls_token", "fusion.cls_token"),
        ("VIT.pos_embed", "fusion.pos_embed"),
        ("VIT.blocks.", "fusion.blocks."),
        ("VIT.norm.", "fusion.norm."),
        ("VIT.se_block.", "fusion.se."),
        ("VIT.head.linear.", "head.net.0."),  # fits only a primary head without hidden layers
    ]
    for i in (1, 2, 3):
        lvl = f"levels.{i - 1}."
        pairs += [
            (f"conv{i}.", f"image.reduce.{i - 1}."),
            (f"window{i}.norm.", lvl + "norm1."),
            (f"attn{i}.qkv.", lvl + "attn.kv."),  # POSTER's "qkv" is the key/value projection
            (f"attn{i}.proj.", lvl + "attn.proj."),
            (f"attn{i}.relative_position_bias_table", lvl + "attn.relative_position_bias_table"),
            (f"ffn{i}.norm.", lvl + "norm2."),
            (f"ffn{i}.mlp.", lvl + "mlp."),
            (f"ffn{i}.gamma1", lvl + "gamma1"),
            (f"ffn{i}.gamma2", lvl + "gamma2"),
        ]
    return pairs


_POSTER_TO_OURS = sorted(_poster_renames(), key=lambda p: -len(p[0]))
_OURS_TO_POSTER = sorted(((b, a) for a, b in _poster_renames()), key=lambda p: -len(p[0]))
_POSTER_UNUSED = (
    (r"face_landback\.output_layer\.", _UNUSED_GDC + " (POSTER V2 runs it and discards it)"),
    (r"ir_back\.output_layer\.", _UNUSED_IR_OUTPUT + " (never run by POSTER V2)"),
    (r"VIT\.(patch_embed|CON1|IRLinear1|IRLinear2|eca_block)\.", "dead ViT member in POSTER V2"),
    (r"VIT\.blocks\.\d+\.conv\.", "dead ViT member in POSTER V2 (per-block Conv1d)"),
    (r"attn[123]\.relative_position_index$", "derived index buffer: GReFEL recomputes it"),
)


def _rename(key: str, table: List[Tuple[str, str]]) -> Optional[str]:
    for src, dst in table:  # longest prefix first
        if key == src or (src.endswith(".") and key.startswith(src)):
            return dst + key[len(src):]
    return None


def _map_posterv2(key: str) -> Target:
    for pattern, why in _POSTER_UNUSED:
        if re.match(pattern, key):
            return None, why
    return _rename(key, _POSTER_TO_OURS), None


NormSpec = Tuple[Tuple[float, float, float], Tuple[float, float, float], str]
_EVOLVE_NORM: NormSpec = (
    FACE_EVOLVE_MEAN, FACE_EVOLVE_STD,
    "face.evoLVe trained IR-50 on MS-Celeb-1M with (x - 0.5) / 0.5",
)
_POSTER_NORM: NormSpec = (
    IMAGENET_MEAN, IMAGENET_STD,
    "POSTER V2 trained its whole network on ImageNet-normalised RGB (main.py Normalize)",
)
_MFN_NORM: NormSpec = (
    IMAGENET_MEAN, IMAGENET_STD,
    "it is what POSTER V2 feeds the frozen landmark net (ImageNet-normalised RGB); "
    "pytorch_face_landmark's own MobileFaceNet demo feeds x / 255 without mean/std",
)


@dataclass(frozen=True)
class Layout:
    """One source layout: how its keys map, which of our keys it must provide, its inputs."""

    name: str
    map_key: Callable[[str], Target]
    scope: Tuple[str, ...]  # our key prefixes this layout covers (missing ones are errors)
    norm: Dict[str, NormSpec]  # stream -> (mean, std, why)


_IMAGE_SCOPE = ("image.input_layer.", "image.body1.", "image.body2.", "image.body3.")
LAYOUTS = {
    "evolve_ir50": Layout(
        "face.evoLVe IR-50 (input_layer, body.0-23, output_layer)",
        _map_evolve_ir50, _IMAGE_SCOPE, {"image": _EVOLVE_NORM},
    ),
    "poster_ir50": Layout(
        "POSTER V2 renumbered IR-50 (input_layer, body1/2/3, output_layer)",
        _map_poster_ir50, _IMAGE_SCOPE, {"image": _EVOLVE_NORM},
    ),
    "mobilefacenet": Layout(
        "pytorch_face_landmark MobileFaceNet (conv1 ... conv_6_sep, output_layer)",
        _map_mobilefacenet, ("landmark.",), {"landmark": _MFN_NORM},
    ),
    "posterv2": Layout(
        "POSTER V2 full checkpoint (face_landback, ir_back, conv1-3, window/attn/ffn 1-3, "
        "last_face_conv, embed_q/k/v, VIT)",
        _map_posterv2,
        ("landmark.", "landmark_proj.", "image.", "levels.", "fusion."),
        {"image": _POSTER_NORM, "landmark": _POSTER_NORM},
    ),
}


def _detect(kind: str, keys: List[str], source: str) -> Layout:
    """Pick the layout of `kind` that these keys are in; a clear error (with a hint) if none."""
    def has(pattern: str) -> bool:
        return any(re.match(pattern, k) for k in keys)

    if kind == "ir50" and has(r"body\.\d+\."):
        return LAYOUTS["evolve_ir50"]
    if kind == "ir50" and has(r"body[123]\."):
        return LAYOUTS["poster_ir50"]
    if kind == "mobilefacenet" and has(r"conv_6_sep\.|conv_23\."):
        return LAYOUTS["mobilefacenet"]
    if kind == "posterv2" and has(r"VIT\.|ir_back\.|face_landback\."):
        return LAYOUTS["posterv2"]
    hint = ""
    if has(r"VIT\.|ir_back\.|face_landback\."):
        hint = " They look like a POSTER V2 full checkpoint: use --kind posterv2."
    elif has(r"body\.\d+\.|body[123]\."):
        hint = " They look like an IR-50: use --kind ir50."
    elif has(r"conv_6_sep\."):
        hint = " They look like a MobileFaceNet: use --kind mobilefacenet."
    raise WeightsError(
        f"{source}: no {kind} weights found (first keys: {', '.join(keys[:5]) or 'none'}).{hint}"
    )


# --- the report --------------------------------------------------------------------------------


@dataclass
class ImportReport:
    """Everything an import did and did not do; `errors` non-empty means a strict load failed."""

    source: str
    kind: str
    layout: str
    loaded: List[str] = field(default_factory=list)  # our keys now holding file weights
    not_used: Dict[str, str] = field(default_factory=dict)  # source key -> why GReFEL skips it
    not_imported: Dict[str, str] = field(default_factory=dict)  # source key -> why it can't fit
    missing: List[str] = field(default_factory=list)  # our keys in scope the file lacks
    unexpected: List[str] = field(default_factory=list)  # source keys with no place in GReFEL
    shape_mismatch: List[str] = field(default_factory=list)  # "src -> ours: file (..) vs (..)"
    dropped: List[str] = field(default_factory=list)  # what a lenient load skipped
    random_init: List[str] = field(default_factory=list)  # our module groups left as built
    normalisation: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    file_meta: Dict[str, Any] = field(default_factory=dict)  # epoch, best_acc, ignored entries
    notes: List[str] = field(default_factory=list)
    lenient: bool = False

    @property
    def errors(self) -> List[str]:
        return (
            [f"missing {k}" for k in self.missing]
            + [f"unexpected {k}" for k in self.unexpected]
            + [f"shape {s}" for s in self.shape_mismatch]
        )

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """The one-paragraph error message: counts plus the first keys of each problem."""
        parts = []
        for label, items in (
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("shape-mismatched", self.shape_mismatch),
        ):
            if items:
                more = f" (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
                parts.append(f"{len(items)} {label}: {', '.join(items[:_MAX_LISTED])}{more}")
        return "; ".join(parts)

    def format(self) -> str:
        """Human-readable, every key listed."""
        lines = [
            f"source:   {self.source}",
            f"kind:     {self.kind} -- {self.layout}",
            f"loaded:   {len(self.loaded)} tensors",
        ]
        for k, v in self.file_meta.items():
            lines.append(f"file:     {k} = {v}")
        sections = (
            ("not used by GReFEL", _by_reason(self.not_used)),
            ("not imported (does not fit)", [f"{k}: {v}" for k, v in self.not_imported.items()]),
            ("MISSING", self.missing),
            ("UNEXPECTED", self.unexpected),
            ("SHAPE MISMATCH", self.shape_mismatch),
            ("dropped (--lenient)", self.dropped),
            ("left at random init", self.random_init),
            ("notes", self.notes),
        )
        for title, items in sections:
            if items:
                lines.append(f"{title} ({len(items)}):")
                lines += [f"  {item}" for item in items]
        for stream, spec in self.normalisation.items():
            lines.append(f"{stream} stream input: mean {spec['mean']} std {spec['std']}")
            lines.append(f"  because {spec['why']}")
        return "\n".join(lines)


def _by_reason(keys: Dict[str, str]) -> List[str]:
    """Group {key: reason} as "reason: key, key, ..." lines (every key is listed)."""
    groups: Dict[str, List[str]] = {}
    for key, why in keys.items():
        groups.setdefault(why, []).append(key)
    return [f"{why} ({len(ks)} keys): {', '.join(ks)}" for why, ks in groups.items()]


# --- reading files -----------------------------------------------------------------------------


def read_state_dict(path: PathLike) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Read `path` safely and unwrap it: (flat state dict without `module.`, file metadata)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    try:
        result = safe_load(path)
    except UnsafeFileError as exc:
        raise WeightsError(str(exc)) from None
    meta: Dict[str, Any] = {"read_with": result.method}
    if result.placeholders:
        meta["inert_placeholders"] = list(result.placeholders)
    obj = result.obj
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        meta.update(_describe_wrapper(obj))
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise WeightsError(f"{path}: holds {type(obj).__name__}, not a state dict of tensors")
    if {"state", "param_groups"} <= set(obj):
        raise WeightsError(
            f"{path}: an optimizer state, not model weights (POSTER V2's main.py at 18de559 "
            "writes the optimizer into its model_best file; use the other checkpoint)"
        )
    bad = [str(k) for k, v in obj.items() if not (isinstance(k, str) and torch.is_tensor(v))]
    if bad:
        code = (f" (it calls {', '.join(result.placeholders)}, which grefel never runs: kept "
                "as inert placeholders)" if result.placeholders else "")
        raise WeightsError(f"{path}: entries that are not named tensors: {', '.join(bad[:10])}"
                           + code)
    prefixed = sum(k.startswith("module.") for k in obj)
    if prefixed:
        meta["stripped_prefix"] = f"'module.' removed from {prefixed} keys (DataParallel)"
    state = {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}
    return state, meta


def _read_safetensors(path: Path) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """A .safetensors state dict (no pickle); a `grefel pretrain` sidecar beside it is read too.

    Such a sidecar names the kind of weights, the preset and the input normalisation the stream
    was trained with; a file of one kind passed as the other is refused here.
    """
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from None
    if not state:
        raise WeightsError(f"{path}: holds no tensors")
    meta: Dict[str, Any] = {"read_with": "safetensors"}
    side = path.with_suffix(".json")
    if side.is_file():
        import json

        try:
            doc = json.loads(side.read_text())
        except ValueError as exc:
            raise WeightsError(f"{side}: not valid JSON ({exc})") from None
        if isinstance(doc, dict) and doc.get("format") == PRETRAINED_FORMAT:
            meta.update(pretrained_kind=doc.get("kind"), pretrained_task=doc.get("task"),
                        pretrained_preset=doc.get("preset"),
                        pretrained_normalisation=doc.get("normalisation"),
                        pretrained_metrics=doc.get("metrics"))
    return state, meta


def _check_pretrained(
    meta: Dict[str, Any], kind: str, layout: Optional[Layout], source: str
) -> None:
    """A `grefel pretrain` file must be imported as its own kind, with the normalisation that
    the layout sets being the one the stream was trained with."""
    made_as = meta.get("pretrained_kind")
    if made_as is None:
        return
    if made_as != kind:
        flag = "--pretrained-" + ("mobilefacenet" if made_as == "mobilefacenet" else "ir50")
        raise WeightsError(f"{source}: made by `grefel pretrain {meta.get('pretrained_task')}` "
                           f"({made_as} weights), not {kind}; pass it as {flag}")
    norm = meta.get("pretrained_normalisation") or {}
    for mean, std, _ in (layout.norm.values() if layout is not None else ()):
        if norm and (list(mean) != norm.get("mean") or list(std) != norm.get("std")):
            raise WeightsError(f"{source}: trained with input mean {norm.get('mean')} std "
                               f"{norm.get('std')}, but {kind} imports set mean {list(mean)} "
                               f"std {list(std)}")


def _describe_wrapper(obj: Dict[str, Any]) -> Dict[str, Any]:
    """What else a wrapped checkpoint holds (epoch, best accuracy, ignored objects)."""
    meta: Dict[str, Any] = {}
    for key, value in obj.items():
        if key == "state_dict":
            continue
        if isinstance(value, (int, float, str)):
            meta[key] = value
        elif torch.is_tensor(value) and value.numel() == 1:
            meta[key] = float(value)
        elif isinstance(value, Inert):
            meta[key] = f"ignored ({value._pickled_as}, kept inert)"
        else:
            meta[key] = f"ignored ({type(value).__name__})"
    return meta


# --- the strict, shape-asserting load ----------------------------------------------------------


def _plan(
    model: GReFEL, state: Dict[str, torch.Tensor], layout: Layout, report: ImportReport
) -> Dict[str, str]:
    """Map every source key; fill the report; return {our key: source key} of what fits."""
    own = model.state_dict()
    linear_head = len(model.cfg.head_hidden) == 0
    mapped: Dict[str, str] = {}
    mismatched = set()
    for src, tensor in state.items():
        ours, why = layout.map_key(src)
        if ours is None:
            if why:
                report.not_used[src] = why
            else:
                report.unexpected.append(src)
        elif ours.startswith("head.") and not linear_head:
            report.not_imported[src] = _head_misfit(model, tuple(tensor.shape))
        elif ours not in own:
            report.unexpected.append(f"{src} (-> {ours}, which this model does not have)")
        elif tuple(tensor.shape) != tuple(own[ours].shape):
            mismatched.add(ours)  # reported here, so not again as missing
            report.shape_mismatch.append(
                f"{src} -> {ours}: file {tuple(tensor.shape)} vs model {tuple(own[ours].shape)}"
            )
        else:
            mapped[ours] = src
    in_scope = [k for k in own if k.startswith(layout.scope)]
    for key in in_scope:
        if key in mapped or key in mismatched:
            continue
        if key.endswith("num_batches_tracked"):
            report.notes.append(f"{key}: not in the file, kept at {int(own[key])} (unused in eval)")
        else:
            report.missing.append(key)
    return mapped


def _head_misfit(model: GReFEL, shape: Tuple[int, ...]) -> str:
    hidden = "->".join(str(h) for h in model.cfg.head_hidden)
    return (
        f"POSTER V2's classifier is one Linear {shape}; our primary head is an MLP "
        f"{model.cfg.embed_dim}->{hidden}->{model.cfg.num_classes} (eq. 9), so it is not imported"
        " and the head starts from random init (a linear head, head_hidden=(), takes it as is)"
    )


def _set_normalisation(model: GReFEL, stream: str, mean: Tuple[float, ...], std: Tuple[float, ...]):
    """Write a stream's input normalisation into the config (-> sidecar) and the live buffers."""
    model.cfg = model.cfg.replace(**{f"{stream}_mean": tuple(mean), f"{stream}_std": tuple(std)})
    getattr(model, f"{stream}_mean").copy_(torch.tensor(mean).view(1, 3, 1, 1))
    getattr(model, f"{stream}_std").copy_(torch.tensor(std).view(1, 3, 1, 1))


def _random_groups(model: GReFEL, loaded: List[str]) -> List[str]:
    """Top-level parts of the model (two levels under `image.`) that received no weights."""
    def group(key: str) -> str:
        parts = key.split(".")
        return ".".join(parts[:2]) if parts[0] == "image" else parts[0]

    done = {group(k) for k in loaded}
    return sorted({group(k) for k in model.state_dict()} - done)


def import_state_dict(
    model: GReFEL,
    state: Dict[str, torch.Tensor],
    kind: str,
    source: str = "<state dict>",
    lenient: bool = False,
    file_meta: Optional[Dict[str, Any]] = None,
) -> ImportReport:
    """Load one stream (or the whole POSTER V2 extractor) from an unwrapped state dict.

    Strict by default: any missing, unexpected or mis-shaped key raises `WeightsError` before a
    single tensor is copied. With `lenient=True` the fitting tensors are loaded and the rest is
    listed in `report.dropped`.
    """
    if kind not in KINDS:
        raise WeightsError(f"{source}: unknown kind {kind!r}; choose from {', '.join(KINDS)}")
    _check_pretrained(file_meta or {}, kind, None, source)  # before the key layout's own error
    layout = _detect(kind, list(state), source)
    _check_pretrained(file_meta or {}, kind, layout, source)
    report = ImportReport(source, kind, layout.name, lenient=lenient, file_meta=file_meta or {})
    mapped = _plan(model, state, layout, report)
    if report.errors and not lenient:
        raise WeightsError(
            f"{source}: {kind} weights do not fit the {model.cfg.name} model: {report.summary()}"
            " (see the report; --lenient loads what fits)",
            report,
        )
    report.dropped = report.errors
    # the check of every model reader and writer (grefel.finite), on what is imported
    require_finite({src: state[src] for src in mapped.values()}, source,
                   "broken weights that grefel does not import; use another file",
                   error=WeightsError)
    own = model.state_dict()
    with torch.no_grad():
        for ours, src in mapped.items():
            tensor = state[src]
            if tensor.dtype != own[ours].dtype:
                report.notes.append(f"{src}: {tensor.dtype} cast to {own[ours].dtype}")
            own[ours].copy_(tensor.to(own[ours].dtype))
    report.loaded = sorted(mapped)
    report.random_init = _random_groups(model, report.loaded)
    for stream, (mean, std, why) in layout.norm.items():
        _set_normalisation(model, stream, mean, std)
        report.normalisation[stream] = {"mean": list(mean), "std": list(std), "why": why}
    return report


def import_pretrained(
    model: GReFEL, src_path: PathLike, kind: str, lenient: bool = False
) -> ImportReport:
    """Load pretrained weights of `kind` from `src_path` into an existing model (in place).

    Used by `grefel train --pretrained-ir50 / --pretrained-mobilefacenet`. The stream's input
    normalisation is set to what its weights were trained with (see the module docstring).
    """
    state, meta = read_state_dict(src_path)
    return import_state_dict(model, state, kind, str(src_path), lenient, meta)


def import_weights(
    src_path: PathLike,
    kind: str,
    preset: str = "paper",
    num_classes: Optional[int] = None,
    lenient: bool = False,
    overrides: Optional[Dict[str, Any]] = None,
) -> Tuple[GReFEL, ImportReport]:
    """A new GReFEL of `preset` holding the weights of `src_path`; returns (model in eval, report).

    For a POSTER V2 full checkpoint the class count defaults to the checkpoint's classifier
    (7 or 8) and both streams get ImageNet normalisation. `overrides` are further
    `GReFELConfig` fields, e.g. {"head_hidden": ()} for a linear primary head that takes POSTER
    V2's classifier as it is.
    """
    if kind not in KINDS:
        raise WeightsError(f"{src_path}: unknown kind {kind!r}; choose from {', '.join(KINDS)}")
    state, meta = read_state_dict(src_path)
    _check_pretrained(meta, kind, None, str(src_path))
    _detect(kind, list(state), str(src_path))  # a wrong kind fails before a model is built
    head = state.get("VIT.head.linear.weight")
    values = dict(overrides or {})
    if num_classes is None and kind == "posterv2" and head is not None:
        num_classes = int(head.shape[0])
    if num_classes is not None:
        values["num_classes"] = num_classes
    if kind == "posterv2":
        values.update(image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD,
                      landmark_mean=IMAGENET_MEAN, landmark_std=IMAGENET_STD)
    try:
        cfg = GReFELConfig.preset(preset, **values)
    except ValueError as exc:
        raise WeightsError(f"{src_path}: {exc}") from None
    model = GReFEL(cfg)
    report = import_state_dict(model, state, kind, str(src_path), lenient, meta)
    if kind == "posterv2" and "VIT.head.linear.weight" in report.not_imported:
        report.notes.append(
            "class names: POSTER V2 checkpoints do not store them; the config keeps "
            f"{list(cfg.class_names)}"
        )
    return model.eval(), report


# --- export to the POSTER V2 layout ------------------------------------------------------------


def export_posterv2_state_dict(model: GReFEL) -> Dict[str, torch.Tensor]:
    """Our weights under POSTER V2's `pyramid_trans_expr2` names (no `module.` prefix).

    POSTER V2's dead members are absent (GReFEL does not have them); the relative position
    index buffers are included so the dict also loads into POSTER V2's own model. The primary
    head is exported as `VIT.head.linear` only when it is a single Linear (head_hidden=());
    anchors and the attentive correction have no POSTER V2 counterpart. Tensors share memory
    with the model. POSTER V2 feeds ImageNet-normalised input to both streams.
    """
    linear_head = len(model.cfg.head_hidden) == 0
    out: Dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        no_counterpart = key.startswith(("anchor.", "attentive."))
        if no_counterpart or (key.startswith("head.") and not linear_head):
            continue
        name = _rename(key, _OURS_TO_POSTER)
        if name is None:
            raise WeightsError(f"export: no POSTER V2 name for {key}")
        out[name] = value.detach()
    for i, level in enumerate(model.levels, start=1):
        out[f"attn{i}.relative_position_index"] = level.attn.relative_position_index.clone()
    return out
