"""The muxspace/facial_expressions reader and its identity-disjoint, class-stratified split.

The real set is never in the repository (CI has no network): these tests write folders in its
layout (data/legend.csv + images/) with generated pictures.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import pytest
from PIL import Image

from grefel.config import DATASET_CLASSES
from grefel.data import DatasetError, load_samples, muxspace
from grefel.data.datasets import detect_kind
from grefel.data.muxspace import (
    MIN_TEST,
    SPLIT_CSV,
    SPLIT_JSON,
    identity_of,
    muxspace_split,
    split_table,
)
from grefel.data.splits import SPLITS, split_counts, stratified_group_split

Row = Tuple[str, str, str]  # user.id, image, emotion


def write_layout(root: Path, rows: Sequence[Row], missing: Sequence[str] = ()) -> Path:
    """ROOT/data/legend.csv with `rows` and a small JPEG per listed image (except `missing`)."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    with open(root / "data" / "legend.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user.id", "image", "emotion"])
        w.writerows(rows)
    rng = np.random.default_rng(0)
    for _, image, _ in rows:
        if image not in missing and not (root / "images" / image).exists():
            Image.fromarray(rng.integers(0, 255, (24, 24), dtype=np.uint8), "L").save(
                root / "images" / image)
    return root


def people(classes_counts: Dict[str, Dict[str, int]], case: str = "lower") -> List[Row]:
    """Rows for {identity: {emotion: images}}: LFW-style names First_Last_0001.jpg."""
    rows = []
    for person, counts in classes_counts.items():
        k = 1
        for emotion, n in counts.items():
            for _ in range(n):
                label = emotion.upper() if case == "upper" else emotion
                rows.append(("dwdii", f"{person}_{k:04d}.jpg", label))
                k += 1
    return rows


def realistic_rows() -> List[Row]:
    """A small set shaped like muxspace: many one-image people in the two big classes, a few
    people holding most of a minority class (one person has half of disgust), a class of 10
    images of 9 people."""
    spec: Dict[str, Dict[str, int]] = {}
    for i in range(300):
        spec[f"Lfw_Person{i}"] = {"neutral" if i % 2 else "happiness": 1 + i % 3}
    spec["Big_Actor"] = {"disgust": 20, "neutral": 5}
    for i in range(20):
        spec[f"Posed_Face{i}"] = {"disgust": 1, "sadness": 2, "happiness": 1}
    for i in range(9):
        spec[f"Fear_Person{i}"] = {"fear": 2 if i == 0 else 1}
    return people(spec)


# --- the split algorithm -------------------------------------------------------------------------


def test_identity_is_the_name_without_its_trailing_index() -> None:
    assert identity_of("George_W_Bush_0001.jpg") == "George_W_Bush"
    assert identity_of("Avinash_12.jpg") == "Avinash"
    assert identity_of("facial-expressions_2868588k.jpg") == "facial-expressions_2868588k"
    assert identity_of("Madonna.jpg") == "Madonna"


def test_split_is_identity_disjoint_and_gives_each_class_its_share() -> None:
    rows = realistic_rows()
    classes = DATASET_CLASSES["muxspace8"]
    groups: Dict[str, List[int]] = {}
    items = []
    for _, image, emotion in rows:
        groups.setdefault(identity_of(image), [0] * 8)[classes.index(emotion)] += 1
        items.append((classes.index(emotion), identity_of(image)))
    assignment = stratified_group_split(groups)
    assert set(assignment) == set(groups)  # every identity in exactly one split
    counts = split_counts(items, assignment, 8)
    for c, name in enumerate(classes):
        total = sum(counts[s][c] for s in SPLITS)
        if total == 0:
            continue
        shares = [counts[s][c] / total for s in SPLITS]
        # a plain hash of the identity puts all 20 of Big_Actor's disgust images in one split
        # with probability 1: here each class is near 80/10/10 wherever identities allow it
        assert abs(shares[0] - 0.8) <= 0.12, (name, shares)
        assert all(counts[s][c] >= 1 for s in ("val", "test")), (name, counts)


def test_a_large_identity_goes_to_train() -> None:
    groups = {"huge": [600, 0], **{f"p{i}": [1, 1] for i in range(200)}}
    assert stratified_group_split(groups)["huge"] == "train"


def test_split_depends_on_the_groups_only_not_their_order() -> None:
    groups = {f"p{i}": [i % 3, (i * 7) % 4] for i in range(120)}
    backwards = dict(reversed(list(groups.items())))
    assert stratified_group_split(groups) == stratified_group_split(backwards)
    assert stratified_group_split(groups, seed=1) != stratified_group_split(groups, seed=0)


def test_split_is_the_same_on_every_machine(tmp_path: Path) -> None:
    """A golden hash of the written split: the algorithm decides which real photos are test
    images, so a change to it (or to hashing, sorting, float order) must be deliberate: it
    changes every recorded test metric. Update the hash only with a new SPLIT_FORMAT."""
    root = write_layout(tmp_path / "mux", realistic_rows())
    muxspace_split(root)
    digest = hashlib.sha256((root / SPLIT_CSV).read_bytes()).hexdigest()
    assert digest == GOLDEN_SPLIT_SHA256


GOLDEN_SPLIT_SHA256 = "970073253fc1056a04d899556460594cc69e08cba77d414a525d2ade9c22ccc1"


# --- the reader ---------------------------------------------------------------------------------


def test_reader_normalises_labels_and_reads_every_split(tmp_path: Path) -> None:
    rows = people({"Ann_Lee": {"neutral": 3}, "Bo_Chan": {"happiness": 2}}, case="upper")
    rows += [("302", "Cy_Dee_0001.jpg", " Sad "), ("302", "Di_Eve_0001.jpg", "happy"),
             ("302", "Ed_Fox_0001.jpg", "Anger"), ("302", "Fa_Gil_0001.jpg", "surprise")]
    rows += realistic_rows()
    root = write_layout(tmp_path / "mux", rows)
    assert detect_kind(root) == "muxspace"
    seen = []
    for split in SPLITS:
        samples, classes = load_samples(root, "auto", split)
        assert classes == DATASET_CLASSES["muxspace"]
        seen += samples
    by_name = {Path(s.path).name: classes[s.label] for s in seen}
    assert by_name["Cy_Dee_0001.jpg"] == "sadness"
    assert by_name["Di_Eve_0001.jpg"] == "happiness"
    assert by_name["Ann_Lee_0002.jpg"] == "neutral"
    assert len(seen) == len(rows)
    assert {s.group for s in seen if Path(s.path).name.startswith("Ann_Lee")} == {"Ann_Lee"}


def test_unknown_label_is_an_error_naming_the_line(tmp_path: Path) -> None:
    rows = people({"Ann_Lee": {"neutral": 2}}) + [("1", "Bo_Chan_0001.jpg", "bored")]
    root = write_layout(tmp_path / "mux", rows)
    with pytest.raises(DatasetError, match=r"legend.csv: 1 unknown emotion label.*line 4: 'bored'"):
        load_samples(root, "muxspace", "train")
    assert not (root / SPLIT_CSV).exists()


def test_duplicates_count_once_and_conflicts_are_left_out(tmp_path: Path) -> None:
    rows = realistic_rows()
    rows.append(rows[0])  # listed twice, same label
    rows += [("j", "Avi_30.jpg", "SURPRISE"), ("j", "Avi_30.jpg", "SADNESS")]
    root = write_layout(tmp_path / "mux", rows)
    _, by_image, record = muxspace_split(root)
    assert record["legend_duplicate_rows"] == 1
    assert record["legend_conflicting_images"] == ["Avi_30.jpg"]
    assert "Avi_30.jpg" not in by_image
    every = load_samples(root, "muxspace8", "all")[0]
    assert len(every) == len({r[1] for r in realistic_rows()})


def test_missing_images_are_reported_and_left_out(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    rows = realistic_rows()
    gone = [r[1] for r in rows[:3]]
    root = write_layout(tmp_path / "mux", rows, missing=gone)
    with caplog.at_level(logging.WARNING, logger="grefel.data"):
        samples = load_samples(root, "muxspace8", "all")[0]
    assert len(samples) == len(rows) - 3
    text = caplog.text
    assert "3 image(s) of split 'all' listed in data/legend.csv are missing" in text
    assert all(name in text for name in gone)


def test_contempt_is_left_out_of_the_seven_class_reader_and_counted(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = realistic_rows() + people({"Smirk_Man": {"contempt": 2}})
    root = write_layout(tmp_path / "mux", rows)
    with caplog.at_level(logging.WARNING, logger="grefel.data"):
        seven = load_samples(root, "muxspace", "all")[0]
    eight, classes8 = load_samples(root, "muxspace8", "all")
    assert len(eight) == len(seven) + 2
    assert classes8[-1] == "contempt"
    assert "2 image(s) of split 'all' with a class outside" in caplog.text


# --- the split file in the data folder ----------------------------------------------------------


def test_split_is_written_once_and_every_later_read_uses_it(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture
                                                             ) -> None:
    root = write_layout(tmp_path / "mux", realistic_rows())
    with caplog.at_level(logging.WARNING, logger="grefel.data"):
        first = {s: load_samples(root, "muxspace8", s)[0] for s in SPLITS}
    assert "new identity-disjoint split written to" in caplog.text
    record = json.loads((root / SPLIT_JSON).read_text())
    assert record["counts"]["train"]["disgust"] + record["counts"]["val"]["disgust"] + \
        record["counts"]["test"]["disgust"] == 40
    flagged = record["flagged_fewer_than_10_test_images"]
    assert set(flagged) >= {"fear"} and all(n < MIN_TEST for n in flagged.values())
    mtime = (root / SPLIT_CSV).stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="grefel.data"):
        again = {s: load_samples(root, "muxspace8", s)[0] for s in SPLITS}
    assert "new identity-disjoint split" not in caplog.text
    assert (root / SPLIT_CSV).stat().st_mtime_ns == mtime
    assert again == first
    groups = {s: {x.group for x in first[s]} for s in SPLITS}
    assert not (groups["train"] & groups["val"] or groups["train"] & groups["test"]
                or groups["val"] & groups["test"])
    assert "| disgust (flagged: fewer than 10 test images) | 36 | 2 | 2 | 40 |" in \
        split_table(record)


def test_a_split_made_from_another_legend_is_an_error(tmp_path: Path) -> None:
    root = write_layout(tmp_path / "mux", realistic_rows())
    load_samples(root, "muxspace", "train")
    write_layout(root, realistic_rows() + people({"New_Face": {"anger": 1}}))
    with pytest.raises(DatasetError, match=r"made from another data/legend.csv.*remove "
                                           r"grefel_split.csv and grefel_split.json"):
        load_samples(root, "muxspace", "train")


def test_an_edited_split_file_is_an_error(tmp_path: Path) -> None:
    root = write_layout(tmp_path / "mux", realistic_rows())
    load_samples(root, "muxspace", "train")
    text = (root / SPLIT_CSV).read_text().replace(",test\n", ",train\n", 1)
    (root / SPLIT_CSV).write_text(text)
    with pytest.raises(DatasetError, match="changed since grefel_split.json recorded it"):
        load_samples(root, "muxspace", "test")


def test_a_read_only_folder_gets_the_same_split_in_memory(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    writable = write_layout(tmp_path / "w", realistic_rows())
    expected = {s: load_samples(writable, "muxspace8", s)[0] for s in SPLITS}
    root = write_layout(tmp_path / "ro", realistic_rows())

    def read_only(path: object, data: bytes) -> None:  # what a read-only mount answers
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(muxspace, "atomic_write_bytes", read_only)
    with caplog.at_level(logging.WARNING, logger="grefel.data"):
        got = {s: load_samples(root, "muxspace8", s)[0] for s in SPLITS}
    assert not (root / SPLIT_CSV).exists()
    assert "could not be written into the data folder" in caplog.text
    assert {s: Counter(Path(x.path).name for x in got[s]) for s in SPLITS} == \
        {s: Counter(Path(x.path).name for x in expected[s]) for s in SPLITS}


@pytest.mark.parametrize("name", ["../../secret.jpg", "/etc/hostname", "sub/a.jpg", ".."])
def test_an_image_that_is_not_a_file_name_of_images_is_refused(tmp_path: Path, name: str) -> None:
    """A legend row `../../secret.jpg` (or an absolute path) was put into the split, reading a
    file outside the dataset: the layout lists file names of images/ only."""
    rows = realistic_rows() + [("9", name, "HAPPINESS")]
    root = write_layout(tmp_path / "mux", rows, missing=[name])  # (no file written for it)
    with pytest.raises(DatasetError, match=r"not a file name in images/.*line \d+: "):
        load_samples(root, "muxspace", "train")


def test_data_split_names_the_listed_images_that_are_missing(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from grefel.cli import cli

    rows = realistic_rows()
    gone = sorted(r[1] for r in rows[:3])
    root = write_layout(tmp_path / "mux", rows, missing=gone)
    result = CliRunner().invoke(cli, ["data", "split", str(root)])
    assert result.exit_code == 0, result.output
    lines = [x for x in result.output.splitlines() if x.startswith("warning: 3 image(s)")]
    assert len(lines) == 1 and all(name in lines[0] for name in gone)
