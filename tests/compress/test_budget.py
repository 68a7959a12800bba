"""Budgets in optimizer steps, early stopping with the best state kept, and weak teachers flagged."""

import json

import pytest
from click.testing import CliRunner
from support.tiny import TINY_DATA, TINY_SEG_DATA, TINY_SEG_STUDENT, TINY_SEG_TEACHER, TINY_STUDENT

from medfm_compress.cli import cli
from medfm_compress.compress.budget import BestOnVal, plan_budget
from medfm_compress.compress.distill import DistillConfig, distill
from medfm_compress.compress.tasks import distill_task
from medfm_compress.errors import ConfigError

torch = pytest.importorskip("torch")


def test_a_step_budget_is_rounded_up_to_whole_epochs_and_says_so():
    b = plan_budget(4, epochs=None, steps=150, default_epochs=6, default_steps=900)
    assert (b.epochs, b.steps) == (38, 152)
    assert b.plan(72, 16) == "72 training images, batch 16: 38 epochs of 4 steps = 152 steps (--steps 150)"
    assert plan_budget(4, epochs=3, steps=None, default_epochs=6, default_steps=900).steps == 12


def test_the_default_gives_a_small_set_the_embedded_defaults_steps_and_leaves_a_large_one_alone():
    # 2,400 images at batch 16 (the embedded default): 6 epochs of 150 steps, as before.
    assert plan_budget(150, epochs=None, steps=None, default_epochs=6, default_steps=900).epochs == 6
    # 72 images: 4 steps per epoch, so 225 epochs give the same 900 steps.
    small = plan_budget(4, epochs=None, steps=None, default_epochs=6, default_steps=900)
    assert small.steps == 900 and "at least the 900 steps" in small.reason
    # A larger set keeps its epochs (more steps than the default, never fewer epochs).
    assert plan_budget(500, epochs=None, steps=None, default_epochs=6, default_steps=900).epochs == 6
    with pytest.raises(ConfigError, match="give one"):
        plan_budget(4, epochs=2, steps=10, default_epochs=6, default_steps=900)


def test_task_default_steps_are_the_embedded_defaults():
    assert distill_task("multiclass").default_steps(6, volumes=False) == 6 * (2400 // 64)
    assert distill_task("segmentation").default_steps(6, volumes=False) == 6 * (2400 // 16)
    assert distill_task("segmentation").default_steps(6, volumes=True) is None  # volumes stay in epochs


def test_epochs_and_steps_together_are_refused():
    with pytest.raises(ConfigError, match="--epochs and --steps"):
        DistillConfig.from_options(epochs=2, steps=10)
    with pytest.raises(ConfigError, match="--teacher-epochs and --teacher-steps"):
        DistillConfig.from_options(teacher_epochs=2, teacher_steps=10)
    with pytest.raises(ConfigError, match="--teacher-patience stops a teacher trained from scratch"):
        DistillConfig.from_options(data="folder:x", teacher="timm:resnet18", teacher_weights="w.safetensors",
                                   teacher_patience=10)
    r = CliRunner().invoke(cli, ["distill", "--steps", "0"])
    assert r.exit_code == 1 and "steps" in r.output and "Traceback" not in r.output


def test_best_on_val_stops_after_patience_steps_and_restores_the_best_state(tmp_path):
    model = torch.nn.Linear(2, 1)
    scores = iter([0.5, 0.7, 0.6, 0.65, 0.66])
    seen = {}

    def score(m):
        value = next(scores)
        seen[value] = m.weight.detach().clone()
        return {"val_auc": value}

    best = BestOnVal(model, score, "val_auc", True, patience_steps=6, steps_per_epoch=3, path=tmp_path / "best.pt")
    history = []
    for epoch in range(5):
        with torch.no_grad():
            model.weight.add_(1.0)  # each epoch changes the weights
        history.append({"epoch": epoch + 1, **best.epoch_end(epoch)})
        if best.stop_after(history):
            break
    assert len(history) == 4  # best at epoch 2; epochs 3 and 4 = 6 steps without a better score
    kept = best.restore()
    assert kept == {"best_epoch": 2, "val_auc": 0.7}
    assert torch.equal(model.weight, seen[0.7]) and not (tmp_path / "best.pt").exists()


def test_a_small_set_gets_its_step_budget_and_a_scratch_teacher_keeps_its_best_state(tmp_path):
    cache = tmp_path / "cache"
    res = distill(DistillConfig.from_options(
        data=TINY_DATA, out=str(tmp_path / "run"), teacher=TINY_STUDENT, teacher_steps=12, teacher_patience=3,
        student=TINY_STUDENT, steps=7, batch_size=32, augment=False, progress=False, cache=str(cache)))
    b = res.metrics["budget"]
    assert b["student"] == {"epochs": 2, "steps_per_epoch": 6, "steps": 12, "reason": "--steps 7"}
    assert b["teacher"]["steps"] == 12 and b["teacher"]["reason"] == "--teacher-steps 12"
    log = (tmp_path / "run" / "train.log").read_text()
    assert "student budget: 192 training images, batch 32: 2 epochs of 6 steps = 12 steps (--steps 7)" in log
    assert "stops after 3 steps without a better val_auc" in log
    assert "[teacher] kept epoch" in log
    card = json.loads((tmp_path / "run" / "teacher.json").read_text())
    assert card["provenance"]["budget"]["steps"] == 12 and card["provenance"]["best_epoch"] >= 1
    # The manifest records the epochs run.
    stage = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"][0]
    assert stage["config"]["loop"]["epochs"] == 2


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_teacher_its_student_beats_is_flagged_with_the_steps_it_had(tmp_path):
    pytest.importorskip("segmentation_models_pytorch")
    res = distill(DistillConfig.from_options(
        data=TINY_SEG_DATA, out=str(tmp_path / "run"), teacher=TINY_SEG_TEACHER, teacher_steps=1,
        student=TINY_SEG_STUDENT, steps=60, batch_size=16, augment=False, progress=False, losses=("ce",)))
    m = res.metrics
    weak = [w for w in m["warnings"] if "teacher" in w and "--teacher-steps" in w]
    assert m["student"]["mean_dice"] > m["teacher"]["mean_dice"] + 0.03
    assert weak and "trained from scratch for 6 steps" in weak[0]


def test_best_on_val_resumed_keeps_the_best_so_far(tmp_path):
    model = torch.nn.Linear(2, 1)
    first = BestOnVal(model, lambda m: {"val_dice": 0.8}, "val_dice", True, 6, 3, tmp_path / "b.pt")
    first.epoch_end(0)
    resumed = BestOnVal(model, lambda m: {"val_dice": 0.5}, "val_dice", True, 6, 3, tmp_path / "b.pt", resume=True)
    resumed.epoch_end(1)  # worse: the kept state stays epoch 1's
    assert resumed.restore() == {"best_epoch": 1, "val_dice": 0.8}
    fresh = BestOnVal(model, lambda m: {"val_dice": 0.5}, "val_dice", True, 6, 3, tmp_path / "b.pt")
    assert fresh.best is None and not (tmp_path / "b.pt").exists()
