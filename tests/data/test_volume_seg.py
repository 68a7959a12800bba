"""Volumetric segmentation data: ``synthetic3d`` and ``nifti:DIR`` (MSD / nnU-Net layout) as tasks of training patches
(foreground-oversampled, seeded) and whole held-out cases; geometry and label errors refused in one line."""

import json

import numpy as np
import pytest
from support.volume_fixtures import write_msd_folder

from medfm_compress.data import load_data
from medfm_compress.data.dataset import class_presence
from medfm_compress.data.volume_seg import LabelledCase, case_shapes, sample_patches
from medfm_compress.errors import DataError

SMALL = "synthetic3d?n_train=4&n_val=1&n_test=2&shape=32,32,24&patch=16,16,16&per_case=6"


def test_synthetic3d_task_patches_and_whole_cases(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDFM_CACHE_DIR", str(tmp_path))
    task = load_data(SMALL)
    train, val, test = task.split("train"), task.split("val"), task.split("test")
    assert task.task == "segmentation" and task.volumes and task.image_size == (16, 16, 16)
    assert train.images.shape == (24, 16, 16, 16) and train.labels.shape == (24, 16, 16, 16)
    assert test.images.shape == (2, 32, 32, 24) and val.images.shape == (1, 32, 32, 24)
    assert list(np.unique(train.groups)) == [f"train_{i:03d}" for i in range(4)]
    assert task.window == (-160.0, 240.0) and task.cases.spacing_mm == (5.5, 5.0, 5.0)
    assert case_shapes(task, "test") == [(32, 32, 24)] * 2
    again = load_data(SMALL)
    np.testing.assert_array_equal(again.split("train").images, train.images)  # seeded, cached
    other = load_data(SMALL + "&seed=1")
    assert not np.array_equal(other.split("train").images, train.images)


def test_patches_oversample_a_small_foreground_class():
    rng = np.random.default_rng(0)
    labels = np.zeros((40, 40, 40), np.uint8)
    labels[30:33, 30:33, 30:33] = 2  # 27 voxels of a rare class
    labels[:20] = 1
    case = LabelledCase("c", rng.normal(0, 1, labels.shape).astype(np.float32), labels, (1.0, 1.0, 1.0))
    _, plain, _, _ = sample_patches([case], (8, 8, 8), 60, 0.0, 0, 3)
    _, over, files, groups = sample_patches([case], (8, 8, 8), 60, 0.5, 0, 3)
    rare_plain = class_presence(plain, 3)[:, 2].mean()
    rare_over = class_presence(over, 3)[:, 2].mean()
    assert rare_over >= 0.2 > rare_plain  # half the patches are foreground-centred, a class drawn uniformly
    assert set(groups) == {"c"} and len(files) == 60


def test_a_case_smaller_than_the_patch_is_padded_with_air():
    case = LabelledCase("tiny", np.full((6, 6, 6), 50.0, np.float32), np.ones((6, 6, 6), np.uint8), (1.0,) * 3)
    imgs, labs, _, _ = sample_patches([case], (8, 8, 8), 2, 1.0, 0, 2)
    assert imgs.shape == (2, 8, 8, 8) and imgs.min() == -1024.0 and labs[:, 7, 7, 7].tolist() == [0, 0]


@pytest.mark.parametrize("v2", [True, False])
def test_msd_folder_reads_resamples_and_splits(tmp_path, v2):
    pytest.importorskip("nibabel")
    root = write_msd_folder(tmp_path / "ds", n_cases=5, v2=v2, flip_first=True)
    task = load_data(f"nifti:{root}?spacing=16,15,15&val=1&test=1&patch=8,8,8&per_case=2")
    assert task.label_names == ["background", "liver", "spleen", "kidney", "lesion"]
    assert len(task.split("train")) == 3 * 2 and len(task.split("val")) == 1 and len(task.split("test")) == 1
    assert task.cases.spacing_mm == (16.0, 15.0, 15.0)
    # 24x20x16 voxels of 8x7.5x7.5 mm on a 16x15x15 mm grid: half the voxels per axis.
    assert case_shapes(task, "test") == [(12, 10, 8)]
    assert task.split("test").labels.max() <= 4
    default = load_data(f"nifti:{root}?val=1&test=1&patch=8,8,8")
    assert default.cases.spacing_mm == (8.0, 7.5, 7.5)  # the cases' median spacing


def test_msd_orientation_does_not_change_the_array(tmp_path):
    """A case stored in LPS order and one stored in RAS order read back as the same LPS array."""
    nib = pytest.importorskip("nibabel")
    from medfm_compress.runtime.volumes import read_nifti

    root = write_msd_folder(tmp_path / "ds", n_cases=2, flip_first=True)
    a = read_nifti(root / "imagesTr" / "case_000_0000.nii.gz")
    raw = np.asarray(nib.load(root / "imagesTr" / "case_001_0000.nii.gz").dataobj)
    b = read_nifti(root / "imagesTr" / "case_001_0000.nii.gz")
    np.testing.assert_array_equal(b.hu, raw[::-1, ::-1].astype(np.float32))
    assert a.shape == b.shape


def _break(root, what):
    import nibabel as nib

    lab = root / "labelsTr" / "case_001.nii.gz"
    img = nib.load(lab)
    arr = np.asarray(img.dataobj)
    if what == "label_value":
        arr = arr.copy()
        arr[0, 0, 0] = 9
        nib.save(nib.Nifti1Image(arr, img.affine), lab)
    elif what == "shape":
        nib.save(nib.Nifti1Image(arr[:-2], img.affine), lab)
    elif what == "affine":
        shifted = img.affine.copy()
        shifted[0, 3] += 30.0
        nib.save(nib.Nifti1Image(arr, shifted), lab)
    elif what == "missing":
        lab.unlink()
    elif what == "no_labels":
        meta = json.loads((root / "dataset.json").read_text())
        del meta["labels"]
        (root / "dataset.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("what,match", [
    ("label_value", "label\\(s\\) 9 .* not in dataset.json"),
    ("shape", "differ in shape"),
    ("affine", "different affines"),
    ("missing", "label file .* does not exist"),
    ("no_labels", "no 'labels' mapping"),
])
def test_msd_bad_cases_are_one_line_errors(tmp_path, what, match):
    pytest.importorskip("nibabel")
    root = write_msd_folder(tmp_path / "ds", n_cases=3)
    _break(root, what)
    with pytest.raises(DataError, match=match):
        load_data(f"nifti:{root}?val=1&test=1&patch=8,8,8")


def test_bad_specs(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDFM_CACHE_DIR", str(tmp_path))
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="without dataset.json"):
        load_data(f"nifti:{tmp_path / 'plain'}")
    with pytest.raises(DataError, match="unknown option"):
        load_data("synthetic3d?crop=1,2,3")
    with pytest.raises(DataError, match="patch=.* three|3 positive"):
        load_data("synthetic3d?patch=16,16")
    with pytest.raises(DataError, match="fg="):
        load_data("synthetic3d?fg=2")
    root = write_msd_folder(tmp_path / "ds", n_cases=2) if _has_nibabel() else None
    if root is not None:
        with pytest.raises(DataError, match="leave none to train on"):
            load_data(f"nifti:{root}?val=1&test=1")
        with pytest.raises(DataError, match="unknown option"):
            load_data(f"nifti:{root}?crop=8,8,8")


def _has_nibabel() -> bool:
    try:
        import nibabel  # noqa: F401
    except ImportError:
        return False
    return True
