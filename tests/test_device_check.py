"""tools/device_check.py on a machine without a GPU: the preflight ends the run early with
the list of what is missing; sections run in child processes with hard limits (the whole
process group is killed) and keep their whole log when they fail; the prepare step writes what
the device run reads.

None of this proves anything about a GPU: no test here runs CUDA. The FP16 comparison is run on
the CPU (torch's CPU float16 kernels, not a GPU's) to test its plumbing only: the prepared
faces, the rebuilt weights, the comparator and the gate's numbers side by side. What real GPU
FP16 does is what the device run itself measures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest

import tools.device_check as dc

ROOT = Path(__file__).resolve().parents[1]


def _env(**extra: str) -> Dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


def test_the_preflight_here_ends_the_run_early_with_the_missing_list(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "tools.device_check", "--prepared", str(tmp_path / "none"),
         "--out", str(out)], capture_output=True, text=True, cwd=ROOT,
        env=_env(CUDA_VISIBLE_DEVICES=""), timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "preflight failed" in proc.stderr and "nothing measured" in proc.stderr
    assert "a CUDA GPU visible to torch" in proc.stderr
    assert f"{tmp_path / 'none' / dc.MANIFEST} not found" in proc.stderr
    (record_path,) = out.glob("device_check_*.json")
    record = json.loads(record_path.read_text())
    sections = {s["name"]: s for s in record["sections"]}
    assert sections["preflight"]["status"] == "failed"
    missing = sections["preflight"]["result"]["missing"]
    assert any(m.startswith("the prepared inputs") for m in missing)
    assert {s["status"] for n, s in sections.items() if n != "preflight"} == {"skipped"}
    assert record["command"].startswith("python -m tools.device_check --prepared")
    assert record_path.with_suffix(".md").is_file()


def test_out_is_required_and_sections_are_checked() -> None:
    with pytest.raises(SystemExit):
        dc.parse_args(["--prepared", "runs/device-inputs"])
    with pytest.raises(SystemExit):
        dc.parse_args(["--prepared", "x", "--out", "y", "--sections", "fp16,abalation"])
    assert dc.parse_args(["--prepared", "x", "--out", "y", "--sections", "train"]).kinds == [
        "train"]


def _fake_torch(gpu: bool) -> Any:
    """The members of torch the preflight reads, with the values a CPU build / a GPU give."""
    props = types.SimpleNamespace(total_memory=80 * 2**30)
    cuda = types.SimpleNamespace(
        is_available=lambda: gpu, get_device_name=lambda i: "NVIDIA H100 80GB HBM3",
        get_device_capability=lambda i: (9, 0), get_device_properties=lambda i: props)
    return types.SimpleNamespace(
        __version__="2.11.0+cu130" if gpu else "2.11.0+cpu",
        version=types.SimpleNamespace(cuda="13.0" if gpu else None), cuda=cuda,
        backends=types.SimpleNamespace(cudnn=types.SimpleNamespace(version=lambda: 91300)))


@pytest.mark.parametrize("machine", ["no torch", "cpu torch", "gpu"])
def test_the_preflight_names_each_missing_piece(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                machine: str) -> None:
    import importlib

    def fake_import(name: str) -> Any:
        if name == "torch":
            if machine == "no torch":
                raise ImportError("No module named 'torch'")
            return _fake_torch(machine == "gpu")
        if name == "safetensors" and machine == "no torch":
            raise ImportError("No module named 'safetensors'")
        return importlib.import_module(name)

    monkeypatch.setattr(dc, "_import", fake_import)
    monkeypatch.setattr(dc, "check_prepared", lambda prepared: [])
    result = dc.preflight(tmp_path)
    missing = result["missing"]
    if machine == "no torch":
        assert missing[0].startswith("torch (import failed") and len(missing) == 2
        assert missing[1].startswith("safetensors")
    elif machine == "cpu torch":
        assert [m.split(" (")[0] for m in missing] == ["torch built with CUDA",
                                                       "a CUDA GPU visible to torch"]
    else:
        assert missing == [] and result["found"]["device"] == "NVIDIA H100 80GB HBM3"
        assert result["found"]["capability"] == "9.0" and result["found"]["memory_gib"] == 80


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[-1].startswith("Z"))


SLEEPER = """
import subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print("grandchild", grandchild.pid, flush=True)
time.sleep(120)
"""


def test_a_section_past_its_limit_is_killed_with_its_process_group(tmp_path: Path) -> None:
    res = dc.run_section("sleepy", [sys.executable, "-c", SLEEPER], limit_s=2.0, env=_env())
    assert res.status == "timed out" and "killed at its 2 s limit" in res.reason
    assert "grandchild" in res.log  # (timed out: it was killed, not left to its 120 s)
    pid = int(res.log.split("grandchild", 1)[1].split()[0])
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid)  # the native-build stand-in went with its group


def test_a_failed_section_keeps_its_whole_log_and_a_skipped_one_says_why() -> None:
    lines = "".join(f"print('build line {i}')\n" for i in range(300))
    failing = lines + "raise RuntimeError('CUDA error: out of memory')\n"
    res = dc.run_section("broken", [sys.executable, "-c", failing], limit_s=60, env=_env())
    assert res.status == "failed"
    assert res.reason == "RuntimeError: CUDA error: out of memory (exit 1)"
    assert "build line 0\n" in res.log and "build line 299\n" in res.log  # the whole log
    write = ("import json, os; open(os.environ['GREFEL_SECTION_RESULT'], 'w')"
             ".write(json.dumps({}))")
    skip = write.replace("{}", "{'status': 'skipped', 'reason': 'no CUDA graphs here'}")
    res = dc.run_section("skip", [sys.executable, "-c", skip], limit_s=60, env=_env())
    assert (res.status, res.reason, res.log) == ("skipped", "no CUDA graphs here", None)
    ok = write.replace("{}", "{'images_per_s': 5.0}")
    res = dc.run_section("ok", [sys.executable, "-c", ok], limit_s=60, env=_env())
    assert (res.status, res.result, res.log) == ("passed", {"images_per_s": 5.0}, None)
    res = dc.run_section("silent", [sys.executable, "-c", "pass"], limit_s=60, env=_env())
    assert res.status == "failed" and res.reason == "exited 0 without writing its result"


def _timed(model: str) -> Dict[str, Any]:
    row = {"iters": 20, "images_per_s": 100.0,
           "wall": {"p50_ms": 1.0, "p90_ms": 1.1, "p99_ms": 1.5},
           "gpu": {"p50_ms": 0.9, "p90_ms": 1.0, "p99_ms": 1.2}}
    return {"model": model, "preset": "tiny", **{f"batch_{b}": row for b in (1, 8, 32)}}


def test_the_run_goes_in_order_within_its_time_limit_and_records_each_section(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The parent's bookkeeping with the children replaced: order, the run's time limit,
    the record after each section, the exit status."""
    ran: List[str] = []
    clock = [0.0]

    def fake_section(name: str, argv: List[str], *, limit_s: float, **kw: Any) -> Any:
        ran.append(name)
        clock[0] += 140 if name.startswith("graphs") else 1
        if name == "preflight":
            return dc.SectionResult(name, "passed", result={
                "environment": {"host": "gpu-host"}, "found": {"device": "NVIDIA H100"}})
        if name == "eager_paper":
            return dc.SectionResult(name, "failed", reason="RuntimeError: boom (exit 1)",
                                    log="line 1\nRuntimeError: boom\n")
        return dc.SectionResult(name, "passed", result=_timed(name.partition("_")[2]))

    monkeypatch.setattr(dc, "run_section", fake_section)
    (tmp_path / "prep").mkdir()
    (tmp_path / "prep" / dc.MANIFEST).write_text(json.dumps({"order": ["default", "paper"]}))
    args = dc.parse_args(["--prepared", str(tmp_path / "prep"), "--out", str(tmp_path / "out"),
                          "--sections", "eager,graphs,train", "--time-limit", "150"])
    assert dc.run_device(args, ["--prepared", "prep"], clock=lambda: clock[0]) == 1
    assert ran == ["preflight", "eager_default", "eager_paper", "graphs_default"]
    (path,) = (tmp_path / "out").glob("device_check_*_nvidia-h100.json")
    record = json.loads(path.read_text())
    status = {s["name"]: (s["status"], s["reason"]) for s in record["sections"]}
    assert status["graphs_paper"][0] == "skipped" and "time-limit 150 s was spent" in \
        status["graphs_paper"][1]
    assert status["eager_paper"] == ("failed", "RuntimeError: boom (exit 1)")
    md = path.with_suffix(".md").read_text()
    assert "## Log of eager_paper (failed)" in md and "line 1\nRuntimeError: boom" in md
    assert "| default | graphs | 32 | 1.000 / 1.100 / 1.500 | 0.900 / 1.000 / 1.200 |" in md


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("device-inputs")
    dc.prepare(folder, preset="tiny", default=False, log=lambda m: None)  # one export: fast
    return folder


def test_the_prepare_step_writes_what_the_device_run_reads(prepared: Path) -> None:
    from tools import device_sections

    assert dc.check_prepared(prepared) == []
    manifest = json.loads((prepared / dc.MANIFEST).read_text())
    assert manifest["order"] == ["tiny"]  # the default model left out for speed
    assert dc.plan(prepared, ["fp16", "train"]) == ["fp16_tiny", "train_tiny"]
    faces = np.load(prepared / dc.FACES)
    assert faces.shape == (64, 3, 112, 112) and faces.dtype == np.float32
    for key in manifest["order"]:
        gate = manifest["models"][key]["fp16_gate"]
        assert gate["samples"] == 64 and gate["backend"].startswith("FP16 rounding emulated")
        reference = np.load(prepared / manifest["models"][key]["reference"])
        assert reference["probs"].shape == (64, 7) and reference["confidence"].shape == (64,)
        _, info = device_sections.load_model(prepared, key)  # rebuilt: the same weights
        assert info["weights_match"]
    (prepared / dc.FACES).write_bytes(b"damaged")
    try:
        assert dc.check_prepared(prepared)[0].startswith(f"the prepared file "
                                                         f"{prepared / dc.FACES} as prepared")
    finally:
        np.save(prepared / dc.FACES, faces)


def test_the_fp16_comparison_plumbing_on_the_cpu(prepared: Path) -> None:
    """Plumbing only (see the module doc): torch's CPU float16 says nothing of a GPU's."""
    from tools import device_sections

    result = device_sections.section_fp16(prepared, "tiny", device="cpu", modes=("half",))
    gate = json.loads((prepared / dc.MANIFEST).read_text())["models"]["tiny"]["fp16_gate"]
    assert result["emulated_gate"]["max_abs_dprobs"] == gate["max_abs_dprobs"]
    assert result["fp32_vs_cpu_reference"]["max_abs_dprobs"] < 1e-4  # the same weights
    half = result["real"]["half"]
    assert half["backend"] == "torch half float16 on cpu" and "errors" not in result
    assert half["same_verdict_as_gate"] == (half["passed"] == gate["passed"])
    record = {"started": "now", "command": "c", "time_limit_s": 1, "sections": [
        {"name": "fp16_tiny", "status": "passed", "seconds": 1.0, "reason": "",
         "result": result}]}
    assert "| tiny | real FP16 half |" in dc.to_markdown(record)
