"""Choices made by name go through registries: export formats, quantize targets (with the options each honours),
pipeline stages; recipe variants for every target run."""

from __future__ import annotations

import dataclasses

import pytest
from click.testing import CliRunner
from support.tiny import TINY_DATA as TINY

from medfm_compress.cli import cli
from medfm_compress.compress.quantize import (
    BackendConfig,
    ModelOptConfig,
    NNCFConfig,
    OnnxRuntimeConfig,
    QuantizeConfig,
    available_targets,
    handler_for,
    register_target,
)
from medfm_compress.compress.quantize_config import backend_config, backend_config_classes
from medfm_compress.errors import ConfigError
from medfm_compress.export.formats import ExportRequest, available_formats, export_artifact, register_format
from medfm_compress.pipeline import STAGE_RUNNERS, STAGES, resolve_recipe, run_pipeline


def test_every_backend_config_has_one_handler_found_by_its_type():
    targets = available_targets()
    assert {"cpu", "openvino", "tensorrt"} <= set(targets)
    classes = backend_config_classes()
    assert set(classes) == set(targets)
    for name, target in targets.items():
        assert target.config is classes[name]
        assert handler_for(classes[name]()) is target
    assert (classes["cpu"], classes["openvino"], classes["tensorrt"]) == (OnnxRuntimeConfig, NNCFConfig, ModelOptConfig)
    assert targets["openvino"].suffix == ".xml" and targets["cpu"].suffix == ".onnx"
    # Every flat option has one home: the top level, a common part, or backend configs (shared fields by inheritance).
    names = QuantizeConfig.option_names()
    assert len(names) == len(set(names)) and {"calibrator", "min_dice", "num_calib", "teacher", "target"} <= set(names)


@pytest.mark.parametrize("target, option, value", [
    ("tensorrt", "calibrator", "entropy"), ("tensorrt", "per_channel", False), ("tensorrt", "fp16_io", True),
    ("tensorrt", "auto_exclude", True), ("tensorrt", "exclude_nodes", ("a",)), ("openvino", "num_bins", 512),
    ("openvino", "percentile", 99.0), ("cpu", "teacher", "runs/x/teacher"),
])
def test_a_target_refuses_an_option_it_would_ignore(target, option, value):
    with pytest.raises(ConfigError, match=rf"--target {target} does not use {option} "):
        QuantizeConfig.from_options(input="m.onnx", target=target, **{option: value})
    # Without it the same target is fine, and the option's backend takes it.
    assert QuantizeConfig.from_options(input="m.onnx", target=target).target == target
    owner = next(n for n, c in backend_config_classes().items() if option in {f.name for f in dataclasses.fields(c)})
    assert getattr(QuantizeConfig.from_options(input="m.onnx", target=owner, **{option: value}).backend, option) == value


def test_quantize_cli_refuses_an_ignored_option_in_one_line(tmp_path):
    res = CliRunner().invoke(cli, ["quantize", str(tmp_path / "m.onnx"), "--target", "tensorrt", "--calibrator",
                                   "entropy", "--calib-data", TINY])
    assert res.exit_code == 1
    assert "--target tensorrt does not use calibrator ('entropy')" in res.output
    assert not list(tmp_path.iterdir())


def test_registering_twice_is_an_error():
    with pytest.raises(ValueError, match="already registered"):
        register_target(OnnxRuntimeConfig, precisions=("int8",))(lambda ctx: None)
    with pytest.raises(ValueError, match="already registered"):
        backend_config("cpu")(OnnxRuntimeConfig)
    with pytest.raises(ValueError, match="already registered"):
        register_format("onnx", options=())(lambda req: None)
    with pytest.raises(ValueError, match="unknown options"):
        register_format("x-new", options=("no_such_field",))

    @dataclasses.dataclass(frozen=True)
    class Unregistered(BackendConfig):
        pass

    with pytest.raises(ValueError, match="not a registered backend config"):
        register_target(Unregistered, precisions=("int8",))
    with pytest.raises(ConfigError, match="not a registered backend config"):
        QuantizeConfig(input="m.onnx", backend=Unregistered())


def test_export_formats_refuse_options_they_ignore(tmp_path):
    assert {"onnx", "openvino", "tensorrt"} <= set(available_formats())
    with pytest.raises(ConfigError, match=r"--precision do\(es\) not apply to --format onnx"):
        export_artifact("onnx", ExportRequest(source=str(tmp_path), precision="fp16"))
    with pytest.raises(ConfigError, match=r"--opset, --atol do\(es\) not apply to --format tensorrt"):
        export_artifact("tensorrt", ExportRequest(source=str(tmp_path), opset=18, atol=1e-3))
    with pytest.raises(ConfigError, match="unknown export format 'pdf'"):
        export_artifact("pdf", ExportRequest(source=str(tmp_path)))
    res = CliRunner().invoke(cli, ["export", str(tmp_path), "--format", "openvino", "--batch-sizes", "1,8"])
    assert res.exit_code == 1 and "--batch-sizes do(es) not apply to --format openvino" in res.output


def test_pipeline_stages_are_a_table(tmp_path):
    """Each registered stage plans its own units of work; the plan is theirs, in the registry's order."""
    from medfm_compress import pipeline
    from medfm_compress.layout import RunLayout

    assert tuple(STAGE_RUNNERS) == STAGES
    recipe = pipeline.load_recipe("demo")
    plan = pipeline._plan(recipe, tmp_path)
    assert [s.kind for s in plan] == sorted((s.kind for s in plan), key=STAGES.index)
    assert {s.kind for s in plan} == set(STAGES)
    for stage in pipeline._STAGES:
        assert all(s.kind == stage.kind for s in stage.plan(recipe, RunLayout(tmp_path)))
    assert plan[-1].reads[:2] == [RunLayout(tmp_path).weights("teacher"), RunLayout(tmp_path).onnx]


def test_recipe_refuses_a_variant_its_target_cannot_run_before_any_stage(tmp_path):
    base = {"out": str(tmp_path / "r"), "data": TINY}
    with pytest.raises(ConfigError, match=r"quantize\[0\] \('t'\): --target tensorrt does not use calibrator"):
        resolve_recipe({**base, "quantize": [{"name": "t", "target": "tensorrt", "precision": "int8",
                                              "calibrator": "entropy"}]})
    with pytest.raises(ConfigError, match="--target openvino supports --precision"):
        resolve_recipe({**base, "quantize": [{"name": "o", "target": "openvino", "precision": "int8-dynamic"}]})
    with pytest.raises(ConfigError, match="an OpenVINO IR; TensorRT builds from ONNX"):
        resolve_recipe({**base, "quantize": [{"name": "o", "target": "openvino", "precision": "int8"}],
                        "tensorrt": [{"name": "e", "source": "o", "precision": "int8"}]})
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_recipe_runs_openvino_and_tensorrt_variants(tmp_path):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    pytest.importorskip("modelopt")
    raw = {
        "version": 1, "name": "targets", "out": str(tmp_path / "run"), "data": TINY,
        "distill": {"teacher": "timm:medfm_resnet10_w16", "student": "timm:medfm_resnet10_w16",
                    "teacher_epochs": 1, "epochs": 1, "batch_size": 32, "augment": False},
        "export": {"num_check": 8},
        "quantize": [
            {"name": "ov", "target": "openvino", "precision": "int8", "num_calib": 32, "num_holdout": 32, "allow_small_holdout": True,
             "min_agreement": 0.0},
            {"name": "trt8", "target": "tensorrt", "precision": "int8", "num_calib": 32, "num_holdout": 32, "allow_small_holdout": True,
             "min_agreement": 0.0},
        ],
        "bench": {"reference": "teacher", "iterations": 5, "warmup": 1, "n_resamples": 100},
    }
    res = run_pipeline(resolve_recipe(raw), progress=False)
    assert res.ran == ["distill", "export", "quantize:ov", "quantize:trt8", "bench"]
    run = tmp_path / "run"
    assert (run / "student.ov.xml").is_file() and (run / "student.ov.bin").is_file()
    assert (run / "student.trt8.onnx").is_file()
    names = {a["name"]: a for a in res.report["artifacts"]}
    assert names["student-ov"]["backend"] == "openvino"
    assert "student-trt8" not in names  # TensorRT QDQ models are benched as engines, on GPUs
    again = run_pipeline(resolve_recipe(raw), progress=False)
    assert again.ran == [] and "quantize:ov" in again.cached
