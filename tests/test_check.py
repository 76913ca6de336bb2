"""`grefel check` (grefel/check.py): the preflight truthful with and without TensorRT / pycuda /
cuda-bindings (imports patched: the shared TensorRT fake of each generation, whose every call
must exist in that generation's API snapshot, and a blocked import), `--run` here (one line per
skipped section), and the section runner: a hard time limit that kills the whole process group,
a failing section's whole log kept, a passing section's numbers recorded, the report written."""

from __future__ import annotations

import json
import sys
import time
import types
from pathlib import Path
from typing import Any, Dict

import pytest
from click.testing import CliRunner
from fakes.trt import Gpu, block, install, surface

from benchmarks import check
from grefel.cli import cli

PY = sys.executable


def _block_cuda_bindings(monkeypatch: Any) -> None:
    for name in ("cuda", "cuda.bindings", "cuda.bindings.driver"):
        monkeypatch.setitem(sys.modules, name, None)


def _facts(device: Dict[str, Any], **extra: Any) -> Dict[str, Any]:
    """Preflight facts with `device` as the child's probe gave it (no child, no environment)."""
    facts = {"versions": {"onnxruntime": "1.20", "onnxruntime_providers": ["CPUExecutionProvider"],
                          "torch": None, "onnxsim": None},
             "device": {"probe": "ok", **device}, "trtexec": None,
             "detector": {"name": "auto", "runtime": "OpenCV DNN 4.11"}}
    facts.update(extra)
    facts["can"] = check.capabilities(facts)
    return facts


def _can(facts: Dict[str, Any]) -> Dict[str, Any]:
    return {row["what"].split(" (")[0].split(":")[0]: row for row in facts["can"]}


# --- preflight -----------------------------------------------------------------------------------


def test_preflight_without_tensorrt_or_a_cuda_layer(monkeypatch: Any) -> None:
    block(monkeypatch)
    _block_cuda_bindings(monkeypatch)
    device = check.device_facts()
    assert device["tensorrt"]["installed"] is False
    assert device["cuda_layers"] == {"pycuda": {"installed": False},
                                     "cuda-bindings": {"installed": False}}
    can = _can(_facts(device))
    assert can["engine build"]["ok"] is False
    assert "TensorRT is not installed" in can["engine build"]["detail"]
    assert can["engine run"]["ok"] is False and can["INT8 engine"]["ok"] is False
    assert can["ONNX Runtime on the CPU"]["ok"] is True


@pytest.mark.parametrize("gen", ["8.5", "10.3", "11"])
def test_preflight_with_tensorrt_follows_the_real_api(gen: str, monkeypatch: Any) -> None:
    gpu = Gpu(gen=gen, num_dla_cores=2)
    install(monkeypatch, gpu)
    _block_cuda_bindings(monkeypatch)
    device = check.device_facts()
    trt = device["tensorrt"]
    assert trt["version"] == surface(gen)["version"] and trt["builder"] == "ok"
    assert trt["fp16_mode"] == ("fp16-weak" if gen == "8.5" else "fp16-strong")
    assert trt["int8_mode"] == ("int8-strong" if gen == "11" else "int8-weak")
    assert trt["dla_cores"] == 2
    assert trt["fast_fp16"] is (None if gen == "11" else True)  # gone from 11.x's Builder
    assert device["cuda_layers"]["pycuda"] == {"installed": True, "driver": 12060, "devices": 1,
                                               "name": "Fake Orin", "compute_capability": "8.7"}
    # every TensorRT member the preflight touched exists in that generation's real API
    classes = surface(gen)["classes"]
    for call in gpu.calls:
        if call.cls != "tensorrt":
            assert call.member in classes[call.cls]["members"], call
    can = _can(_facts(device, trtexec="/usr/src/tensorrt/bin/trtexec"))
    assert all(can[k]["ok"] for k in ("engine build", "engine run", "INT8 engine", "DLA",
                                      "trtexec comparison"))
    assert "pycuda on Fake Orin" in can["engine run"]["detail"]


def test_preflight_tensorrt_without_a_gpu(monkeypatch: Any) -> None:
    install(monkeypatch, Gpu(gen="10.3", no_gpu=True))
    _block_cuda_bindings(monkeypatch)
    device = check.device_facts()
    assert "no CUDA-capable device" in device["cuda_layers"]["pycuda"]["error"]
    can = _can(_facts(device))
    assert can["engine build"]["ok"] is True  # the fake's builder needs no GPU
    assert can["engine run"]["ok"] is False
    assert "no GPU seen through pycuda" in can["engine run"]["detail"]


def test_cuda_bindings_layer(monkeypatch: Any) -> None:
    """cuda-bindings' driver API as cuda.bindings.driver spells it: (CUresult, value) tuples."""
    ok = types.SimpleNamespace(CUDA_SUCCESS=0)
    attrs = types.SimpleNamespace(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR=75,
                                  CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR=76)
    driver = types.SimpleNamespace(
        CUresult=ok, CUdevice_attribute=attrs, cuInit=lambda flags: (0,),
        cuDriverGetVersion=lambda: (0, 12060), cuDeviceGetCount=lambda: (0, 1),
        cuDeviceGet=lambda i: (0, 0), cuDeviceGetName=lambda n, dev: (0, b"Orin\0\0\0"),
        cuDeviceGetAttribute=lambda attr, dev: (0, 8 if attr == 75 else 7))
    assert check._bindings_gpu(driver) == {"driver": 12060, "devices": 1, "name": "Orin",
                                           "compute_capability": "8.7"}
    driver.cuInit = lambda flags: (types.SimpleNamespace(name="CUDA_ERROR_NO_DEVICE"),)
    with pytest.raises(RuntimeError, match="CUDA_ERROR_NO_DEVICE"):
        check._bindings_gpu(driver)


def test_preflight_command_here_exits_0(tmp_path: Path) -> None:
    """Whatever this machine has, the preflight prints it and exits 0; --json has the facts."""
    out = tmp_path / "facts.json"
    result = CliRunner().invoke(cli, ["check", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "what grefel can do here:" in result.output and "engine build" in result.output
    facts = json.loads(out.read_text())
    assert {"versions", "device", "detector", "default_model", "can", "trtexec"} <= set(facts)
    assert facts["device"]["probe"] == "ok"  # the child answered within its limit
    assert not (tmp_path / "runs").exists()


def test_run_options_need_run(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["check", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "only with --run" in result.output
    result = CliRunner().invoke(cli, ["check", "--run", "--sections", "nope"])
    assert result.exit_code == 2 and "choose from engine-fp16" in result.output


# --- --run here ----------------------------------------------------------------------------------


def test_run_here_skips_every_section_with_one_line(tmp_path: Path, monkeypatch: Any) -> None:
    block(monkeypatch)
    _block_cuda_bindings(monkeypatch)
    monkeypatch.setattr(check, "probe_device",
                        lambda: {"probe": "ok", **check.device_facts()})
    out = tmp_path / "report"
    result = CliRunner().invoke(cli, ["check", "--run", "--out", str(out)])
    assert result.exit_code == 2, result.output  # none failed, some skipped
    skipped = [line for line in result.output.splitlines() if line.startswith("skipped ")]
    assert [line.split(":")[0] for line in skipped] == [f"skipped {n}"
                                                        for n in check.SECTION_NAMES]
    assert "skipped engine-fp16: TensorRT is not installed" in result.output
    report = json.loads((out / "check.json").read_text())
    assert report["exit_code"] == 2
    assert [s["status"] for s in report["sections"]] == ["skipped"] * len(check.SECTION_NAMES)
    assert "| engine-fp16 | skipped |" in (out / "check.md").read_text()


# --- the runner ----------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_section_over_its_limit_is_killed_with_its_process_group(tmp_path: Path,
                                                                   monkeypatch: Any) -> None:
    monkeypatch.setattr(check, "KILL_GRACE_S", 0.5)
    pid_file = tmp_path / "grandchild.pid"
    # a child that ignores SIGTERM and waits on a grandchild: both must go at the limit
    code = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
            f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
            f"open({str(pid_file)!r}, 'w').write(str(p.pid)); print('started', flush=True);"
            "time.sleep(60)")
    ran = check.run_steps([[PY, "-c", code], [PY, "-c", "print('never')"]],
                          tmp_path / "s.log", limit_s=2)
    assert ran.status == "timed out" and "time limit of 2 s" in ran.why
    log = (tmp_path / "s.log").read_text()
    assert "started" in log and "never" not in log
    deadline = time.monotonic() + 10
    while _alive(int(pid_file.read_text())) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(int(pid_file.read_text()))


def _section(name: str, steps: Any, collect: Any = None) -> check.Section:
    return check.Section(name, f"test {name}", 60,
                         lambda facts, opts, done: check.Plan(steps=steps, collect=collect))


def test_failing_section_keeps_its_whole_log_and_passing_ones_their_numbers(
        tmp_path: Path, monkeypatch: Any) -> None:
    noisy = ("import sys\nfor i in range(3000):\n    print('out', i)\n    "
             "print('err', i, file=sys.stderr)\nsys.exit(3)")
    trtexec_like = ("print('[I] Throughput: 812.5 qps'); print('[I] GPU Compute Time: min = "
                    "1.1 ms, max = 2.5 ms, mean = 1.2 ms, median = 1.19 ms, percentile(90%) = "
                    "1.3 ms, percentile(95%) = 1.4 ms, percentile(99%) = 1.6 ms')")
    sections = (
        _section("good", [[PY, "-c", trtexec_like]],
                 lambda ran: check.parse_trtexec(ran.outputs[0])),
        _section("bad", [[PY, "-c", "print('first step ok')"], [PY, "-c", noisy]]),
        check.Section("later", "skipped", 60, lambda f, o, d: check.Plan(skip="needs X")),
    )
    monkeypatch.setattr(check, "SECTIONS", sections)
    lines = []
    report = check.run_check({"versions": {}}, check.CheckOptions(out=tmp_path),
                             on_result=lambda r: lines.append(r.line()))
    good, bad, later = report["sections"]
    assert good["status"] == "passed"
    assert good["numbers"] == {"throughput_qps": 812.5, "gpu_compute_time": {
        "min": 1.1, "max": 2.5, "mean": 1.2, "median": 1.19, "p90": 1.3, "p95": 1.4, "p99": 1.6}}
    assert bad["status"] == "failed" and bad["why"].startswith("exit status 3")
    log = (tmp_path / bad["log"]).read_text()
    assert "first step ok" in log and "out 0\n" in log and "err 2999" in log  # whole, both streams
    assert bad["log_tail"][-1].startswith("# failed")
    assert later == {**later, "status": "skipped", "why": "needs X"}
    assert report["exit_code"] == 1
    assert lines[1].startswith("failed bad") and "log logs/bad.log" in lines[1]
    assert lines[2] == "skipped later: needs X"
    on_disk = json.loads((tmp_path / "check.json").read_text())
    assert on_disk["exit_code"] == 1
    md = (tmp_path / "check.md").read_text()
    assert "| bad | failed |" in md and "## bad: failed (last lines of logs/bad.log)" in md
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") and p.suffix == ".tmp"]


def test_exit_codes() -> None:
    def r(status: str) -> check.SectionResult:
        return check.SectionResult("s", "t", status)

    assert check.exit_code([r("passed")]) == 0
    assert check.exit_code([r("passed"), r("skipped")]) == 2
    assert check.exit_code([r("skipped"), r("timed out")]) == 1
    assert check.exit_code([r("failed"), r("passed")]) == 1


# --- the plans on a machine with TensorRT ---------------------------------------------------------


def _target_facts(version: str, torch: bool = False) -> Dict[str, Any]:
    device = {"tensorrt": {"installed": True, "version": version, "builder": "ok",
                           "fp16_mode": "fp16-strong", "int8_mode": "int8-weak"},
              "cuda_layers": {"pycuda": {"installed": True, "devices": 1, "name": "Orin"}}}
    facts = _facts(device, trtexec="/usr/src/tensorrt/bin/trtexec")
    facts["versions"]["torch"] = "2.5" if torch else None
    return facts


def _plan(name: str, facts: Dict[str, Any], out: Path, done: Any = None) -> check.Plan:
    section = next(s for s in check.SECTIONS if s.name == name)
    return section.plan(facts, check.CheckOptions(out=out), done or {})


def test_plans_on_a_target(tmp_path: Path) -> None:
    facts = _target_facts("10.3.0")
    fp16 = _plan("engine-fp16", facts, tmp_path)
    assert fp16.skip is None and fp16.steps[0][3] == "export"
    assert fp16.steps[0][4].endswith("grefel-tiny-muxspace.onnx")
    assert {"--verify", "--fp16"} <= set(fp16.steps[0])
    b8 = _plan("latency-b8", facts, tmp_path)
    export = b8.steps[0]
    assert export[export.index("--batch") + 1] == "8" == export[export.index("--max-batch") + 1]
    assert b8.steps[1][3] == "bench" and b8.steps[1][b8.steps[1].index("--batch-sizes") + 1] == "8"
    assert "engine-fp16" in _plan("latency-b1", facts, tmp_path).skip
    passed = check.SectionResult("engine-fp16", "", "passed",
                                 numbers={"engine": str(tmp_path / "e.engine")})
    b1 = _plan("latency-b1", facts, tmp_path, {"engine-fp16": passed})
    assert len(b1.steps) == 1 and str(tmp_path / "e.engine") in b1.steps[0]
    trtexec = _plan("trtexec", facts, tmp_path, {"engine-fp16": passed}).steps
    assert "--useCudaGraph" in trtexec[0] and "--useCudaGraph" not in trtexec[1]
    trtexec11 = _plan("trtexec", _target_facts("11.4.0"), tmp_path, {"engine-fp16": passed}).steps
    assert "--noCudaGraph" not in trtexec11[0] and "--noCudaGraph" in trtexec11[1]
    int8 = _plan("engine-int8", facts, tmp_path)
    assert int8.steps[0][3:5] == ["data", "synth"] and "--int8" in int8.steps[1]
    assert "torch" in _plan("paper-fp16", facts, tmp_path).skip
    # TensorRT 8.5 reads no opset-17 ONNX: the checkpoint (torch), else skipped with how
    assert "opset-16" in _plan("engine-fp16", _target_facts("8.5.2"), tmp_path).skip
    ckpt = _plan("engine-fp16", _target_facts("8.5.2", torch=True), tmp_path)
    assert ckpt.steps[0][4].endswith(".safetensors")


def test_parse_trtexec_11_and_missing_lines() -> None:
    text = ("[08/01/2026-10:00:00] [I] Latency: min = 0.9 ms, max = 3 ms, mean = 1 ms, median = "
            "0.95 ms, percentile(90%) = 1.1 ms, percentile(95%) = 1.2 ms, percentile(99%) = "
            "2.1e+00 ms\n[I] Enqueue Time: min = 0.01 ms, max = 0.2 ms, mean = 0.02 ms, median = "
            "0.02 ms, percentile(90%) = 0.03 ms, percentile(95%) = 0.03 ms, percentile(99%) = "
            "0.05 ms\n")
    parsed = check.parse_trtexec(text)
    assert parsed["latency"]["p99"] == 2.1 and parsed["enqueue_time"]["median"] == 0.02
    assert check.parse_trtexec("&&&& FAILED TensorRT.trtexec") == {}


def test_probe_child_that_fails_is_reported(monkeypatch: Any) -> None:
    monkeypatch.setattr(check, "run_steps", lambda steps, log, limit: (
        log.write_text("Segmentation fault\n"), check.Steps("failed", "exit status -11"))[1])
    got = check.probe_device()
    assert got["probe"] == "failed" and got["log_tail"] == ["Segmentation fault"]
    can = _can(_facts(got))
    assert "probe failed" in can["engine build"]["detail"]

