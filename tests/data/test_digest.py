"""The digest of what was read: per split, over files + relative paths + labels (folders) or the arrays."""

from __future__ import annotations

import csv

import numpy as np
from support.folders import patient_folder

from medfm_compress.data import load_data
from medfm_compress.data.digest import compare_data, data_digest, write_splits_csv


def _folder(tmp_path):
    root = tmp_path / "imgs"
    patient_folder(root, patients=15, seed=3)
    return root, f"folder:{root}?size=8"


def _touch(path):
    """Change a file's bytes (and only them)."""
    from PIL import Image

    img = np.array(Image.open(path))
    img[0, 0] ^= 0xFF
    Image.fromarray(img).save(path)


def test_folder_digest_follows_files_and_labels(tmp_path):
    root, spec = _folder(tmp_path)
    task = load_data(spec)
    d = data_digest(task, spec)
    assert d["spec"] == spec and d["content"] == "files" and d["seed"] == 0
    assert {k: v["n"] for k, v in d["splits"].items()} == {k: len(v) for k, v in task.splits.items()}
    assert data_digest(load_data(spec), spec) == d  # the same bytes, the same digest
    # One file of the test split changes: that split's digest changes, the others' do not.
    victim = task.splits["test"].files[0]
    _touch(root / victim)
    changed = data_digest(load_data(spec), spec)
    assert changed["splits"]["test"]["sha256"] != d["splits"]["test"]["sha256"]
    assert changed["splits"]["train"]["sha256"] == d["splits"]["train"]["sha256"]
    assert changed["sha256"] != d["sha256"]
    # A label changes (same bytes): the digest changes too.
    text = (root / "labels.csv").read_text()
    first = task.splits["train"].files[0]
    line = next(x for x in text.splitlines() if x.startswith(first + ","))
    flipped = line.replace(",lesion,", ",normal,") if ",lesion," in line else line.replace(",normal,", ",lesion,")
    (root / "labels.csv").write_text(text.replace(line, flipped))
    relabelled = data_digest(load_data(spec), spec)
    assert relabelled["sha256"] != changed["sha256"]


def test_array_digest_and_splits_csv(tiny_data, tmp_path):
    task = load_data(tiny_data)
    d = data_digest(task, tiny_data, seed=0)
    assert d["content"] == "arrays" and d["splits"]["train"]["n"] == 192
    assert data_digest(load_data(tiny_data), tiny_data) == d
    other = tiny_data.replace("seed=3", "seed=4")
    assert data_digest(load_data(other), other)["splits"]["train"]["sha256"] != d["splits"]["train"]["sha256"]
    path = write_splits_csv(task, tmp_path / "splits.csv")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["file", "group", "split", "label"]
    assert len(rows) == 192 + 32 + 96
    val = [r for r in rows if r["split"] == "val"]
    assert [r["file"] for r in val] == [f"val_images[{i}]" for i in range(32)]
    assert all(r["group"] == r["file"] for r in val) and {r["label"] for r in rows} <= set(task.label_names)
    # An archive without val: val is carved out of train, and each image still names where it came from.
    np.savez(tmp_path / "a.npz", train_images=np.zeros((30, 8, 8), np.uint8), train_labels=np.arange(30) % 2,
             test_images=np.zeros((4, 8, 8), np.uint8), test_labels=np.arange(4) % 2)
    carved = load_data(f"medmnist:{tmp_path / 'a.npz'}")
    assert len(carved.splits["val"]) == 3 and all(f.startswith("train_images[") for f in carved.splits["val"].files)
    assert not set(carved.splits["val"].files) & set(carved.splits["train"].files)


def test_compare_names_changed_added_removed_and_moved_files(tmp_path):
    root, spec = _folder(tmp_path)
    task = load_data(spec)
    record = data_digest(task, spec)
    csv_path = write_splits_csv(task, tmp_path / "splits.csv")
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["file", "group", "split", "label", "sha256"] and len(rows) == len(
        [f for s in task.splits.values() for f in s.files])
    assert compare_data(record, csv_path) == []
    test_files = list(task.splits["test"].files)
    _touch(root / test_files[0])
    # A new image of a patient already in test (the split drawn for the group stays put), and one removed.
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "new.png")
    owner = next(r for r in rows if r["file"] == test_files[0])
    # Removed: an image of a train patient with more, so that every patient (and the split drawn) stays.
    per_group = {g: sum(r["group"] == g for r in rows) for g in {r["group"] for r in rows}}
    removed = next(r["file"] for r in rows if r["split"] == "train" and per_group[r["group"]] > 1)
    lines = [x for x in (root / "labels.csv").read_text().splitlines() if not x.startswith(removed + ",")]
    lines.append(f"new.png,{owner['label']},{owner['group']}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    (root / removed).unlink()
    found = compare_data(record, csv_path)
    test_line = next(x for x in found if "the test split" in x)
    assert f"changed 1: {test_files[0]}" in test_line and "added 1: new.png" in test_line
    assert any(f"removed 1: {removed}" in x for x in found if "the train split" in x)
    # Without splits.csv the splits that differ are still named.
    assert any("the test split changed" in x for x in compare_data(record, None))
