"""Splits drawn by group (patient, study), recorded per image, and refused when a group straddles two splits."""

from __future__ import annotations

import numpy as np
import pytest
from support.folders import patient_folder, write_dicom_image

from medfm_compress.data import load_data
from medfm_compress.data.digest import split_summary
from medfm_compress.errors import DataError


def _split_of_groups(task) -> dict[str, set[str]]:
    where: dict[str, set[str]] = {}
    for name, split in task.splits.items():
        for g in split.groups:
            where.setdefault(g, set()).add(name)
    return where


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_group_split_never_straddles_and_roughly_keeps_the_label_shares(tmp_path, seed):
    owner = patient_folder(tmp_path, patients=60, seed=7)
    task = load_data(f"folder:{tmp_path}?seed={seed}")
    where = _split_of_groups(task)
    assert all(len(s) == 1 for s in where.values()), {g: s for g, s in where.items() if len(s) > 1}
    assert set(where) == set(owner.values())
    # Every image is in exactly one split, and its recorded group is its patient.
    files = [f for s in task.splits.values() for f in s.files]
    assert sorted(files) == sorted(owner)
    for split in task.splits.values():
        assert [owner[f] for f in split.files] == list(split.groups)
    # Stratified as groups allow: each class has roughly 20% of its images in test and 10% in val.
    lesion = task.label_names.index("lesion")
    for cls in (lesion, 1 - lesion):
        counts = {s: int((task.splits[s].labels == cls).sum()) for s in ("train", "val", "test")}
        total = sum(counts.values())
        assert 0.1 <= counts["test"] / total <= 0.3, counts
        assert 0.03 <= counts["val"] / total <= 0.2, counts
    # Seeded: the same seed draws the same split, another seed another one.
    again = load_data(f"folder:{tmp_path}?seed={seed}")
    assert all(list(again.splits[s].files) == list(task.splits[s].files) for s in task.splits)
    other = load_data(f"folder:{tmp_path}?seed={seed + 10}")
    assert any(list(other.splits[s].files) != list(task.splits[s].files) for s in task.splits)


def test_without_a_group_column_each_image_is_its_own_group(tmp_path):
    patient_folder(tmp_path, patients=20, group_column=False)
    task = load_data(f"folder:{tmp_path}")
    for split in task.splits.values():
        assert list(split.groups) == list(split.files)
    lines = split_summary(task)
    assert lines[0].startswith(f"split train: {len(task.splits['train'])} images in {len(task.splits['train'])} groups")
    assert "lesion" in lines[0] and not any(line.startswith("warning") for line in lines)


def test_a_group_in_two_explicit_splits_is_refused_in_one_line(tmp_path):
    patient_folder(tmp_path, patients=6, max_images=3, seed=1,
                   split_of=lambda p, j: "test" if (p == 2 and j == 1) or p == 5 else "train")
    with pytest.raises(DataError) as err:
        load_data(f"folder:{tmp_path}")
    msg = str(err.value)
    assert "\n" not in msg and "group 'P2' is in splits train and test" in msg and "labels.csv" in msg


def test_explicit_splits_by_group_are_kept(tmp_path):
    patient_folder(tmp_path, patients=9, max_images=3, seed=1,
                   split_of=lambda p, j: ("train", "val", "test")[p % 3])
    task = load_data(f"folder:{tmp_path}")
    assert {int(g[1:]) % 3 for g in task.splits["val"].groups} == {1}
    assert all(len(s) == 1 for s in _split_of_groups(task).values())


def _dicom_folder(root, rows):
    """rows: (file, label, patient id or None, study uid or None)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = ["file,label"]
    for name, label, patient, study in rows:
        write_dicom_image(root / name, rng.integers(900, 1200, (8, 8)), patient, study)
        lines.append(f"{name},{label}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")


def test_dicom_folders_group_by_patient_then_study(tmp_path):
    rows = []
    for p in range(12):
        for j in range(3):
            rows.append((f"pat{p}_{j}.dcm", "lesion" if p % 3 == 0 else "normal", f"PID{p}", f"1.2.3.{p}"))
    # No PatientID (or an empty one): the study groups them; neither: the image is its own group.
    rows += [("anon_a.dcm", "normal", None, "1.2.9.1"), ("anon_b.dcm", "normal", "", "1.2.9.1"),
             ("lone.dcm", "lesion", None, None)]
    _dicom_folder(tmp_path, rows)
    task = load_data(f"dicom:{tmp_path}?size=8")
    group = {f: g for s in task.splits.values() for f, g in zip(s.files, s.groups, strict=True)}
    assert group["pat4_2.dcm"] == "PID4"
    assert group["anon_a.dcm"] == group["anon_b.dcm"] == "study:1.2.9.1"
    assert group["lone.dcm"] == "lone.dcm"
    assert all(len(s) == 1 for s in _split_of_groups(task).values())
    assert len(_split_of_groups(task)) == 12 + 2


def test_dicom_patient_in_two_explicit_splits_is_reported(tmp_path):
    rows = [(f"f{i}.dcm", str(i % 2), "SAME" if i < 2 else f"P{i}", None) for i in range(6)]
    _dicom_folder(tmp_path, rows)
    splits = ["train", "test", "train", "val", "test", "train"]
    lines = (tmp_path / "labels.csv").read_text().splitlines()
    (tmp_path / "labels.csv").write_text(
        "\n".join([lines[0] + ",split"] + [f"{row},{s}" for row, s in zip(lines[1:], splits, strict=True)]) + "\n"
    )
    # The splits are the user's: kept, but the patient they share is named in the summary.
    task = load_data(f"dicom:{tmp_path}?size=8")
    assert list(task.splits["test"].files) == ["f1.dcm", "f4.dcm"]
    warning = split_summary(task)[-1]
    assert warning.startswith("warning: 1 group(s) are in more than one split (SAME: train+test)")


def test_a_group_column_overrides_dicom_headers(tmp_path):
    rows = [(f"f{i}.dcm", str(i % 2), f"P{i}", None) for i in range(8)]
    _dicom_folder(tmp_path, rows)
    lines = (tmp_path / "labels.csv").read_text().splitlines()
    (tmp_path / "labels.csv").write_text(
        "\n".join([lines[0] + ",group"] + [f"{row},case{i // 4}" for i, row in enumerate(lines[1:])]) + "\n"
    )
    task = load_data(f"dicom:{tmp_path}?size=8")
    assert {g for s in task.splits.values() for g in s.groups} == {"case0", "case1"}
    assert all(len(s) == 1 for s in _split_of_groups(task).values())


def test_arrays_and_volumes_record_names_and_groups(tiny_data, tmp_path):
    task = load_data(tiny_data)
    assert task.source == tiny_data  # the full spec, options included
    val = task.splits["val"]
    assert val.files[0].startswith("val_images[") and val.groups is None
    assert list(val.group_ids("val")) == list(val.files)
    from support.volume_fixtures import head_like, write_inv3

    vol = write_inv3(tmp_path / "head.inv3", head_like((20, 24, 24)))
    crops = load_data(f"inv3:{vol}?crop=8,8,8&n=3&min_fg=0")
    split = next(iter(crops.splits.values()))
    # A volume is one case: all its crops are one group.
    assert set(split.groups) == {str(vol)} and len(set(split.files)) == 3
