"""Issue 27.1-2: grefel.fileio.check_outputs (an output never aliases an input or another output),
export's artifact names, and a model that keeps running when its file is rewritten in place."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from grefel.fileio import Input, Output, OutputClash, check_outputs, model_inputs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "img.jpg"
    path.write_bytes(b"photo bytes")
    return path


@pytest.mark.parametrize("spelling", ["same", "dot", "absolute", "symlink", "hardlink"])
def test_an_output_that_is_the_input_is_refused_however_spelled(photo, monkeypatch, spelling):
    monkeypatch.chdir(photo.parent)
    out = {"same": "img.jpg", "dot": "./img.jpg", "absolute": str(photo),
           "symlink": "link.jpg", "hardlink": "hard.jpg"}[spelling]
    if spelling == "symlink":
        os.symlink("img.jpg", "link.jpg")
    if spelling == "hardlink":
        os.link("img.jpg", "hard.jpg")
    with pytest.raises(OutputClash, match=r"^--out .*: is the input image \(SRC\); choose "):
        check_outputs([Input("SRC", "img.jpg", "the input image")], [Output("--out", out)])


def test_a_model_sidecar_is_an_input(tmp_path):
    model = tmp_path / "X.safetensors"
    with pytest.raises(OutputClash, match="sidecar of the checkpoint X.safetensors"):
        check_outputs(model_inputs("MODEL", model, "the checkpoint"),
                      [Output("--json", tmp_path / "X.json")])


def test_two_outputs_on_one_path_are_refused(tmp_path):
    with pytest.raises(OutputClash, match=r"--json .*r.json: is also --out; give each output"):
        check_outputs([], [Output("--out", tmp_path / "r.json"),
                           Output("--json", tmp_path / "r.json")])
    with pytest.raises(OutputClash, match="--out writes it too"):
        check_outputs([], [Output("--out", tmp_path, folder=True, writes=("metrics.json",)),
                           Output("--json", tmp_path / "metrics.json")])


def test_folders(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.csv").write_text("path,label\n")
    dataset = [Input("--data", data, "the dataset folder", folder=True)]
    with pytest.raises(OutputClash, match="is the dataset folder"):
        check_outputs(dataset, [Output("--out", data, folder=True)])
    with pytest.raises(OutputClash, match="is a file in the dataset folder"):
        check_outputs(dataset, [Output("--json", data / "train.csv")])
    # legal: a new file or a folder inside an input folder (predict DIR --annotate
    # DIR/annotated), and an output folder that holds an input it does not write over
    check_outputs(dataset, [Output("--json", data / "new.json"),
                            Output("--annotate", data / "annotated", folder=True)])
    model = tmp_path / "m.onnx"
    model.write_bytes(b"onnx")
    check_outputs(model_inputs("SOURCE", model),
                  [Output("--out", tmp_path, folder=True, writes=("m.checks.json",))])
    with pytest.raises(OutputClash, match=r"would replace .*m.onnx, which is the model"):
        check_outputs(model_inputs("SOURCE", model),
                      [Output("--out", tmp_path, folder=True, writes=("m.onnx",))])
    with pytest.raises(OutputClash, match="holds the model"):
        check_outputs(model_inputs("SOURCE", model),
                      [Output("--triton", tmp_path.parent, folder=True,
                              writes=(tmp_path.name,))])


def test_predict_may_rewrite_its_own_records_in_the_source_folder_but_never_a_photo(tmp_path):
    """`predict DIR --out DIR/p.jsonl` run twice replaces its own earlier records (the walk skips
    them, they are no photo); an --out onto a photo or video in DIR is still refused."""
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(folder / "a.png")
    model = tmp_path / "m.onnx"
    model.write_bytes(b"onnx")
    args = ["predict", str(folder), "-w", str(model)]
    records = folder / "p.jsonl"
    records.write_text('{"source": "a.png"}\n')  # the first run's records
    from grefel.runtime.sources import media_suffixes

    source = [Input("SRC", folder, "the source folder", folder=True, suffixes=media_suffixes())]
    check_outputs(source, [Output("--out", records)])
    with pytest.raises(OutputClash, match="is a file in the source folder"):
        check_outputs(source, [Output("--out", folder / "a.png")])
    from grefel.cli import cli

    result = CliRunner().invoke(cli, [*args, "--out", str(folder / "a.png")])
    assert result.exit_code != 0 and "is a file in the source folder" in result.output
    assert (folder / "a.png").stat().st_size > 0


def test_info_json_never_replaces_the_shipped_model_sidecar(tmp_path, monkeypatch):
    import grefel.runtime.default_model as default_model
    from grefel.cli import cli

    model, side = tmp_path / "shipped.onnx", tmp_path / "shipped.json"
    model.write_bytes(b"onnx")
    side.write_text("{}")
    monkeypatch.setattr(default_model, "default_model", lambda kind="onnx": model)
    monkeypatch.setattr(default_model, "describe", lambda path: "the model that ships")
    result = CliRunner().invoke(cli, ["info", "--json", str(side)])
    assert result.exit_code == 1 and "is the sidecar of the model that ships inside grefel" \
        in result.output
    assert side.read_text() == "{}"


def test_export_artifacts_keep_the_whole_stem(tmp_path):
    from export.fp16 import convert_to_fp16
    from export.pipeline import ExportOptions, artifact_name, planned_outputs
    from tools.fault_corpus import mini_onnx

    fp32 = mini_onnx(tmp_path / "m.onnx")
    convert_to_fp16(fp32, tmp_path / "m.fp16.onnx")
    opts = ExportOptions(fp16=False, onnx_only=True, out=tmp_path)
    assert artifact_name(tmp_path / "m.fp16.onnx", opts) == "m.fp16"
    # the source's own artifact is used in place, so it is not an output
    assert planned_outputs(tmp_path / "m.fp16.onnx", opts) == ("m.fp16.checks.json",)
    assert planned_outputs(fp32, ExportOptions(fp16=True, out=tmp_path / "e")) == (
        "m.onnx", "m.checks.json", "m.fp16.onnx", "m_fp16_b8.engine", "m_fp16_b8.json")


_REWRITE = textwrap.dedent("""
    import sys
    from pathlib import Path

    import numpy as np

    from grefel.runtime.ort_backend import OrtBackend

    path = Path(sys.argv[1])
    x = np.random.default_rng(0).random((2, 3, 112, 112), dtype=np.float32)
    with OrtBackend(path, device="cpu", threads=1) as backend:
        assert backend.mapped_bytes > 0
        assert not [p for p in path.parent.iterdir() if p.name.startswith(".grefel-model-")]
        before = backend.infer(x)
        with open(path, "wb") as f:  # what `cp other.onnx model.onnx` does
            f.write(b"rewritten")
        after = backend.infer(x)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    print("kept")
""")


def test_a_mapped_onnx_model_rewritten_in_place_keeps_running(tmp_path):
    """In a child process: before the fix the second inference died of SIGBUS."""
    import shutil

    shipped = ROOT / "grefel" / "runtime" / "models" / "grefel-tiny-muxspace"
    for suffix in (".onnx", ".json"):
        shutil.copyfile(shipped.with_suffix(suffix), tmp_path / f"model{suffix}")
    proc = subprocess.run([sys.executable, "-c", _REWRITE, str(tmp_path / "model.onnx")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0 and "kept" in proc.stdout, (proc.returncode, proc.stderr[-2000:])


def test_a_checkpoint_rewritten_in_place_keeps_running(tmp_path):
    """safetensors maps the file only while the loaded state dict lives; the model holds copies."""
    import numpy as np

    from grefel.runtime.torch_backend import TorchBackend
    from tools.fault_campaign import _tiny_checkpoint

    path = _tiny_checkpoint(tmp_path / "x.safetensors")
    x = np.random.default_rng(0).random((2, 3, 112, 112), dtype=np.float32)
    with TorchBackend(path, device="cpu", threads=1) as backend:
        before = backend.infer(x)
        maps = Path("/proc/self/maps")
        if maps.exists():
            assert str(path) not in maps.read_text()
        with open(path, "wb") as f:
            f.write(b"rewritten")
        after = backend.infer(x)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_a_run_folder_has_one_owner(tmp_path):
    """`grefel eval run/best.safetensors --out run` replaced the training run's metrics.json:
    a run folder is marked with the command that owns it where the command makes it
    (fileio.claim_run_folder), and another command's output folder may not be it; its own
    command may write there again."""
    from grefel.fileio import RUN_MARKER, claim_run_folder, new_run_folder, run_owner

    run = claim_run_folder(tmp_path / "run", "train")
    assert run_owner(run) == "train" and (run / RUN_MARKER).is_file()
    (run / "metrics.json").write_text("{}")
    with pytest.raises(OutputClash, match=r"is the folder of a `grefel train` run; `grefel eval`"):
        check_outputs([], [Output("--out", run, folder=True, owner="eval",
                                  writes=("metrics.json",))])
    check_outputs([], [Output("--out", run, folder=True, owner="train")])  # --resume: its own
    assert (run / "metrics.json").read_text() == "{}"
    legacy = tmp_path / "old"  # a folder from before the marker: as before, not refused
    legacy.mkdir()
    check_outputs([], [Output("--out", legacy, folder=True, owner="eval")])
    made = new_run_folder("bench", "x", root=tmp_path / "runs")
    assert run_owner(made) == "bench"
    with pytest.raises(OutputClash, match="`grefel bench` run"):
        check_outputs([], [Output("--out", made, folder=True, owner="train")])


def test_train_then_eval_into_its_run_folder_is_refused(tmp_path):
    from click.testing import CliRunner

    from grefel.cli import cli
    from tools.fault_campaign import SEVEN, TINY_TRAIN, _csv_dataset

    data = _csv_dataset(tmp_path / "d", {"train": [i % 7 for i in range(14)],
                                         "val": [i % 7 for i in range(7)],
                                         "test": [i % 7 for i in range(7)]}, SEVEN)
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, ["train", "--data", str(data), "--out", str(run),
                                      *TINY_TRAIN])
    assert result.exit_code == 0, result.output
    before = (run / "metrics.json").read_bytes()
    result = CliRunner().invoke(cli, ["eval", str(run / "best.safetensors"), "--data",
                                      str(data), "--out", str(run)])
    assert result.exit_code == 1 and "is the folder of a `grefel train` run" in result.output
    assert (run / "metrics.json").read_bytes() == before


def test_a_dot_dot_after_a_link_is_resolved_as_the_kernel_does(tmp_path):
    """`--out link/../p01.png` with link -> DIR/sub writes DIR/p01.png (the kernel resolves the
    link, then `..`); a textual abspath dropped `link/..` and let a photo of DIR be replaced."""
    folder = tmp_path / "DIR"
    (folder / "sub").mkdir(parents=True)
    (folder / "p01.png").write_bytes(b"photo")
    (tmp_path / "link").symlink_to(folder / "sub")
    source = [Input("SRC", folder, "the source folder", folder=True, suffixes=(".png",))]
    with pytest.raises(OutputClash, match="is a file in the source folder"):
        check_outputs(source, [Output("--out", tmp_path / "link" / ".." / "p01.png")])
    with pytest.raises(OutputClash, match="is the input"):
        check_outputs([Input("SRC", folder / "p01.png", "the input image")],
                      [Output("--out", tmp_path / "link" / ".." / "p01.png")])


def test_annotate_never_replaces_files_grefel_did_not_write(tmp_path):
    """`predict DIR --annotate BACKUP` with the user's own p01.png in BACKUP replaced it: a
    folder of annotated copies must be new, empty, or one grefel wrote (its marker); a second
    run into grefel's own folder is fine."""
    from PIL import Image

    from grefel.cli import cli
    from tools.fault_corpus import mini_onnx

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(photos / "p01.png")
    backup = tmp_path / "backup"
    backup.mkdir()
    (backup / "p01.png").write_bytes(b"the user's own file")
    model = mini_onnx(tmp_path / "m.onnx")
    args = ["predict", str(photos), "-w", str(model), "--aligned", "--annotate"]
    result = CliRunner().invoke(cli, [*args, str(backup)])
    assert result.exit_code == 1 and "holds files that grefel did not write" in result.output
    assert (backup / "p01.png").read_bytes() == b"the user's own file"
    for _ in range(2):  # a new folder, then the same folder again (grefel's own copies)
        result = CliRunner().invoke(cli, [*args, str(tmp_path / "annotated")])
        assert result.exit_code == 0, result.output
    assert (tmp_path / "annotated" / "p01.png").is_file()


def test_a_companion_file_replaces_only_an_earlier_runs(tmp_path):
    """`weights import ... --out notes.safetensors` replaced the user's notes.json with its
    sidecar (and `predict --out r.csv` their r.expressions.png with its plot): a companion file
    is replaced only where the output it goes with exists too (an earlier run's pair)."""
    notes = tmp_path / "notes.json"
    notes.write_text("my notes")
    out = tmp_path / "notes.safetensors"
    outputs = [Output("--out", out), Output("the sidecar of --out", notes, beside=out)]
    with pytest.raises(OutputClash, match="notes.json: exists without notes.safetensors"):
        check_outputs([], outputs)
    out.write_bytes(b"an earlier run's checkpoint")  # the pair of an earlier run: replaced
    check_outputs([], outputs)
    check_outputs([], [Output("the sidecar of --out", tmp_path / "new.json",
                              beside=tmp_path / "new.safetensors")])  # nothing there: fine
