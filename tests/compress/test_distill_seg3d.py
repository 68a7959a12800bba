"""Volumetric distillation: the same ``distill`` loop on patches of ``synthetic3d`` with MONAI networks, scored per
case on whole volumes by sliding windows; the student exports to a 5-D ONNX that ``predict`` runs on a NIfTI."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from medfm_compress.cli import cli
from medfm_compress.compress.distill import DistillConfig, distill
from medfm_compress.errors import ModelError

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

VOL = "synthetic3d?n_train=4&n_val=1&n_test=2&shape=32,32,24&patch=16,16,16&per_case=4"
TEACHER = "monai:UNet?channels=12,24,48&strides=2,2&num_res_units=1"
STUDENT = "monai:UNet?channels=4,8,16&strides=2,2&num_res_units=0"


def _cfg(out, **kw):
    base = dict(data=VOL, out=str(out), teacher=TEACHER, teacher_epochs=1, student=STUDENT, epochs=1, batch_size=4,
                progress=False)
    return DistillConfig.from_options(**{**base, **kw})


def test_volume_run_scores_whole_cases_and_exports_a_5d_student(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDFM_CACHE_DIR", str(tmp_path / "cache"))
    from medfm_compress.compress.tasks.segmentation import predict_masks
    from medfm_compress.data import load_data
    from medfm_compress.models.card import ModelCard
    from medfm_compress.models.weights import load_weights
    from medfm_compress.segmetrics import dice_per_case, mean_dice

    res = distill(_cfg(tmp_path / "run", label_fraction=0.5, baseline=True))
    m = res.metrics
    assert m["test_size"] == 2 and m["label_names"] == ["background", "liver", "spleen", "kidney", "lesion"]
    for role in ("teacher", "student", "baseline"):
        assert 0.0 <= m[role]["mean_dice"] <= 1.0 and m[role]["hd95_unit"] == "mm"
    assert m["param_ratio"] > 5
    card = ModelCard.load(tmp_path / "run" / "student.json")
    pre = card.preprocess
    assert pre.input_size == (16, 16, 16) and pre.spacing == (5.5, 5.0, 5.0) and pre.window == (-160.0, 240.0)
    # The scored masks are the student's sliding-window masks of the whole test cases.
    model = card.build()
    load_weights(model, tmp_path / "run" / "student.safetensors")
    task = load_data(VOL)
    x = torch.from_numpy(pre.whole(task.split("test").images))
    pred = predict_masks(model, x, roi=pre.input_size, shapes=[(32, 32, 24)] * 2)
    assert pred[0].shape == (32, 32, 24)
    per_case = np.concatenate([dice_per_case(p[None], r[None], 5) for p, r in zip(pred, task.split("test").labels,
                                                                                  strict=True)])
    assert mean_dice(per_case) == pytest.approx(m["student"]["mean_dice"], abs=1e-9)

    runner = CliRunner()
    r = runner.invoke(cli, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "s.onnx")])
    assert r.exit_code == 0, r.output
    import onnx

    dims = [d.dim_value or d.dim_param for d in onnx.load(tmp_path / "s.onnx").graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [1, 16, 16, 16]
    # Quantize at the default --num-holdout gates a volume model on 64 held-out patches (512 took minutes).
    r = runner.invoke(cli, ["quantize", str(tmp_path / "s.onnx"), "--calib-data", VOL, "--num-calib", "8",
                            "--min-dice", "0", "--min-agreement", "0", "--no-search", "--out",
                            str(tmp_path / "s.int8.onnx")])
    assert r.exit_code == 0, r.output
    from medfm_compress.runtime.onnx_loader import read_meta

    calib = read_meta(tmp_path / "s.int8.onnx").provenance["quantization"]["calibration"]
    assert calib["num_holdout"] == 64 and "parity gate on 64 held-out patches" in r.output
    nib = pytest.importorskip("nibabel")
    nib.save(nib.Nifti1Image(task.split("test").images[0][::-1, ::-1].copy(), np.diag([5.5, 5.0, 5.0, 1.0])),
             tmp_path / "ct.nii.gz")
    r = runner.invoke(cli, ["predict", str(tmp_path / "s.onnx"), f"nifti:{tmp_path / 'ct.nii.gz'}", "--out",
                            str(tmp_path / "pred"), "--quiet"])
    assert r.exit_code == 0, r.output
    mask = np.asarray(nib.load(tmp_path / "pred" / "masks" / "ct.nii.gz").dataobj)[::-1, ::-1]
    # ONNX Runtime and torch agree on (nearly) every voxel of the same sliding window.
    assert (mask == pred[0]).mean() > 0.999
    assert json.loads((tmp_path / "pred" / "predictions.json").read_text())["sliding_window"]["roi"] == [16, 16, 16]


def test_label_fraction_picks_whole_cases():
    from medfm_compress.compress.taskprep import labeled_subset

    labels = np.zeros((12, 4, 4, 4), np.uint8)
    labels[:, 0, 0, 0] = 1
    labels[8:, 1, 1, 1] = 2
    groups = np.repeat(np.array(["a", "b", "c", "d", "e", "f"], dtype=object), 2)
    picked = labeled_subset(labels, "segmentation", 0.5, 0, groups=groups)
    cases = set(groups[picked])
    assert set(np.flatnonzero(np.isin(groups, list(cases)))) == set(picked)  # every patch of a picked case
    assert 2 <= len(cases) <= 4 and {"e", "f"} & cases  # the rarer class's cases get their share


def test_2d_network_for_volumes_and_3d_network_for_images_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDFM_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(ModelError, match="2-D network"):
        distill(_cfg(tmp_path / "a", student="smp:Unet:tu-medfm_resnet10_w16"))
    with pytest.raises(ModelError, match="3-D network"):
        distill(_cfg(tmp_path / "b", data="synthetic?task=segmentation&size=32&n_train=32&n_val=8&n_test=8",
                     student=STUDENT, teacher="smp:Unet:tu-medfm_resnet10_w16"))
    assert not (tmp_path / "a" / "student.safetensors").exists()


def test_a_network_too_deep_for_the_patch_is_refused_before_training(tmp_path, monkeypatch):
    """SwinUNETR downsamples 5 times: 16-voxel patches are refused in one line, before the teacher trains."""
    monkeypatch.setenv("MEDFM_CACHE_DIR", str(tmp_path / "cache"))
    pytest.importorskip("einops")
    with pytest.raises(ModelError, match=r"teacher monai:SwinUNETR\?feature_size=12 fails on a \(1, 1, 16, 16, 16\)"):
        distill(_cfg(tmp_path / "a", teacher="monai:SwinUNETR?feature_size=12"))
    assert not (tmp_path / "cache" / "teachers").exists() or not any((tmp_path / "cache" / "teachers").rglob("*.pt"))


def test_whole_cases_need_not_fit_the_networks_stride(tmp_path, monkeypatch):
    """Test cases of 34x30x22 voxels (not multiples of the U-Net's 4) are scored by windows of the patch: the teacher,
    trained here and then loaded from the cache, is checked on a patch, not on a whole case."""
    monkeypatch.setenv("MEDFM_CACHE_DIR", str(tmp_path / "cache"))
    data = VOL.replace("shape=32,32,24", "shape=34,30,22")
    for out in ("a", "b"):  # "b" reuses the cached teacher
        res = distill(_cfg(tmp_path / out, data=data))
        assert 0.0 <= res.metrics["teacher"]["mean_dice"] <= 1.0 and res.metrics["test_size"] == 2
