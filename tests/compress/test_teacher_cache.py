"""The teacher is paid once: outputs per training image and view, memory-mapped, resumable, shared between runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from support.tiny import TINY_DATA, TINY_STUDENT, TINY_TEACHER

from medfm_compress.compress.distill import DistillConfig, distill
from medfm_compress.compress.teacher_cache import TeacherOutputCache, training_views, view_inputs
from medfm_compress.errors import ConfigError


def _outputs(view, idx):
    idx = np.asarray(idx)
    emb = np.stack([np.full(4, 10.0 * view + i, np.float32) for i in idx])
    return torch.from_numpy(emb[:, :2].copy()), torch.from_numpy(emb)


def test_each_output_is_computed_once_and_read_back(tmp_path):
    calls = []

    def compute(view, idx):
        calls.append((view, list(idx)))
        return _outputs(view, idx)

    cache = TeacherOutputCache(tmp_path, {"teacher": "t", "inputs": "x"}, n=10, views=3)
    cache.fill(compute, batch_size=4, log=lambda s: None, progress=False)
    # One probe to size the arrays, then each (view, image) once.
    done = [(v, i) for v, idx in calls[1:] for i in idx]
    assert sorted(done) == [(v, i) for v in range(3) for i in range(10)] and cache.computed == 30
    logits, emb = cache.get(2, [7, 1])
    assert emb[:, 0].tolist() == [27.0, 21.0] and logits.shape == (2, 2)
    calls.clear()
    again = TeacherOutputCache(tmp_path, {"teacher": "t", "inputs": "x"}, n=10, views=3)
    again.fill(compute, batch_size=4, log=lambda s: None, progress=False)
    assert calls == [] and again.computed == 0
    assert torch.equal(again.get(2, [7, 1])[1], emb)
    # Another teacher (or other inputs, views) is another cache.
    other = TeacherOutputCache(tmp_path, {"teacher": "u", "inputs": "x"}, n=10, views=3)
    assert other.path != cache.path


def test_an_interrupted_fill_resumes_where_it_stopped(tmp_path):
    seen = []

    def failing(view, idx):
        if len(seen) == 3:
            raise KeyboardInterrupt
        seen.append(list(idx))
        return _outputs(view, idx)

    key = {"teacher": "t"}
    cache = TeacherOutputCache(tmp_path, key, n=12, views=2)
    with pytest.raises(KeyboardInterrupt):
        cache.fill(failing, batch_size=4, log=lambda s: None, progress=False)
    with pytest.raises(RuntimeError, match="before they were computed"):
        cache.get(1, [0])
    rest = []

    def compute(view, idx):
        rest.append((view, list(idx)))
        return _outputs(view, idx)

    resumed = TeacherOutputCache(tmp_path, key, n=12, views=2)
    resumed.fill(compute, batch_size=4, log=lambda s: None, progress=False)
    # The two blocks written before the interruption (after the sizing probe) are not computed again.
    assert resumed.computed == 24 - 8 and [v for v, _ in rest] == [0, 1, 1, 1]
    assert resumed.get(1, [11])[1][0, 0].item() == 21.0


def test_views_are_the_student_s_inputs_of_each_epoch():
    cfg = DistillConfig.from_options(augment=True, epochs=6)
    assert training_views(cfg) == 6
    assert training_views(cfg.replace_options(teacher_views=2)) == 2
    assert training_views(cfg.replace_options(augment=False)) == 1
    x = torch.rand(5, 1, 16, 16)
    idx = np.arange(5)
    # A view is a pure function of (seed, view, image index): the same images in any batch give the same inputs.
    a = view_inputs(x, idx, 1, True, seed=3)
    b = view_inputs(x[[4, 2]], idx[[4, 2]], 1, True, seed=3)
    assert torch.allclose(a[[4, 2]], b, atol=1e-6) and not torch.allclose(a, x)
    assert view_inputs(x, idx, 1, False, seed=3) is x
    with pytest.raises(ConfigError, match="--teacher-views counts augmented views"):
        DistillConfig.from_options(teacher_views=2, augment=False)


def test_two_runs_pay_the_teacher_once(tmp_path):
    base = dict(data=TINY_DATA, teacher=TINY_TEACHER, student=TINY_STUDENT, teacher_epochs=1, epochs=3,
                batch_size=32, augment=True, teacher_views=2, cache=str(tmp_path / "cache"), progress=False)
    distill(DistillConfig.from_options(out=str(tmp_path / "a"), **base))
    log_a = (tmp_path / "a" / "train.log").read_text()
    assert "computing 384 of 2 view(s) x 192 images" in log_a
    # Another student, the same teacher and training inputs: every teacher output is read back.
    distill(DistillConfig.from_options(out=str(tmp_path / "b"), **{**base, "lr": 1e-3}))
    log_b = (tmp_path / "b" / "train.log").read_text()
    assert "all 2 view(s) x 192 images read from" in log_b and "computing" not in log_b
    rec = json.loads((tmp_path / "b" / "manifest.json").read_text())["stages"][-1]
    assert rec["config"]["teacher"]["views"] == 2


class _FakeTeacher:
    """bf16 answers faster; ``drift`` says how far its outputs move from fp32's."""

    def __init__(self, drift):
        self.drift = drift

    def outputs(self, x, student_pre, batch_size=128, precision="fp32"):
        import time as _time

        _time.sleep(0.002 * len(x) * (1.0 if precision == "fp32" else 0.25))
        emb = x.flatten(1)[:, :8] + 1.0
        if precision == "bf16":
            emb = emb + self.drift * torch.randn_like(emb)
        return emb[:, :3], emb


def test_the_fill_takes_bf16_only_where_it_stays_faithful(monkeypatch):
    from medfm_compress import _env
    from medfm_compress.compress.teacher_cache import MIN_FILL_COSINE, choose_precision

    probe = torch.rand(8, 1, 4, 4)
    monkeypatch.setattr(_env, "cpu_has_native_bf16", lambda: False)
    assert choose_precision(_FakeTeacher(0.0), probe, None, log=lambda s: None) == {"precision": "fp32"}
    monkeypatch.setattr(_env, "cpu_has_native_bf16", lambda: True)
    lines = []
    faithful = choose_precision(_FakeTeacher(1e-4), probe, None, log=lines.append, openvino=False)
    assert faithful["precision"] == "bf16" and faithful["min_cosine"] >= MIN_FILL_COSINE
    assert faithful["ms_per_image"] < faithful["fp32_ms_per_image"] and "filling in bf16" in lines[0]
    drifting = choose_precision(_FakeTeacher(1.0), probe, None, log=lambda s: None, openvino=False)
    assert drifting["precision"] == "fp32"


def test_the_openvino_engine_answers_as_the_torch_teacher():
    from medfm_compress import _env

    pytest.importorskip("openvino")
    if not _env.cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16 (AVX512-BF16 / AMX): the OpenVINO bf16 engine is not a candidate")
    from medfm_compress.compress.taskprep import FrozenTeacher
    from medfm_compress.compress.teacher_cache import _OpenVINOTeacher
    from medfm_compress.models.card import ModelCard
    from medfm_compress.models.factory import create_model
    from medfm_compress.runtime.preprocess import PreprocessSpec

    torch.manual_seed(0)
    pre = PreprocessSpec(input_size=(32, 32), channels=1, mean=(0.5,), std=(0.25,))
    model = create_model(TINY_TEACHER, 4, 1, 32).eval()
    teacher = FrozenTeacher(model, ModelCard(arch=TINY_TEACHER, num_classes=4, in_chans=1, task="multiclass",
                                             label_names=["a", "b", "c", "d"], preprocess=pre), "test")
    x = torch.randn(6, 1, 32, 32)
    ref_logits, ref_emb = teacher.outputs(x, pre)
    logits, emb = _OpenVINOTeacher(teacher, x[:1]).outputs(x, pre, batch_size=4)
    cos = torch.nn.functional.cosine_similarity
    assert logits.shape == ref_logits.shape and emb.shape == ref_emb.shape
    assert cos(logits, ref_logits).min() > 0.99 and cos(emb, ref_emb).min() > 0.99


def test_one_output_per_image_is_judged_by_its_relative_error():
    from medfm_compress.compress.teacher_cache import MIN_FILL_COSINE, _fidelity

    ref = torch.tensor([[10.0], [20.0], [30.0]])
    # A cosine of single values is only their sign: a 10% error must still fail.
    assert _fidelity(ref * 1.1, ref) < MIN_FILL_COSINE
    assert _fidelity(ref + 1e-3, ref) > MIN_FILL_COSINE
    assert _fidelity(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])) == pytest.approx(0.0)
