"""Volume masks out: NIfTI with the source's affine (nibabel reads it back), DICOM SEG referencing its series
(highdicom and pydicom read it back, voxel for voxel)."""

import numpy as np
import pytest
from support.volume_fixtures import head_like, write_dicom_series

from medfm_compress.data.volume import read_dicom_series
from medfm_compress.errors import DataError
from medfm_compress.runtime.volume_masks import write_dicom_seg, write_nifti_mask

NAMES = ["background", "liver", "kidney", "lesion"]


def _mask(shape, seed=0):
    rng = np.random.default_rng(seed)
    m = np.zeros(shape, np.uint8)
    x, y, z = shape
    m[1:x // 2, 1:y - 1, :] = 1
    m[x // 2 + 1:, 2:y // 2, 1:z - 1] = 2
    m[2:4, 2:4, 1:3] = 3
    m[rng.random(shape) < 0.02] = 0
    return m


def test_nifti_mask_keeps_labels_and_affine(tmp_path):
    nib = pytest.importorskip("nibabel")
    mask = _mask((10, 8, 6))
    affine = np.array([[-0.8, 0, 0, 100.0], [0, -0.7, 0, 80.0], [0, 0, 2.0, -50.0], [0, 0, 0, 1]])
    out = write_nifti_mask(mask, affine, tmp_path / "case.mask.nii.gz", NAMES)
    img = nib.load(str(out))
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), mask)
    assert img.get_data_dtype() == np.uint8 and img.header.get_intent()[0] == "label"
    np.testing.assert_allclose(img.affine, affine)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.mask.nii.gz"]


@pytest.mark.parametrize(("mask", "affine", "match"), [
    (np.zeros((4, 4), np.uint8), np.eye(4), "is \\(X, Y, Z\\)"),
    (np.zeros((4, 4, 4), np.float32), np.eye(4), "integer labels"),
    (np.full((4, 4, 4), 7, np.uint8), np.eye(4), "label 7 is outside the 4 named classes"),
    (np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4)), "invertible 4x4"),
])
def test_bad_nifti_masks_are_refused_and_nothing_written(tmp_path, mask, affine, match):
    pytest.importorskip("nibabel")
    with pytest.raises(DataError, match=match) as e:
        write_nifti_mask(mask, affine, tmp_path / "m.nii.gz", NAMES)
    assert "\n" not in str(e.value) and not list(tmp_path.iterdir())


def test_dicom_seg_references_its_series_and_reads_back(tmp_path):
    hd = pytest.importorskip("highdicom")
    pydicom = pytest.importorskip("pydicom")
    series = write_dicom_series(tmp_path / "series", head_like((6, 8, 10), seed=2), order=[3, 0, 5, 1, 4, 2])
    vol = read_dicom_series(series)
    mask = _mask(vol.shape)
    out = write_dicom_seg(mask, series, NAMES, tmp_path / "seg.dcm", algorithm="test-student", version="1")
    raw = pydicom.dcmread(str(out))
    assert raw.Modality == "SEG"
    source = {pydicom.dcmread(str(f), stop_before_pixels=True).SeriesInstanceUID
              for f in series.glob("*.dcm")}
    assert raw.ReferencedSeriesSequence[0].SeriesInstanceUID in source
    seg = hd.seg.segread(str(out))
    assert [seg.get_segment_description(i).segment_label for i in (1, 2, 3)] == NAMES[1:]
    assert seg.get_segment_description(1).segmented_property_type.meaning == "Liver"
    assert seg.get_segment_description(3).segmented_property_category.meaning == "Morphologically Abnormal Structure"
    # Voxel for voxel: each source slice's frame, by its SOP Instance UID, equals the mask's slice at that Z.
    from medfm_compress.runtime.volume_masks import series_in_volume_order

    ordered = series_in_volume_order(series)
    uids = [ds.SOPInstanceUID for ds in ordered]
    labels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=[1, 2, 3], combine_segments=True, skip_overlap_checks=True)
    np.testing.assert_array_equal(np.transpose(labels, (2, 1, 0)), mask)


def test_dicom_seg_refuses_a_mask_of_another_shape(tmp_path):
    pytest.importorskip("highdicom")
    series = write_dicom_series(tmp_path / "series", head_like((6, 8, 10), seed=2))
    with pytest.raises(DataError, match="does not match the series") as e:
        write_dicom_seg(np.zeros((8, 10, 6), np.uint8), series, NAMES, tmp_path / "seg.dcm")
    assert "\n" not in str(e.value) and not (tmp_path / "seg.dcm").exists()


def test_dicom_seg_from_a_series_without_a_study_says_so(tmp_path):
    pytest.importorskip("highdicom")
    pydicom = pytest.importorskip("pydicom")
    series = write_dicom_series(tmp_path / "series", head_like((4, 6, 6), seed=3))
    for f in series.glob("*.dcm"):
        ds = pydicom.dcmread(str(f))
        del ds.StudyInstanceUID
        ds.save_as(str(f))
    with pytest.raises(DataError, match="cannot reference this series from a DICOM SEG") as e:
        write_dicom_seg(np.zeros((6, 6, 4), np.uint8), series, NAMES, tmp_path / "seg.dcm")
    assert "\n" not in str(e.value) and not (tmp_path / "seg.dcm").exists()


@pytest.mark.parametrize(("module", "call", "extra"), [
    ("nibabel", lambda p: write_nifti_mask(np.zeros((4, 4, 4), np.uint8), np.eye(4), p / "m.nii.gz"), "nifti"),
    ("highdicom", lambda p: write_dicom_seg(np.zeros((4, 4, 4), np.uint8), p, NAMES, p / "s.dcm"), "dicom"),
])
def test_a_missing_writer_library_names_its_extra(tmp_path, monkeypatch, module, call, extra):
    from medfm_compress.errors import BackendMissingError

    monkeypatch.setitem(__import__("sys").modules, module, None)  # as in an install without the extra
    with pytest.raises(BackendMissingError, match=rf"pip install 'medfm-compress\[{extra}\]'") as e:
        call(tmp_path)
    assert "\n" not in str(e.value) and not list(tmp_path.iterdir())
