"""`grefel export ... --triton DIR`: the model repository, its config parsed by Triton's own
model-config protobuf (shipped in tritonclient: tritonclient.grpc.model_config_pb2)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest
import test_runtime as rt  # the seeded tiny model files
import triton_rules  # Triton's loading rules, for what a (killed) export leaves
from click.testing import CliRunner

import export.triton as triton
from export import ExportError
from export.triton import write_model_repository
from grefel.cli import cli

models = rt.models

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
text_format = pytest.importorskip("google.protobuf.text_format")


def parse(path: Path):
    """config.pbtxt -> tritonclient's ModelConfig message (text_format.Parse rejects unknown
    fields, wrong types and unknown enum values)."""
    return text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())


def _block_tensorrt(mp: pytest.MonkeyPatch) -> None:
    for name in ("tensorrt", "pycuda", "pycuda.driver", "pycuda.autoinit"):
        mp.setitem(sys.modules, name, None)


def test_cli_onnx_repository_parses_with_tritons_protobuf(models, tmp_path):
    repo = tmp_path / "repo"
    with pytest.MonkeyPatch.context() as mp:
        _block_tensorrt(mp)
        result = CliRunner().invoke(cli, [
            "export", str(models["onnx"]), "--fp32", "--onnx-only", "--max-batch", "16",
            "--out", str(tmp_path / "engines"), "--triton", str(repo),
            "--triton-instances", "2", "--triton-queue-delay-us", "500",
        ])  # fmt: skip
    assert result.exit_code == 0, result.output
    folder = repo / "grefel"
    assert str(folder / "config.pbtxt") in result.output
    cfg = parse(folder / "config.pbtxt")
    T = model_config_pb2
    assert cfg.name == "grefel" and cfg.platform == "onnxruntime_onnx"
    assert cfg.max_batch_size == 16
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
    assert [g.count for g in cfg.instance_group] == [2]
    (inp,) = cfg.input
    assert inp.name == "images" and inp.data_type == T.TYPE_FP32
    assert list(inp.dims) == [3, 112, 112] and inp.format == T.ModelInput.FORMAT_NCHW
    outs = {o.name: o for o in cfg.output}
    assert set(outs) == {"probs", "primary", "confidence"}
    assert list(outs["probs"].dims) == [7] and list(outs["primary"].dims) == [7]
    assert all(o.data_type == T.TYPE_FP32 for o in outs.values())
    assert list(outs["confidence"].dims) == [1]
    assert outs["confidence"].HasField("reshape") and list(outs["confidence"].reshape.shape) == []
    assert outs["probs"].label_filename == "labels.txt"
    labels = (folder / "labels.txt").read_text(encoding="utf-8").splitlines()
    assert labels == list(rt.CLASSES)
    assert (folder / "1" / "model.onnx").read_bytes() == (tmp_path / "engines" /
                                                          "tiny.onnx").read_bytes()
    assert not list(repo.glob(".grefel-*"))  # no work folders left behind


def test_engine_repository_and_failed_write_keeps_the_old_one(models, tmp_path, monkeypatch):
    engine = tmp_path / "tiny_fp16_b8.engine"
    engine.write_bytes(b"plan bytes")
    folder = write_model_repository(tmp_path / "repo", engine, models["onnx"], max_batch=8)
    cfg = parse(folder / "config.pbtxt")
    assert cfg.platform == "tensorrt_plan" and cfg.max_batch_size == 8
    assert (folder / "1" / "model.plan").read_bytes() == b"plan bytes"
    assert not (folder / "1" / "model.onnx").exists()

    # a failure while the new folder is written leaves the good repository as it was
    import export.triton as triton

    def broken(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(triton.shutil, "copyfile", broken)
    with pytest.raises(ExportError, match="cannot write the Triton repository"):
        write_model_repository(tmp_path / "repo", models["onnx"], models["onnx"], max_batch=4)
    assert parse(folder / "config.pbtxt").platform == "tensorrt_plan"
    assert (folder / "1" / "model.plan").read_bytes() == b"plan bytes"
    assert not list((tmp_path / "repo").glob(".grefel-*"))


def test_cuda_graphs_option_parses_and_needs_an_engine(models, tmp_path):
    """--triton-cuda-graphs writes `optimization { cuda { graphs: true } }`, which Triton's
    ModelConfig parses; an ONNX repository refuses it before writing anything."""
    engine = tmp_path / "tiny_fp16_b8.engine"
    engine.write_bytes(b"plan bytes")
    folder = write_model_repository(tmp_path / "repo", engine, models["onnx"], max_batch=8,
                                    cuda_graphs=True)
    cfg = parse(folder / "config.pbtxt")
    assert cfg.optimization.cuda.graphs is True and cfg.platform == "tensorrt_plan"
    plain = write_model_repository(tmp_path / "plain", engine, models["onnx"], max_batch=8)
    assert not parse(plain / "config.pbtxt").HasField("optimization")
    with pytest.raises(ExportError, match="TensorRT-backend setting"):
        write_model_repository(tmp_path / "r", models["onnx"], models["onnx"], max_batch=8,
                               cuda_graphs=True)
    assert not (tmp_path / "r" / "grefel").exists()


def test_static_batch_and_bad_files_are_clean_errors(models, tmp_path):
    result = CliRunner().invoke(cli, ["export", str(models["onnx"]), "--static", "--triton",
                                      str(tmp_path / "repo")])
    assert result.exit_code == 2 and "drop --static" in result.output
    assert "Traceback" not in result.output
    with pytest.raises(ExportError, match="an .engine / .plan or .onnx"):
        write_model_repository(tmp_path / "r", models["ckpt"], models["onnx"], max_batch=8)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(ExportError, match="bad.onnx: not a readable ONNX"):
        write_model_repository(tmp_path / "r", bad, bad, max_batch=8)
    assert not (tmp_path / "r" / "grefel").exists()



def test_the_repository_is_the_export_pipelines_last_stage(models, tmp_path):
    """run_export writes --triton DIR itself (library callers get it too): the artifact list
    ends with DIR/grefel/config.pbtxt, a --static export is refused before any work, and a DIR
    that cannot be made is one ExportError naming --triton, the artifacts kept in --out."""
    from export.options import ExportOptions, TritonRepoOptions
    from export.pipeline import run_export

    repo = tmp_path / "repo"
    opts = ExportOptions(fp16=False, onnx_only=True, max_batch=4, out=tmp_path / "a",
                         triton=repo, triton_repo=TritonRepoOptions(instances=3))
    result = run_export(models["onnx"], opts, log=str)
    assert result.exit_code == 0 and result.artifacts[-1] == repo / "grefel" / "config.pbtxt"
    cfg = parse(repo / "grefel" / "config.pbtxt")
    assert cfg.max_batch_size == 4 and [g.count for g in cfg.instance_group] == [3]
    with pytest.raises(ExportError, match="drop --static"):
        run_export(models["onnx"], ExportOptions(dynamic=False, onnx_only=True, triton=repo,
                                                 out=tmp_path / "s"), log=str)
    assert not (tmp_path / "s").exists()
    (tmp_path / "file").write_text("x")
    bad = ExportOptions(fp16=False, onnx_only=True, out=tmp_path / "b",
                        triton=tmp_path / "file" / "repo")
    with pytest.raises(ExportError, match=r"^--triton .*file/repo: cannot write the model "
                                          r"repository \(a file stands where its folder"):
        run_export(models["onnx"], bad, log=str)
    assert (tmp_path / "b" / f"{models['onnx'].stem}.onnx").is_file()

# --- work folders beside DIR, kills, the builder record (issue 29) -----------------------------
def _plan(tmp_path: Path, name: str, **versions) -> Path:
    """An engine file with the sidecar `grefel export` writes beside it (its builder facts)."""
    engine = tmp_path / f"{name}.engine"
    engine.write_bytes(f"plan {name}".encode())
    rt.write_sidecar(engine, **versions)
    return engine


def _leftovers(repo: Path) -> list:
    """Work folders of repository writes, beside DIR or (the old layout) inside it."""
    return (sorted(p.name for p in repo.parent.glob(f".{repo.name}.grefel-*"))
            + sorted(p.name for p in repo.glob(".*")))


def _write_killed_at(n: int, repo: Path, engine: Path, onnx_path: Path) -> bool:
    """Write `repo` in a forked child that SIGKILLs itself just before its n-th file-system
    step (mkdir, copy, write, rename, remove); True when the kill came before the end."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            signal.alarm(60)  # a child stuck on a lock inherited from a thread dies, not hangs
            steps = [0]

            def killing(real):
                def step(*args, **kwargs):
                    steps[0] += 1
                    if steps[0] == n:
                        os.kill(os.getpid(), signal.SIGKILL)
                    return real(*args, **kwargs)
                return step

            os.replace = killing(os.replace)
            shutil.copyfile = killing(shutil.copyfile)
            shutil.rmtree = killing(shutil.rmtree)
            Path.mkdir = killing(Path.mkdir)
            Path.write_text = killing(Path.write_text)
            triton.write_model_repository(repo, engine, onnx_path, max_batch=8, log=str)
        except BaseException:  # noqa: BLE001 - the child reports by its exit status only
            code = 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert not os.WIFEXITED(status) or os.WEXITSTATUS(status) == 0, status
    assert not os.WIFSIGNALED(status) or os.WTERMSIG(status) == signal.SIGKILL, status
    return os.WIFSIGNALED(status)


def test_a_killed_repository_write_leaves_a_repository_triton_loads(models, tmp_path):
    """Kill the write before each of its file-system steps, over a good repository: what is
    left always passes Triton's rules (tests/triton_rules.py: no folder of DIR that is not a
    loadable model, hidden ones included), and the next write cleans up and ends with the new
    model; a kill between the two renames of the swap is repaired (the old model put back)."""
    engine = _plan(tmp_path, "tiny_fp16_b8")
    template = tmp_path / "template" / "repo"
    triton.write_model_repository(template, models["onnx"], models["onnx"], max_batch=8,
                                  log=str)
    assert triton_rules.problems(template) == []
    killed_at = []
    for n in range(1, 40):
        repo = tmp_path / f"k{n}" / "repo"
        shutil.copytree(template, repo)
        if not _write_killed_at(n, repo, engine, models["onnx"]):
            break
        killed_at.append(n)
        assert triton_rules.problems(repo) == [], (n, sorted(os.listdir(repo)))
        triton.remove_stale_work_dirs(repo, log=str)  # what the next export does first
        assert _leftovers(repo) == [], n
        record = json.loads((repo / "grefel" / triton.RECORD).read_text())
        assert record["platform"] in ("onnxruntime_onnx", "tensorrt_plan"), n  # old or new
        triton.write_model_repository(repo, engine, models["onnx"], max_batch=8, log=str)
        assert triton_rules.problems(repo) == [] and _leftovers(repo) == [], n
        assert (repo / "grefel" / "1" / "model.plan").read_bytes() == b"plan tiny_fp16_b8"
    assert len(killed_at) >= 8, killed_at  # every step of the write was a kill point
    assert triton_rules.problems(repo) == [] and _leftovers(repo) == []


def test_checker_refuses_what_a_killed_export_used_to_leave_and_export_removes_it(models,
                                                                                   tmp_path):
    """The old layout's work folder inside DIR (`.grefel-<random>`, its config naming model
    `grefel`) stops Triton; the next export removes it (and the checker sees it)."""
    repo = tmp_path / "repo"
    folder = triton.write_model_repository(repo, models["onnx"], models["onnx"], max_batch=8,
                                           log=str)
    shutil.copytree(folder, repo / ".grefel-k3j2x")
    (repo / ".grefel-empty").mkdir()
    found = triton_rules.problems(repo)
    assert any("directory name must equal the model name" in p for p in found), found
    assert any(p.startswith(".grefel-empty: no config.pbtxt") for p in found), found
    logs: list = []
    triton.write_model_repository(repo, models["onnx"], models["onnx"], max_batch=8,
                                  log=logs.append)
    assert triton_rules.problems(repo) == [] and _leftovers(repo) == []
    assert sum("removed" in line for line in logs) == 2
    assert (folder.stat().st_mode & 0o777) == (0o777 & ~_umask())  # not mkdtemp's 0700


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_repository_records_the_builder_and_refuses_to_mix(models, tmp_path):
    """grefel.json (and config.pbtxt's comments) record the TensorRT and GPU that built the
    plan; a plan of another TensorRT or GPU into the same DIR is refused with one line and the
    repository kept; the same builder, or an ONNX model, replaces it."""
    repo = tmp_path / "repo"
    first = _plan(tmp_path, "a")  # TensorRT 10.3.0.26 on Fake Orin (8.7)
    folder = triton.write_model_repository(repo, first, models["onnx"], max_batch=8, log=str)
    record = json.loads((folder / triton.RECORD).read_text())
    assert record["built_by"] == {"tensorrt": "10.3.0.26", "gpu": "Fake Orin",
                                  "compute_capability": "8.7"}
    assert record["model_file"] == "1/model.plan" and record["source"] == "a.engine"
    text = (folder / "config.pbtxt").read_text()
    assert "# 1/model.plan was built by TensorRT 10.3.0.26 on Fake Orin (compute 8.7)" in text
    assert triton_rules.problems(repo) == []  # the comments parse
    for other in ({"tensorrt": "8.6.2.3"}, {"gpu": "NVIDIA H100", "compute_capability": "9.0"}):
        engine = _plan(tmp_path, "b", **other)
        with pytest.raises(ExportError) as err:
            triton.write_model_repository(repo, engine, models["onnx"], max_batch=8, log=str)
        message = str(err.value)
        assert "\n" not in message and "does not mix" in message and "10.3.0.26" in message
        assert (folder / "1" / "model.plan").read_bytes() == b"plan a"
    triton.write_model_repository(repo, _plan(tmp_path, "c"), models["onnx"], max_batch=8,
                                  log=str)
    assert (folder / "1" / "model.plan").read_bytes() == b"plan c"
    triton.write_model_repository(repo, models["onnx"], models["onnx"], max_batch=8, log=str)
    assert json.loads((folder / triton.RECORD).read_text())["built_by"] is None
    assert triton_rules.problems(repo) == [] and _leftovers(repo) == []


def test_out_inside_the_triton_repository_is_refused(models, tmp_path):
    """--out DIR (or a folder in it) would put the export's work folder, and the artifacts'
    folder, among Triton's models."""
    repo = tmp_path / "repo"
    for out in (repo, repo / "engines"):
        result = CliRunner().invoke(cli, ["export", str(models["onnx"]), "--onnx-only", "--out",
                                          str(out), "--triton", str(repo)])
        assert result.exit_code == 2 and "in the Triton repository" in result.output
    assert not repo.exists()
