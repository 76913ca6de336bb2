"""A second fresh black-box fault campaign, after issue 27's fixes: cases nobody has run before.

    python -m tools.fault_fresh2 --out DIR        # -> DIR/fault_fresh2_<YYYY-mm-dd>.json/.md

None of these cases is a case of `tools/fault_corpus.py`, `tools/fault_campaign.py`,
`tools/fault_fresh.py`, `tools/fault_families/*.py`, `tests/test_bad_input.py`,
`tests/test_faults_train.py` or an example of issue 27. The point: find out whether a family of
issue 27 was fixed at its root (a case of a new shape holds) or case by case (it fails), and
whether a new family exists. Each case names its family ("27.N") or a new one ("new: <name>").

The machinery is the campaign's (`Case`, `Proc`, `grefel`, `classify`) and `fault_fresh`'s
helpers (protected files hashed before and compared after, "ok or error" cases). Some cases run
grefel as an unprivileged user (uid 65534, through `setpriv`): the campaign runs as root here,
and root ignores file permissions, so read-only folders and unreadable files are tried as a
user would meet them. Nothing is written outside the campaign's temporary folder; servers bind
port 0-picked free ports and are always stopped.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from tools.fault_campaign import (
    QUICK_BENCH,
    ROOT,
    SEVEN,
    TINY_TRAIN,
    Case,
    Proc,
    _csv_dataset,
    _default_sigint,
    _tiny_checkpoint,
    grefel,
    latency_rows,
    run_cases,
)
from tools.fault_fresh import (
    DEFAULT_CKPT,
    DEFAULT_ONNX,
    EITHER,
    _both,
    _copy,
    _finish,
    _no_nonfinite,
    _png,
    _popen,
    _protect,
    _records,
    _said,
    _stdout_records,
    _video,
    case_adder,
    fresh_main,
    fresh_record,
    judge,
    to_markdown,
    write,
)

__all__ = ["cases", "main", "run_fresh2"]

SIDE = "fresh2"
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
F_SETPIPE_SZ = 1031  # fcntl.h: a one-page stdout pipe, so the child blocks after a few records


# -- helpers -----------------------------------------------------------------------------------


def _run(argv: Sequence[Any], cwd: Path = ROOT, env: Optional[Dict[str, Optional[str]]] = None,
         timeout: float = 120, stdin: Any = None, pass_fds: Sequence[int] = ()) -> Proc:
    """A command (not necessarily grefel) in a child process, as `grefel()` runs it; `env`
    values of None remove the variable."""
    full = {**os.environ, "PYTHONPATH": str(ROOT)}
    for k, v in (env or {}).items():
        if v is None:
            full.pop(k, None)
        else:
            full[k] = v
    argv = [str(a) for a in argv]
    start = time.perf_counter()
    try:
        p = subprocess.run(argv, capture_output=True, timeout=timeout, cwd=cwd, env=full,
                           stdin=stdin, pass_fds=pass_fds)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out, err = None, exc.stdout or b"", exc.stderr or b""
    dec = lambda b: (b or b"").decode("utf-8", errors="backslashreplace")  # noqa: E731
    return Proc(argv, rc, dec(out), dec(err), time.perf_counter() - start)


def _nobody(*args: Any, cwd: Optional[Path] = None, env: Optional[Dict[str, Optional[str]]] = None,
            timeout: float = 120) -> Proc:
    """`python -m grefel ARGS` as uid/gid 65534 (no supplementary groups): permissions count."""
    home = Path(tempfile.gettempdir())
    return _run([*NOBODY, sys.executable, "-m", "grefel", *args], cwd=cwd or ROOT,
                env={"HOME": str(home), **(env or {})}, timeout=timeout)


def _open_to_all(path: Path) -> None:
    """Every folder from the campaign's temporary root down to `path` traversable by others,
    `path` itself writable by them (the unprivileged cases need a place to write)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o777)


def _named_onnx(src: Path, path: Path, names: Sequence[str]) -> Path:
    import onnx

    proto = onnx.load(str(src))
    for prop in proto.metadata_props:
        if prop.key == "grefel.class_names":
            prop.value = json.dumps(list(names))
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return path


def _labels_of(recs: List[Dict[str, Any]]) -> List[str]:
    return sorted({k for r in recs for k in (r.get("probs") or {})})


def _n_records(path_of: Callable[[Path], Path], n: int) -> Callable[[List[Proc], Path], str]:
    def check(procs: List[Proc], work: Path) -> str:
        if procs[-1].returncode != 0:
            return ""
        got = len(_records(path_of(work)))
        return "" if got == n else f"lost: {got} records of {n}"
    return check


def _one_record(procs: List[Proc], work: Path) -> str:
    """Exit 0 is only right with exactly one record on stdout holding finite probabilities."""
    if procs[-1].returncode != 0:
        return ""
    recs = _stdout_records(procs[-1])
    if len(recs) != 1:
        return f"lost: {len(recs)} records on stdout for one image"
    probs = recs[0].get("probs") or {}
    if len(probs) < 2 or any(not isinstance(v, (int, float)) or v != v for v in probs.values()):
        return f"a record without finite probabilities: {probs}"
    return ""


def _one_shipped(procs: List[Proc], work: Path) -> str:
    """One record on stdout (the shipped model: 7 classes)."""
    return "" if len(_stdout_records(procs[-1])) == 1 else "lost: no record"


def _paused_predict(w: Path, folder: Path, model: Path, mutate: Callable[[], None],
                    extra: Sequence[str] = ()) -> List[Proc]:
    """predict FOLDER -w MODEL with records on a one-page stdout pipe: the child blocks after a
    few records; `mutate()` runs then (the command is mid-walk, its model loaded), then the
    rest is drained."""
    argv = [sys.executable, "-m", "grefel", "predict", str(folder), "-w", str(model),
            "--aligned", "--batch", "1", "--threads", "1", *extra]
    read_fd, write_fd = os.pipe()
    fcntl.fcntl(write_fd, F_SETPIPE_SZ, 4096)
    start = time.perf_counter()
    child = subprocess.Popen(argv, stdout=write_fd, stderr=subprocess.PIPE, cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)},
                             preexec_fn=_default_sigint)
    os.close(write_fd)
    try:
        with os.fdopen(read_fd, "rb") as records:
            first = records.readline()
            mutate()
            rest = records.read()
        err = child.communicate(timeout=120)[1]
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    dec = lambda b: b.decode("utf-8", errors="backslashreplace")  # noqa: E731
    return [Proc(argv, child.returncode, dec(first + rest), dec(err),
                 time.perf_counter() - start)]


def _poster(path: Path) -> Path:
    """A POSTER V2-named state dict of the tiny preset, as `weights import --kind posterv2`
    reads it."""
    import torch

    from grefel.model import create_model
    from grefel.weights import export_posterv2_state_dict

    torch.manual_seed(0)
    torch.save({"state_dict": export_posterv2_state_dict(create_model("tiny",
                                                                      class_names=SEVEN))}, path)
    return path


def _mux(root: Path, photo: Path, n: int = 20) -> Path:
    """A muxspace/facial_expressions-shaped folder: images/ and data/legend.csv."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(parents=True, exist_ok=True)
    rows = ["user.id,image,emotion"]
    for i in range(n):
        name = f"p{i % 10}_{i}.jpg"
        shutil.copyfile(photo, root / "images" / name)
        rows.append(f"p{i % 10},{name},{['HAPPINESS', 'neutral'][i % 2]}")
    (root / "data" / "legend.csv").write_text("\n".join(rows) + "\n")
    return root


# -- the cases ---------------------------------------------------------------------------------


def cases(scratch: Path) -> List[Case]:  # noqa: C901 - one flat list of cases, read top down
    """The second fresh campaign's cases; shared inputs are made under `scratch`."""
    import numpy as np
    from PIL import Image

    from tools.fault_corpus import mini_onnx

    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / "models").mkdir(parents=True, exist_ok=True)
    mini = mini_onnx(scratch / "models" / "mini.onnx")
    plain = _png(scratch / "img" / "plain.png")
    jpg = scratch / "img" / "face.jpg"
    Image.open(plain).convert("RGB").save(jpg, quality=92)
    clip = _video(scratch / "video" / "clip.avi", frames=12)
    ckpt = _tiny_checkpoint(scratch / "ckpt" / "tiny.safetensors")
    synth = scratch / "synth"
    p = grefel("data", "synth", "--out", synth, "--n", "70", "--size", "32", "--imbalance",
               "uniform")
    assert p.returncode == 0, p.output
    good = {"train": [i % 7 for i in range(14)], "val": [i % 7 for i in range(7)],
            "test": [i % 7 for i in range(7)]}
    csvdata = _csv_dataset(scratch / "csvdata", good, SEVEN)
    rgbdata = _csv_dataset(scratch / "rgbdata", {s: [i % 3 for i in range(6)] for s in good},
                           ["red", "green", "blue"])
    mux = _mux(scratch / "mux", jpg)
    poster = _poster(scratch / "poster.pth")
    out: List[Case] = []

    add = case_adder(out, SIDE)

    def train(w: Path, data: Path, *extra: Any, run: str = "run", **kw: Any) -> Proc:
        return grefel("train", "--data", data, "--out", w / run, *TINY_TRAIN, *extra, **kw)

    def photos(w: Path, n: int = 3, name: str = "photos") -> Path:
        folder = w / name
        for i in range(n):
            _copy(plain, folder / f"p{i:02d}.png")
        return folder

    # ==== 27.1 outputs that destroy inputs: other spellings, other commands ====================

    def dotdot_into_source(w: Path) -> List[Proc]:
        folder = photos(w)
        (folder / "sub").mkdir()
        os.symlink(folder / "sub", w / "link")
        _protect(w, folder)
        return [grefel("predict", "photos", "-w", mini, "--aligned", "--out", "link/../p01.png",
                       cwd=w)]

    add("predict DIR --out link/../p01.png (link -> DIR/sub: the kernel lands on DIR/p01.png)",
        "27.1", "error", dotdot_into_source)

    def dotdot_eval_json(w: Path) -> List[Proc]:
        data = _copy(csvdata, w / "ds")
        os.symlink(data / "img", w / "imgs")
        _protect(w, data)
        return [grefel("eval", ckpt, "--data", "ds", "--out", "ev", "--json",
                       "imgs/../test.csv", cwd=w)]

    add("eval --json imgs/../test.csv (imgs -> DATA/img: lands on DATA/test.csv)", "27.1",
        "error", dotdot_eval_json)

    def dotdot_split_json(w: Path) -> List[Proc]:
        root = _copy(mux, w / "mux")
        os.symlink(root / "images", w / "pics")
        _protect(w, root / "data" / "legend.csv")
        return [grefel("data", "split", "mux", "--json", "pics/../data/legend.csv", cwd=w)]

    add("data split ROOT --json pics/../data/legend.csv (pics -> ROOT/images)", "27.1", "error",
        dotdot_split_json)

    def dotdot_train_out(w: Path) -> List[Proc]:
        data = _copy(synth, w / "ds")
        os.symlink(data / "images", w / "pics")
        _protect(w, data)
        return [grefel("train", "--data", "ds", "--out", "pics/..", *TINY_TRAIN, cwd=w)]

    add("train --out pics/.. (pics -> DATA/images: the run folder is DATA)", "27.1", "error",
        dotdot_train_out)

    def symlinked_cwd(w: Path) -> List[Proc]:
        real = w / "real" / "inner"
        img = _copy(plain, w / "real" / "face.png")
        real.mkdir(parents=True)
        os.symlink(real, w / "here")
        _protect(w, img)
        return [grefel("predict", "../face.png", "-w", mini, "--aligned", "--out",
                       "../face.png", cwd=w / "here")]

    add("predict ../face.png --out ../face.png from a symlinked working folder", "27.1",
        "error", symlinked_cwd)

    def slash_out(w: Path) -> List[Proc]:
        folder = photos(w)
        _protect(w, folder)
        return [grefel("predict", folder, "-w", mini, "--aligned", "--annotate",
                       f"{folder}/")]

    add("predict DIR --annotate DIR/ (trailing slash)", "27.1", "error", slash_out)

    def annotate_user_folder(w: Path) -> List[Proc]:
        folder = photos(w)
        backup = w / "backup"
        _png(backup / "p01.png", colour=(20, 20, 200), seed=7)  # the user's own, other picture
        _protect(w, folder, backup)
        return [grefel("predict", folder, "-w", mini, "--aligned", "--annotate", backup)]

    add("predict DIR --annotate BACKUP (an existing folder of the user's own p01.png)", "27.1",
        "error", annotate_user_folder)

    def bench_compare_own(w: Path) -> List[Proc]:
        first = grefel("bench", "-w", mini, "--backends", "onnx", *QUICK_BENCH, "--out", w / "r")
        record = next(iter(sorted((w / "r").glob("bench_*.json"))), None)
        if record is None:
            return [first]
        _protect(w, record)
        second = grefel("bench", "-w", mini, "--backends", "onnx", *QUICK_BENCH, "--out", w / "r",
                        "--compare", record)
        return [first, second]

    add("bench --out R --compare R/bench_<earlier>.json (same folder)", "27.1", EITHER,
        bench_compare_own)

    def pretrain_cache_is_data(w: Path) -> List[Proc]:
        data = _copy(synth, w / "ds")
        _protect(w, data)
        return [grefel("pretrain", "landmarks", "--data", data, "--out", w / "l.safetensors",
                       "--steps", "1", "--batch-size", "2", "--precise-bn", "0", "--threads",
                       "1", "--align-faces", "detect", "--align-cache", data)]

    add("pretrain landmarks --align-cache DATA (the dataset folder)", "27.1", "error",
        pretrain_cache_is_data)

    def import_json_is_src(w: Path) -> List[Proc]:
        src = _copy(ckpt, w / "tiny.safetensors")
        _protect(w, src, src.with_suffix(".json"))
        return [grefel("weights", "import", src, "--kind", "posterv2", "--preset", "tiny",
                       "--out", w / "o.safetensors", "--json", src)]

    add("weights import SRC --json SRC (the report over the source)", "27.1", "error",
        import_json_is_src)

    def info_json_shipped(w: Path) -> List[Proc]:
        model = w / "model.json"
        os.symlink(DEFAULT_ONNX.with_suffix(".json"), model)
        before = DEFAULT_ONNX.with_suffix(".json").read_bytes()
        (w / "before").write_bytes(before)
        return [grefel("info", "--json", model)]

    def shipped_kept(procs: List[Proc], work: Path) -> str:
        now = DEFAULT_ONNX.with_suffix(".json").read_bytes()
        if now != (work / "before").read_bytes():
            DEFAULT_ONNX.with_suffix(".json").write_bytes((work / "before").read_bytes())
            return "lost: the shipped model's sidecar was overwritten (restored)"
        return ""

    add("info --json LINK-to-the-shipped-model's-sidecar", "27.1", "error", info_json_shipped,
        shipped_kept)

    def synth_overwrite_file(w: Path) -> List[Proc]:
        mine = w / "notes.txt"
        mine.write_text("my notes\n")
        _protect(w, mine)
        return [grefel("data", "synth", "--out", mine, "--n", "10", "--size", "32",
                       "--overwrite")]

    add("data synth --out EXISTING-FILE --overwrite", "27.1", "error", synth_overwrite_file)

    def eval_cache_is_model_dir(w: Path) -> List[Proc]:
        model = _copy(ckpt, w / "m" / "tiny.safetensors")
        _protect(w, w / "m")
        return [grefel("eval", model, "--data", csvdata, "--out", w / "ev", "--align-faces",
                       "detect", "--align-cache", w / "m", "--device", "cpu")]

    add("eval --align-cache MODEL-FOLDER (the checkpoint's own folder)", "27.1", EITHER,
        eval_cache_is_model_dir)

    # ==== 27.2 a running command keeps its model: other routes of replacement ==================

    def retarget_link(w: Path) -> List[Proc]:
        folder = photos(w, 30)
        a = _copy(mini, w / "a.onnx")
        b = _named_onnx(mini, w / "b.onnx", ["x", "y", "z"])
        os.symlink(a, w / "model.onnx")

        def mutate() -> None:
            tmp = w / "model.tmp"
            os.symlink(b, tmp)
            os.replace(tmp, w / "model.onnx")
        return _paused_predict(w, folder, w / "model.onnx", mutate)

    def same_model(procs: List[Proc], work: Path) -> str:
        if procs[-1].returncode != 0:
            return ""
        recs = _stdout_records(procs[-1])
        labels = _labels_of(recs)
        if len(recs) != 30:
            return f"lost: {len(recs)} records of 30"
        return "" if labels == ["blue", "green", "red"] else \
            f"records mix models: class names {labels}"

    add("-w LINK retargeted to another model mid-run", "27.2", "ok", retarget_link, same_model)

    def cp_other_model(w: Path) -> List[Proc]:
        folder = photos(w, 30)
        model = _copy(mini, w / "model.onnx")
        other = _named_onnx(mini, w / "other.onnx", ["x", "y", "z"])
        return _paused_predict(w, folder, model, lambda: shutil.copyfile(other, model))

    add("cp other.onnx over -w model.onnx mid-run (another valid model)", "27.2", "ok",
        cp_other_model, same_model)

    def folder_moved(w: Path) -> List[Proc]:
        folder = photos(w, 30)
        model = _copy(mini, w / "models" / "model.onnx")

        def mutate() -> None:
            os.rename(w / "models", w / "models.old")
            _named_onnx(mini, w / "models" / "model.onnx", ["x", "y", "z"])
        return _paused_predict(w, folder, model, mutate)

    add("model folder renamed and a new model put at the old path mid-run", "27.2", "ok",
        folder_moved, same_model)

    def ckpt_renamed_over(w: Path) -> List[Proc]:
        folder = photos(w, 30)
        model = _copy(DEFAULT_CKPT, w / "m.safetensors")
        other = _copy(ckpt, w / "o.safetensors")

        def mutate() -> None:
            os.replace(other, model)
            os.replace(other.with_suffix(".json"), model.with_suffix(".json"))
        return _paused_predict(w, folder, model, mutate)

    def ckpt_same(procs: List[Proc], work: Path) -> str:
        if procs[-1].returncode != 0:
            return ""
        recs = _stdout_records(procs[-1])
        if len(recs) != 30:
            return f"lost: {len(recs)} records of 30"
        distinct = {json.dumps(r["probs"], sort_keys=True) for r in recs}
        return "" if len(distinct) == 1 else f"{len(distinct)} different answers for 30 copies " \
            "of one image (the model changed mid-run)"

    add("checkpoint and sidecar mv'd over by another mid-run (-w .safetensors)", "27.2", "ok",
        ckpt_renamed_over, ckpt_same)

    # ==== 27.3 non-finite: other routes ===========================================================

    def bad_bn(w: Path, value: float = -1.0) -> Path:
        import torch
        from safetensors.torch import load_file, save_file

        from grefel.fileio import sha256_file

        model = _copy(ckpt, w / "bn.safetensors")
        tensors = load_file(str(model))
        for k in tensors:
            if k.endswith("running_var"):
                tensors[k] = torch.full_like(tensors[k], value)
        save_file(tensors, str(model))
        side = model.with_suffix(".json")
        meta = json.loads(side.read_text())
        meta["weights_sha256"] = sha256_file(model)
        side.write_text(json.dumps(meta))
        return model

    add("predict -w checkpoint whose BatchNorm running_var is -1 (finite, NaN outputs)", "27.3",
        "error", lambda w: [grefel("predict", plain, "-w", bad_bn(w), "--aligned")], _one_record)

    def export_bad_bn(w: Path) -> List[Proc]:
        return [grefel("export", bad_bn(w), "--onnx-only", "--fp32", "--out", w / "e")]

    def no_onnx(procs: List[Proc], work: Path) -> str:
        made = sorted(p.name for p in (work / "e").glob("*.onnx")) if (work / "e").exists() \
            else []
        return f"wrote {made} of a model whose outputs are NaN" if made and \
            procs[-1].returncode == 0 else ""

    add("export of a checkpoint whose running_var is -1", "27.3", "error", export_bad_bn,
        no_onnx)

    def train_init_bad_bn(w: Path) -> List[Proc]:
        return [train(w, synth, "--init", bad_bn(w))]

    add("train --init checkpoint whose running_var is -1", "27.3", "error", train_init_bad_bn,
        _no_nonfinite(lambda w: w / "run"))

    def log_model(w: Path) -> Path:
        import onnx
        from onnx import helper

        proto = onnx.load(str(mini))
        for node in proto.graph.node:
            if node.op_type == "Softmax":
                node.input[0] = "logm"
        proto.graph.node.insert(1, helper.make_node("Log", ["means"], ["logm"]))
        path = w / "log.onnx"
        onnx.save(proto, str(path))
        return path

    def dark_folder(w: Path) -> List[Proc]:
        folder = photos(w, 2)
        Image.fromarray(np.zeros((90, 120, 3), np.uint8)).save(folder / "black.png")
        return [grefel("predict", folder, "-w", log_model(w), "--aligned", "--out",
                       w / "p.jsonl")]

    def finite_records(procs: List[Proc], work: Path) -> str:
        text = (work / "p.jsonl").read_text() if (work / "p.jsonl").exists() else ""
        if any(x in text for x in ("NaN", "nan", "null", "Infinity")) and \
                '"probs": null' not in text:
            return "a record holds NaN / null probabilities"
        if procs[-1].returncode == 0:
            names = {Path(r["source"]).name for r in _records(work / "p.jsonl")}
            if "black.png" not in names and "black.png" not in procs[-1].stderr:
                return "black.png neither recorded nor named"
            if not {"p00.png", "p01.png"} <= names:
                return f"lost: records of {sorted(names)}"
        return ""

    add("ONNX giving NaN only for a black image (Log of the mean), folder of 3", "27.3",
        EITHER, dark_folder, finite_records)

    def bench_nan_onnx(w: Path) -> List[Proc]:
        import onnx
        from onnx import numpy_helper

        proto = onnx.load(str(mini))
        proto.graph.initializer.append(numpy_helper.from_array(
            np.array([np.inf, 0, 0], np.float32), "b"))
        from onnx import helper

        for node in proto.graph.node:
            if node.op_type == "Softmax":
                node.input[0] = "mb"
        proto.graph.node.insert(1, helper.make_node("Add", ["means", "b"], ["mb"]))
        onnx.save(proto, str(w / "inf.onnx"))
        return [grefel("bench", "-w", w / "inf.onnx", "--backends", "onnx", *QUICK_BENCH, "--out",
                       w / "r")]

    def bench_row_says(procs: List[Proc], work: Path) -> str:
        rows = latency_rows(work / "r")
        if procs[-1].returncode == 0 and rows and all(r.get("status") == "ok" for r in rows):
            return "an ONNX with an inf initializer (NaN outputs) timed as ok"
        return ""

    add("bench -w ONNX with an inf initializer (ONNX backend)", "27.3", EITHER, bench_nan_onnx,
        bench_row_says)

    def landmarks_nan(w: Path) -> List[Proc]:
        data = _copy(synth, w / "ds")
        rows = (data / "landmarks.csv").read_text().splitlines()
        for i in range(1, len(rows)):
            cells = rows[i].split(",")
            cells[3] = "nan"
            rows[i] = ",".join(cells)
        (data / "landmarks.csv").write_text("\n".join(rows) + "\n")
        return [grefel("pretrain", "landmarks", "--data", data, "--out", w / "o" /
                       "l.safetensors", "--steps", "2", "--batch-size", "2", "--precise-bn", "0",
                       "--threads", "1", "--landmarks", "file")]

    add("pretrain landmarks on a landmarks.csv holding 'nan' targets", "27.3", "error",
        landmarks_nan, _no_nonfinite(lambda w: w / "o"))

    def sidecar_std_zero(w: Path) -> List[Proc]:
        model = _copy(ckpt, w / "m.safetensors")
        side = model.with_suffix(".json")
        meta = json.loads(side.read_text())
        meta["config"]["image_std"] = [0.0, 0.0, 0.0]
        side.write_text(json.dumps(meta))
        return [grefel("predict", plain, "-w", model, "--aligned")]

    add("checkpoint sidecar config image_std [0,0,0] (division by zero)", "27.4", "error",
        sidecar_std_zero, _one_record)

    # ==== 27.4 metadata: other files ===========================================================

    def sidecar_vs_embedded(w: Path) -> List[Proc]:
        model = _copy(mini, w / "m.onnx")
        (w / "m.json").write_text(json.dumps({"format": "grefel-checkpoint/1",
                                              "class_names": ["blue", "green", "red"]}))
        return [grefel("predict", plain, "-w", model, "--aligned")]

    def embedded_names(procs: List[Proc], work: Path) -> str:
        if procs[-1].returncode != 0:
            return ""
        recs = _stdout_records(procs[-1])
        label = recs[0]["label"] if recs else None
        return "" if label == "red" else \
            f"label {label!r}: a stray m.json renamed the model's own classes without a word"

    add("ONNX with class metadata and a m.json beside it naming them in another order", "27.4",
        EITHER, sidecar_vs_embedded, embedded_names)

    def split_file_edited(w: Path) -> List[Proc]:
        root = _copy(mux, w / "mux")
        first = grefel("data", "split", root)
        split_csv = root / "grefel_split.csv"
        if split_csv.exists():
            rows = split_csv.read_text().splitlines()
            header = rows[0].split(",")
            col = header.index("split") if "split" in header else len(header) - 1
            cells = rows[1].split(",")
            cells[col] = "tset"
            rows[1] = ",".join(cells)
            split_csv.write_text("\n".join(rows) + "\n")
        return [first, grefel("data", "split", root)]

    add("grefel_split.csv edited by hand (a row's split 'tset')", "27.4", "error",
        split_file_edited)

    def legend_case(w: Path) -> List[Proc]:
        root = _copy(mux, w / "mux")
        rows = (root / "data" / "legend.csv").read_text().splitlines()
        rows[3] = rows[3].replace("HAPPINESS", "Happy")
        (root / "data" / "legend.csv").write_text("\n".join(rows) + "\n")
        return [grefel("data", "split", root, "--json", w / "s.json")]

    def no_new_class(procs: List[Proc], work: Path) -> str:
        if procs[-1].returncode != 0 or not (work / "s.json").exists():
            return ""
        text = (work / "s.json").read_text().lower()
        said = any(k in procs[-1].output.lower() for k in ("happy", "left out", "unknown"))
        return "" if said or '"happy"' not in text else "'Happy' became a class of its own"

    add("legend.csv with one 'Happy' among 'HAPPINESS' rows", "27.4", EITHER, legend_case,
        no_new_class)

    def classes_case(w: Path) -> List[Proc]:
        data = _copy(csvdata, w / "ds")
        (data / "classes.txt").write_text("\n".join([SEVEN[0], "Neutral", *SEVEN[2:]]) + "\n")
        return [train(w, data)]

    add("classes.txt with 'neutral' and 'Neutral' (differ only in case)", "27.4", EITHER,
        classes_case, _said("case", "neutral"))

    def sidecar_image_size(w: Path) -> List[Proc]:
        model = _copy(ckpt, w / "m.safetensors")
        side = model.with_suffix(".json")
        meta = json.loads(side.read_text())
        meta["config"]["image_size"] = 0
        side.write_text(json.dumps(meta))
        return [grefel("export", model, "--onnx-only", "--fp32", "--out", w / "e")]

    add("checkpoint sidecar config image_size 0, export", "27.4", "error", sidecar_image_size,
        no_onnx)

    def onnx_no_meta_no_side(w: Path) -> List[Proc]:
        import onnx

        proto = onnx.load(str(mini))
        del proto.metadata_props[:]
        onnx.save(proto, str(w / "bare.onnx"))
        return [grefel("eval", w / "bare.onnx", "--data", rgbdata, "--out", w / "ev")]

    add("eval of an ONNX with no class names anywhere", "27.4", EITHER, onnx_no_meta_no_side,
        lambda p, w: "" if p[-1].returncode != 0 or (w / "ev" / "metrics.json").exists()
        else "lost: exit 0, no metrics.json")

    def shipped_on_rgb(w: Path) -> List[Proc]:
        return [grefel("eval", DEFAULT_ONNX, "--data", rgbdata, "--out", w / "ev")]

    add("eval of the shipped 7-class ONNX on a 3-class dataset", "27.4", "error",
        shipped_on_rgb)

    def contempt_eval(w: Path) -> List[Proc]:
        first = grefel("data", "synth", "--out", w / "ds", "--n", "40", "--size", "32",
                       "--contempt", "--imbalance", "uniform")
        return [first, grefel("eval", ckpt, "--data", w / "ds", "--out", w / "ev")]

    add("eval of a 7-class checkpoint on a --contempt (8-class) SynthFER", "27.4", "error",
        contempt_eval)

    # ==== 27.5 streams and folders: other containers, a folder changing ======================

    def mp4(w: Path, frames: int = 30, name: str = "v.mp4") -> Path:
        import cv2

        writer = cv2.VideoWriter(str(w / name), cv2.VideoWriter_fourcc(*"mp4v"), 10, (128, 96))
        for i in range(frames):
            img = np.random.default_rng(i).integers(0, 40, (96, 128, 3)).astype(np.uint8)
            img[..., 2] += 180
            writer.write(img)
        writer.release()
        return w / name

    def cut(path: Path, keep: float) -> Path:
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])
        return path

    def ended_with_reason(n_total: int) -> Callable[[List[Proc], Path], str]:
        def check(procs: List[Proc], work: Path) -> str:
            n = len(_records(work / "p.jsonl"))
            if procs[-1].returncode == 0 and n < n_total - 2:
                return f"exit 0 after {n} of {n_total} frames, no error"
            return ""
        return check

    add("MP4 (mp4v) cut at 60 %", "27.5", "error",
        lambda w: [grefel("predict", cut(mp4(w), 0.6), "-w", mini, "--aligned", "--out",
                          w / "p.jsonl")], ended_with_reason(30))

    def mkv(w: Path) -> List[Proc]:
        import cv2

        path = w / "v.mkv"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"XVID"), 10, (128, 96))
        for i in range(30):
            img = np.random.default_rng(i).integers(0, 40, (96, 128, 3)).astype(np.uint8)
            img[..., 2] += 180
            writer.write(img)
        writer.release()
        data = bytearray(path.read_bytes())
        mid = len(data) // 2
        data[mid: mid + 2000] = os.urandom(2000)
        path.write_bytes(bytes(data))
        return [grefel("predict", path, "-w", mini, "--aligned", "--out", w / "p.jsonl")]

    def mkv_check(procs: List[Proc], work: Path) -> str:
        n = len(_records(work / "p.jsonl"))
        if procs[-1].returncode == 0 and n < 28 and "skipped" not in procs[-1].stderr:
            return f"exit 0 with {n} of 30 frames and no skip line"
        return ""

    add("MKV (XVID) with 2000 random bytes in the middle", "27.5", EITHER, mkv, mkv_check)

    def gif(w: Path) -> List[Proc]:
        frames = [Image.open(plain).convert("P") for _ in range(3)]
        frames[0].save(w / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
        return [grefel("predict", w / "anim.gif", "-w", mini, "--aligned", "--out",
                       w / "p.jsonl")]

    add("animated GIF of 3 frames", "27.5", EITHER, gif,
        lambda p, w: "" if p[-1].returncode != 0 or len(_records(w / "p.jsonl")) in (1, 3)
        else f"{len(_records(w / 'p.jsonl'))} records for a 3-frame GIF")

    def files_deleted_mid_walk(w: Path) -> List[Proc]:
        folder = photos(w, 40)

        def mutate() -> None:
            for i in range(30, 40):
                (folder / f"p{i:02d}.png").unlink()
        return _paused_predict(w, folder, mini, mutate)

    def thirty_at_least(procs: List[Proc], work: Path) -> str:
        recs = _stdout_records(procs[-1])
        if procs[-1].returncode not in (0, 1):
            return f"exit {procs[-1].returncode}"
        got = {Path(r["source"]).name for r in recs}
        want = {f"p{i:02d}.png" for i in range(30)}
        if not want <= got:
            return f"lost: records of {len(got & want)} of the 30 images still there"
        return ""

    add("10 of 40 images deleted while the folder is walked", "27.5", "ok",
        files_deleted_mid_walk, thirty_at_least, ok_codes=(0, 1))

    def file_garbled_mid_walk(w: Path) -> List[Proc]:
        folder = photos(w, 40)
        return _paused_predict(w, folder, mini,
                               lambda: (folder / "p35.png").write_bytes(b"garbage" * 10))

    def garbled_named(procs: List[Proc], work: Path) -> str:
        if procs[-1].returncode != 0:
            return ""
        recs = _stdout_records(procs[-1])
        names = {Path(r["source"]).name for r in recs}
        if len(names) != 39 or "p35.png" in names:
            return f"{len(names)} records, p35.png recorded: {'p35.png' in names}"
        return "" if "p35.png" in procs[-1].stderr else "p35.png skipped without a word"

    add("an image overwritten with garbage while the folder is walked", "27.5", "ok",
        file_garbled_mid_walk, garbled_named)

    def locked_subfolder(w: Path) -> List[Proc]:
        folder = photos(w, 2)
        _copy(plain, folder / "locked" / "x.png")
        os.chmod(folder / "locked", 0o000)
        _open_to_all(w / "o")
        return [_nobody("predict", folder, "-w", mini, "--aligned", "--out", w / "o" / "p.jsonl")]

    def two_and_said(procs: List[Proc], work: Path) -> str:
        if procs[-1].returncode != 0:
            return ""
        names = sorted(Path(r["source"]).name for r in _records(work / "o" / "p.jsonl"))
        if names != ["p00.png", "p01.png"]:
            return f"lost: records of {names}"
        return "" if "locked" in procs[-1].stderr else "the locked folder skipped without a word"

    add("folder with a subfolder the user cannot open (mode 000; unprivileged user)",
        "27.5", "ok", locked_subfolder, two_and_said)

    def noexec_subfolder(w: Path) -> List[Proc]:
        folder = photos(w, 2)
        _copy(plain, folder / "listable" / "x.png")
        os.chmod(folder / "listable", 0o644)  # readable, not searchable
        _open_to_all(w / "o")
        return [_nobody("predict", folder, "-w", mini, "--aligned", "--out", w / "o" / "p.jsonl")]

    def noexec_check(procs: List[Proc], work: Path) -> str:
        if procs[-1].returncode != 0:
            return ""
        names = sorted(Path(r["source"]).name for r in _records(work / "o" / "p.jsonl"))
        if not {"p00.png", "p01.png"} <= set(names):
            return f"lost: records of {names}"
        return "" if "x.png" in procs[-1].stderr or "listable" in procs[-1].stderr else \
            "x.png (in a folder without execute permission) skipped without a word"

    add("folder with a subfolder readable but not searchable (mode 644; unprivileged)", "27.5",
        "ok", noexec_subfolder, noexec_check)

    def unreadable_image(w: Path) -> List[Proc]:
        folder = photos(w, 3)
        os.chmod(folder / "p01.png", 0o000)
        _open_to_all(w / "o")
        return [_nobody("predict", folder, "-w", mini, "--aligned", "--out", w / "o" / "p.jsonl")]

    add("folder with one unreadable image (mode 000; unprivileged)", "27.5", "ok",
        unreadable_image,
        lambda p, w: "" if len(_records(w / "o" / "p.jsonl")) == 2 and "p01.png" in p[-1].stderr
        else "not 2 records and a line naming p01.png")

    def zero_byte_video(w: Path) -> List[Proc]:
        folder = photos(w, 2)
        (folder / "empty.mp4").write_bytes(b"")
        return [grefel("predict", folder, "-w", mini, "--aligned", "--out", w / "p.jsonl")]

    def empty_named(procs: List[Proc], work: Path) -> str:
        if procs[-1].returncode != 0:
            return ""
        if len(_records(work / "p.jsonl")) != 2:
            return f"lost: {len(_records(work / 'p.jsonl'))} records of 2 photos"
        return "" if "empty.mp4" in procs[-1].stderr else "empty.mp4 skipped without a word"

    add("folder with a 0-byte .mp4 beside two photos", "27.5", "ok", zero_byte_video,
        empty_named)

    def video_in_folder_cut(w: Path) -> List[Proc]:
        folder = photos(w, 1)
        cut(mp4(folder, 30, "clip.mp4"), 0.5)
        return [grefel("predict", folder, "-w", mini, "--aligned", "--out", w / "p.jsonl")]

    def folder_video_said(procs: List[Proc], work: Path) -> str:
        n = sum(1 for r in _records(work / "p.jsonl") if r["source"].endswith("clip.mp4"))
        if procs[-1].returncode == 0 and n < 28 and "clip.mp4" not in procs[-1].stderr:
            return f"exit 0 with {n} of the video's 30 frames and no word of clip.mp4"
        if len(_records(work / "p.jsonl")) - n != 1:
            return "lost: no record of the photo"
        return ""

    add("folder holding a photo and an MP4 cut at 50 %", "27.5", EITHER, video_in_folder_cut,
        folder_video_said, ok_codes=(0,))

    def csv_lists_folder(w: Path) -> List[Proc]:
        data = _copy(csvdata, w / "ds")
        (data / "img" / "adir.png").mkdir()
        with open(data / "test.csv", "a") as f:
            f.write("img/adir.png,0\n")
        return [grefel("eval", ckpt, "--data", data, "--out", w / "ev", "--strict")]

    add("eval --strict with test.csv listing a folder named .png", "27.5", "error",
        csv_lists_folder)

    def glob_literal(w: Path) -> List[Proc]:
        photos(w, 2)
        return [grefel("predict", "photos/*.png", "-w", mini, "--aligned", cwd=w)]

    add("predict 'photos/*.png' (a quoted glob, no such file)", "27.5", "error", glob_literal)

    # ==== 27.6 meaning changed by other options ==================================================

    add("train --val-split test (best chosen on the test split)", "27.6", EITHER,
        lambda w: [train(w, synth, "--val-split", "test")], _said("test"))
    add("train --label-smoothing 1 (uniform targets: nothing to learn)", "27.6", "error",
        lambda w: [train(w, synth, "--label-smoothing", "1")])
    add("train --delta 1e-30 (a flat softmax)", "27.6", EITHER,
        lambda w: [train(w, synth, "--delta", "1e-30")], _no_nonfinite(lambda w: w / "run"))
    add("train --val-split '' --select macro_f1 (nothing to select on)", "27.6", EITHER,
        lambda w: [train(w, synth, "--val-split", "", "--select", "macro_f1")],
        _said("val", "select", "last"))
    add("train --dataset imagefolder on a SynthFER folder", "27.6", "error",
        lambda w: [train(w, synth, "--dataset", "imagefolder")])

    def resume_other_path(w: Path) -> List[Proc]:
        first = train(w, synth)
        other = _copy(synth, w / "copy")
        return [first, grefel("train", "--out", w / "run", "--data", other, "--resume",
                              "--epochs", "2")]

    add("--resume with --data a byte-identical copy at another path", "27.6", EITHER,
        resume_other_path,
        lambda p, w: "" if p[-1].returncode != 0 or
        len(json.loads((w / "run" / "metrics.json").read_text()) or []) >= 1 else "no metrics")

    def resume_more_noise(w: Path) -> List[Proc]:
        first = grefel("data", "synth", "--out", w / "ds", "--n", "70", "--size", "32",
                       "--imbalance", "uniform")
        t1 = train(w, w / "ds")
        second = grefel("data", "synth", "--out", w / "ds", "--n", "70", "--size", "32",
                        "--imbalance", "uniform", "--noise", "0.5", "--overwrite")
        return [first, t1, second, grefel("train", "--out", w / "run", "--resume", "--epochs",
                                          "2")]

    add("--resume after data synth --overwrite --noise 0.5 (same paths, labels flipped)",
        "27.6", "error", resume_more_noise)

    def synth_tiny_train(w: Path) -> List[Proc]:
        first = grefel("data", "synth", "--out", w / "ds", "--n", "3", "--size", "32")
        return [first, train(w, w / "ds")]

    add("data synth --n 3 then train on it", "27.6", "error", synth_tiny_train)

    add("data synth --noise 1 (every train label flipped)", "27.6", EITHER,
        lambda w: [grefel("data", "synth", "--out", w / "ds", "--n", "20", "--size", "32",
                          "--noise", "1")], _said("noise", "flipped"))

    # ==== 27.7 serve: other request kinds ========================================================

    from tools.fault_families.serve import (
        _at_once,
        _image_request,
        _post,
        _serving,
        _tensor_body,
    )

    def send(url: str, x: np.ndarray, binary: bool = False) -> Any:
        if not binary:
            return _post(url, _tensor_body(x))
        raw = np.ascontiguousarray(x, np.float32).tobytes()
        header = json.dumps({"inputs": [{"name": "images", "shape": list(x.shape),
                                         "datatype": "FP32",
                                         "parameters": {"binary_data_size": len(raw)}}]}).encode()
        return _post(url, header + raw, "application/octet-stream", header_length=len(header))

    def serve_binary_mix(w: Path) -> List[Proc]:
        procs: List[Proc] = []
        start = time.perf_counter()
        from grefel.contract import INPUT_SHAPE

        valid = [np.full((1, *INPUT_SHAPE), 0.1 * (i + 1), np.float32) for i in range(6)]
        nan = np.full((1, *INPUT_SHAPE), 0.5, np.float32)
        nan[0, 0, 0, 0] = np.nan
        empty = np.zeros((0, *INPUT_SHAPE), np.float32)
        with _serving(w, mini, procs) as server:
            if server is None:
                return [*procs, Proc(["client"], 1, "", "Error: the server never got ready",
                                     0.0)]
            url = server.url()
            calls = [lambda x=x: send(url, x, binary=True) for x in valid]
            calls += [lambda: send(url, nan, binary=True), lambda: send(url, empty, True)]
            answers = _at_once(calls)
        lines = [json.dumps({"i": i, "status": s, "body": b[:500]})
                 for i, (s, b) in enumerate(answers)]
        procs.append(Proc(["http-client"], 0, "\n".join(lines) + "\n", "",
                          time.perf_counter() - start))
        return procs

    def valid_answered(n_valid: int) -> Callable[[List[Proc], Path], str]:
        def check(procs: List[Proc], work: Path) -> str:
            answers = [json.loads(x) for x in procs[-1].stdout.splitlines() if x.strip()]
            bad = [a for a in answers[:n_valid] if a["status"] != 200]
            if bad:
                return f"lost: {len(bad)} valid request(s) failed: {bad[0]['body'][:200]}"
            tb = [a for a in answers if "Traceback" in a["body"]]
            return "an answer body is a traceback" if tb else ""
        return check

    add("serve: 6 valid binary-tensor requests + NaN (binary) + batch of 0, at once", "27.7",
        "ok", serve_binary_mix, valid_answered(6))

    def serve_odd_images(w: Path) -> List[Proc]:
        procs: List[Proc] = []
        start = time.perf_counter()
        import io

        def enc(img: Image.Image, fmt: str, **kw: Any) -> bytes:
            buf = io.BytesIO()
            img.save(buf, fmt, **kw)
            return buf.getvalue()

        rgb = Image.open(plain).convert("RGB")
        files = {
            "png": plain.read_bytes(),
            "cmyk jpeg": enc(rgb.convert("CMYK"), "JPEG"),
            "16-bit gray png": enc(Image.fromarray(
                np.asarray(rgb.convert("L"), np.uint16) * 257), "PNG"),
            "LA png": enc(rgb.convert("LA"), "PNG"),
            "webp": enc(rgb, "WEBP"),
            "garbage": b"\x89PNG\r\n\x1a\n" + os.urandom(300),
        }
        with _serving(w, mini, procs, extra=["--aligned"]) as server:
            if server is None:
                return [*procs, Proc(["client"], 1, "", "Error: the server never got ready",
                                     0.0)]
            url = server.url("grefel_image")
            answers = _at_once([lambda f=f: _image_request(url, [f]) for f in files.values()])
        lines = [json.dumps({"i": k, "status": s, "body": b[:500]})
                 for k, (s, b) in zip(files, answers)]
        procs.append(Proc(["http-client"], 0, "\n".join(lines) + "\n", "",
                          time.perf_counter() - start))
        return procs

    add("serve grefel_image: PNG, CMYK JPEG, 16-bit gray, LA, WebP + 1 garbage at once",
        "27.7", "ok", serve_odd_images, valid_answered(5))

    # ==== 27.8 tracebacks: other options, env vars, combinations ================================

    def bad_env(name: str, value: Optional[str], *args: Any) -> Callable[[Path], List[Proc]]:
        return lambda w: [_run([sys.executable, "-m", "grefel",
                                *[str(a).replace("{w}", str(w)) for a in args]],
                               env={name: value})]

    add("OMP_NUM_THREADS=lots, predict -w checkpoint", "27.8", EITHER,
        bad_env("OMP_NUM_THREADS", "lots", "predict", plain, "-w", ckpt, "--aligned"),
        _one_record)
    add("GREFEL_CRASH_DIR under a file, a bad option", "27.8", "error",
        lambda w: [(w / "f").write_text("x") and grefel(
            "predict", plain, "-w", mini, "--threshold", "2",
            env={"GREFEL_CRASH_DIR": str(w / "f" / "crash")})])
    add("HOME unset, predict with face detection (a detector to find)", "27.8", EITHER,
        bad_env("HOME", None, "predict", plain, "-w", mini), lambda p, w: "")
    add("HOME and XDG_CACHE_HOME unset, eval --align-faces detect", "27.8", EITHER,
        lambda w: [_run([sys.executable, "-m", "grefel", "eval", ckpt, "--data", csvdata,
                         "--out", w / "ev", "--align-faces", "detect", "--device", "cpu"],
                        env={"HOME": None, "XDG_CACHE_HOME": None})],
        lambda p, w: "" if p[-1].returncode != 0 or (w / "ev" / "metrics.json").exists()
        else "lost: exit 0, no metrics.json")
    add("TMPDIR a file, predict -w shipped ONNX", "27.8", "ok",
        lambda w: [(w / "t").write_text("x") and _run(
            [sys.executable, "-m", "grefel", "predict", plain, "-w", DEFAULT_ONNX, "--aligned"],
            env={"TMPDIR": str(w / "t")})], _one_shipped)

    def ro_model_tmp_gone(w: Path) -> List[Proc]:
        model = _copy(DEFAULT_ONNX, w / "store" / "m.onnx")
        os.chmod(w / "store", 0o555)
        return [_nobody("predict", plain, "-w", model, "--aligned",
                        env={"TMPDIR": str(w / "nope")})]

    add("model in a read-only folder, TMPDIR missing (unprivileged)", "27.8", "ok",
        ro_model_tmp_gone, _one_shipped)
    add("LC_ALL=C, --json with a non-ASCII name", "27.8", "ok",
        lambda w: [_run([sys.executable, "-m", "grefel", "predict", plain, "-w", mini,
                         "--aligned", "--json", w / "résumé.json"],
                        env={"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0"})],
        lambda p, w: "" if (w / "résumé.json").exists() else "lost: no résumé.json")

    def umask077(w: Path) -> List[Proc]:
        p1 = _run(["sh", "-c", f"umask 077 && exec {sys.executable} -m grefel export {ckpt} "
                   f"--onnx-only --fp32 --out {w / 'e'}"])
        _open_to_all(w / "o")
        os.chmod(w, 0o755)
        return [p1, _nobody("predict", plain, "-w", w / "e" / "tiny.onnx", "--aligned")]

    add("export under umask 077, then predict with it as another user", "27.8", "error",
        umask077)

    def stdout_closed(w: Path) -> List[Proc]:
        return [_run(["sh", "-c", f"exec {sys.executable} -m grefel predict {plain} -w {mini} "
                      "--aligned >&-"])]

    add("predict img >&- (stdout closed: records have nowhere to go)", "27.8", "error",
        stdout_closed)

    def stdin_closed(w: Path) -> List[Proc]:
        return [_run(["sh", "-c", f"exec {sys.executable} -m grefel data synth --out "
                      f"{w / 'ds'} --n 10 --size 32 <&-"])]

    add("data synth with stdin closed (<&-)", "27.8", "ok", stdin_closed,
        lambda p, w: "" if (w / "ds" / "train.csv").exists() else "lost: no dataset")

    def stderr_closed(w: Path) -> List[Proc]:
        return [_run(["sh", "-c", f"exec {sys.executable} -m grefel predict {w / 'nope.png'} "
                      f"-w {mini} 2>&-"])]

    add("predict of a missing file with stderr closed (2>&-)", "27.8", "error", stderr_closed,
        lambda p, w: "" if p[-1].returncode not in (0,) else "exit 0 for a missing file")

    long_name = "x" * 300
    add("predict --out with a 300-byte file name", "27.8", "error",
        lambda w: [grefel("predict", plain, "-w", mini, "--aligned", "--out",
                          w / f"{long_name}.jsonl")])
    add("eval --out a path of 5000 bytes", "27.8", "error",
        lambda w: [grefel("eval", ckpt, "--data", csvdata, "--out",
                          w / "/".join(["d" * 200] * 25))])
    add("export --json a path of 5000 bytes", "27.8", "error",
        lambda w: [grefel("export", mini, "--onnx-only", "--fp32", "--out", w / "e", "--json",
                          w / "/".join(["j" * 200] * 25))])
    add("data synth --out a 300-byte folder name", "27.8", "error",
        lambda w: [grefel("data", "synth", "--out", w / long_name, "--n", "10", "--size", "32")])
    add("train --out a 300-byte folder name", "27.8", "error",
        lambda w: [train(w, synth, run=long_name)])

    def ro(w: Path) -> Path:
        d = w / "ro"
        d.mkdir()
        os.chmod(d, 0o555)
        return d

    add("eval --out in a read-only folder (unprivileged)", "27.8", "error",
        lambda w: [_nobody("eval", ckpt, "--data", csvdata, "--out", ro(w) / "ev")])
    add("train --out in a read-only folder (unprivileged)", "27.8", "error",
        lambda w: [_nobody("train", "--data", synth, "--out", ro(w) / "run", *TINY_TRAIN)])
    add("data synth --out in a read-only folder (unprivileged)", "27.8", "error",
        lambda w: [_nobody("data", "synth", "--out", ro(w) / "ds", "--n", "10", "--size", "32")])
    add("weights import --out in a read-only folder (unprivileged)", "27.8", "error",
        lambda w: [_nobody("weights", "import", poster, "--kind", "posterv2", "--preset", "tiny",
                           "--out", ro(w) / "x.safetensors")])
    add("bench --out in a read-only folder (unprivileged)", "27.8", "error",
        lambda w: [_nobody("bench", "-w", mini, "--backends", "onnx", *QUICK_BENCH, "--out",
                           ro(w) / "r")])
    add("pretrain --out in a read-only folder (unprivileged)", "27.8", "error",
        lambda w: [_nobody("pretrain", "landmarks", "--data", synth, "--out",
                           ro(w) / "l.safetensors", "--steps", "1", "--batch-size", "2",
                           "--precise-bn", "0", "--threads", "1")])

    def unreadable_classes(w: Path) -> List[Proc]:
        data = _copy(csvdata, w / "ds")
        os.chmod(data / "classes.txt", 0o000)
        _open_to_all(w / "o")
        return [_nobody("train", "--data", data, "--out", w / "o" / "run", *TINY_TRAIN)]

    add("train with an unreadable classes.txt (unprivileged)", "27.8", "error",
        unreadable_classes)

    def unreadable_model(w: Path) -> List[Proc]:
        model = _copy(ckpt, w / "m.safetensors")
        os.chmod(model, 0o000)
        return [_nobody("predict", plain, "-w", model, "--aligned")]

    add("predict -w an unreadable checkpoint (unprivileged)", "27.8", "error", unreadable_model)

    def unreadable_sidecar(w: Path) -> List[Proc]:
        model = _copy(mini, w / "m.onnx")
        (w / "m.json").write_text(json.dumps({"class_names": ["red", "green", "blue"]}))
        os.chmod(w / "m.json", 0o000)
        return [_nobody("predict", plain, "-w", model, "--aligned")]

    add("predict -w m.onnx whose m.json is unreadable (unprivileged)", "27.8", EITHER,
        unreadable_sidecar, _one_record)

    def unreadable_train_image(w: Path) -> List[Proc]:
        data = _copy(csvdata, w / "ds")
        os.chmod(data / "img" / "train_3.png", 0o000)
        _open_to_all(w / "o")
        return [_nobody("train", "--data", data, "--out", w / "o" / "run", *TINY_TRAIN,
                        "--strict")]

    add("train --strict with one unreadable image (unprivileged)", "27.8", "error",
        unreadable_train_image)

    def resume_ro_run(w: Path) -> List[Proc]:
        first = train(w, synth)
        for p in [w / "run", *(w / "run").rglob("*")]:
            os.chmod(p, 0o555 if p.is_dir() else 0o444)
        os.chmod(w, 0o755)
        return [first, _nobody("train", "--out", w / "run", "--resume", "--epochs", "2")]

    add("--resume of a run folder the user cannot write (unprivileged)", "27.8", "error",
        resume_ro_run)

    add("bench --compare a JSON list", "27.8", "error",
        lambda w: [(w / "c.json").write_text("[1, 2]") and grefel(
            "bench", "-w", mini, "--backends", "onnx", *QUICK_BENCH, "--out", w / "r", "--compare",
            w / "c.json")])
    add("bench --batch-sizes '1,,8'", "27.8", EITHER,
        lambda w: [grefel("bench", "-w", mini, "--backends", "onnx", "--batch-sizes", "1,,8",
                          "--iters", "1", "--seconds", "0", "--presets", "tiny", "--out",
                          w / "r")], lambda p, w: "")
    add("bench --presets nosuch", "27.8", "error",
        lambda w: [grefel("bench", "-w", mini, "--backends", "onnx", "--presets", "nosuch",
                          "--out", w / "r")])
    add("bench --det-every 1,x with --source", "27.8", "error",
        lambda w: [grefel("bench", "-w", mini, "--source", clip, "--det-every", "1,x",
                          "--out", w / "r")])

    def bench_fifo_source(w: Path) -> List[Proc]:
        os.mkfifo(w / "cam.png")
        return [grefel("bench", "-w", mini, "--backends", "onnx", "--source", w / "cam.png",
                       "--max-frames", "2", "--out", w / "r", timeout=60)]

    add("bench --source FIFO.png nobody writes to (a row saying why)", "27.5", EITHER,
        bench_fifo_source, lambda p, w: "" if p[-1].returncode != 0 or "named pipe" in
        p[-1].output else "no word of the named pipe")

    def fifo_stream_ctrl_c(w: Path) -> List[Proc]:
        os.mkfifo(w / "cam.avi")
        start = time.perf_counter()
        proc = _popen("predict", w / "cam.avi", "-w", mini, "--aligned")
        time.sleep(4)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        if proc.poll() is None:
            proc.kill()
            out, err = proc.communicate()
            return [Proc([str(a) for a in proc.args], None, out.decode(errors="replace"),
                         err.decode(errors="replace") + "\n(Ctrl-C and SIGTERM ignored for 25 s; "
                         "killed)", time.perf_counter() - start)]
        return [_finish(proc, start, 10)]

    add("predict FIFO.avi nobody writes to (a stream), then Ctrl-C", "27.5", "ok",
        fifo_stream_ctrl_c, lambda p, w: "", ok_codes=(130, 1, 143))
    add("weights import of a folder", "27.8", "error",
        lambda w: [grefel("weights", "import", synth, "--kind", "ir50", "--preset", "tiny",
                          "--out", w / "x.safetensors")])
    add("weights import of a grefel checkpoint as --kind mobilefacenet", "27.8", "error",
        lambda w: [grefel("weights", "import", ckpt, "--kind", "mobilefacenet", "--preset",
                          "tiny", "--out", w / "x.safetensors")])

    def zip_not_torch(w: Path) -> List[Proc]:
        import zipfile

        with zipfile.ZipFile(w / "w.pth", "w") as z:
            z.writestr("hello.txt", "not a torch archive")
        return [grefel("weights", "import", w / "w.pth", "--kind", "ir50", "--preset", "tiny",
                       "--out", w / "x.safetensors")]

    add("weights import of a zip that is not a torch archive", "27.8", "error", zip_not_torch)
    add("data split of an empty folder", "27.8", "error",
        lambda w: [(w / "e").mkdir() or grefel("data", "split", w / "e")])

    def split_header_only(w: Path) -> List[Proc]:
        root = _copy(mux, w / "mux")
        (root / "data" / "legend.csv").write_text("user.id,image,emotion\n")
        return [grefel("data", "split", root)]

    add("data split of a legend.csv with a header only", "27.8", "error", split_header_only)

    def split_missing_images(w: Path) -> List[Proc]:
        root = _copy(mux, w / "mux")
        shutil.rmtree(root / "images")
        return [grefel("data", "split", root, "--json", w / "s.json")]

    add("data split with legend.csv but no images/ folder", "27.8", EITHER,
        split_missing_images, _said("image", "missing", "not found"))
    add("info --json a 300-byte file name", "27.8", "error",
        lambda w: [grefel("info", "--json", w / f"{long_name}.json")])
    add("info with CUDA_VISIBLE_DEVICES=garbage", "27.8", "ok",
        bad_env("CUDA_VISIBLE_DEVICES", "x,y,-7", "info"))
    add("export --deepstream-face-classes 'a,b'", "27.8", "error",
        lambda w: [grefel("export", mini, "--onnx-only", "--fp32", "--out", w / "e",
                          "--deepstream", w / "ds", "--deepstream-face-classes", "a,b")])
    add("export --calib-data an empty folder --int8", "27.8", "error",
        lambda w: [(w / "c").mkdir() or grefel("export", mini, "--onnx-only", "--fp32", "--int8",
                                               "--calib-data", w / "c", "--out", w / "e")])
    add("eval --reference a folder", "27.8", "error",
        lambda w: [grefel("eval", ckpt, "--data", csvdata, "--reference", synth, "--out",
                          w / "ev")])
    add("eval --device cuda:99", "27.8", "error",
        lambda w: [grefel("eval", ckpt, "--data", csvdata, "--device", "cuda:99", "--out",
                          w / "ev")])
    add("train --set workers=2.5", "27.8", "error",
        lambda w: [train(w, synth, "--set", "workers=2.5")])
    add("train --set lr=", "27.8", "error", lambda w: [train(w, synth, "--set", "lr=")])
    add("train --set =1 (no key)", "27.8", "error", lambda w: [train(w, synth, "--set", "=1")])
    add("predict --det-size 1 (with detection)", "27.8", EITHER,
        lambda w: [grefel("predict", plain, "-w", mini, "--det-size", "1")], lambda p, w: "")
    add("predict --format csv --out to stdout (no --out)", "27.8", "ok",
        lambda w: [grefel("predict", plain, "-w", mini, "--aligned", "--format", "csv")],
        lambda p, w: "" if "red" in p[-1].stdout else "no CSV row on stdout")
    add("predict --max-frames 1 of a folder of 3", "27.8", EITHER,
        lambda w: [grefel("predict", photos(w), "-w", mini, "--aligned", "--max-frames", "1",
                          "--out", w / "p.jsonl")], lambda p, w: "")
    add("pretrain identity --data a CSV dataset without groups", "27.8", "error",
        lambda w: [grefel("pretrain", "identity", "--data", csvdata, "--out",
                          w / "i.safetensors", "--steps", "1", "--batch-size", "2",
                          "--precise-bn", "0")])
    add("pretrain landmarks --landmarks file on a dataset without landmarks.csv", "27.8",
        "error",
        lambda w: [grefel("pretrain", "landmarks", "--data", csvdata, "--out",
                          w / "l.safetensors", "--steps", "1", "--batch-size", "2",
                          "--precise-bn", "0", "--landmarks", "file")])

    # ==== new: concurrent commands on one output; interrupted then rerun ========================

    def two_imports(w: Path) -> List[Proc]:
        start = time.perf_counter()
        a = _popen("weights", "import", poster, "--kind", "posterv2", "--preset", "tiny",
                   "--out", w / "x.safetensors")
        b = _popen("weights", "import", poster, "--kind", "posterv2", "--preset", "tiny",
                   "--out", w / "x.safetensors")
        return [_finish(a, start), _finish(b, start)]

    def import_consistent(procs: List[Proc], work: Path) -> str:
        from grefel.fileio import sha256_file

        if not any(p.returncode == 0 for p in procs):
            return "lost: neither import finished"
        side = json.loads((work / "x.json").read_text())
        if side.get("weights_sha256") != sha256_file(work / "x.safetensors"):
            return "x.json's hash is not x.safetensors' (the pair is mixed)"
        left = [p.name for p in work.iterdir() if p.name.startswith(".")]
        return f"temporary files left: {left}" if left else ""

    out.append(Case("two weights import into one --out at once", SIDE,
                    "new: concurrent commands", "ok", two_imports, import_consistent,
                    ok_codes=(0, 1)))

    def two_evals(w: Path) -> List[Proc]:
        start = time.perf_counter()
        a = _popen("eval", ckpt, "--data", csvdata, "--out", w / "ev", "--device", "cpu")
        b = _popen("eval", DEFAULT_CKPT, "--data", csvdata, "--out", w / "ev", "--device",
                   "cpu")
        return [_finish(a, start), _finish(b, start)]

    def eval_consistent(procs: List[Proc], work: Path) -> str:
        if not any(p.returncode == 0 for p in procs):
            return "lost: neither eval finished"
        metrics = json.loads((work / "ev" / "metrics.json").read_text())
        confusion = json.loads((work / "ev" / "confusion.json").read_text())
        if metrics["final"]["confusion"] != confusion["final"]:
            return (f"lost: the report mixes two evals (metrics.json of {metrics.get('model')}, "
                    "confusion.json of the other)")
        return ""

    out.append(Case("two evals of different models into one --out at once", SIDE,
                    "new: concurrent commands", "ok", two_evals, eval_consistent,
                    ok_codes=(0, 1)))

    def two_annotates(w: Path) -> List[Proc]:
        folder = photos(w, 15)
        start = time.perf_counter()
        a = _popen("predict", folder, "-w", mini, "--aligned", "--annotate", w / "ann",
                   "--out", w / "a.jsonl")
        b = _popen("predict", folder, "-w", mini, "--aligned", "--annotate", w / "ann",
                   "--out", w / "b.jsonl")
        return [_finish(a, start), _finish(b, start)]

    def annotated_whole(procs: List[Proc], work: Path) -> str:
        if not any(p.returncode == 0 for p in procs):
            return "lost: neither predict finished"
        bad = []
        for p in (work / "ann").rglob("*.png"):
            try:
                Image.open(p).load()
            except Exception:  # noqa: BLE001
                bad.append(p.name)
        n = len(list((work / "ann").rglob("*.png")))
        if bad:
            return f"lost: {len(bad)} annotated copies damaged"
        return "" if n == 15 else f"{n} annotated copies of 15"

    out.append(Case("two predict --annotate into one folder at once", SIDE,
                    "new: concurrent commands", "ok", two_annotates, annotated_whole,
                    ok_codes=(0, 1)))

    def pretrain_interrupted_reuse(w: Path) -> List[Proc]:
        start = time.perf_counter()
        args = ["pretrain", "landmarks", "--data", synth, "--out", w / "l.safetensors",
                "--batch-size", "2", "--precise-bn", "0", "--threads", "1"]
        proc = _popen(*args, "--steps", "400")
        time.sleep(4)
        proc.send_signal(signal.SIGINT)
        first = _finish(proc, start, 60)
        return [first, grefel(*args, "--steps", "400", "--reuse", timeout=120)]

    def reuse_honest(procs: List[Proc], work: Path) -> str:
        side = work / "l.json"
        if procs[-1].returncode != 0 or not side.exists():
            return ""
        if procs[-1].seconds < 2.0 and procs[0].returncode != 0:
            text = side.read_text()
            if '"steps": 400' not in text and "400" not in text:
                return "--reuse kept a file that is not the 400-step run"
        return ""

    add("pretrain Ctrl-C'd, then the same command with --reuse", "new: interrupted then rerun",
        EITHER, pretrain_interrupted_reuse, reuse_honest)

    def eval_interrupted_rerun(w: Path) -> List[Proc]:
        start = time.perf_counter()
        proc = _popen("eval", DEFAULT_CKPT, "--data", synth, "--out", w / "ev", "--device",
                      "cpu", "--split", "train", "--batch-size", "2")
        time.sleep(3)
        proc.send_signal(signal.SIGINT)
        first = _finish(proc, start, 60)
        return [first, grefel("eval", DEFAULT_CKPT, "--data", synth, "--out", w / "ev",
                              "--device", "cpu", "--split", "test")]

    add("eval Ctrl-C'd, then rerun into the same --out", "new: interrupted then rerun", "ok",
        eval_interrupted_rerun,
        lambda p, w: "" if (w / "ev" / "metrics.json").exists() else "lost: no metrics.json")

    def predict_interrupted_rerun(w: Path) -> List[Proc]:
        folder = photos(w, 30)
        start = time.perf_counter()
        read_fd, write_fd = os.pipe()
        proc = subprocess.Popen([sys.executable, "-m", "grefel", "predict", str(folder), "-w",
                                 str(mini), "--aligned", "--batch", "1", "--out",
                                 str(w / "p.jsonl"), "--annotate", str(w / "ann")],
                                stdout=write_fd, stderr=subprocess.PIPE, cwd=ROOT,
                                preexec_fn=_default_sigint)
        os.close(write_fd)
        end = time.monotonic() + 30
        while time.monotonic() < end and proc.poll() is None and not (
                (w / "p.jsonl").exists() and (w / "p.jsonl").read_text().count("\n") >= 3):
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        os.close(read_fd)
        first = _finish(proc, start, 60)
        return [first, grefel("predict", folder, "-w", mini, "--aligned", "--out",
                              w / "p.jsonl", "--annotate", w / "ann")]

    add("predict --annotate Ctrl-C'd, then rerun with the same outputs",
        "new: interrupted then rerun", "ok", predict_interrupted_rerun,
        _both(_n_records(lambda w: w / "p.jsonl", 30),
              lambda p, w: "" if len(list((w / "ann").rglob("*.png"))) == 30 else
              f"{len(list((w / 'ann').rglob('*.png')))} annotated copies of 30"))

    return out


# -- run and record ------------------------------------------------------------------------------


def _open_work(work: Path) -> None:
    """The unprivileged cases (run as nobody) walk down to their work folders."""
    os.chmod(work.parent, 0o755)
    os.chmod(work, 0o777)


def run_fresh2(out_dir: Path, match: str = "", log: Callable[[str], None] = print
               ) -> Dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="grefel-fresh2-") as tmp:
        tmp_path = Path(tmp)
        os.chmod(tmp_path, 0o755)
        chosen = [c for c in cases(tmp_path / "scratch") if match in c.name]
        record = fresh_record(run_cases(chosen, tmp_path / "work", log, judge, _open_work))
        with contextlib.suppress(OSError):  # chmod 000 folders: make them removable
            for dirpath, dirs, _ in os.walk(tmp_path):
                for d in dirs:
                    os.chmod(Path(dirpath) / d, 0o755)
    write(record, out_dir, "fault_fresh2", to_markdown(record, TITLE, BLURB))
    return record


TITLE = "Second fresh fault campaign"
BLURB = ("new cases through the CLI (`python -m tools.fault_fresh2`), none of them a case "
         "of the corpus, the campaign, the families, the first fresh campaign, the tests or "
         "issue 27's examples; each is assigned one of issue 27's families or a new one.")


def main(argv: Optional[Sequence[str]] = None) -> int:
    return fresh_main(run_fresh2, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
