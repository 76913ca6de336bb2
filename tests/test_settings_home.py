"""Every user setting has one home: a field of the dataclass that owns it, and the options are
generated from it (grefel.cli.options; issue 28).

- no option of a command whose settings are generated restates one of them by hand, and every
  generated option's default, range and choices are the field's;
- every settings dataclass (a class with `setting` fields) is generated into some command;
- a new FaceAlignment field, written once in grefel/config.py, is an option of train, eval,
  pretrain, predict and serve, and its value reaches the FaceAlignment each command runs with
  (run on a copy of the sources with the field added);
- the face settings of a run saved before they were nested still load and resume.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Iterator, List, Tuple

import click
import pytest

from grefel.cli import cli
from grefel.cli.options import SettingOption, groups_of
from grefel.config import DataConfig, FaceAlignment, TrainConfig, upgrade_data_dict
from grefel.ranges import choices_of

ROOT = Path(__file__).resolve().parent.parent


def _commands(group: click.Group = cli, path: str = "") -> Iterator[Tuple[str, click.Command]]:
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, f"{path}{name} ")
        else:
            yield f"{path}{name}", command


def _setting_classes() -> List[type]:
    """Every dataclass of the product whose fields are `setting`s (with help text)."""
    import importlib

    found = []
    for module in ("grefel.config", "grefel.predict", "grefel.serve", "export.options",
                   "benchmarks.options", "grefel.evaluate", "benchmarks.check"):
        try:
            mod = importlib.import_module(module)
        except ImportError:  # a module that needs torch where it is not installed
            continue
        for obj in vars(mod).values():
            if (isinstance(obj, type) and dataclasses.is_dataclass(obj)
                    and obj.__module__ == module
                    and any(f.metadata.get("cli") for f in dataclasses.fields(obj))):
                found.append(obj)
    return found


def test_no_option_retypes_a_generated_setting() -> None:
    checked = 0
    for name, command in _commands():
        groups = groups_of(command)
        owned = {p for g in groups for p in g.params()}
        for param in command.params:
            if isinstance(param, SettingOption):
                field = next(f for f in dataclasses.fields(param.owner)
                             if f.name == param.field_name)
                want = field.metadata.get("cli_default", field.default)
                if isinstance(want, tuple):  # a list option: "a,b" on the command line
                    want = ",".join(str(v) for v in want)
                if want is dataclasses.MISSING:  # no default: the option is required
                    assert param.required, (name, param.name)
                else:
                    assert param.default == want, (name, param.name)
                if choices_of(field) is not None and "parse" not in field.metadata \
                        and not isinstance(field.default, tuple):
                    assert list(param.type.choices) == list(choices_of(field)), (name, param.name)
                if "range" in field.metadata and "parse" not in field.metadata:
                    assert (param.type.min, param.type.max) == (
                        field.metadata["range"].min, field.metadata["range"].max), param.name
                checked += 1
            else:
                assert param.name not in owned, (
                    f"grefel {name}: {param.opts[0]} is declared by hand, but it is a generated "
                    "setting")
    assert checked >= 30


def test_every_settings_dataclass_is_generated_into_a_command() -> None:
    used = {g.cls for _, c in _commands() for g in groups_of(c)}
    used |= {n.cls for _, c in _commands() for g in groups_of(c) for n in g.nested.values()}
    missing = [c.__name__ for c in _setting_classes() if c not in used]
    assert not missing, f"settings dataclasses whose options are not generated: {missing}"
    assert {FaceAlignment} <= used


def test_the_face_options_are_one_group_in_every_command_that_finds_faces() -> None:
    face_fields = {f.name for f in dataclasses.fields(FaceAlignment)} - {"mode"}
    for name in ("train", "eval", "pretrain landmarks", "pretrain identity", "predict", "serve"):
        command = dict(_commands())[name]
        got = {p.field_name for p in command.params
               if isinstance(p, SettingOption) and p.owner is FaceAlignment}
        assert face_fields <= got, name


NEW_FIELD = '''
    blur_px: int = setting(0, min=0, max=9, help="Blur the face by this many pixels (test).")
'''

# Each command, run with the new option, hands its FaceAlignment to a stand-in for the library
# call, which prints the field's value.
PROBE = textwrap.dedent('''
    import sys
    from pathlib import Path

    import grefel
    here = Path.cwd().parent.resolve()
    assert Path(grefel.__file__).resolve().is_relative_to(here), grefel.__file__
    from click.testing import CliRunner

    import grefel.predict, grefel.serve, grefel.train, grefel.evaluate
    from grefel.cli import cli

    def show(face):
        print("GOT", face.blur_px)
        raise SystemExit(0)

    grefel.predict.run_predict = lambda src, weights, opts, **kw: show(opts.face)
    grefel.serve.serve = lambda weights, opts, **kw: show(opts.face)
    grefel.train.run_training = lambda d, t: show(d.face)
    grefel.evaluate.evaluate_model = lambda *a, **kw: show(kw["alignment"])
    Path("m.onnx").write_bytes(b"x")
    Path("data").mkdir()
    Path("img.png").write_bytes(b"x")
    runs = {
        "train": ["train", "--data", "data", "--align-faces", "detect", "--out", "r"],
        "eval": ["eval", "m.onnx", "--data", "data", "--align-faces", "detect", "--out", "e"],
        "predict": ["predict", "img.png", "-w", "m.onnx"],
        "serve": ["serve", "-w", "m.onnx", "--out", "s"],
    }
    for name, argv in runs.items():
        helped = CliRunner().invoke(cli, [argv[0], "--help"])
        assert "--blur-px" in helped.output, (name, helped.output)
        res = CliRunner().invoke(cli, argv + ["--blur-px", "7"])
        print(name, res.exit_code, res.output.strip().splitlines()[-1:])
''')


def _copy_sources(dest: Path) -> None:
    big = shutil.ignore_patterns("*.onnx", "*.safetensors", "*.tflite", "__pycache__",
                                 "results")
    for package in ("grefel", "export", "benchmarks"):
        shutil.copytree(ROOT / package, dest / package, ignore=big)


def test_a_new_face_setting_is_one_field(tmp_path: Path) -> None:
    """One field added to FaceAlignment (nothing else edited) is an option of train, eval,
    predict and serve, and reaches the FaceAlignment each of them runs with."""
    _copy_sources(tmp_path)
    config = tmp_path / "grefel" / "config.py"
    source = config.read_text()
    anchor = "    min_face: int = setting("
    assert source.count(anchor) == 1
    at = source.index("\n", source.index('help="Smallest face side kept', source.index(anchor)))
    config.write_text(source[:at + 1] + NEW_FIELD.lstrip("\n") + source[at + 1:])
    work = tmp_path / "work"
    work.mkdir()
    (work / "probe.py").write_text(PROBE)
    proc = subprocess.run([sys.executable, "probe.py"], cwd=work, capture_output=True, text=True,
                          env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin",
                               "HOME": str(tmp_path)}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines() == [f"{name} 0 ['GOT 7']"
                                        for name in ("train", "eval", "predict", "serve")]


def test_old_flat_face_keys_of_a_saved_run_still_load() -> None:
    old = {"root": "x", "align_faces": "detect", "face_detector": "haar", "face_det_size": 320,
           "face_align": False, "face_margin": 0.1, "face_min_face": 24}
    d = DataConfig.from_dict(old)
    assert d.face == FaceAlignment(mode="detect", detector="haar", det_size=320, align=False,
                                   margin=0.1, min_face=24)
    assert upgrade_data_dict(dataclasses.asdict(d)) == dataclasses.asdict(d)


def test_a_run_saved_with_flat_face_keys_resumes_and_names_a_changed_one(tmp_path: Path) -> None:
    from grefel.train import _check_out

    out = tmp_path / "run"
    out.mkdir()
    (out / "last.state.pt").write_bytes(b"")
    d = DataConfig(root="x", face=FaceAlignment(mode="detect", min_face=24))
    t = TrainConfig(out=str(out), resume=True)
    now = {"model": {}, "data": json.loads(json.dumps(dataclasses.asdict(d))),
           "train": json.loads(json.dumps(dataclasses.asdict(t)))}
    saved = json.loads(json.dumps(now))
    flat = saved["data"].pop("face")
    saved["data"].update({"align_faces": flat.pop("mode"),
                          **{f"face_{k}": v for k, v in flat.items()}})
    (out / "config.json").write_text(json.dumps(saved))
    assert _check_out(out, t, now) == {}
    now["data"]["face"]["min_face"] = 30
    with pytest.raises(Exception, match=r"data\.face\.min_face: run 24, now 30"):
        _check_out(out, t, now)


def test_set_overrides_take_the_nested_and_the_old_keys() -> None:
    from grefel.train import apply_overrides

    d, t = apply_overrides(DataConfig(), TrainConfig(),
                           ["data.face.min_face=20", "data.face_det_size=320"])
    assert (d.face.min_face, d.face.det_size) == (20, 320)
