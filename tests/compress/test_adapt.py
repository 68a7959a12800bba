"""Adapting a pretrained teacher to the user's labels (linear probe, fine-tune), weights mapped in order,
distill taking the adapted teacher, honest summaries and no partial output."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file
from support.tiny import TINY_DATA, TINY_STUDENT, TINY_TEACHER

from medfm_compress.cli import cli
from medfm_compress.compress.adapt import AdaptConfig, adapt
from medfm_compress.compress.distill import DistillConfig, distill
from medfm_compress.data import load_data
from medfm_compress.errors import ConfigError, ModelError
from medfm_compress.models import load_model


@pytest.fixture(scope="module")
def binary_npz(tmp_path_factory):
    """The tiny synthetic task relabelled as normal vs abnormal: another label set than the teacher's 4 classes."""
    task = load_data(TINY_DATA)
    d = tmp_path_factory.mktemp("binary")
    arrays = {}
    for split in ("train", "val", "test"):
        s = task.split(split)
        arrays[f"{split}_images"] = np.asarray(s.images)
        arrays[f"{split}_labels"] = (np.asarray(s.labels) != 0).astype(np.int64)
    np.savez(d / "binary.npz", **arrays)
    return f"medmnist:{d / 'binary.npz'}"


def _adapt_cfg(out, data, weights, **kw):
    base = dict(teacher=TINY_TEACHER, teacher_weights=str(weights), data=data, out=str(out), epochs=20, progress=False)
    base.update(kw)
    return AdaptConfig(**base)


def test_linear_probe_other_label_set_then_distill(tmp_path, tiny_run, binary_npz):
    # The tiny run's teacher predicts 4 classes; distill refuses it on 2 and points at adapting.
    with pytest.raises(ModelError, match="--teacher-adapt"):
        distill(DistillConfig.from_options(data=binary_npz, teacher=TINY_TEACHER, teacher_weights=str(tiny_run / "teacher.safetensors"),
                              out=str(tmp_path / "refused"), batch_size=32, progress=False))
    assert not (tmp_path / "refused").exists() or [p.name for p in (tmp_path / "refused").iterdir()] == [
        "train.error.log"]
    res = adapt(_adapt_cfg(tmp_path / "ad", binary_npz, tiny_run / "teacher.safetensors"))
    m = json.loads((tmp_path / "ad" / "metrics.json").read_text())
    assert m["method"] == "linear" and m["labeled_images"] == 192
    for split in ("val", "test"):
        lo, hi = m[split]["macro_auc_ci"]
        assert lo <= m[split]["macro_auc"] <= hi
    # The tiny run's teacher trained for one epoch, near chance: a val AUC under 0.6 is called out.
    assert (m["val"]["macro_auc"] < 0.6) == any("near chance on val" in w for w in m["warnings"])
    assert any("96 cases" in w for w in m["warnings"])
    model, card = load_model(tmp_path / "ad", "teacher")
    assert card.num_classes == 2 and card.role == "teacher" and card.provenance["adapted"] == "linear"
    # Only the head changed: the encoder is the pretrained one, tensor for tensor.
    pre, post = load_file(str(tiny_run / "teacher.safetensors")), load_file(str(tmp_path / "ad" / "teacher.safetensors"))
    head = [k for k in post if post[k].shape != pre[k].shape]
    assert head and all(k.startswith(("fc.", "head", "classifier")) for k in head)
    assert all(torch.equal(pre[k], post[k]) for k in post if k not in head)
    assert (tmp_path / "ad" / "splits.csv").is_file()
    assert res.metrics["test"]["n"] == 96
    # The features were cached: a second run reads them.
    adapt(_adapt_cfg(tmp_path / "ad2", binary_npz, tiny_run / "teacher.safetensors"))
    assert "features: cached" in (tmp_path / "ad2" / "train.log").read_text()
    # distill takes the adapted teacher as a run-directory stem.
    r = distill(DistillConfig.from_options(data=binary_npz, teacher=str(tmp_path / "ad" / "teacher"), student=TINY_STUDENT,
                              epochs=1, batch_size=32, out=str(tmp_path / "d"), progress=False))
    assert r.metrics["teacher"]["macro_auc"] == pytest.approx(m["test"]["macro_auc"], abs=1e-6)


def test_distill_teacher_adapt_inline_is_cached(tmp_path, tiny_run, binary_npz):
    kw = dict(data=binary_npz, teacher=TINY_TEACHER, teacher_weights=str(tiny_run / "teacher.safetensors"),
              teacher_adapt="linear", student=TINY_STUDENT, epochs=1, batch_size=32, label_fraction=0.25,
              progress=False)
    distill(DistillConfig.from_options(out=str(tmp_path / "a"), **kw))
    assert "teacher: adapting" in (tmp_path / "a" / "train.log").read_text()
    r = distill(DistillConfig.from_options(out=str(tmp_path / "b"), **kw))
    log = (tmp_path / "b" / "train.log").read_text()
    assert "adapted (linear) teacher cached" in log
    assert "adapted (linear)" in r.metrics["teacher"]["source"]
    with pytest.raises(ConfigError, match="pick one"):
        DistillConfig.from_options(out=str(tmp_path / "c"), **{**kw, "teacher_epochs": 2})


def test_finetune_last_blocks_only(tmp_path, tiny_run):
    adapt(_adapt_cfg(tmp_path / "ft", TINY_DATA, tiny_run / "teacher.safetensors", method="finetune",
                     finetune_blocks=1, epochs=2, augment=False))
    pre, post = load_file(str(tiny_run / "teacher.safetensors")), load_file(str(tmp_path / "ft" / "teacher.safetensors"))
    changed = {k for k in post if k in pre and pre[k].shape == post[k].shape and not torch.equal(pre[k], post[k])}
    assert any(k.startswith("layer4.") for k in changed)
    assert not any(k.startswith(("conv1.", "layer1.", "layer2.", "layer3.")) and "running" not in k
                   and "num_batches" not in k for k in changed)
    with pytest.raises(ConfigError, match="finetune-blocks 9 exceeds"):
        adapt(_adapt_cfg(tmp_path / "ft9", TINY_DATA, tiny_run / "teacher.safetensors", method="finetune",
                         finetune_blocks=9, epochs=1))
    assert not (tmp_path / "ft9" / "teacher.safetensors").exists()
    assert sorted(p.name for p in (tmp_path / "ft9").iterdir()) == ["train.error.log"]


def test_encoder_only_checkpoint(tmp_path, tiny_run, binary_npz):
    # A checkpoint without a classifier (an encoder, as self-supervised foundation models ship): the head is new.
    sd = {k: v for k, v in load_file(str(tiny_run / "teacher.safetensors")).items() if not k.startswith("fc.")}
    save_file(sd, str(tmp_path / "encoder.safetensors"))
    adapt(_adapt_cfg(tmp_path / "enc", binary_npz, tmp_path / "encoder.safetensors", epochs=3))
    post = load_file(str(tmp_path / "enc" / "teacher.safetensors"))
    assert post["fc.weight"].shape[0] == 2 and all(torch.equal(post[k], sd[k]) for k in sd)
    assert "holds the encoder only" in (tmp_path / "enc" / "train.log").read_text()
    # A missing encoder tensor is named.
    del sd["layer1.0.conv1.weight"]
    save_file(sd, str(tmp_path / "broken.safetensors"))
    with pytest.raises(ModelError, match="layer1.0.conv1.weight"):
        adapt(_adapt_cfg(tmp_path / "broken", binary_npz, tmp_path / "broken.safetensors", epochs=1))


def test_weights_key_map_order(tmp_path, tiny_run, binary_npz):
    sd = load_file(str(tiny_run / "teacher.safetensors"))
    # Another implementation's names, same tensors in the same order.
    model, _ = load_model(tiny_run, "teacher")
    ordered = model.state_dict()  # the order the network registers its tensors
    renamed = {f"_net.{i:03d}.{k.replace('.', '_')}": v.clone() for i, (k, v) in enumerate(ordered.items())}
    torch.save(renamed, tmp_path / "foreign.pt")
    with pytest.raises(ModelError, match="try --weights-key-map order"):
        adapt(_adapt_cfg(tmp_path / "by-name", binary_npz, tmp_path / "foreign.pt"))
    # A .safetensors file does not keep the order, so mapping by order is refused for it.
    save_file({k: v.contiguous() for k, v in renamed.items()}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ModelError, match="does not keep"):
        adapt(_adapt_cfg(tmp_path / "st", binary_npz, tmp_path / "foreign.safetensors", weights_key_map="order"))
    adapt(_adapt_cfg(tmp_path / "by-order", binary_npz, tmp_path / "foreign.pt", weights_key_map="order"))
    post = load_file(str(tmp_path / "by-order" / "teacher.safetensors"))
    k = next(k for k in sd if k.startswith("layer3.") and k.endswith("weight"))
    assert torch.equal(post[k], sd[k])
    # Shapes that disagree position by position are refused with the first offending pair named.
    items = list(renamed.items())
    items[0], items[1] = items[1], items[0]
    torch.save(dict(items), tmp_path / "shuffled.pt")
    with pytest.raises(ModelError, match="tensor #0 .* does not fit"):
        adapt(_adapt_cfg(tmp_path / "bad", binary_npz, tmp_path / "shuffled.pt", weights_key_map="order"))
    assert sorted(p.name for p in (tmp_path / "bad").iterdir()) == ["train.error.log"]


def test_embedding_teacher_with_foreign_head_channels_and_names(tmp_path):
    # An RGB "foundation" checkpoint with a 10-class head and another implementation's names: --labels none
    # distills its features; the head and the 3 input channels are its own.
    from medfm_compress.models import create_model

    torch.manual_seed(0)
    sd = create_model(TINY_TEACHER, 10, 3).state_dict()
    torch.save({f"m{i}.{k.replace('.', '_')}": v for i, (k, v) in enumerate(sd.items())}, tmp_path / "fm.pt")
    r = distill(DistillConfig.from_options(data=TINY_DATA, teacher=TINY_TEACHER, teacher_weights=str(tmp_path / "fm.pt"),
                              weights_key_map="order", labels="none", student=TINY_STUDENT, epochs=1, head_epochs=2,
                              batch_size=32, out=str(tmp_path / "emb"), progress=False))
    card = json.loads((tmp_path / "emb" / "teacher.json").read_text())
    assert card["num_classes"] == 10 and card["in_chans"] == 3 and card["preprocess"]["channels"] == 3
    assert "student_teacher_agreement" not in r.metrics and r.metrics["student"]["macro_auc"] > 0


def test_summary_is_honest_and_teacher_epochs_any_data(tmp_path, binary_npz):
    runner = CliRunner()
    out = tmp_path / "scratch"
    r = runner.invoke(cli, ["distill", "--data", binary_npz, "--teacher", TINY_TEACHER, "--teacher-epochs", "1",
                            "--student", TINY_STUDENT, "--epochs", "1", "--batch-size", "32", "--baseline",
                            "--quiet", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "training timm:medfm_resnet10_w16" in (out / "train.log").read_text()
    m = json.loads((out / "metrics.json").read_text())
    # 96 test cases: the summary and metrics say the CI is wide.
    assert any("96 cases" in w for w in m["warnings"])
    assert "warning: the test split has 96 cases" in r.output
    lo, hi = m["distill_gain_auc_ci"]
    assert lo <= m["distill_gain_auc"] <= hi
    assert "paired 95% CI" in r.output and "accuracy" in r.output
    assert "%" in r.output and ("beats the teacher" in r.output) == (m["auc_retention"] > 1)
    assert (out / "splits.csv").is_file()


def test_warnings_name_what_misleads():
    from medfm_compress.compress.adapt import summary_warnings
    from medfm_compress.compress.tasks import distill_task
    from medfm_compress.data.dataset import Split

    class _Task:
        task, num_classes, label_names = "multiclass", 2, ["normal", "lesion"]

    test = Split(np.zeros((120, 8, 8), np.uint8), np.array([0] * 115 + [1] * 5))
    run_warnings = distill_task("multiclass").warnings
    w = run_warnings({"teacher": {"val": {"macro_auc": 0.52, "accuracy": 0.5}}, "student_teacher_agreement": 0.75},
                     _Task, test)
    assert len(w) == 3 and "near chance" in w[0] and "0.750" in w[1] and "lesion (5)" in w[2]
    ok = Split(np.zeros((200, 8, 8), np.uint8), np.array([0, 1] * 100))
    assert run_warnings({"teacher": {"val": {"macro_auc": 0.9}}, "student_teacher_agreement": 0.95}, _Task, ok) == []
    assert summary_warnings({"val": {"macro_auc": 0.55}, "test": {"n": 500}})[0].startswith("the adapted teacher is near")


def test_adapt_cli_errors(tmp_path):
    runner = CliRunner()
    r = runner.invoke(cli, ["adapt", "--teacher", TINY_TEACHER, "--data", TINY_DATA, "--weights-key-map", "order",
                            "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and r.output.strip().splitlines()[-1] == \
        "error: --weights-key-map needs --teacher-weights"
    r = runner.invoke(cli, ["adapt", "--teacher", TINY_TEACHER, "--data", TINY_DATA, "--teacher-weights",
                            str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "y")])
    assert r.exit_code == 1 and "does not exist" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "y").exists() or sorted(p.name for p in (tmp_path / "y").iterdir()) == ["train.error.log"]


def test_finetune_takes_a_budget_in_steps(tmp_path, tiny_run):
    w = tiny_run / "teacher.safetensors"
    res = adapt(_adapt_cfg(tmp_path / "st", TINY_DATA, w, method="finetune", finetune_blocks=1, epochs=None, steps=7,
                           augment=False, batch_size=64))
    assert len(res.metrics["history"]) <= 3  # 192 images at batch 64: 3 steps per epoch, 7 steps -> 3 epochs
    log = (tmp_path / "st" / "train.log").read_text()
    assert "fine-tune budget: at most 192 training images, batch 64: 3 epochs of 3 steps = 9 steps (--steps 7)" in log
    with pytest.raises(ConfigError, match="--steps sets a fine-tune's budget"):
        _adapt_cfg(tmp_path / "l", TINY_DATA, w, epochs=None, steps=7)
    with pytest.raises(ConfigError, match="give one"):
        _adapt_cfg(tmp_path / "b", TINY_DATA, w, method="finetune", steps=7)
