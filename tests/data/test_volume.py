"""Volume readers (InVesalius .inv3, NIfTI, DICOM series), HU windowing, seeded crops, the embedding cache."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
from support.volume_fixtures import head_like, write_dicom_series, write_inv3

from medfm_compress.compress.embedding_cache import EmbeddingCache
from medfm_compress.data import load_data
from medfm_compress.data.volume import (
    CropBox,
    extract_crops,
    grid_crops,
    hu_window,
    random_crops,
    read_dicom_series,
    read_inv3,
    read_nifti,
    z_split,
)
from medfm_compress.errors import DataError
from medfm_compress.runtime.volumes import resample_to_spacing


@pytest.fixture(scope="module")
def inv3(tmp_path_factory):
    return write_inv3(tmp_path_factory.mktemp("inv3") / "head.inv3", head_like(), (0.9, 0.8, 1.5))


def test_inv3_axes_spacing_and_values(tmp_path):
    m = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5) - 30  # (Z, Y, X)
    vol = read_inv3(write_inv3(tmp_path / "a.inv3", m, (0.5, 0.6, 2.0)))
    assert vol.shape == (5, 4, 3) and vol.spacing == (0.5, 0.6, 2.0)
    assert vol.hu.dtype == np.float32
    for x, y, z in [(0, 0, 0), (4, 3, 2), (2, 1, 1)]:
        assert vol.hu[x, y, z] == m[z, y, x]
    assert vol.sha256 == read_inv3(tmp_path / "a.inv3").sha256


def test_inv3_refuses_broken_archives(tmp_path):
    m = np.zeros((2, 3, 3), np.int16)
    good = write_inv3(tmp_path / "g.inv3", m)
    # matrix.dat shorter than the plist's shape
    bad = tmp_path / "short.inv3"
    with tarfile.open(good, "r:gz") as src, tarfile.open(bad, "w:gz") as dst:
        for mem in src.getmembers():
            data = src.extractfile(mem).read()
            if mem.name.endswith("matrix.dat"):
                data = data[:-2]
                mem.size = len(data)
            dst.addfile(mem, io.BytesIO(data))
    with pytest.raises(DataError, match="bytes"):
        read_inv3(bad)
    (tmp_path / "junk.inv3").write_bytes(b"not a tar")
    with pytest.raises(DataError, match="not a readable .inv3"):
        read_inv3(tmp_path / "junk.inv3")
    with pytest.raises(DataError, match="does not exist"):
        read_inv3(tmp_path / "missing.inv3")


def test_nifti_reader_applies_scaling_and_spacing(tmp_path):
    nib = pytest.importorskip("nibabel")
    stored = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    img = nib.Nifti1Image(stored, np.diag([0.7, 0.8, 2.5, 1.0]))
    img.header.set_slope_inter(2.0, -1024.0)
    nib.save(img, tmp_path / "v.nii.gz")
    vol = read_nifti(tmp_path / "v.nii.gz")
    assert vol.shape == (4, 5, 6)
    np.testing.assert_allclose(vol.spacing, (0.7, 0.8, 2.5), rtol=1e-6)
    # A RAS-stored file comes back in LPS voxel order: x and y reversed, with an affine that says so.
    np.testing.assert_allclose(vol.hu, (stored * 2.0 - 1024.0)[::-1, ::-1, :])
    np.testing.assert_allclose(vol.affine @ [0, 0, 0, 1], [0.7 * 3, 0.8 * 4, 0, 1])
    back, affine = vol.to_source_order(vol.hu)
    np.testing.assert_allclose(back, stored * 2.0 - 1024.0)
    np.testing.assert_allclose(affine, img.affine)


def test_dicom_series_sorted_by_position_and_rescaled(tmp_path):
    hu = head_like((6, 8, 10), seed=1)
    d = write_dicom_series(
        tmp_path / "series",
        hu,
        spacing_xyz=(0.8, 0.7, 2.0),
        slope=1.0,
        intercept=-1024.0,
        order=[3, 0, 5, 1, 4, 2],
    )
    vol = read_dicom_series(d)
    assert vol.shape == (10, 8, 6)
    np.testing.assert_allclose(vol.spacing, (0.8, 0.7, 2.0), rtol=1e-6)
    np.testing.assert_allclose(vol.hu, np.transpose(hu, (2, 1, 0)).astype(np.float32))


def test_dicom_series_needs_two_slices(tmp_path):
    write_dicom_series(tmp_path / "one", head_like((1, 4, 4)))
    with pytest.raises(DataError, match="at least 2"):
        read_dicom_series(tmp_path / "one")


def test_hu_window_clips_and_scales():
    out = hu_window(np.array([-2000.0, -1000.0, -400.0, 200.0, 3000.0]), (-1000.0, 200.0))
    np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 1.0, 1.0])


def test_random_crops_are_seeded_inside_the_z_range_and_on_tissue(inv3):
    vol = read_inv3(inv3)
    a = random_crops(vol, (16, 16, 8), 6, seed=3, z_range=(0, 20), min_foreground=0.5)
    b = random_crops(vol, (16, 16, 8), 6, seed=3, z_range=(0, 20), min_foreground=0.5)
    c = random_crops(vol, (16, 16, 8), 6, seed=4, z_range=(0, 20), min_foreground=0.5)
    assert a == b and a != c
    assert random_crops(vol, (16, 16, 8), 3, seed=3, z_range=(0, 20), min_foreground=0.5) == a[:3]
    for box in a:
        assert 0 <= box.z and box.z + box.sz <= 20
        assert (vol.hu[box.slices()] > -500).mean() >= 0.5
    crops = extract_crops(vol, a)
    assert crops.shape == (6, 16, 16, 8)
    with pytest.raises(DataError, match="thinner"):
        random_crops(vol, (16, 16, 8), 2, z_range=(0, 4))
    with pytest.raises(DataError, match="does not fit"):
        random_crops(vol, (100, 16, 8), 2)


def test_grid_crops_and_z_split(inv3):
    vol = read_inv3(inv3)  # (48, 48, 40)
    boxes = grid_crops(vol, (16, 16, 10))
    assert len(boxes) == 3 * 3 * 4 and boxes[0] == CropBox(0, 0, 0, 16, 16, 10)
    (a0, a1), (b0, b1) = z_split(40, 10, margin=6)
    assert a0 == 0 and b1 == 40 and b0 - a1 == 6 and a1 - a0 >= 10 and b1 - b0 >= 10
    with pytest.raises(DataError, match="thinner"):
        z_split(20, 10, margin=6)


def test_resample_to_isotropic(inv3):
    vol = read_inv3(inv3)  # spacing (0.9, 0.8, 1.5), shape (48, 48, 40)
    iso = resample_to_spacing(vol, (0.9, 0.9, 0.9))
    assert iso.shape == (48, round(48 * 0.8 / 0.9), round(40 * 1.5 / 0.9))
    assert abs(float(iso.hu.mean()) - float(vol.hu.mean())) < 30
    # A crop spec's ?spacing= goes through the same resampler as predict (and the C++ runtime): the same voxels.
    task = load_data(f"inv3:{inv3}?crop=16,16,8&sampling=grid&min_fg=0&spacing=0.9,0.9,0.9")
    box = task.crops.boxes[0]
    np.testing.assert_array_equal(task.split("test").images[0],
                                  iso.hu[box[0]:box[0] + 16, box[1]:box[1] + 16, box[2]:box[2] + 8])


def test_volume_spec_through_load_data(inv3):
    task = load_data(f"inv3:{inv3}?crop=16,16,8&n=5&z=0,20&seed=1&min_fg=0.2")
    split = task.split("test")
    assert split.images.shape == (5, 16, 16, 8) and task.task == "embedding"
    assert task.channels == 1 and task.image_size == (16, 16, 8)
    assert len(task.crops.boxes) == 5 and task.crops.z_range == (0, 20)
    grid = load_data(f"inv3:{inv3}?crop=16,16,8&sampling=grid&min_fg=0")
    assert len(grid.split("test")) == 3 * 3 * 5 and list(grid.splits) == ["test"]
    with pytest.raises(DataError, match="unknown option"):
        load_data(f"inv3:{inv3}?size=3")
    with pytest.raises(DataError, match="sampling"):
        load_data(f"inv3:{inv3}?crop=16,16,8&sampling=spiral")


def test_embedding_cache_hits_misses_and_keys(inv3, tmp_path):
    from medfm_compress.models.foundation import load_teacher

    vol = read_inv3(inv3)
    boxes = random_crops(vol, (16, 16, 8), 4, seed=0, min_foreground=0.3)
    teacher = load_teacher("astra-ct-tiny")
    cache = EmbeddingCache(tmp_path / "emb")
    first = cache.embeddings(vol, boxes, teacher, batch_size=2, progress=False)
    assert (cache.hits, cache.misses) == (0, 4) and first.shape == (4, 2048)
    again = cache.embeddings(vol, boxes, teacher, progress=False)
    assert (cache.hits, cache.misses) == (4, 4)
    np.testing.assert_array_equal(first, again)
    # One new box: only it is computed. Another teacher: nothing is shared.
    extra = random_crops(vol, (16, 16, 8), 5, seed=0, min_foreground=0.3)
    cache.embeddings(vol, extra, teacher, progress=False)
    assert (cache.hits, cache.misses) == (8, 5)
    other = load_teacher("astra-ct-tiny", seed=1)
    cache.embeddings(vol, boxes[:1], other, progress=False)
    assert cache.misses == 6
    assert not [p for p in (tmp_path / "emb").rglob("*") if p.is_file() and not p.name.endswith(".npy")]
    # The cached values are the teacher's own output on the windowed crop.
    import torch

    x = torch.from_numpy(hu_window(extract_crops(vol, boxes[:1]), teacher.window)[:, None])
    np.testing.assert_allclose(first[0], teacher.embed(x)[0].numpy(), rtol=1e-4, atol=1e-5)
    # A damaged entry is recomputed, not trusted.
    key = cache.key(vol.sha256, boxes[0], teacher.teacher_id, teacher.window)
    cache.path(key).write_bytes(b"garbage")
    fixed = cache.embeddings(vol, boxes[:1], teacher, progress=False)
    np.testing.assert_allclose(fixed[0], first[0], rtol=1e-4, atol=1e-5)


def test_head_ct_masks_writes_a_segmentation_folder_from_an_inv3s_masks(tmp_path):
    from medfm_compress.data.examples import MASK_CLASSES, main

    hu = head_like((9, 24, 20), seed=3)
    bone, head = hu >= 226, hu >= -142
    src = write_inv3(tmp_path / "h.inv3", hu, masks={"Bone": bone, "Head": head})
    assert main(["head-ct-masks", str(tmp_path / "seg"), "--volume", str(src)]) == 0
    data = load_data(f"folder:{tmp_path / 'seg'}")
    assert data.task == "segmentation" and list(data.label_names) == list(MASK_CLASSES)
    files = np.concatenate([s.files for s in data.splits.values()])
    labels = np.concatenate([s.labels for s in data.splits.values()])
    z = int(files[0].split("slice")[1][:3])
    expect = np.where(bone[z], 2, np.where(head[z], 1, 0))
    assert labels[0].shape == (24, 20) and np.array_equal(labels[0], expect)
    # Four adjacent slices share a group: none straddles two splits.
    groups = {s: {g for g in split.groups} for s, split in data.splits.items()}
    assert all(not (groups[a] & groups[b]) for a in groups for b in groups if a < b)
    assert main(["head-ct-masks", str(tmp_path / "bad"), "--volume", str(write_inv3(tmp_path / "n.inv3", hu))]) == 1
