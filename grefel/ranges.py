"""Declared ranges of numeric settings: one rule per field, read by the library and the CLI.

A numeric field of a settings dataclass (grefel.config's GReFELConfig, DataConfig, TrainConfig,
PretrainConfig, FaceAlignment; PredictOptions, ServeOptions, ExportOptions, ...) declares its
valid values once, as field metadata:

    head_dropout: float = ranged(0.5, min=0, max=1, max_open=True)

Two readers derive from that one declaration, so they cannot disagree:

- `check_ranges(self)` in the dataclass's `__post_init__` refuses a bad value when the class is
  used as a library (ConfigError: "head_dropout: 1.5 is not in the range 0<=x<1");
- `click_type(cls, name)` builds the Click type of the matching command-line option, so a bad
  value is refused while the command line is parsed, before anything is loaded, with Click's
  usual "Error: Invalid value for '--head-dropout': 1.5 is not in the range 0<=x<1." line.

A float must also be finite (nan and inf are refused everywhere: no setting means anything at
nan, and an infinite learning rate or time budget is a mistake, not a request); an int field
refuses a float ("1.5 is not a valid integer"). Torch-free and Click-free at import time.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type, Union

from grefel.errors import ConfigError

__all__ = [
    "Range", "check_choices", "check_ranges", "choices_of", "click_type", "range_of", "range_type",
    "ranged", "setting",
]

Number = Union[int, float]


@dataclass(frozen=True)
class Range:
    """The valid values of one numeric field: `kind` (int or float) between `min` and `max`
    (None: unbounded; *_open: the bound itself is excluded). None as a value is allowed only
    where the field's default is None (an Optional field: "not set")."""

    kind: type
    min: Optional[Number] = None
    max: Optional[Number] = None
    min_open: bool = False
    max_open: bool = False

    def describe(self) -> str:
        """The rule as Click writes it: "x>=1", "0<=x<1", "x>0"."""
        if self.min is None and self.max is None:
            return "any finite number"
        if self.min is None:
            return f"x{'<' if self.max_open else '<='}{self.max}"
        if self.max is None:
            return f"x{'>' if self.min_open else '>='}{self.min}"
        return (f"{self.min}{'<' if self.min_open else '<='}x"
                f"{'<' if self.max_open else '<='}{self.max}")

    def problem(self, value: Any) -> str:
        """What is wrong with `value` ("" when it is valid; None is the caller's to judge)."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{value!r} is not a number"
        if self.kind is int and not isinstance(value, int):
            return f"{value!r} is not a valid integer"
        if not math.isfinite(value):
            return f"{value} is not a finite number"
        low = self.min is not None and (value <= self.min if self.min_open else value < self.min)
        high = self.max is not None and (value >= self.max if self.max_open else value > self.max)
        if low or high:
            return f"{value} is not in the range {self.describe()}"
        return ""


def ranged(default: Any, *, kind: Optional[type] = None, min: Optional[Number] = None,
           max: Optional[Number] = None, min_open: bool = False, max_open: bool = False,
           like: Optional[Range] = None) -> Any:
    """A dataclass field with `default` and a declared Range (see the module docstring).

    kind: int or float; taken from `default` unless it is None. like: reuse another field's
    Range (`range_of(GReFELConfig, "head_dropout")`), so an override field keeps its target's
    rule.
    """
    if like is None:
        kind = kind or type(default)
        if kind not in (int, float):
            raise TypeError(f"ranged() needs an int or float default or kind, got {kind!r}")
        like = Range(kind=kind, min=min, max=max, min_open=min_open, max_open=max_open)
    return dataclasses.field(default=default, metadata={"range": like})


def setting(default: Any = dataclasses.MISSING, *, help: str, kind: Optional[type] = None,
            min: Optional[Number] = None, max: Optional[Number] = None, min_open: bool = False,
            max_open: bool = False, like: Optional[Range] = None,
            choices: Union[Sequence[str], Callable[[], Sequence[str]], None] = None,
            option: Optional[str] = None, path: Optional[str] = None,
            default_factory: Any = dataclasses.MISSING, cli: bool = True,
            help_default: Optional[str] = None, parse: Optional[Callable[[str], Any]] = None,
            cli_default: Any = dataclasses.MISSING) -> Any:
    """A user setting: a dataclass field that is the one home of its default, its help text and
    its valid values; the command-line option is generated from it (grefel.cli.options), so
    nothing restates them.

    help: the option's help text (one sentence or two; the default is shown by Click).
    kind / min / max / *_open / like: a numeric field's declared Range (see `ranged`); a numeric
        default (or `kind`) always declares one, unbounded when no bound is given.
    choices: the allowed strings, or a function returning them (read when the CLI is built, so
        a list that lives in a heavier module is not imported with the dataclass).
    option: the option's declaration when it is not the field name ("--fp16/--fp32", "-w");
        by default `--field-name` (a bool: `--name/--no-name` when it defaults to True, else the
        flag `--name`).
    path: "file" or "dir" for a path option (Click checks what it may be).
    cli: False for a field no command line sets (a library-only setting).
    help_default: what the help shows as the default when the value itself says little
        ("$GREFEL_MAX_PIXELS, else 89,478,485").
    parse: the option is text, turned into the value by this function (a ValueError is Click's
        "Invalid value" line): "auto" for None, a name checked by a rule of its own.
    cli_default: the option's default where the command line's differs from the library's on
        purpose (export's --out: a new run folder, where the library writes to engines/).

    A tuple default is a comma-separated list on the command line, each item checked against
    the field's choices (strings) or taken as a positive integer.
    """
    metadata: Dict[str, Any] = {"help": help, "cli": cli}
    numeric = kind in (int, float) or (kind is None and isinstance(default, (int, float))
                                       and not isinstance(default, bool))
    if like is not None or numeric:
        if like is None:
            like = Range(kind=kind or type(default), min=min, max=max, min_open=min_open,
                         max_open=max_open)
        metadata["range"] = like
    for key, value in (("choices", choices), ("option", option), ("path", path),
                       ("help_default", help_default), ("parse", parse)):
        if value is not None:
            metadata[key] = value
    if cli_default is not dataclasses.MISSING:
        metadata["cli_default"] = cli_default
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def choices_of(field: dataclasses.Field) -> Optional[Tuple[str, ...]]:
    """The allowed values of a `setting` field (None: any), its function called if it is one."""
    choices = field.metadata.get("choices")
    if choices is None:
        return None
    return tuple(choices() if callable(choices) else choices)


def check_choices(obj: Any, *, functions: bool = False) -> None:
    """Raise ConfigError for a field of `obj` whose value is not one of its declared choices.
    A list given as a function is checked only with `functions` (calling it may import the
    module that holds the list: the caller says when that is wanted)."""
    problems = []
    for f in dataclasses.fields(obj):
        if callable(f.metadata.get("choices")) and not functions:
            continue
        allowed, value = choices_of(f), getattr(obj, f.name)
        if allowed is not None and value not in allowed and not (
                value is None and f.default is None):
            problems.append(f"{f.name} must be one of {', '.join(allowed)}, got {value!r}")
    if problems:
        raise ConfigError(f"invalid {type(obj).__name__}: " + "; ".join(problems))


def range_of(cls: Type[Any], name: str) -> Range:
    """The declared Range of field `name` of dataclass `cls` (KeyError when it has none)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.metadata["range"]
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def check_ranges(obj: Any) -> None:
    """Raise ConfigError listing every field of `obj` outside its declared Range; None passes
    where the field's default is None. Call it first in `__post_init__`."""
    problems: List[str] = []
    for f in dataclasses.fields(obj):
        rule = f.metadata.get("range")
        if rule is None:
            continue
        value = getattr(obj, f.name)
        if value is None and f.default is None:
            continue
        if rule.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        why = rule.problem(value)
        if why:
            problems.append(f"{f.name}: {why}")
    if problems:
        raise ConfigError(f"invalid {type(obj).__name__}: " + "; ".join(problems))


def click_type(cls: Type[Any], name: str) -> Any:
    """The Click type of the option for field `name` of `cls`: an IntRange / FloatRange with the
    field's declared bounds (a float type also refuses nan and inf), so the command line refuses
    what the dataclass would, with Click's own message, while parsing."""
    return range_type(range_of(cls, name))


def range_type(rule: Range) -> Any:
    """The Click type of `rule` (see click_type); for an option whose value no dataclass owns."""
    import click

    bounds = dict(min=rule.min, max=rule.max, min_open=rule.min_open, max_open=rule.max_open)
    if rule.kind is int:
        return click.IntRange(**bounds)
    return _finite_float_range()(**bounds)


@functools.lru_cache(maxsize=None)
def _finite_float_range() -> type:
    """click.FloatRange that also refuses nan and inf (which pass its comparisons); made on
    first use, so importing this module does not import Click."""
    import click

    class FiniteFloatRange(click.FloatRange):
        def convert(self, value: Any, param: Any, ctx: Any) -> Any:
            rv = super().convert(value, param, ctx)
            if not math.isfinite(rv):
                self.fail(f"{rv} is not a finite number.", param, ctx)
            return rv

    return FiniteFloatRange
