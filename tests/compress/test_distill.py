import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from support.tiny import TINY_DATA, TINY_STUDENT, TINY_TEACHER

from medfm_compress.compress.distill import DistillConfig, distill
from medfm_compress.compress.losses import feature_kd_loss
from medfm_compress.compress.tasks import distill_task
from medfm_compress.compress.train import batches
from medfm_compress.data import load_data
from medfm_compress.errors import ConfigError, ModelError
from medfm_compress.models import load_model
from medfm_compress.runtime.tasks import get_task


def _cfg(out, **kw):
    base = dict(data=TINY_DATA, out=str(out), teacher=TINY_TEACHER, student=TINY_STUDENT, teacher_epochs=1, epochs=1,
                batch_size=32, progress=False)
    base.update(kw)
    return DistillConfig.from_options(**base)


def test_run_directory_contents(tiny_run):
    names = {p.name for p in tiny_run.iterdir()}
    assert {"student.safetensors", "student.json", "teacher.json", "teacher.safetensors", "baseline.safetensors",
            "metrics.json", "manifest.json", "train.log"} <= names
    assert "checkpoints" not in names
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    # The recorded figures are those of the saved models on the test split (recomputed here).
    test = load_data(TINY_DATA).split("test")
    assert metrics["test_size"] == len(test) == 96
    logits = {}
    for role in ("teacher", "student", "baseline"):
        m, c = load_model(tiny_run, role)
        with torch.no_grad():
            logits[role] = m.eval()(torch.from_numpy(c.preprocess(test.images))).numpy()
        want = get_task("multiclass").task_metrics(logits[role], test.labels)
        assert metrics[role]["macro_auc"] == pytest.approx(want["macro_auc"], abs=1e-6), role
        assert metrics[role]["accuracy"] == pytest.approx(want["accuracy"]), role
        assert metrics[role]["params"] == sum(p.numel() for p in m.parameters()), role
    assert metrics["student"]["macs"] > metrics["student"]["params"]  # conv weights are used at many positions
    agreement = get_task("multiclass").agreement(logits["student"], logits["teacher"])
    assert metrics["student_teacher_agreement"] == pytest.approx(agreement)
    auc = {role: metrics[role]["macro_auc"] for role in ("teacher", "student", "baseline")}
    assert metrics["auc_retention"] == pytest.approx(auc["student"] / auc["teacher"])
    assert metrics["distill_gain_auc"] == pytest.approx(auc["student"] - auc["baseline"])
    manifest = json.loads((tiny_run / "manifest.json").read_text())
    # Other tests add stages to this shared run (quantize from a run directory): find distill's record.
    rec = next(s for s in manifest["stages"] if s["stage"] == "distill")
    assert len(rec["outputs"]["student_weights"]["sha256"]) == 64
    assert manifest["fingerprint"]["cores"] >= 1
    model, card = load_model(tiny_run)
    assert card.task == "multiclass" and card.label_names[0] == "normal"
    x = torch.from_numpy(card.preprocess(np.zeros((2, 32, 32), dtype=np.uint8)))
    assert model(x).shape == (2, 4)


def test_default_teacher_is_cached(tmp_path, tiny_run):
    log1 = (tiny_run / "train.log").read_text()
    distill(_cfg(tmp_path / "again", baseline=False))
    log2 = (tmp_path / "again" / "train.log").read_text()
    assert "training timm:medfm_resnet10_w16 on the full labels" in log1 or "using the default teacher" in log1
    assert "using the default teacher" in log2


def test_cpu_runs_are_deterministic(tmp_path):
    a = distill(_cfg(tmp_path / "a", augment=True))
    b = distill(_cfg(tmp_path / "b", augment=True))
    wa, wb = load_file(str(a.out / "student.safetensors")), load_file(str(b.out / "student.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_label_free_and_feature_loss(tmp_path):
    r = distill(_cfg(tmp_path / "lf", labels="none", label_fraction=0.25, head_epochs=3))
    assert r.metrics["student"]["macro_auc"] > 0
    assert "head" in r.metrics["history"]
    r = distill(_cfg(tmp_path / "mix", losses=("kd", "feat", "ce"), feat_loss="mse", augment=False))
    assert "cached" in (tmp_path / "mix" / "train.log").read_text()


def test_label_fraction_baseline_same_budget():
    idx = np.arange(10)
    b = batches(idx, 4, seed=0, epoch=0, n_batches=7)
    assert len(b) == 7 and all(len(x) == 4 for x in b)
    # Two ranks split each global batch without overlap.
    r0 = batches(np.arange(32), 4, 0, 0, rank=0, world=2)
    r1 = batches(np.arange(32), 4, 0, 0, rank=1, world=2)
    assert len(r0) == len(r1) == 4 and not set(np.concatenate(r0)) & set(np.concatenate(r1))


def test_losses_behave():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    kd = distill_task("multiclass").kd_loss
    assert kd(logits, logits, 4.0).abs() < 1e-6
    assert kd(logits, -logits, 4.0) > 0
    e = torch.randn(4, 8)
    assert feature_kd_loss(e, e, "cosine").abs() < 1e-6
    assert distill_task("multilabel").hard_loss(torch.tensor([[5.0, -5.0]]), torch.tensor([[1.0, 0.0]])) < 0.01
    seg = distill_task("segmentation")
    maps = torch.randn(2, 3, 8, 8)
    assert seg.kd_loss(maps, maps, 1.0).abs() < 1e-6 and seg.kd_loss(maps, -maps, 1.0) > 0
    # A teacher map of another size is resized to the student's first (2-D and 3-D alike).
    assert seg.kd_loss(maps, torch.randn(2, 3, 16, 16), 1.0) > 0
    assert seg.kd_loss(torch.randn(1, 2, 4, 4, 4), torch.randn(1, 2, 8, 8, 8), 1.0) > 0


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="label-fraction"):
        _cfg(tmp_path, label_fraction=0)
    with pytest.raises(ConfigError, match="unknown loss"):
        _cfg(tmp_path, losses=("kd", "dice"))
    with pytest.raises(ConfigError, match="--teacher"):
        DistillConfig.from_options(teacher_weights="x.safetensors")
    with pytest.raises(ConfigError, match="no --teacher given for real data"):
        distill(DistillConfig.from_options(data="medmnist:/nonexistent.npz", out=str(tmp_path / "o"), progress=False))
    with pytest.raises(ModelError, match="has no weights"):
        np.savez(tmp_path / "d.npz", train_images=np.zeros((40, 16, 16), np.uint8), train_labels=np.arange(40) % 2,
                 test_images=np.zeros((8, 16, 16), np.uint8), test_labels=np.arange(8) % 2)
        distill(DistillConfig.from_options(data=f"medmnist:{tmp_path / 'd.npz'}", teacher="timm:medfm_resnet10_w16",
                              out=str(tmp_path / "o2"), batch_size=8, progress=False))


def test_teacher_weights_class_mismatch(tmp_path, tiny_run):
    # The tiny run's teacher has 4 classes; a 2-class dataset must be refused with a clear message.
    np.savez(tmp_path / "d.npz", train_images=np.zeros((40, 32, 32), np.uint8), train_labels=np.arange(40) % 2,
             test_images=np.zeros((8, 32, 32), np.uint8), test_labels=np.arange(8) % 2)
    with pytest.raises(ModelError, match="4 classes but the data has 2"):
        distill(DistillConfig.from_options(data=f"medmnist:{tmp_path / 'd.npz'}", teacher=TINY_TEACHER,
                              teacher_weights=str(tiny_run / "teacher.safetensors"), out=str(tmp_path / "o"),
                              batch_size=8, progress=False))


@pytest.mark.slow
def test_sigint_then_resume_is_bitwise_equal(tmp_path):
    """Interrupt a distillation mid-run with SIGINT, resume it, compare with an uninterrupted run."""
    common = ["--data", TINY_DATA, "--teacher", TINY_TEACHER, "--student", TINY_STUDENT, "--teacher-epochs", "1",
              "--epochs", "3", "--batch-size", "16", "--quiet"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ref = tmp_path / "ref"
    subprocess.run([sys.executable, "-m", "medfm_compress", "distill", *common, "--out", str(ref)], check=True, env=env)
    out = tmp_path / "int"
    proc = subprocess.Popen([sys.executable, "-m", "medfm_compress", "distill", *common, "--out", str(out)],
                            env=env, stderr=subprocess.PIPE, text=True)
    ckpt = out / "checkpoints" / "student.pt"
    import time

    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("run finished before the signal arrived")
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    assert not (out / "student.safetensors").exists()
    subprocess.run([sys.executable, "-m", "medfm_compress", "distill", *common, "--out", str(out), "--resume"],
                   check=True, env=env)
    a, b = load_file(str(ref / "student.safetensors")), load_file(str(out / "student.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
