"""No error escapes as a traceback (issue 27 family 8): the mechanisms, in process.

- grefel.ranges: one declared range per numeric field, read by `__post_init__` and by the CLI's
  option types (grefel.cli.common); no numeric option of a command is left without a range;
- grefel.fileio.write_record: the one `--json` writer, an OSError as one line naming the option;
  devices and FIFOs are written into, never renamed over;
- grefel.cli.main: the net (expected error -> one line, exit 1; bug -> one line + a saved crash
  report; Ctrl-C -> 130; a closed stdout -> quiet).
"""

from __future__ import annotations

import dataclasses
import errno
import math
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, List

import click
import pytest
from click.testing import CliRunner

from export.options import ExportOptions, TritonRepoOptions
from grefel import cli as cli_module
from grefel.cli import cli, main
from grefel.config import (
    DataConfig,
    FaceAlignment,
    GReFELConfig,
    PretrainConfig,
    TrainConfig,
)
from grefel.errors import ConfigError, GrefelError, OutputPathError
from grefel.fileio import atomic_write_json, write_record
from grefel.predict import OutputError, PredictOptions, RecordWriter
from grefel.ranges import Range, check_ranges, click_type, range_of
from grefel.serve import ServeOptions

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("train", "eval", "predict", "export", "bench", "serve", "pretrain landmarks",
            "pretrain identity", "data synth", "weights import")
SETTINGS = (GReFELConfig, DataConfig, TrainConfig, FaceAlignment, PredictOptions, ServeOptions,
            ExportOptions, TritonRepoOptions)


def _command(path: str) -> click.Command:
    cmd: Any = cli
    for part in path.split():
        cmd = cmd.commands[part]
    return cmd


# --- ranges -------------------------------------------------------------------------------


def _every_command(group: click.Group = cli, prefix: str = "") -> List[str]:
    out: List[str] = []
    for name, cmd in sorted(group.commands.items()):
        path = f"{prefix} {name}".strip()
        out += _every_command(cmd, path) if isinstance(cmd, click.Group) else [path]
    return out


@pytest.mark.parametrize("path", _every_command())
def test_every_numeric_option_has_a_range(path: str) -> None:
    """A plain INT / FLOAT option accepts -1, nan or 1e30 and fails deep inside the library,
    and a plain click.FloatRange accepts nan and inf (`check --time-limit nan`): every numeric
    option of every command carries a range type, its floats finite (grefel.ranges)."""
    from grefel.ranges import range_type

    finite = type(range_type(Range(kind=float)))
    bare = [p.opts[0] for p in _command(path).params
            if isinstance(p, click.Option) and (p.type in (click.INT, click.FLOAT) or (
                isinstance(p.type, click.FloatRange) and not isinstance(p.type, finite)))]
    assert not bare, f"grefel {path}: numeric options without a (finite) range: {bare}"


def test_settings_defaults_pass_their_own_ranges() -> None:
    for cls in SETTINGS:
        check_ranges(cls() if cls is not GReFELConfig else GReFELConfig.preset("tiny"))
    check_ranges(PretrainConfig(task="landmarks", data="d", out="o.safetensors"))


@pytest.mark.parametrize("cls,field,bad", [
    (TrainConfig, "head_dropout", 1.5), (TrainConfig, "anchors_per_class", 0),
    (TrainConfig, "threads", -1), (TrainConfig, "lambda_cls", -1.0),
    (TrainConfig, "lr", math.inf), (TrainConfig, "gamma", math.nan),
    (TrainConfig, "epochs", 2.5), (DataConfig, "batch_size", 1), (DataConfig, "workers", -1),
    (PredictOptions, "threshold", 1.5), (PredictOptions, "threads", 0),
    (ServeOptions, "http_port", 70000), (ExportOptions, "workspace_gib", -1.0),
    (GReFELConfig, "delta", 0.0), (FaceAlignment, "margin", -0.1),
])
def test_library_refuses_what_its_range_refuses(cls: type, field: str, bad: Any) -> None:
    with pytest.raises(ConfigError, match=f"{field}: ") as info:
        cls(**{field: bad}) if cls is not GReFELConfig else GReFELConfig.preset("tiny", **{
            field: bad})
    assert isinstance(info.value, ValueError)  # callers that catch ValueError keep working


def test_pretrain_config_refuses_out_of_range() -> None:
    with pytest.raises(ConfigError, match="lr: inf is not a finite number"):
        PretrainConfig(task="identity", data="d", out="o.safetensors", lr=math.inf)


@pytest.mark.parametrize("argv,option,rule", [
    (["train", "--head-dropout", "1.5"], "--head-dropout", "1.5 is not in the range 0<=x<1"),
    (["train", "--anchors-per-class", "0"], "--anchors-per-class", "0 is not in the range x>=1"),
    (["train", "--lambda-cls", "-1"], "--lambda-cls", "-1.0 is not in the range x>=0"),
    (["train", "--lr", "nan"], "--lr", "nan is not a finite number"),
    (["train", "--threads", "-1"], "--threads", "-1 is not in the range 0<=x<=1024"),
    (["predict", "x.jpg", "--threads", "-1"], "--threads", "-1 is not in the range"),
    (["predict", "x.jpg", "--smooth", "inf"], "--smooth", "inf is not in the range 0<=x<1"),
    (["eval", "--data", "d", "--workers", "-3"], "--workers", "-3 is not in the range"),
    (["export", "--workspace", "-2"], "--workspace", "-2.0 is not in the range x>0"),
    (["bench", "--seconds", "inf"], "--seconds", "inf is not a finite number"),
    (["serve", "--queue-delay-us", "1.5"], "--queue-delay-us", "'1.5' is not a valid integer"),
    (["pretrain", "identity", "--data", "d", "--out", "o.safetensors", "--head-margin", "1"],
     "--head-margin", "1.0 is not in the range 0<=x<1"),
    (["data", "synth", "--out", "o", "--seed", "-1"], "--seed", "-1 is not in the range"),
])
def test_cli_refuses_out_of_range_while_parsing(argv: List[str], option: str, rule: str) -> None:
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.output and rule in result.output


@pytest.mark.parametrize("name,says", [("", "empty"), ("a/b", "folder separator"),
                                       ("..", "starts with a dot")])
def test_export_name_is_one_plain_stem(name: str, says: str) -> None:
    """`--name ''` fell back to the source's stem, exit 0; `--name ..` wrote `...checks.json`."""
    from export.options import ExportOptions

    result = CliRunner().invoke(cli, ["export", "m.onnx", f"--name={name}"])
    assert result.exit_code == 2 and "Invalid value for '--name'" in result.output
    assert says in result.output
    with pytest.raises(ValueError, match=f"name: .*{says}"):
        ExportOptions(name=name)


def test_cli_types_come_from_the_dataclass() -> None:
    """The option's bounds are the field's: change the field's Range, the option follows."""
    option = next(p for p in _command("train").params if p.name == "head_dropout")
    rule = range_of(TrainConfig, "head_dropout")
    assert (option.type.min, option.type.max, option.type.max_open) == (
        rule.min, rule.max, rule.max_open)
    assert rule == range_of(GReFELConfig, "head_dropout")  # the override keeps its target's
    made = click_type(DataConfig, "workers")
    assert isinstance(made, click.IntRange) and (made.min, made.max) == (0, 256)


def test_range_messages() -> None:
    r = Range(kind=int, min=1)
    assert r.problem(0) == "0 is not in the range x>=1" and r.problem(3) == ""
    assert r.problem(2.0) == "2.0 is not a valid integer" and "not a number" in r.problem(True)
    f = Range(kind=float, min=0, max=1, max_open=True)
    assert f.problem(math.nan) == "nan is not a finite number" and f.problem(0.5) == ""


# --- the one --json writer ----------------------------------------------------------------


def test_write_record_names_option_and_path(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(OutputPathError, match=r"^--json .*a_file/r\.json: cannot write \(a "
                                              r"file stands where its folder should be\)"):
        write_record(blocker / "r.json", {"a": 1})
    assert blocker.read_text() == "x"


def test_write_record_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(path: Any, obj: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr("grefel.fileio.atomic_write_json", full)
    with pytest.raises(OutputPathError, match="No space left on device"):
        write_record(tmp_path / "r.json", {"a": 1}, option="--json")


def test_every_json_option_goes_through_the_one_writer() -> None:
    """No command writes its --json record with its own code (there were 7 copies with three
    error handlings): the CLI's sources call write_json and nothing else."""
    source = "".join(f.read_text() for f in Path(cli_module.__file__).parent.glob("*.py"))
    assert "atomic_write_json(json_path" not in source
    assert source.count(" write_json(json_path") >= 8


def test_atomic_write_into_a_fifo_keeps_the_fifo(tmp_path: Path) -> None:
    """A FIFO (a shell's >(...)) or device is written into; a rename over it would replace it
    with a plain file (as root, `--json /dev/null` replaced the device)."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: List[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    atomic_write_json(fifo, {"a": 1})
    reader.join(timeout=10)
    assert got and b'"a": 1' in got[0]
    assert fifo.is_fifo()


def test_records_file_full_at_close_is_an_output_error() -> None:
    class Full:
        def close(self) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OutputError, match="--out p.jsonl: cannot write records \\(No space"):
        RecordWriter.close_stream(Full(), "--out p.jsonl")  # type: ignore[arg-type]


# --- the net in main() --------------------------------------------------------------------


@pytest.fixture
def boom(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A temporary `grefel boom` command that raises what the test puts in `raised`."""
    raised: List[BaseException] = []

    @click.command("boom")
    def command() -> None:
        raise raised[0]

    cli.add_command(command)
    try:
        yield raised
    finally:
        cli.commands.pop("boom", None)


def _main(argv: List[str], capsys: pytest.CaptureFixture) -> Any:
    with pytest.raises(SystemExit) as info:
        main(argv)
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


@pytest.mark.parametrize("exc,line", [
    (ConfigError("invalid TrainConfig: lr: inf is not a finite number"),
     "Error: invalid TrainConfig: lr: inf is not a finite number"),
    (OSError(errno.EACCES, "Permission denied", "/x/y.json"),
     "Error: /x/y.json: Permission denied"),
    (OutputPathError("--json /dev/full: cannot write (No space left on device)"),
     "Error: --json /dev/full: cannot write (No space left on device)"),
])
def test_expected_errors_are_one_line(boom: Any, capsys: pytest.CaptureFixture, exc: Exception,
                                      line: str) -> None:
    boom.append(exc)
    code, out, err = _main(["boom"], capsys)
    assert code == 1 and err.strip() == line and "Traceback" not in out + err


def test_library_errors_share_one_base() -> None:
    from export import ExportError
    from grefel.checkpoint import CheckpointError
    from grefel.data import DatasetError
    from grefel.evaluate import EvalError
    from grefel.runtime import BackendError
    from grefel.train_state import TrainingError
    from grefel.weights import WeightsError

    for cls in (CheckpointError, DatasetError, EvalError, TrainingError, ExportError,
                WeightsError, BackendError, OutputError, ConfigError):
        assert issubclass(cls, GrefelError), cls


def test_unexpected_error_saves_a_report(boom: Any, capsys: pytest.CaptureFixture,
                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GREFEL_CRASH_DIR", str(tmp_path / "crash"))
    boom.append(ZeroDivisionError("division by zero\nsecond line"))
    code, out, err = _main(["boom"], capsys)
    reports = list((tmp_path / "crash").glob("*.txt"))
    assert code == 1 and len(reports) == 1
    assert err.strip() == (f"Error: internal error (ZeroDivisionError: division by zero); a "
                           f"report was saved to {reports[0]}")
    text = reports[0].read_text()
    assert "Traceback (most recent call last)" in text and "ZeroDivisionError" in text
    assert "boom" in text.split("command: ")[1].splitlines()[0]
    assert "python: " in text and "grefel " in text and "platform: " in text


def test_crash_dir_default_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from grefel.crash import crash_dir

    monkeypatch.delenv("GREFEL_CRASH_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert crash_dir() == tmp_path / "grefel" / "crash"


def test_unsaved_report_shows_the_traceback(boom: Any, capsys: pytest.CaptureFixture,
                                            tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    monkeypatch.setenv("GREFEL_CRASH_DIR", str(blocker / "crash"))
    boom.append(KeyError("k"))
    code, out, err = _main(["boom"], capsys)
    assert code == 1 and "Traceback" in err and "could not be saved" in err.splitlines()[-1]


def test_ctrl_c_is_interrupted_130(boom: Any, capsys: pytest.CaptureFixture) -> None:
    boom.append(KeyboardInterrupt())
    code, out, err = _main(["boom"], capsys)
    assert code == 130 and err.strip().splitlines()[-1] == "interrupted"


def test_usage_errors_keep_clicks_exit_2(capsys: pytest.CaptureFixture) -> None:
    code, out, err = _main(["train", "--head-dropout", "1.5"], capsys)
    assert code == 2 and "Invalid value for '--head-dropout'" in err


def test_missing_optional_package_keeps_its_line(boom: Any,
                                                 capsys: pytest.CaptureFixture) -> None:
    err_missing = ModuleNotFoundError("No module named 'tensorrt'", name="tensorrt")
    boom.append(err_missing)
    code, out, err = _main(["boom"], capsys)
    assert code == 1 and err.startswith("Error: this command needs tensorrt, which is not "
                                        "installed.")


def test_closed_stdout_is_a_quiet_exit(tmp_path: Path) -> None:
    """`grefel ... | head`: the reader is gone before the records are written."""
    read, write = os.pipe()
    os.close(read)
    proc = subprocess.run([sys.executable, "-m", "grefel", "--help"], stdout=write,
                          stderr=subprocess.PIPE, cwd=ROOT, timeout=60)
    os.close(write)
    assert proc.returncode != 0 and proc.stderr.decode().strip() == ""


def test_a_closed_stdout_descriptor_is_one_line_for_predict(tmp_path: Path) -> None:
    """`grefel predict x.jpg >&-`: descriptor 1 closed, sys.stdout is None; it was an internal
    error (AttributeError) with a crash report."""
    from tools.fault_corpus import mini_onnx

    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(image)
    proc = subprocess.run(
        [sys.executable, "-m", "grefel", "predict", str(image), "-w",
         str(mini_onnx(tmp_path / "m.onnx")), "--aligned"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT, timeout=120,
        preexec_fn=lambda: os.close(1))
    errors = [x for x in proc.stderr.decode().splitlines() if x.startswith("Error:")]
    assert proc.returncode == 1 and len(errors) == 1, proc.stderr.decode()
    assert "standard output is closed" in errors[0] and "--out FILE" in errors[0]


def test_option_defaults_still_match_the_dataclasses() -> None:
    """Moving ranges into field metadata keeps the defaults the CLI reads."""
    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    assert fields["lr"] == 3e-4 and fields["head_dropout"] is None
    assert PredictOptions().face.det_size == FaceAlignment.det_size == 640


@pytest.mark.parametrize("name, value, argv", [
    ("GREFEL_MAX_PIXELS", "lots", ["eval", "--data", "d", "x.onnx"]),
    ("GREFEL_MAX_PIXELS", "-5", ["serve", "-w", "x.onnx"]),
    ("GREFEL_CUDA", "bogus", ["check"]),
])
def test_a_bad_environment_variable_is_one_line_before_any_command(
        name: str, value: str, argv: List[str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    """GREFEL_MAX_PIXELS=lots made eval call every image unreadable and serve start as if
    nothing were wrong; GREFEL_CUDA=bogus went unsaid until an engine ran: every GREFEL_*
    variable is checked once, by main, naming it (grefel.environment)."""
    from grefel import cli as cli_module

    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_:
        cli_module.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 1 and len(err) == 1 and err[0].startswith(f"Error: {name}="), err


def test_cuda_graph_on_a_model_that_is_no_engine_is_said(tmp_path: Path, caplog) -> None:
    from grefel.runtime import open_backend
    from tools.fault_corpus import mini_onnx

    with caplog.at_level("WARNING", logger="grefel.runtime"):
        backend = open_backend(mini_onnx(tmp_path / "m.onnx"), cuda_graph=True)
    assert backend.name and "--cuda-graph replays TensorRT engines only" in caplog.text
