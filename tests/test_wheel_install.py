"""The built wheel in a clean venv without torch runs predict, eval, bench and info on an ONNX
model: the torch-free Jetson path of docs/install.md, proven on every test run (issue 26).

The wheel is built from a copy of the sources (`pip wheel --no-deps --no-build-isolation
--no-index`: no registry, no build in the checkout) and installed with `--no-deps` into a fresh
`python -m venv`. That venv sees only what the wheel declares it needs: the distributions of its
Requires-Dist without extras, and what those require in turn, linked from this venv's
site-packages (offline, and no install time). Everything else of this venv, torch above all, is
as absent there as on a machine that never installed it: `import torch` fails and
`importlib.util.find_spec("torch")` is None.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Dict, Iterable, List, NamedTuple, Set

import pytest
import test_runtime as rt  # the tiny model files (same module object as pytest's)
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
ASTRONAUT = ROOT / "benchmarks" / "data" / "astronaut.jpg"
DEFAULT_ONNX = ROOT / "grefel" / "runtime" / "models" / "grefel-tiny-muxspace.onnx"
# What the wheel is built from: the checkout's package folders and the files pyproject names.
# tools/ and research/ are copied too, so that pyproject's packages.find is what keeps them out.
SOURCES = ("pyproject.toml", "README.md", "grefel", "export", "benchmarks", "tools", "research")
# The wheel's top-level packages: the product only (tools/ and research/ run from a checkout).
PRODUCT = ("grefel", "export", "benchmarks")
# Not needed by predict / eval / bench / info on an ONNX model, so not required by the wheel.
TORCH_SIDE = ("torch", "onnxsim", "safetensors")


class Installed(NamedTuple):
    wheel: Path
    venv: Path
    work: Path
    env: Dict[str, str]
    linked: Set[str]  # canonical names of the distributions the venv sees


def _checked(*cmd: object) -> None:
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"{' '.join(map(str, cmd))}: exit {res.returncode}\n{res.stderr}"


def _build_wheel(tmp: Path) -> Path:
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "results"))
        else:
            shutil.copy2(ROOT / name, src / name)
    _checked(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
             "--no-index", "-w", tmp / "dist", src)
    (wheel,) = (tmp / "dist").glob("grefel-*.whl")
    return wheel


def _wheel_requirements(wheel: Path) -> List[Requirement]:
    with zipfile.ZipFile(wheel) as zf:
        (meta,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        text = zf.read(meta).decode()
    return [Requirement(line.split(":", 1)[1].strip()) for line in text.splitlines()
            if line.startswith("Requires-Dist:")]


def _applies(req: Requirement, extras: Iterable[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({"extra": e}) for e in ("", *extras))


def _closure(requirements: Iterable[Requirement]) -> Dict[str, metadata.Distribution]:
    """The distributions of this venv that `requirements` (no extras of grefel) pull in."""
    found: Dict[str, metadata.Distribution] = {}
    todo = [r for r in requirements if _applies(r, ())]
    while todo:
        req = todo.pop()
        key = canonicalize_name(req.name)
        try:
            dist = found.get(key) or metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            pytest.fail(f"the wheel requires {req}, which this venv lacks (make venv)")
        new = key not in found
        found[key] = dist
        if new or req.extras:
            todo += [r for r in map(Requirement, dist.requires or []) if _applies(r, req.extras)]
    return found


def _link_distributions(dists: Iterable[metadata.Distribution], farm: Path) -> None:
    """Link each distribution's top-level files and folders (from its RECORD) into `farm`."""
    farm.mkdir()
    for dist in dists:
        assert dist.files is not None, f"{dist.metadata['Name']} has no RECORD"
        base = Path(str(dist.locate_file("")))
        for top in {f.parts[0] for f in dist.files}:
            if top in ("..", "__pycache__") or top.endswith(".pth"):
                continue
            if not (farm / top).exists():
                (farm / top).symlink_to(base / top)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    tmp = tmp_path_factory.mktemp("wheel")
    wheel = _build_wheel(tmp)
    venv = tmp / "venv"
    _checked(sys.executable, "-m", "venv", "--without-pip", venv)
    _checked(sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q",
             "--no-deps", "--no-index", wheel)
    dists = _closure(_wheel_requirements(wheel))
    _link_distributions(dists.values(), tmp / "deps")
    (site,) = (venv / "lib").glob("python3*/site-packages")
    (site / "grefel_test_deps.pth").write_text(f"{tmp / 'deps'}\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", PYTHONNOUSERSITE="1",
               OMP_NUM_THREADS="2")
    work = tmp / "work"
    work.mkdir()
    return Installed(wheel, venv, work, env, set(dists))


def _grefel(inst: Installed, *args: object, ok: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run([str(inst.venv / "bin" / "grefel"), *map(str, args)], cwd=inst.work,
                         env=inst.env, capture_output=True, text=True, timeout=300)
    assert "Traceback" not in res.stderr, res.stderr
    if ok:
        assert res.returncode == 0, f"grefel {args}: exit {res.returncode}\n{res.stderr}"
    return res


def test_the_wheel_holds_the_package_data(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as zf:
        names = set(zf.namelist())
    models = ROOT / "grefel" / "runtime" / "models"
    shipped = [p for p in sorted(models.iterdir())
               if p.suffix in (".tflite", ".onnx", ".safetensors", ".json")
               or p.name in ("NOTICE.md", "LICENSE")]
    assert {"face_detection_short_range.tflite", "face_detection_full_range.tflite",
            "face_landmark.tflite", "NOTICE.md", "LICENSE"} <= {p.name for p in shipped}
    missing = [p.relative_to(ROOT).as_posix() for p in shipped
               if p.relative_to(ROOT).as_posix() not in names]
    assert not missing, f"not in {installed.wheel.name}: {missing}"
    assert {"export/data/trt_onnx_supported_ops.json", "benchmarks/data/astronaut.jpg"} <= names


def test_the_wheel_holds_the_product_only(installed: Installed) -> None:
    """No module or file of tools/ or research/ (checks and probes run from a checkout): the
    wheel's top level is the product's packages and its .dist-info."""
    with zipfile.ZipFile(installed.wheel) as zf:
        tops = {name.split("/", 1)[0] for name in zf.namelist()}
    assert (ROOT / "tools" / "__init__.py").is_file()
    assert (ROOT / "research" / "__init__.py").is_file()
    assert {t for t in tops if not t.endswith(".dist-info")} == set(PRODUCT), sorted(tops)


def test_the_wheel_requires_no_torch_and_its_extras_exist(installed: Installed) -> None:
    reqs = _wheel_requirements(installed.wheel)
    core = {canonicalize_name(r.name) for r in reqs if _applies(r, ())}
    assert not core & set(TORCH_SIDE), core
    assert not installed.linked & set(TORCH_SIDE), installed.linked
    extras = {e: {canonicalize_name(r.name) for r in reqs if r.marker is not None
                  and r.marker.evaluate({"extra": e})} - core
              for e in ("train", "trt", "serve", "faces", "dev")}
    assert {"torch", "onnxsim", "safetensors"} <= extras["train"]
    assert {"tensorrt", "cuda-bindings"} <= extras["trt"]
    assert "nvidia-pytriton" in extras["serve"] and "ai-edge-litert" in extras["faces"]
    assert {"grefel", "pytest"} <= extras["dev"]  # dev = grefel[train] + the test tools


def test_the_venv_has_grefel_from_the_wheel_and_no_torch(installed: Installed) -> None:
    code = ("import importlib.util as u, json, grefel; print(json.dumps([grefel.__file__, "
            "[m for m in ('torch', 'onnxsim', 'safetensors') if u.find_spec(m)]]))")
    res = subprocess.run([str(installed.venv / "bin" / "python"), "-c", code], cwd=installed.work,
                         env=installed.env, capture_output=True, text=True, timeout=60,
                         check=True)
    where, found = json.loads(res.stdout)
    assert Path(where).resolve().parts[:len(installed.venv.resolve().parts)] == \
        installed.venv.resolve().parts and found == []


def test_predict_on_an_onnx_model(installed: Installed) -> None:
    onnx = rt._shared_models()["onnx"]
    res = _grefel(installed, "predict", ASTRONAUT, "--weights", onnx)
    records = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert records and records[0]["face"] is True and records[0]["label"] in rt.CLASSES


def test_eval_on_an_onnx_model(installed: Installed, synthfer: Path) -> None:
    onnx = rt._shared_models()["onnx"]
    out = installed.work / "eval"
    res = _grefel(installed, "eval", onnx, "--data", synthfer, "--out", out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["backend"].startswith("onnx ") and metrics["n"] > 0
    assert "accuracy (final, eq. 19)" in res.stdout
    assert (out / "confusion_final.png").is_file()


def test_bench_on_an_onnx_model(installed: Installed) -> None:
    onnx = rt._shared_models()["onnx"]
    out = installed.work / "bench"
    res = _grefel(installed, "bench", "--weights", onnx, "--batch-sizes", "1,2", "--iters", "2",
                  "--seconds", "0", "--out", out)
    (record,) = [json.loads(p.read_text()) for p in out.glob("bench_*.json")]
    rows = {(r["backend"], r["batch"]): r["status"] for r in record["latency"]}
    assert rows[("onnx", 1)] == "ok" and rows[("onnx", 2)] == "ok"
    assert record["sizes"] == [] and "needs torch" in record["sizes_note"]
    assert "[train]" in record["sizes_note"]
    assert record["sizes_note"] in res.stdout


def test_info(installed: Installed) -> None:
    res = _grefel(installed, "info", "--json", installed.work / "env.json")
    env = json.loads((installed.work / "env.json").read_text())
    assert env["versions"]["torch"] is None and env["versions"]["onnxruntime"]
    assert "versions:" in res.stdout


@pytest.mark.parametrize("args", [
    ("eval", "{ckpt}", "--data", "{data}"),
    ("predict", "{image}", "--weights", "{ckpt}"),
    ("bench", "--batch-sizes", "1"),
    ("train", "--data", "{data}", "--epochs", "1", "--out", "train"),
], ids=["eval-checkpoint", "predict-checkpoint", "bench-random-init", "train"])
def test_what_needs_torch_says_so_in_one_line(installed: Installed, synthfer: Path,
                                              args: List[str]) -> None:
    fill = {"ckpt": rt._shared_models()["ckpt"], "data": synthfer, "image": ASTRONAUT}
    res = _grefel(installed, *(a.format(**fill) for a in args), ok=False)
    errors = [line for line in res.stderr.splitlines() if line.startswith("Error:")]
    assert res.returncode != 0 and len(errors) == 1, res.stderr
    assert "PyTorch" in errors[0] and "[train]" in errors[0], errors[0]


def test_export_builds_from_an_onnx_model(installed: Installed) -> None:
    """The Jetson's own step: the checked ONNX artifacts (and the engine, with TensorRT) from an
    .onnx, without torch; here without TensorRT, so --onnx-only."""
    onnx = rt._shared_models()["onnx"]
    out = installed.work / "engines"
    _grefel(installed, "export", onnx, "--onnx-only", "--out", out)
    assert (out / "tiny.onnx").is_file() and (out / "tiny.checks.json").is_file()


def test_the_jetson_recipe_installs_the_dependencies_of_the_wheel_but_opencv() -> None:
    """docs/install.md installs grefel on a Jetson with --no-deps (to keep JetPack's OpenCV),
    then lists the rest of its dependencies: that list follows pyproject."""
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        tomllib = pytest.importorskip("tomli")
    declared = {canonicalize_name(Requirement(r).name) for r in
                tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    doc = (ROOT / "docs" / "install.md").read_text().splitlines()
    (line,) = [x for x in doc if x.startswith("pip install click ")]
    listed = {canonicalize_name(n) for n in line.split("#")[0].split()[2:]}
    assert listed == declared - {"numpy", "opencv-python-headless"}, line


def test_main_turns_a_missing_optional_package_into_one_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    """In this venv: `grefel train` where torch cannot be imported ends in one error line naming
    the train extra; a missing module that is no optional package is a bug: one line naming
    the saved crash report (grefel.crash), exit 1."""
    from grefel import cli

    monkeypatch.setenv("GREFEL_CRASH_DIR", str(tmp_path / "crash"))
    monkeypatch.delitem(sys.modules, "grefel.train", raising=False)
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ModuleNotFoundError
    monkeypatch.setattr(sys, "argv", ["grefel", "train", "--data", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 1 and len(err) == 1 and err[0].startswith("Error: "), err
    assert "needs torch" in err[0] and "pip install '.[train]'" in err[0]
    monkeypatch.setitem(sys.modules, "grefel.train", None)  # not an optional package
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 1 and len(err) == 1, err
    assert err[0].startswith("Error: internal error (ModuleNotFoundError") and "report" in err[0]
    assert len(list((tmp_path / "crash").iterdir())) == 1


def test_predict_with_the_default_model(installed: Installed) -> None:
    if not DEFAULT_ONNX.is_file():
        pytest.skip(f"{DEFAULT_ONNX.relative_to(ROOT)} is not in this checkout (the default "
                    "model is added by make real-model); nothing to run by default")
    res = _grefel(installed, "predict", ASTRONAUT)
    records = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert records and records[0]["face"] is True
    assert "default model" in res.stderr
