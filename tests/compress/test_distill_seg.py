"""Segmentation distillation: dense students from dense teachers on label maps, scored by Dice."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from medfm_compress.cli import cli
from medfm_compress.compress.distill import DistillConfig, distill
from medfm_compress.errors import ConfigError, ModelError

torch = pytest.importorskip("torch")
pytest.importorskip("segmentation_models_pytorch")
pytest.importorskip("monai")

SEG = "synthetic?task=segmentation&size=32&n_train=96&n_val=16&n_test=48&seed=3"
TEACHER = "smp:Unet:tu-medfm_resnet10_w16"
STUDENT = "smp:Linknet:tu-medfm_resnet10_w16"


def _cfg(out, **kw):
    base = dict(data=SEG, out=str(out), teacher=TEACHER, teacher_epochs=2, student=STUDENT, epochs=2, batch_size=16,
                augment=False, progress=False)
    return DistillConfig.from_options(**{**base, **kw})


def test_segmentation_run_writes_a_dense_student_scored_by_dice(tmp_path):
    from medfm_compress.compress.tasks.segmentation import predict_masks
    from medfm_compress.data import load_data
    from medfm_compress.models.card import ModelCard
    from medfm_compress.models.weights import load_weights
    from medfm_compress.runtime.preprocess import raw_to_unit  # noqa: F401  (the card's preprocessing is the runtime's)
    from medfm_compress.segmetrics import dice_per_case, mean_dice

    res = distill(_cfg(tmp_path / "run", label_fraction=0.25, baseline=True, augment=True))
    m = res.metrics
    names = ["lung", "heart", "nodule", "consolidation", "effusion"]
    assert m["task"] == "segmentation" and m["label_names"][1:] == names
    for role in ("teacher", "student", "baseline"):
        r = m[role]
        assert 0.0 <= r["mean_dice"] <= 1.0 and set(r["dice"]) == set(names) and 0.0 <= r["pixel_accuracy"] <= 1.0
    assert m["param_ratio"] == pytest.approx(m["teacher"]["params"] / m["student"]["params"])
    lo, hi = m["distill_gain_dice_ci"]
    assert lo <= m["distill_gain_dice"] <= hi
    assert 0.0 <= m["student_teacher_agreement"] <= 1.0
    assert any("test split has 48 cases" in w for w in m["warnings"])
    # The card rebuilds the student, and its masks are the ones scored.
    card = ModelCard.load(tmp_path / "run" / "student.json")
    assert card.task == "segmentation" and card.arch == STUDENT and card.label_names[0] == "background"
    model = card.build()
    load_weights(model, tmp_path / "run" / "student.safetensors")
    test = load_data(SEG).split("test")
    x = torch.from_numpy(card.preprocess(test.images))
    pred = predict_masks(model, x)
    assert mean_dice(dice_per_case(pred, test.labels, 6)) == pytest.approx(m["student"]["mean_dice"])
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert [s["stage"] for s in manifest["stages"]] == ["distill"]
    # The temperature left unset is segmentation's (1), and the manifest records the value used.
    assert manifest["stages"][0]["config"]["loss"]["temperature"] == 1.0
    assert (tmp_path / "run" / "baseline.safetensors").is_file() and (tmp_path / "run" / "splits.csv").is_file()


@pytest.mark.parametrize("task, batch, temperature", [("segmentation", 16, 1.0), ("multiclass", 64, 4.0),
                                                       ("multilabel", 64, 4.0)])
def test_unset_batch_size_and_temperature_follow_the_task(task, batch, temperature):
    from medfm_compress.compress.distill import resolve_task_defaults

    cfg = resolve_task_defaults(DistillConfig.from_options(data=SEG), task)
    assert (cfg.loop.batch_size, cfg.loss.temperature) == (batch, temperature)
    # What the user set is kept, whatever the task.
    cfg = resolve_task_defaults(DistillConfig.from_options(data=SEG, batch_size=8, temperature=2.0), task)
    assert (cfg.loop.batch_size, cfg.loss.temperature) == (8, 2.0)


def test_distillation_moves_the_student_towards_the_teacher(tmp_path):
    """Label-free (teacher maps only): the student learns to draw the teacher's masks (one epoch: agreement 0.29
    here, six: 0.82)."""
    res = distill(_cfg(tmp_path / "run", labels="none", epochs=6))
    m = res.metrics
    assert m["student_teacher_agreement"] > 0.7 and m["student"]["pixel_accuracy"] > 0.6
    log = (tmp_path / "run" / "train.log").read_text()
    assert "losses=kd epochs=6" in log


def test_feature_map_kd_trains_through_a_projector(tmp_path):
    res = distill(_cfg(tmp_path / "run", losses=("kd", "feat", "ce"), epochs=1))
    hist = res.metrics["history"]
    assert "feat" in json.dumps(hist)


@pytest.mark.parametrize("kw, err, match", [
    (dict(student="timm:medfm_resnet10_w16"), ModelError,
     r"--student timm:medfm_resnet10_w16 is an image classifier, but .* is a segmentation task"),
    (dict(teacher="timm:medfm_resnet10_w16"), ModelError, r"--teacher timm:medfm_resnet10_w16 is an image classifier"),
    (dict(labels="none", losses=("kd", "ce")), ConfigError, r"--labels none trains without labels; drop 'ce'"),
])
def test_mismatched_models_and_options_are_refused_before_training(tmp_path, kw, err, match):
    with pytest.raises(err, match=match) as e:
        distill(_cfg(tmp_path / "run", **kw))
    assert "\n" not in str(e.value)
    assert not (tmp_path / "run" / "student.safetensors").exists()


def test_segmentation_network_on_image_labels_is_one_line_exit_1(tmp_path):
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, ["distill", "--data", "synthetic?size=32&n_train=64&n_val=8&n_test=16", "--student",
                                 STUDENT, "--epochs", "1", "--out", str(out)])
    assert r.exit_code == 1
    assert f"--student {STUDENT} is a segmentation network, but" in r.output
    assert len(r.output.strip().splitlines()) == 1 and not out.exists()


def test_a_dense_factory_with_the_wrong_output_is_named(tmp_path, monkeypatch):
    import sys
    import types

    mod = types.ModuleType("seg_factory_bad")

    def make(num_classes, in_chans):
        return torch.nn.Sequential(torch.nn.Conv2d(in_chans, num_classes, 3, stride=2, padding=1))

    mod.make = make
    monkeypatch.setitem(sys.modules, "seg_factory_bad", mod)
    with pytest.raises(ModelError, match=r"student python:seg_factory_bad:make outputs \(1, 6, 16, 16\) on a "
                                         r"\(1, 1, 32, 32\) input, not \(1, 6, 32, 32\)"):
        distill(_cfg(tmp_path / "run", student="python:seg_factory_bad:make"))


def test_segmentation_summary_through_the_cli(tmp_path):
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, ["distill", "--data", SEG, "--teacher", TEACHER, "--teacher-epochs", "1", "--student",
                                 STUDENT, "--epochs", "1", "--batch-size", "16", "--label-fraction", "0.25",
                                 "--baseline", "--no-augment", "--quiet", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "mean Dice" in r.output and "HD95 px" in r.output and "Dice per class (teacher / student / baseline)" in r.output
    assert "distilled - baseline mean Dice:" in r.output and "paired 95% CI" in r.output
    assert np.isfinite(json.loads((out / "metrics.json").read_text())["student"]["mean_dice"])
