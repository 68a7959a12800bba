"""DistillConfig = data and run settings + typed parts (teacher, student, loss, loop); the flat options of the
command line and recipes map onto them."""

from __future__ import annotations

import json

import pytest

from medfm_compress.compress.distill import (
    DistillConfig,
    DistillLoopConfig,
    LossConfig,
    StudentConfig,
    TeacherConfig,
)
from medfm_compress.config import config_from_dict
from medfm_compress.errors import ConfigError


def test_flat_options_go_to_their_part_under_the_part_s_own_names():
    cfg = DistillConfig.from_options(data="synthetic", teacher="timm:resnet18", teacher_weights="t.safetensors",
                                     weights_key_map="order", teacher_batch_size=8, student="timm:resnet10t",
                                     student_weights="s.safetensors", losses=("kd", "feat"), temperature=2.0,
                                     epochs=3, lr=1e-3, head_epochs=5, seed=7)
    assert cfg.teacher == TeacherConfig(spec="timm:resnet18", weights="t.safetensors", weights_key_map="order",
                                        batch_size=8)
    assert cfg.student == StudentConfig(spec="timm:resnet10t", weights="s.safetensors")
    assert cfg.loss == LossConfig(losses=("kd", "feat"), temperature=2.0)
    assert cfg.loop == DistillLoopConfig(epochs=3, lr=1e-3, head_epochs=5)
    assert cfg == DistillConfig(data="synthetic", seed=7, teacher=cfg.teacher, student=cfg.student, loss=cfg.loss,
                                loop=cfg.loop)
    assert cfg.get_option("teacher_weights") == "t.safetensors" and cfg.get_option("epochs") == 3
    assert cfg.get_option("teacher_batch_size") == 8 and cfg.get_option("seed") == 7


def test_round_trips_and_the_manifest_records_the_typed_form():
    cfg = DistillConfig.from_options(data="synthetic", teacher_epochs=2, student="timm:resnet10t", epochs=1)
    flat = json.loads(json.dumps(cfg.to_options()))
    assert flat["teacher"] is None and flat["teacher_epochs"] == 2 and flat["student"] == "timm:resnet10t"
    assert DistillConfig.from_options(**flat) == cfg
    nested = json.loads(json.dumps(cfg.to_dict()))
    assert nested["teacher"]["epochs"] == 2 and nested["loop"]["epochs"] == 1 and "teacher_epochs" not in nested
    assert config_from_dict(DistillConfig, nested) == cfg
    assert cfg.replace_options(lr=5e-4).loop == DistillLoopConfig(epochs=1, lr=5e-4)


def test_options_the_command_line_shows_come_from_the_parts():
    import typing

    assert DistillConfig.option_default("teacher_adapt") is None and DistillConfig.option_default("head_epochs") == 30
    assert typing.get_args(DistillConfig.option_type("feat_loss")) == ("cosine", "mse")
    assert typing.get_args(DistillConfig.option_type("weights_key_map")) == ("name", "order")
    import dataclasses

    from medfm_compress.config import option_name

    # No flat option is declared by two parts (or a part and the top level).
    declared = [f.name for f in dataclasses.fields(DistillConfig) if f.name not in ("teacher", "student", "loss", "loop")]
    for part in (TeacherConfig, StudentConfig, LossConfig, DistillLoopConfig):
        declared += [option_name(f) for f in dataclasses.fields(part)]
    assert len(declared) == len(set(declared))
    names = DistillConfig.option_names()
    assert set(names) == set(declared) | {"loss", "loop"}
    assert {"teacher", "teacher_weights", "student", "losses", "epochs", "head_epochs", "data", "seed"} <= set(names)


def test_each_part_checks_its_own_options_and_the_config_what_spans_them():
    with pytest.raises(ConfigError, match="--teacher-weights needs --teacher"):
        DistillConfig.from_options(teacher_weights="w.safetensors")
    with pytest.raises(ConfigError, match="--student-weights needs --student"):
        DistillConfig.from_options(student_weights="w.safetensors")
    with pytest.raises(ConfigError, match="--teacher-epochs must be >= 1"):
        DistillConfig.from_options(teacher_epochs=0)
    with pytest.raises(ConfigError, match="unknown loss"):
        DistillConfig.from_options(losses=("kl",))
    with pytest.raises(ConfigError, match="lr must be > 0"):
        DistillConfig.from_options(lr=0.0)
    with pytest.raises(ConfigError, match="drop 'ce' from --loss"):
        DistillConfig.from_options(labels="none", losses=("kd", "ce"))
    with pytest.raises(ConfigError, match="no --teacher given for real data"):
        DistillConfig.from_options(data="folder:/tmp/x")
    with pytest.raises(ConfigError, match="unknown key 'teacher_weight' in distill config; did you mean 'teacher_weights'"):
        DistillConfig.from_options(teacher_weight="w")


def test_a_teacher_s_own_normalisation_is_checked_and_recorded(tmp_path):
    from support.tiny import TINY_DATA, TINY_STUDENT, TINY_TEACHER

    from medfm_compress.compress.adapt import AdaptConfig, teacher_preprocess
    from medfm_compress.compress.distill import distill
    from medfm_compress.data import load_data
    from medfm_compress.models import create_model, save_state_dict
    from medfm_compress.models.card import ModelCard

    with pytest.raises(ConfigError, match="--teacher-mean and --teacher-std go together"):
        DistillConfig.from_options(teacher="timm:resnet18", teacher_mean=(0.5,))
    with pytest.raises(ConfigError, match="--teacher-std must be > 0"):
        AdaptConfig(teacher="timm:resnet18", teacher_mean=(0.5,), teacher_std=(0.0,))
    task = load_data(TINY_DATA)
    model = create_model(TINY_TEACHER, 4, 3)
    pre = teacher_preprocess(model, task, 3, 32, None, pretrained=True, mean=(0.4,), std=(0.2,))
    assert pre.mean == (0.4, 0.4, 0.4) and pre.std == (0.2, 0.2, 0.2) and pre.channels == 3
    with pytest.raises(ConfigError, match="give one value or one per channel"):
        teacher_preprocess(model, task, 3, 32, None, pretrained=True, mean=(0.4, 0.5), std=(0.2, 0.2))
    # Adapted inline from a weight file: the teacher's card records the normalisation it was run with.
    save_state_dict(create_model(TINY_TEACHER, 10, 1), tmp_path / "t.safetensors")
    base = dict(data=TINY_DATA, teacher=TINY_TEACHER, teacher_weights=str(tmp_path / "t.safetensors"),
                teacher_adapt="linear", student=TINY_STUDENT, epochs=1, batch_size=32, progress=False)
    distill(DistillConfig.from_options(out=str(tmp_path / "run"), teacher_mean=(0.3,), teacher_std=(0.7,), **base))
    card = ModelCard.load(tmp_path / "run" / "teacher.json")
    assert card.preprocess.mean == (0.3,) and card.preprocess.std == (0.7,)
    # A teacher on disk carries its own: refused in one line.
    with pytest.raises(ConfigError, match="the run teacher .* carries its own normalisation"):
        distill(DistillConfig.from_options(data=TINY_DATA, out=str(tmp_path / "r2"), teacher=str(tmp_path / "run" / "teacher"),
                                           teacher_mean=(0.3,), teacher_std=(0.7,), progress=False))


def test_flat_errors_name_the_option_and_a_changed_target_gets_its_own_defaults():
    from medfm_compress.compress.quantize_config import NNCFConfig, OnnxRuntimeConfig, QuantizeConfig

    with pytest.raises(ConfigError, match=r"^distill config\.teacher_epochs must be an integer"):
        DistillConfig.from_options(teacher_epochs="x")
    with pytest.raises(ConfigError, match=r"^teacher_epochs must be an integer"):
        DistillConfig.from_options("", teacher_epochs="x")
    cfg = QuantizeConfig.from_options(input="m.onnx", calibrator="percentile", min_agreement=0.95)
    moved = cfg.replace_options(target="openvino")
    assert moved.backend == NNCFConfig(calibrator="percentile") and moved.gate.min_agreement == 0.95
    with pytest.raises(ConfigError, match="--target openvino takes a NNCFConfig, not the OnnxRuntimeConfig"):
        QuantizeConfig.from_options(input="m.onnx", target="openvino", backend=OnnxRuntimeConfig())


def test_segmentation_refuses_the_teacher_output_cache_options(tmp_path):
    from support.tiny import TINY_SEG_DATA, TINY_SEG_STUDENT, TINY_SEG_TEACHER

    from medfm_compress.compress.distill import distill

    with pytest.raises(ConfigError, match="--teacher-views applies to the teacher-output cache"):
        distill(DistillConfig.from_options(data=TINY_SEG_DATA, teacher=TINY_SEG_TEACHER, teacher_epochs=1,
                                           student=TINY_SEG_STUDENT, teacher_views=2, out=str(tmp_path / "r"),
                                           progress=False))
