"""The C++ runtime on volumes: ``medfm-run predict seg3d.onnx volume.nii.gz --mask-out mask.nii.gz`` reads NIfTI of any
orientation (and .npy on the model's grid), resamples to the model's spacing, runs the sliding window and writes the
label map on the input's own grid -- the same mask as Python's ``predict`` on >= 99.9% of voxels (in practice all)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from support.volume_fixtures import conv3d_seg_model

pytestmark = pytest.mark.slow  # the C++ build
nib = pytest.importorskip("nibabel")
SPACING = (8.0, 7.5, 7.5)


def _run(build: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(build / "medfm-run"), *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    rng = np.random.default_rng(1)
    w = (rng.normal(0, 0.3, (6, 1, 3, 3, 3)).astype(np.float32), rng.normal(0, 0.3, (4, 6, 3, 3, 3)).astype(np.float32))
    b = (rng.normal(0, 0.1, 6).astype(np.float32), rng.normal(0, 0.1, 4).astype(np.float32))
    return conv3d_seg_model(tmp_path_factory.mktemp("m") / "seg3d.onnx", w, b, spacing=SPACING)


def _phantom(shape=(40, 36, 20), seed=0) -> np.ndarray:
    from medfm_compress.data.synthetic3d import Synthetic3DConfig, generate_volumes

    return generate_volumes(Synthetic3DConfig(shape=shape, spacing=(4.0, 3.75, 5.0), n_train=1, n_val=1, n_test=1,
                                              seed=seed))["train_images"][0]


def _volumes(folder: Path) -> list[Path]:
    """Three NIfTI files of the same kind of scan stored three ways: RAS (.nii.gz), axes permuted and
    int16 with a scale slope/intercept (.nii), and LPS with an oblique (5 degree) affine."""
    folder.mkdir()
    vol = _phantom()
    ras = np.diag([4.0, 3.75, 5.0, 1.0])
    ras[:3, 3] = [-80.0, -60.0, 10.0]
    nib.save(nib.Nifti1Image(vol[::-1, ::-1].copy(), ras), folder / "ras.nii.gz")
    perm = np.zeros((4, 4))
    perm[0, 1], perm[1, 2], perm[2, 0], perm[3, 3] = -4.0, -3.75, 5.0, 1.0
    raw = np.round((np.transpose(_phantom(seed=1), (2, 0, 1)) + 1000.0) / 2.0).astype(np.int16)
    img = nib.Nifti1Image(raw, perm)
    img.header.set_slope_inter(2.0, -1000.0)
    nib.save(img, folder / "perm.nii")
    t = np.deg2rad(5.0)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    obl = np.eye(4)
    obl[:3, :3] = rot @ np.diag([-4.0, -3.75, 5.0])
    nib.save(nib.Nifti1Image(_phantom(shape=(36, 30, 16), seed=2), obl), folder / "oblique.nii.gz")
    return sorted(folder.iterdir())


def test_volume_masks_identical_to_python_predict(cpp_build, model, tmp_path):
    from medfm_compress.runtime.predict import PredictConfig, predict

    files = _volumes(tmp_path / "in")
    predict(PredictConfig(model=str(model), inputs=tuple(map(str, files)), out=str(tmp_path / "py"), progress=False))
    py = {Path(r["file"]).name: r for r in json.loads((tmp_path / "py" / "predictions.json").read_text())["predictions"]}
    (tmp_path / "cpp").mkdir()
    proc = _run(cpp_build, "predict", str(model), *map(str, files), "--mask-dir", str(tmp_path / "cpp"), "--threads",
                "1", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {Path(r["volume"]).name: r for r in json.loads(proc.stdout)}
    assert set(rows) == set(py) == {f.name for f in files}
    for f in files:
        name = f.name.split(".")[0]
        want = nib.load(tmp_path / "py" / "masks" / f"{name}.nii.gz")
        got = nib.load(tmp_path / "cpp" / f"{name}.mask.nii.gz")
        assert got.shape == want.shape == nib.load(f).shape  # the input's own grid and voxel order
        np.testing.assert_allclose(got.affine, want.affine, atol=1e-4)
        assert got.get_data_dtype() == np.uint8
        agree = float((np.asarray(got.dataobj) == np.asarray(want.dataobj)).mean())
        assert agree >= 0.999, (f.name, agree)
        assert len(np.unique(np.asarray(want.dataobj))) >= 3  # the masks say something
        r = rows[f.name]
        assert r["shape"] == py[f.name]["shape"] and r["spacing_mm"] == pytest.approx(py[f.name]["spacing_mm"])
        for label, n in py[f.name]["voxels"].items():
            assert abs(r["voxels"][label] - n) <= 0.001 * np.prod(r["shape"])
            assert r["volume_ml"][label] == pytest.approx(py[f.name]["volume_ml"][label], abs=0.002 * 1e-3
                                                          * np.prod(r["shape"]) * np.prod(r["spacing_mm"]) + 1e-3)


def test_npy_volume_on_the_models_grid_and_padding(cpp_build, model, tmp_path):
    """An .npy volume is taken as (X, Y, Z) on the model's grid; one smaller than the window (12 voxels deep here)
    is padded with air and cropped back, as Python's sliding window does."""
    from medfm_compress.runtime import Engine
    from medfm_compress.runtime.sliding_window import segment_volume

    vol = _phantom()[:, :, :9].astype(np.float32)
    np.save(tmp_path / "grid.npy", vol)
    proc = _run(cpp_build, "predict", str(model), str(tmp_path / "grid.npy"), "--mask-out",
                str(tmp_path / "grid.mask.npy"), "--overlap", "0.5", "--sw-batch-size", "3", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{tmp_path / 'grid.npy'}\t{tmp_path / 'grid.mask.npy'}\t40x36x9\t")
    with Engine.load(model, threads=1) as engine:
        want = segment_volume(engine, vol, overlap=0.5, sw_batch_size=3)
    got = np.load(tmp_path / "grid.mask.npy")
    assert got.shape == want.shape and float((got == want).mean()) >= 0.999


def test_volume_user_errors_one_line_exit_1_nothing_left(cpp_build, model, tmp_path):
    from PIL import Image

    vol = _phantom()
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "good.nii.gz")
    bad = vol.astype(np.float32)
    bad[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(bad, np.eye(4)), tmp_path / "nan.nii.gz")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "slice.pgm")
    out = tmp_path / "masks"
    out.mkdir()
    cases = [
        (["predict", str(model), str(tmp_path / "good.nii.gz"), str(tmp_path / "nan.nii.gz"), "--mask-dir", str(out)],
         "nan.nii.gz: the volume has 1 NaN or infinite voxels"),
        (["predict", str(model), str(tmp_path / "slice.pgm")], "is a 3-D model; give it volumes"),
        (["predict", str(model), str(tmp_path / "missing.nii.gz")], "no such file"),
    ]
    two_d = Path(__file__).resolve().parents[2] / "csrc" / "tests" / "data" / "tiny_seg.onnx"
    cases.append((["predict", str(two_d), str(tmp_path / "good.nii.gz")], "a volume needs a 3-D segmentation model"))
    cases.append((["predict", str(model), str(tmp_path / "good.nii.gz"), "--batch", "8"], "--sw-batch-size at a time"))
    for args, message in cases:
        proc = _run(cpp_build, *args)
        assert proc.returncode == 1, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert list(out.iterdir()) == []  # the good volume's mask, written first, was removed
    proc = _run(cpp_build, "predict", str(model), str(tmp_path / "good.nii.gz"), "--overlap", "1")
    assert proc.returncode == 2 and "--overlap needs a number in [0, 1)" in proc.stderr
