"""grefel.data: every reader on a tiny fake copy of its layout, FERDataset's bad-input handling,
collate_skip, the transforms and the data-refinement sampler."""

from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from grefel.config import DATASET_CLASSES, DataConfig
from grefel.data import (
    DatasetError,
    FERDataset,
    RefinedSampler,
    Sample,
    class_counts,
    collate_skip,
    load_samples,
    make_transforms,
)
from grefel.data.datasets import detect_kind, load_image
from grefel.data.readers import ferplus_majority, read_fergdb


def _img(path: Path, size=(24, 24), mode: str = "RGB", fmt: str = None, seed: int = 0) -> Path:
    """Write a small random image at `path` (format from the suffix unless `fmt`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(a, "RGB").convert(mode).save(path, format=fmt)
    return path


def _csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


# --- fake layouts -------------------------------------------------------------------------------


def make_csv_root(root: Path, with_classes: bool = True) -> Path:
    for i in range(4):
        _img(root / "img" / f"{i}.png", seed=i)
    _csv(root / "train.csv", ["path", "label", "group", "skin"],
         [["img/0.png", "happy", "a", "dark"], ["img/1.png", "sad", "a", "light"],
          ["img/2.png", "happy", "b", "dark"]])
    _csv(root / "val.csv", ["path", "label", "group", "skin"], [["img/3.png", "sad", "c", "x"]])
    if with_classes:
        (root / "classes.txt").write_text("sad\nhappy\n")
    return root


def make_imagefolder_root(root: Path) -> Path:
    for split in ("train", "test"):
        for c in ("anger", "joy"):
            for i in range(2):
                _img(root / split / c / f"{i}.jpg", seed=i)
    return root


def make_rafdb_root(root: Path) -> Path:
    lines = ["train_00001.jpg 5", "train_00002.jpg 1", "test_0001.jpg 4", "test_0002.jpg 7"]
    (root / "EmoLabel").mkdir(parents=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    for name in ("train_00001", "train_00002", "test_0001", "test_0002"):
        _img(root / "Image" / "aligned" / f"{name}_aligned.jpg")
    manual = root / "Annotation" / "manual"
    manual.mkdir(parents=True)
    landmarks = "\n".join(f"{10 + k}.5 {20 + k}.5" for k in range(5))
    (manual / "train_00001_manu_attri.txt").write_text(landmarks + "\n1\n2\n3\n")
    return root


def make_affectnet_root(root: Path) -> Path:
    header = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
              "facial_landmarks", "expression", "valence", "arousal"]
    rows = [[f"1/{i}.jpg", 2, 2, 20, 20, "", label, 0.1, 0.2]
            for i, label in enumerate([0, 1, 7, 8, 9, 10, 6])]
    _csv(root / "Manually_Annotated_file_lists" / "training.csv", header, rows)
    _csv(root / "Manually_Annotated_file_lists" / "validation.csv", header, rows[:2])
    for i in range(7):
        _img(root / "Manually_Annotated_Images" / "1" / f"{i}.jpg", size=(32, 32))
    return root


FERPLUS_VOTES = [
    # neutral happiness surprise sadness anger disgust fear contempt unknown NF
    [8, 1, 1, 0, 0, 0, 0, 0, 0, 0],  # neutral (single votes removed)
    [0, 6, 4, 0, 0, 0, 0, 0, 0, 0],  # happiness 6 > 5
    [5, 5, 0, 0, 0, 0, 0, 0, 0, 0],  # tie -> dropped
    [0, 0, 0, 0, 0, 0, 0, 0, 10, 0],  # unknown -> dropped
    [0, 0, 0, 2, 0, 0, 0, 0, 0, 8],  # not a face -> dropped
    [0, 0, 0, 0, 7, 3, 0, 0, 0, 0],  # anger (PublicTest)
]


def make_ferplus_root(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    usage = ["Training"] * 5 + ["PublicTest"]
    _csv(root / "fer2013.csv", ["emotion", "pixels", "Usage"],
         [[0, " ".join(str(v) for v in rng.integers(0, 256, 48 * 48)), u] for u in usage])
    names = ["fer0000000.png", "fer0000001.png", "fer0000002.png", "fer0000003.png",
             "fer0000004.png", "fer0000005.png"]
    cols = list(DATASET_CLASSES["ferplus"]) + ["unknown", "NF"]
    _csv(root / "fer2013new.csv", ["Usage", "Image name"] + cols,
         [[u, n] + v for u, n, v in zip(usage, names, FERPLUS_VOTES)])
    return root


def make_fergdb_root(root: Path) -> Path:
    for char in ("aia", "ray"):
        for emo in ("joy", "anger"):
            for i in range(5):
                _img(root / char / f"{char}_{emo}" / f"{char}_{emo}_{i}.png", seed=i)
    return root


def make_affwild2_root(root: Path) -> Path:
    ann = root / "annotations" / "EXPR_Set"
    header = "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other"
    for split, video, labels in (("Train_Set", "video1", [0, 4, -1, 6]),
                                 ("Train_Set", "video2", [1, 1]),
                                 ("Validation_Set", "video3", [5])):
        (ann / split).mkdir(parents=True, exist_ok=True)
        (ann / split / f"{video}.txt").write_text(
            header + "\n" + "\n".join(str(v) for v in labels) + "\n")
        for k in range(1, len(labels) + 1):
            if (video, k) != ("video1", 4):  # frame 4 of video1 has no face crop
                _img(root / "cropped_aligned" / video / f"{k:05d}.jpg")
    return root


def make_jaffe_root(root: Path) -> Path:
    for s, subject in enumerate(("KA", "KL", "KM", "NA")):
        for code in ("NE", "HA", "AN"):
            _img(root / f"{subject}.{code}1.{s * 10 + len(code)}.tiff", size=(32, 32), mode="L")
    return root


# --- readers ------------------------------------------------------------------------------------


def test_csv_reader_names_groups_attrs(tmp_path):
    root = make_csv_root(tmp_path / "d")
    samples, classes = load_samples(root, split="train")
    assert classes == ("sad", "happy")
    assert [s.label for s in samples] == [1, 0, 1]
    assert [s.group for s in samples] == ["a", "a", "b"]
    assert samples[0].attrs == {"skin": "dark"}
    assert Path(samples[0].path).is_absolute() and Path(samples[0].path).exists()
    assert class_counts(samples, 2) == [1, 2]


def test_csv_reader_without_classes_txt_uses_all_splits(tmp_path):
    root = make_csv_root(tmp_path / "d", with_classes=False)
    _, classes = load_samples(root, "csv", split="val")
    assert classes == ("happy", "sad")
    _csv(root / "test.csv", ["path", "label"], [["img/0.png", 1], ["img/1.png", 0]])
    (root / "train.csv").unlink()
    (root / "val.csv").unlink()
    samples, classes = load_samples(root, "csv", split="test")
    assert classes == ("0", "1") and [s.label for s in samples] == [1, 0]
    # indices with a gap (0 and 2, no 1) are refused: tests/test_faults_train.py


def test_csv_reader_lists_unknown_labels_and_missing_images(tmp_path):
    root = make_csv_root(tmp_path / "d")
    _csv(root / "test.csv", ["path", "label"],
         [["img/0.png", "happy"], ["img/1.png", "angry"], ["img/2.png", "7"]])
    with pytest.raises(DatasetError, match=r"2 unknown label.*line 3: 'angry'.*line 4: '7'"):
        load_samples(root, "csv", split="test")
    _csv(root / "test.csv", ["path", "label"], [["img/0.png", "sad"], ["img/nope.png", "sad"]])
    with pytest.raises(DatasetError, match=r"1 images listed in test.csv missing: .*nope.png"):
        load_samples(root, "csv", split="test")
    _csv(root / "test.csv", ["file", "label"], [["img/0.png", "sad"]])
    with pytest.raises(DatasetError, match=r"test.csv: missing column\(s\) path"):
        load_samples(root, "csv", split="test")
    with pytest.raises(DatasetError, match=r"missing split file nope.csv"):
        load_samples(root, "csv", split="nope")


def test_imagefolder_reader_and_its_errors(tmp_path):
    root = make_imagefolder_root(tmp_path / "d")
    samples, classes = load_samples(root, split="test")
    assert classes == ("anger", "joy") and sorted(s.label for s in samples) == [0, 0, 1, 1]
    (root / "train" / "fear").mkdir()
    with pytest.raises(DatasetError, match=r"1 empty class folder.*train/fear"):
        load_samples(root, "imagefolder", split="train")
    (root / "classes.txt").write_text("anger\njoy\n")
    with pytest.raises(DatasetError, match=r"not in classes.txt.*: fear"):
        load_samples(root, "imagefolder", split="train")


def test_imagefolder_links_to_nothing_are_errors_not_skipped(tmp_path):
    """A class folder or an image that is a broken link or a loop of links used to be left out
    without a word (the dataset silently shrank or lost a class)."""
    root = make_imagefolder_root(tmp_path / "d")
    image = root / "test" / "joy" / "gone.png"
    os.symlink(root / "nowhere.png", image)
    with pytest.raises(DatasetError, match=r"joy: 1 symbolic link\(s\) to nothing .*gone.png"):
        load_samples(root, "imagefolder", split="test")
    image.unlink()
    os.symlink(root / "test" / "loop_b", root / "test" / "loop_a")
    os.symlink(root / "test" / "loop_a", root / "test" / "loop_b")
    with pytest.raises(DatasetError, match=r"test: 2 symbolic link\(s\) to nothing .*loop_a"):
        load_samples(root, "imagefolder", split="test")


def test_rafdb_reader_with_manual_attributes(tmp_path):
    root = make_rafdb_root(tmp_path / "raf")
    train, classes = load_samples(root, split="train")
    assert detect_kind(root) == "rafdb" and classes == DATASET_CLASSES["rafdb"]
    assert [s.label for s in train] == [4, 0]  # labels 5 and 1 -> sadness, surprise
    assert train[0].path.endswith("Image/aligned/train_00001_aligned.jpg")
    assert train[0].attrs == {"gender": "female", "race": "asian", "age": "40-69"}
    assert train[1].attrs == {}
    (root / "Annotation" / "manual" / "train_00002_manu_attri.txt").write_text("1\n2\n")
    with pytest.raises(DatasetError, match=r"train_00002_manu_attri.txt: expected 5 landmark"):
        load_samples(root, "rafdb", split="train")
    test, _ = load_samples(root, "rafdb", split="test")
    assert [s.label for s in test] == [3, 6]
    with pytest.raises(DatasetError, match="RAF-DB has splits train, test"):
        load_samples(root, "rafdb", split="val")


def test_rafdb_reader_errors(tmp_path):
    root = make_rafdb_root(tmp_path / "raf")
    (root / "Image" / "aligned" / "test_0002_aligned.jpg").unlink()
    with pytest.raises(DatasetError, match=r"1 aligned images .* missing: .*test_0002_aligned"):
        load_samples(root, "rafdb", split="test")
    (root / "EmoLabel" / "list_patition_label.txt").write_text("train_00001.jpg 9\n")
    with pytest.raises(DatasetError, match=r"line 1: 'train_00001.jpg 9'"):
        load_samples(root, "rafdb", split="train")
    (root / "EmoLabel" / "list_patition_label.txt").unlink()
    with pytest.raises(DatasetError, match="list_patition_label.txt: missing RAF-DB label file"):
        load_samples(root, "rafdb", split="train")


def test_affectnet_readers_drop_out_of_range_labels(tmp_path, caplog):
    root = make_affectnet_root(tmp_path / "an")
    with caplog.at_level(logging.INFO, logger="grefel.data"):
        s8, c8 = load_samples(root, "affectnet8", split="train")
    assert c8 == DATASET_CLASSES["affectnet8"] and [s.label for s in s8] == [0, 1, 7, 6]
    assert "dropped 3 rows" in caplog.text and "10: 1" in caplog.text
    s7, c7 = load_samples(root, "affectnet7", split="train")
    assert len(c7) == 7 and [s.label for s in s7] == [0, 1, 6]
    assert s7[0].attrs["box"] == "2,2,20,20"
    image, _, _ = FERDataset(s7, c7)[0]  # cropped to the 20x20 box, resized to 112
    assert image.shape == (3, 112, 112)
    assert detect_kind(root) == "affectnet8"
    val, _ = load_samples(root, "affectnet7", split="val")
    assert len(val) == 2
    (root / "Manually_Annotated_file_lists" / "validation.csv").unlink()
    with pytest.raises(DatasetError, match="missing AffectNet list validation.csv"):
        load_samples(root, "affectnet7", split="test")


def test_ferplus_majority_rule():
    assert ferplus_majority(FERPLUS_VOTES[0]) == 0
    assert ferplus_majority(FERPLUS_VOTES[1]) == 1
    assert ferplus_majority(FERPLUS_VOTES[2]) is None  # tie
    assert ferplus_majority(FERPLUS_VOTES[3]) is None  # unknown
    assert ferplus_majority(FERPLUS_VOTES[4]) is None  # not a face
    assert ferplus_majority([1] * 10) is None  # only single votes


def test_ferplus_reader_decodes_pixel_rows(tmp_path):
    root = make_ferplus_root(tmp_path / "fer")
    samples, classes = load_samples(root, split="train")
    assert classes == DATASET_CLASSES["ferplus"] and [s.label for s in samples] == [0, 1]
    assert samples[1].path.endswith("fer2013.csv#1")
    img = load_image(samples[1].path)
    assert img.shape == (48, 48, 3) and img.dtype == np.uint8
    x, label, _ = FERDataset(samples, classes)[1]
    assert x.shape == (3, 112, 112) and label == 1
    val, _ = load_samples(root, "ferplus", split="val")
    assert [s.label for s in val] == [4]
    with pytest.raises(DatasetError, match=r"row 99 not in"):
        load_image(samples[0].path.replace("#0", "#99"))
    (root / "fer2013.csv").unlink()
    with pytest.raises(DatasetError, match="missing FER2013 pixel file"):
        load_samples(root, "ferplus", split="train")


def test_fergdb_reader(tmp_path):
    root = make_fergdb_root(tmp_path / "ferg")
    assert detect_kind(root) == "fergdb"
    every, classes = load_samples(root, "fergdb", split="all")
    assert len(every) == 20 and {s.group for s in every} == {"aia", "ray"}
    assert {classes[s.label] for s in every} == {"joy", "anger"}
    parts = [{s.path for s in read_fergdb(root, sp)[0]} for sp in ("train", "val", "test")]
    assert set.union(*parts) == {s.path for s in every} and sum(map(len, parts)) == 20
    (root / "aia" / "aia_boredom").mkdir()
    with pytest.raises(DatasetError, match=r"not one of .*aia_boredom"):
        load_samples(root, "fergdb", split="all")


def test_affwild2_reader_drops_minus_one_and_groups_by_video(tmp_path, caplog):
    root = make_affwild2_root(tmp_path / "aw")
    assert detect_kind(root) == "affwild2"
    with caplog.at_level(logging.WARNING, logger="grefel.data"):
        train, classes = load_samples(root, split="train")
    assert classes == DATASET_CLASSES["affwild2"]
    assert [(s.group, s.label) for s in train] == [("video1", 0), ("video1", 4),
                                                   ("video2", 1), ("video2", 1)]
    assert train[1].path.endswith("video1/00002.jpg")
    assert "1 annotated frames have no image" in caplog.text
    val, _ = load_samples(root, "affwild2", split="val")
    assert [s.label for s in val] == [5]
    (root / "annotations" / "EXPR_Set" / "Train_Set" / "video2.txt").write_text("a,b\n1\n")
    with pytest.raises(DatasetError, match=r"video2.txt: header 'a,b'"):
        load_samples(root, "affwild2", split="train")


def test_jaffe_reader_leave_subject_out(tmp_path):
    root = make_jaffe_root(tmp_path / "jaffe")
    assert detect_kind(root) == "jaffe"
    splits = {sp: load_samples(root, "jaffe", split=sp, fold=1)[0]
              for sp in ("train", "val", "test")}
    assert {s.group for s in splits["test"]} == {"KL"} and {s.group for s in splits["val"]} == {
        "KM"}
    assert {s.group for s in splits["train"]} == {"KA", "NA"}
    classes = DATASET_CLASSES["jaffe"]
    assert sorted(classes[s.label] for s in splits["test"]) == ["anger", "happiness", "neutral"]
    x, _, _ = FERDataset(splits["test"], classes)[0]  # grayscale tiff -> RGB tensor
    assert x.shape == (3, 112, 112)
    _img(root / "KA.XX1.99.tiff")
    with pytest.raises(DatasetError, match=r"KA.XX1.99.tiff"):
        load_samples(root, "jaffe", split="train")


def test_auto_detect_and_unknown_layout(tmp_path):
    assert detect_kind(make_csv_root(tmp_path / "c")) == "csv"
    assert detect_kind(make_imagefolder_root(tmp_path / "i")) == "imagefolder"
    assert detect_kind(make_ferplus_root(tmp_path / "f")) == "ferplus"
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="cannot tell the dataset layout"):
        load_samples(tmp_path / "empty")
    with pytest.raises(DatasetError, match="does not exist"):
        load_samples(tmp_path / "absent")
    with pytest.raises(DatasetError, match="unknown dataset kind 'imagenet'"):
        load_samples(tmp_path / "c", "imagenet")


# --- FERDataset and collate_skip ----------------------------------------------------------------


def _cmyk_jpeg(path: Path) -> Path:
    Image.new("CMYK", (30, 30), (10, 200, 30, 0)).save(path, format="JPEG")
    return path


@pytest.fixture()
def odd_images(tmp_path) -> List[Sample]:
    good = _img(tmp_path / "good.png")
    full = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
        full, format="PNG")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    text = tmp_path / "notes.jpg"
    text.write_text("this is not an image\n")
    tiny = _img(tmp_path / "tiny.png", size=(12, 30))
    grey = _img(tmp_path / "grey.png", mode="L")
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (20, 20), (255, 0, 0, 0)).save(rgba)  # fully transparent red
    cmyk = _cmyk_jpeg(tmp_path / "cmyk.jpg")
    palette = _img(tmp_path / "pal.gif", mode="P")
    paths = [good, truncated, text, tiny, grey, rgba, cmyk, palette]
    return [Sample(str(p), 0) for p in paths]


def test_ferdataset_converts_modes_and_skips_unreadable(odd_images, caplog):
    ds = FERDataset(odd_images, ("a", "b"))
    with caplog.at_level(logging.WARNING, logger="grefel.data"):
        items = [ds[i] for i in range(len(ds))]
    assert [i for i, it in enumerate(items) if it is None] == [1, 2, 3]
    assert "truncated.png: not a decodable image" in ds.failures[1]
    assert "notes.jpg: not a decodable image" in ds.failures[2]
    assert "tiny.png: image too small (12x30 px" in ds.failures[3]
    assert "truncated.png" in caplog.text
    for it in (items[0], items[4], items[5], items[6], items[7]):
        x, label, _ = it
        assert x.shape == (3, 112, 112) and x.dtype == torch.float32 and label == 0
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    grey = items[4][0]
    assert torch.allclose(grey[0], grey[1]) and torch.allclose(grey[1], grey[2])
    assert torch.allclose(items[5][0], torch.ones(3, 112, 112))  # transparent -> white
    cmyk = items[6][0].mean((1, 2))
    assert cmyk[1] < cmyk[0] and cmyk[1] < cmyk[2]  # much magenta ink -> little green


@pytest.mark.parametrize("index, message", [(1, "truncated.png"), (2, "notes.jpg"),
                                            (3, "too small")])
def test_ferdataset_strict_raises_naming_the_file(odd_images, index, message):
    ds = FERDataset(odd_images, ("a", "b"), strict=True)
    with pytest.raises(DatasetError, match=message):
        ds[index]


def test_collate_skip_drops_none_and_reports_indices(odd_images):
    ds = FERDataset(odd_images, ("a", "b"))
    loader = DataLoader(ds, batch_size=4, shuffle=False, collate_fn=collate_skip)
    batches = list(loader)
    images, labels, indices, skipped = batches[0]
    assert images.shape == (1, 3, 112, 112) and labels.tolist() == [0]
    assert indices.tolist() == [0] and skipped == [1, 2, 3]
    images, labels, indices, skipped = batches[1]
    assert indices.tolist() == [4, 5, 6, 7] and skipped == []
    fresh = FERDataset(odd_images, ("a", "b"))  # as the main process sees a worker's skips
    assert "truncated.png" in fresh.failure(1) and fresh.failure(0) == ""
    workers = DataLoader(fresh, batch_size=2, num_workers=2, collate_fn=collate_skip)
    assert [b[3] for b in workers] == [[1], [2, 3], [], []]  # skips named from worker processes
    assert labels.dtype == torch.int64 and indices.dtype == torch.int64
    empty = collate_skip([None, None])
    assert empty[0].shape == (0, 3, 112, 112) and empty[1].numel() == 0


def test_numpy_batches_match_the_dataloader_without_torch(odd_images):
    """`batches` + `collate_arrays` (a torch-free eval) give the DataLoader's batches, skips
    included, with the eval transform as numpy."""
    from grefel import contract
    from grefel.data.datasets import batches, collate_arrays

    ds = FERDataset(odd_images, ("a", "b"), transform=contract.to_model_input)
    got = list(batches(ds, 3))
    want = list(DataLoader(FERDataset(odd_images, ("a", "b")), batch_size=3,
                           collate_fn=collate_skip))
    assert len(got) == len(want) == 3
    for (images, labels, indices, skipped), (t_images, t_labels, t_indices, t_skipped) in zip(
            got, want):
        assert isinstance(images, np.ndarray) and images.dtype == np.float32
        assert labels.dtype == indices.dtype == np.int64 and skipped == t_skipped
        np.testing.assert_array_equal(images, t_images.numpy())
        assert labels.tolist() == t_labels.tolist() and indices.tolist() == t_indices.tolist()
    assert [b[3] for b in got] == [[1, 2], [3], []]
    empty = collate_arrays([None])
    assert empty[0].shape == (0, 3, 112, 112) and empty[1].size == 0


def test_ferdataset_rejects_labels_out_of_range(tmp_path):
    with pytest.raises(DatasetError, match="label 5 outside 0..1"):
        FERDataset([Sample(str(tmp_path / "x.png"), 5)], ("a", "b"))


# --- transforms ---------------------------------------------------------------------------------


def _face_like() -> Image.Image:
    a = np.random.default_rng(3).integers(0, 256, (150, 170, 3), dtype=np.uint8)
    return Image.fromarray(a, "RGB")


def test_train_transform_shape_range_and_seeded_determinism():
    t = make_transforms(True)
    img = _face_like()
    a = t(img, generator=torch.Generator().manual_seed(5))
    b = t(img, generator=torch.Generator().manual_seed(5))
    c = t(img, generator=torch.Generator().manual_seed(6))
    assert a.shape == (3, 112, 112) and a.dtype == torch.float32
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert t.max_shift == 8  # the shift range of the former 128 -> 112 crop, at eval scale
    assert make_transforms(True, image_size=64)(img).shape == (3, 64, 64)


def test_light_augmentation_shifts_flips_and_jitters_only():
    """policy "light": no rotation and no erasing; a shift of at most 4 px. A flat image stays
    flat (jitter changes its level, nothing paints a box into it)."""
    t = make_transforms(True, policy="light")
    assert (t.max_shift, t.max_degrees, t.erase_p, t.jitter) == (4, 0.0, 0.0, 0.2)
    flat = Image.fromarray(np.full((112, 112, 3), 128, np.uint8), "RGB")
    for seed in range(20):
        x = t(flat, generator=torch.Generator().manual_seed(seed))
        assert float(x.max() - x.min()) < 1e-6
    with pytest.raises(KeyError):
        make_transforms(True, policy="heavy")
    with pytest.raises(ValueError, match="augment_policy must be one of paper, light"):
        DataConfig(augment_policy="heavy")


def test_eval_transform_is_deterministic_and_antialiased():
    t = make_transforms(False)
    img = _face_like()
    assert torch.equal(t(img), t(img)) and t(img).shape == (3, 112, 112)
    checker = (np.indices((448, 448)).sum(0) % 2 * 255).astype(np.uint8)
    x = t(Image.fromarray(checker, "L").convert("RGB"))
    # an antialiased 4x reduction of a 1-pixel checkerboard is flat grey, not aliasing stripes
    assert abs(float(x.mean()) - 0.5) < 0.02 and float(x.std()) < 0.05


# --- RefinedSampler -----------------------------------------------------------------------------


def _toy_labels() -> Dict[str, list]:
    """40 images of class 0 in 4 groups of 10, 6 of class 1 in 2 groups, 3 of class 2 ungrouped."""
    labels = [0] * 40 + [1] * 6 + [2] * 3
    groups = [f"g{i // 10}" for i in range(40)] + ["h0"] * 3 + ["h1"] * 3 + [""] * 3
    return {"labels": labels, "groups": groups}


def test_refined_sampler_balances_classes_and_caps_groups():
    toy = _toy_labels()
    s = RefinedSampler(toy["labels"], toy["groups"], num_classes=4, per_class=8, per_group=3,
                       seed=1)
    draw = list(s)
    assert len(draw) == len(s) == 8 * 3  # class 3 has no images: B x 3
    labels = np.array(toy["labels"])[draw]
    assert np.bincount(labels, minlength=4).tolist() == [8, 8, 8, 0]
    groups = np.array(toy["groups"])[draw]
    for g in ("g0", "g1", "g2", "g3"):  # class 0 has 12 images after the cap >= B: no repeats
        assert len(set(np.array(draw)[groups == g])) <= 3
    class0 = [i for i in draw if toy["labels"][i] == 0]
    assert len(set(class0)) == 8
    class2 = [i for i in draw if toy["labels"][i] == 2]  # 3 images, B = 8: 3 + 3 + 2 repeats
    assert sorted(np.unique(class2, return_counts=True)[1].tolist()) == [2, 3, 3]
    class1 = [i for i in draw if toy["labels"][i] == 1]
    assert len(set(class1)) == 6  # 6 after the cap (3 per group) < B: each at least once


def test_refined_sampler_without_repeats_takes_a_short_class_once():
    """repeat=False: min(B, n_c) per class, every index once; a class the group cap leaves
    short is topped up from its other images, so the epoch length stays fixed."""
    toy = _toy_labels()
    for per_group in (0, 1):
        s = RefinedSampler(toy["labels"], toy["groups"], num_classes=3, per_class=8,
                           per_group=per_group, seed=3, repeat=False)
        for epoch in range(3):
            s.set_epoch(epoch)
            draw = list(s)
            assert len(draw) == len(s) == 8 + 6 + 3
            assert len(set(draw)) == len(draw)  # nothing repeated
            labels = np.array(toy["labels"])[draw]
            assert np.bincount(labels, minlength=3).tolist() == [8, 6, 3]
    capped = RefinedSampler(toy["labels"], toy["groups"], 3, per_class=8, per_group=1, seed=3,
                            repeat=False)
    class0 = [i for i in capped.epoch_indices() if toy["labels"][i] == 0]
    groups = np.array(toy["groups"])[class0]  # 4 groups x 1 kept < 8: the rest tops it up
    assert len(class0) == 8 and set(groups) <= {"g0", "g1", "g2", "g3"}


def test_refined_sampler_is_deterministic_per_seed_and_epoch_and_resumes():
    toy = _toy_labels()
    a = RefinedSampler(toy["labels"], toy["groups"], 3, per_class=8, per_group=3, seed=7)
    b = RefinedSampler(toy["labels"], toy["groups"], 3, per_class=8, per_group=3, seed=7)
    first = list(a)
    assert first == list(b)
    a.set_epoch(1)
    assert list(a) != first
    c = RefinedSampler(toy["labels"], toy["groups"], 3, per_class=8, per_group=3, seed=0)
    c.load_state_dict(a.state_dict())
    assert c.state_dict() == {"epoch": 1, "seed": 7} and list(c) == list(a)


@pytest.mark.parametrize("world", [2, 5])
def test_refined_sampler_rank_shares_are_disjoint_and_cover_the_epoch(world):
    toy = _toy_labels()
    samplers = [RefinedSampler(toy["labels"], toy["groups"], 3, per_class=7, per_group=3,
                               seed=3, rank=r, world_size=world) for r in range(world)]
    for s in samplers:
        s.set_epoch(4)
    shares = [list(s) for s in samplers]
    assert len({len(x) for x in shares}) == 1 and len(shares[0]) == len(samplers[0])
    draw = samplers[0].epoch_indices()
    assert len(draw) == 21
    positions = [list(range(r, len(shares[0]) * world, world)) for r in range(world)]
    padded = (draw * 2)[: len(shares[0]) * world]
    for share, pos in zip(shares, positions):  # rank r holds positions r, r+world, ...
        assert share == [padded[p] for p in pos]
    flat = sorted(p for pos in positions for p in pos)
    assert flat == list(range(len(padded)))  # disjoint positions, union = the padded draw
    assert sorted(x for share in shares for x in share) == sorted(padded)
    assert padded[: len(draw)] == draw


def test_refined_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError, match="labels but"):
        RefinedSampler([0, 1], ["a"], 2, 4, 2)
    with pytest.raises(ValueError, match="rank 2 is not in a world of size 2"):
        RefinedSampler([0, 1], ["a", "b"], 2, 4, 2, rank=2, world_size=2)
    with pytest.raises(ValueError, match="labels must lie in 0..1"):
        RefinedSampler([0, 2], ["a", "b"], 2, 4, 2)
