"""predict with a 3-D segmentation model: volumes resampled to the model's spacing, segmented by sliding windows, the
label map put back on the input's own grid (NIfTI: its voxel order and affine) and, for a DICOM series, a DICOM SEG
referencing it; bad volumes stop the run in one line with nothing left behind."""

import json

import numpy as np
import pytest
from support.volume_fixtures import conv3d_seg_model, head_like, write_dicom_series

from medfm_compress.errors import ConfigError, DataError
from medfm_compress.runtime import Engine
from medfm_compress.runtime.predict import PredictConfig, predict
from medfm_compress.runtime.sliding_window import segment_volume
from medfm_compress.runtime.volumes import read_nifti, resample_labels, resample_to_spacing, resample_volume

pytest.importorskip("onnx")
nib = pytest.importorskip("nibabel")
SPACING = (8.0, 7.5, 7.5)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    rng = np.random.default_rng(0)
    w = (rng.normal(0, 0.3, (6, 1, 3, 3, 3)).astype(np.float32), rng.normal(0, 0.3, (4, 6, 3, 3, 3)).astype(np.float32))
    b = (rng.normal(0, 0.1, 6).astype(np.float32), rng.normal(0, 0.1, 4).astype(np.float32))
    return conv3d_seg_model(tmp_path_factory.mktemp("m") / "seg3d.onnx", w, b, spacing=SPACING)


def _phantom(shape=(40, 36, 20)):
    from medfm_compress.data.synthetic3d import Synthetic3DConfig, generate_volumes

    return generate_volumes(Synthetic3DConfig(shape=shape, spacing=(4.0, 3.75, 5.0), n_train=1, n_val=1,
                                              n_test=1))["train_images"][0]


def test_nifti_mask_on_the_inputs_grid(tmp_path, model):
    vol = _phantom()  # LPS order, 4 x 3.75 x 5 mm: resampled to the model's 8 x 7.5 x 7.5 mm
    affine = np.diag([4.0, 3.75, 5.0, 1.0])
    affine[:3, 3] = [-80.0, -60.0, 10.0]
    nib.save(nib.Nifti1Image(vol[::-1, ::-1].copy(), affine), tmp_path / "ct.nii.gz")  # stored RAS
    res = predict(PredictConfig(model=str(model), inputs=(str(tmp_path / "ct.nii.gz"),), out=str(tmp_path / "out"),
                                progress=False))
    assert res.volumes and res.predicted == 1
    out = nib.load(tmp_path / "out" / "masks" / "ct.nii.gz")
    assert out.shape == vol.shape and np.allclose(out.affine, affine) and out.get_data_dtype() == np.uint8
    # The same steps by hand: LPS volume -> model grid -> sliding window -> back -> the file's (RAS) order.
    with Engine.load(model) as engine:
        v = read_nifti(tmp_path / "ct.nii.gz")
        grid = resample_to_spacing(v, SPACING)
        want = resample_labels(segment_volume(engine, grid.hu), v.shape)[::-1, ::-1]
    np.testing.assert_array_equal(np.asarray(out.dataobj), want)
    rec = json.loads((tmp_path / "out" / "predictions.json").read_text())["predictions"][0]
    counts = np.bincount(want.reshape(-1), minlength=4)
    assert rec["voxels"] == {"liver": counts[1], "spleen": counts[2], "kidney": counts[3]}
    assert rec["volume_ml"]["liver"] == pytest.approx(counts[1] * 4.0 * 3.75 * 5.0 / 1000, abs=1e-3)
    assert (tmp_path / "out" / "predictions.csv").read_text().startswith("file,mask,seg,shape,seconds,ml_liver")


def test_dicom_series_gets_a_dicom_seg(tmp_path, model):
    hd = pytest.importorskip("highdicom")
    series = write_dicom_series(tmp_path / "series", head_like((12, 24, 28), seed=2), spacing_xyz=(4.0, 4.0, 6.0))
    res = predict(PredictConfig(model=str(model), inputs=(f"dicom-series:{series}",), out=str(tmp_path / "out"),
                                progress=False, sw_batch_size=2))
    assert res.predicted == 1
    seg = hd.seg.segread(tmp_path / "out" / "masks" / "series.seg.dcm")
    import pydicom

    first = pydicom.dcmread(next(series.glob("*.dcm")))
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID
    nii = nib.load(tmp_path / "out" / "masks" / "series.nii.gz")
    assert nii.shape == (28, 24, 12)


def test_bad_volumes_stop_the_run_and_leave_nothing(tmp_path, model):
    vol = _phantom().astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.diag([4.0, 3.75, 5.0, 1.0])), tmp_path / "a.nii.gz")
    vol[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(vol, np.diag([4.0, 3.75, 5.0, 1.0])), tmp_path / "b.nii.gz")
    out = tmp_path / "out"
    with pytest.raises(DataError, match="NaN"):
        predict(PredictConfig(model=str(model), inputs=(str(tmp_path / "a.nii.gz"), str(tmp_path / "b.nii.gz")),
                              out=str(out), progress=False))
    assert not out.exists()  # a.nii.gz's mask, written first, was removed
    with pytest.raises(DataError, match="does not exist"):
        predict(PredictConfig(model=str(model), inputs=(str(tmp_path / "none.nii.gz"),), out=str(out), progress=False))
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(DataError, match="reads volumes"):
        predict(PredictConfig(model=str(model), inputs=(str(tmp_path / "x.png"),), out=str(out), progress=False))
    with pytest.raises(ConfigError, match="drop"):
        predict(PredictConfig(model=str(model), inputs=(f"nifti:{tmp_path / 'a.nii.gz'}?crop=8,8,8",), out=str(out),
                              progress=False))
    assert not out.exists()
    # A 2-D model given a volume: one line saying what it needs, not "not a readable image".
    rng = np.random.default_rng(0)
    flat = conv3d_seg_model(tmp_path / "seg2d.onnx", (rng.normal(0, 0.3, (6, 1, 3, 3)).astype(np.float32),
                                                      rng.normal(0, 0.3, (4, 6, 3, 3)).astype(np.float32)),
                            (np.zeros(6, np.float32), np.zeros(4, np.float32)), input_size=(16, 16))
    for given in (str(tmp_path / "a.nii.gz"), f"inv3:{tmp_path / 'head.inv3'}"):
        with pytest.raises(ConfigError, match=r"is a volume; .*seg2d.onnx takes 2-D images \(16x16\): a volume needs a "
                                              r"3-D segmentation model"):
            predict(PredictConfig(model=str(flat), inputs=(given,), out=str(out), progress=False))
    from click.testing import CliRunner

    from medfm_compress.cli import cli

    r = CliRunner().invoke(cli, ["predict", str(flat), str(tmp_path / "a.nii.gz"), "--out", str(out)])
    assert r.exit_code == 1 and r.output.strip().splitlines()[-1].endswith("a volume needs a 3-D segmentation model")
    assert not out.exists()


def test_small_volume_is_padded(tmp_path, model):
    """A volume smaller than one window (16x16x12 at the model's grid) is padded with air and still segmented."""
    vol = _phantom((16, 16, 16))
    nib.save(nib.Nifti1Image(vol, np.diag([4.0, 3.75, 5.0, 1.0])), tmp_path / "s.nii.gz")
    predict(PredictConfig(model=str(model), inputs=(str(tmp_path / "s.nii.gz"),), out=str(tmp_path / "o"),
                          progress=False))
    assert nib.load(tmp_path / "o" / "masks" / "s.nii.gz").shape == (16, 16, 16)


def test_numpy_resampling_matches_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).normal(size=(13, 9, 7)).astype(np.float32)
    for shape in [(7, 18, 7), (26, 5, 3)]:
        want = torch.nn.functional.interpolate(torch.from_numpy(x)[None, None], size=shape, mode="trilinear",
                                               align_corners=False)[0, 0].numpy()
        np.testing.assert_allclose(resample_volume(x, shape), want, atol=1e-5)
    labels = np.arange(4 * 4 * 4).reshape(4, 4, 4)
    want = torch.nn.functional.interpolate(torch.from_numpy(labels.astype(np.float32))[None, None], size=(8, 2, 4),
                                           mode="nearest-exact")[0, 0].numpy()
    np.testing.assert_array_equal(resample_labels(labels, (8, 2, 4)), want)
