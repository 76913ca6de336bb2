"""Click options generated from the settings dataclasses: no option restates a default.

A user setting lives once, as a field of the torch-free dataclass that owns it, declared with
`grefel.ranges.setting(default, help=..., min=..., choices=..., option=...)`: its default, help
text, valid values and option name. An `OptionGroup` turns a dataclass's fields into Click
options and builds the dataclass back from the parsed values (Polygraphy's argument groups:
each group owns its options and builds its object):

    FACE = OptionGroup(FaceAlignment, prefix="face_", skip=("mode",))
    PREDICT = OptionGroup(PredictOptions, nested={"face": FACE})

    @PREDICT
    def predict_command(**params):
        opts = PREDICT.build(params)        # pops its parameters; a PredictOptions

A field's option (`--field-name`):
- type: its declared Range (an IntRange / finite FloatRange), its choices (click.Choice), a
  click.Path for `path="file"|"dir"`, else text;
- a bool: `--name/--no-name` when it defaults to True, the flag `--name` when False (or the
  field's `option`, such as "--fp16/--fp32");
- a nested dataclass field (`PredictOptions.face`) contributes its group's options, so a new
  FaceAlignment field appears in every command whose group nests it (train, eval, predict,
  serve) with no other edit;
- `cli=False` fields get no option (the command sets them from its own options).

Each generated option is a `SettingOption` that knows its dataclass and field (the tests check
that no other option retypes a setting).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Set, Tuple

import click
from click.core import ParameterSource

from grefel.ranges import choices_of, range_type

__all__ = ["OptionGroup", "SettingOption", "groups_of", "was_given"]

GROUPS_ATTR = "__grefel_option_groups__"


class SettingOption(click.Option):
    """A Click option generated from field `field_name` of dataclass `owner`."""

    def __init__(self, *args: Any, owner: type, field_name: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.owner, self.field_name = owner, field_name


def _flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parsed(parse: Callable[[str], Any]) -> Callable[..., Any]:
    """A Click callback applying a field's `parse` (its ValueError: Click's usage line)."""
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None:
            return None
        try:
            return parse(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None

    return callback


def _comma_list(f: dataclasses.Field) -> Callable[[str], Tuple[Any, ...]]:
    """The parser of a tuple field given as "a,b,c": each item one of the field's choices, or a
    positive integer when the default holds integers."""
    allowed = choices_of(f)
    numbers = bool(f.default) and isinstance(f.default[0], int)

    def parse(value: str) -> Tuple[Any, ...]:
        items = [v.strip() for v in str(value).split(",") if v.strip()]
        try:
            got: List[Any] = [int(v) for v in items] if numbers else items
        except ValueError:
            raise ValueError(f"{value!r}: not a comma-separated list of int") from None
        bad = [i for i in got if allowed is not None and i not in allowed]
        if bad:
            raise ValueError(f"{value!r}: choose from {list(allowed or ())}")
        if not got or (numbers and min(got) < 1):
            raise ValueError(f"{value!r}: give at least one positive value")
        return tuple(got)

    return parse


def _option(owner: type, f: dataclasses.Field, param: str, when: str) -> Callable[[Any], Any]:
    """The decorator adding the Click option of field `f` of `owner` (a SettingOption), its
    parameter named `param`."""
    meta = f.metadata
    default = meta.get("cli_default", f.default)
    decls: List[str] = []
    kwargs: Dict[str, Any] = {"help": when + meta["help"], "default": default}
    if default is dataclasses.MISSING:  # a field without a default: the option is required
        del kwargs["default"]
        kwargs["required"] = True
    parse = meta.get("parse")
    if parse is None and isinstance(default, tuple):
        parse, kwargs["default"] = _comma_list(f), ",".join(str(v) for v in default)
    if parse is not None:
        decls.append(str(meta.get("option") or _flag_name(f.name)))
        kwargs["callback"] = _parsed(parse)
        return click.option(*decls, param, cls=SettingOption, owner=owner, field_name=f.name,
                            **kwargs)
    declared = meta.get("option")
    if isinstance(default, bool):
        if declared is None:
            declared = (f"{_flag_name(f.name)}/--no-{f.name.replace('_', '-')}" if default
                        else _flag_name(f.name))
        if "/" not in declared:
            kwargs["is_flag"] = True
    decls.extend(str(declared or _flag_name(f.name)).split())
    choices = choices_of(f)
    if choices is not None:
        kwargs["type"] = click.Choice(list(choices))
    elif "range" in meta:
        kwargs["type"] = range_type(meta["range"])
    elif meta.get("path") is not None:
        kind = meta["path"].replace("existing-", "")
        kwargs["type"] = click.Path(exists=meta["path"].startswith("existing-"),
                                    file_okay=kind != "dir", dir_okay=kind != "file",
                                    path_type=Path if "Path" in str(f.type) else str)
    if default == "":  # an empty path or name: "none" (the help says what that means)
        kwargs["show_default"] = False
    if "help_default" in meta:
        kwargs["help"] += f" [default: {meta['help_default']}]"
        kwargs["show_default"] = False
    return click.option(*decls, param, cls=SettingOption, owner=owner, field_name=f.name,
                        **kwargs)


@dataclasses.dataclass(frozen=True)
class OptionGroup:
    """The options of dataclass `cls`, and the way back to a `cls` (module docstring).

    prefix: put before each parameter name (`face_` keeps a nested group's parameters apart).
    skip: fields that get no option here (e.g. FaceAlignment.mode where only datasets read it).
    only: when given, the only fields that get one (eval's --align-cache of DataConfig).
    when: put before each help text ("[--align-faces detect/auto] ") but those of `plain`.
    nested: field name -> the group of that field's dataclass.
    """

    cls: type
    prefix: str = ""
    skip: Tuple[str, ...] = ()
    only: Optional[Tuple[str, ...]] = None
    when: str = ""
    plain: Tuple[str, ...] = ()
    nested: Mapping[str, OptionGroup] = dataclasses.field(default_factory=dict)

    def _fields(self) -> Iterator[dataclasses.Field]:
        for f in dataclasses.fields(self.cls):
            if f.name in self.skip or (self.only is not None and f.name not in self.only):
                continue
            if f.name in self.nested or f.metadata.get("cli", False):  # a `setting` for the CLI
                yield f

    def options(self) -> List[Callable[[Any], Any]]:
        """The decorators adding the Click options, in the order of the fields (a nested
        group's in its place)."""
        out: List[Callable[[Any], Any]] = []
        for f in self._fields():
            if f.name in self.nested:
                out.extend(self.nested[f.name].options())
            else:
                when = "" if f.name in self.plain else self.when
                out.append(_option(self.cls, f, self.prefix + f.name, when))
        return out

    def params(self) -> Dict[str, str]:
        """Parameter name -> the dotted setting it sets (`face_min_face` -> `face.min_face`)."""
        out: Dict[str, str] = {}
        for f in self._fields():
            if f.name in self.nested:
                out.update({p: f"{f.name}.{s}" for p, s in self.nested[f.name].params().items()})
            else:
                out[self.prefix + f.name] = f.name
        return out

    def __call__(self, func: Callable[..., Any]) -> Callable[..., Any]:
        """Decorate a command callback with the options (and record the group on it)."""
        for option in reversed(self.options()):
            func = option(func)
        setattr(func, GROUPS_ATTR, (*getattr(func, GROUPS_ATTR, ()), self))
        return func

    def build(self, params: Dict[str, Any], **fixed: Any) -> Any:
        """Pop this group's parameters from `params` (a callback's keyword arguments) and
        return the dataclass; `fixed` gives the fields the command sets itself."""
        values: Dict[str, Any] = {}
        for f in self._fields():
            if f.name in self.nested:
                values[f.name] = self.nested[f.name].build(params)
            elif self.prefix + f.name in params:
                values[f.name] = params.pop(self.prefix + f.name)
        return self.cls(**values, **fixed)

    def given(self, ctx: click.Context) -> Set[str]:
        """The dotted settings the command line gave (not left at their defaults)."""
        return {setting for param, setting in self.params().items() if was_given(ctx, param)}

    def given_options(self, ctx: click.Context) -> List[str]:
        """The option names (`--min-face`) of the settings the command line gave."""
        names = self.params()
        return [p.opts[0] for p in ctx.command.params if p.name in names and was_given(ctx, p.name)]


def was_given(ctx: click.Context, param: str) -> bool:
    """The command line (or the environment) gave `param`: it is not at its default."""
    return ctx.get_parameter_source(param) not in (None, ParameterSource.DEFAULT)


def groups_of(command: click.Command) -> Sequence[OptionGroup]:
    """The OptionGroups a command's callback was decorated with."""
    return getattr(command.callback, GROUPS_ATTR, ())
