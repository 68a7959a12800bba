"""QuantizeConfig = input + calibration + gate + a typed backend config; flat options (CLI, recipes) map onto it."""

from __future__ import annotations

import json

import pytest

from medfm_compress.compress.quantize import handler_for
from medfm_compress.compress.quantize_config import (
    CalibrationConfig,
    GateConfig,
    ModelOptConfig,
    NNCFConfig,
    OnnxRuntimeConfig,
    QATConfig,
    QuantizeConfig,
)
from medfm_compress.config import config_from_dict
from medfm_compress.errors import ConfigError


def test_flat_options_go_to_the_part_that_declares_them():
    cfg = QuantizeConfig.from_options(input="m.onnx", target="openvino", calib_data="synthetic", num_calib=64,
                                      min_agreement=0.98, calibrator="percentile", per_channel=False, seed=3)
    assert cfg.calibration == CalibrationConfig(calib_data="synthetic", num_calib=64)
    assert cfg.gate == GateConfig(min_agreement=0.98)
    assert cfg.backend == NNCFConfig(calibrator="percentile", per_channel=False)
    assert (cfg.target, cfg.seed, cfg.input) == ("openvino", 3, "m.onnx")
    # The same config written with its parts.
    nested = QuantizeConfig(input="m.onnx", seed=3, calibration=CalibrationConfig(calib_data="synthetic", num_calib=64),
                            gate=GateConfig(min_agreement=0.98),
                            backend=NNCFConfig(calibrator="percentile", per_channel=False))
    assert nested == cfg


def test_the_backend_config_type_selects_the_handler():
    for backend, name in ((OnnxRuntimeConfig(), "cpu"), (NNCFConfig(), "openvino"), (ModelOptConfig(), "tensorrt")):
        cfg = QuantizeConfig(input="m.onnx", backend=backend)
        assert cfg.target == name and handler_for(cfg.backend).config is type(backend)
    assert QuantizeConfig.from_options(input="m.onnx").backend == OnnxRuntimeConfig()


def test_round_trips_through_the_flat_and_the_nested_forms():
    cfg = QuantizeConfig.from_options(input="m.onnx", target="tensorrt", precision="int8", method="qat",
                                      teacher="runs/x/teacher", qat=QATConfig(epochs=2), min_dice=0.9)
    flat = cfg.to_options()
    assert flat["target"] == "tensorrt" and flat["teacher"] == "runs/x/teacher" and flat["min_dice"] == 0.9
    assert "calibrator" not in flat  # an option the backend does not take is not there to be set
    assert QuantizeConfig.from_options(**json.loads(json.dumps(flat))) == cfg
    nested = cfg.to_dict()  # what a manifest records
    assert nested["backend"] == {"latency_runs": 50, "teacher": "runs/x/teacher", "qat": QATConfig(epochs=2).to_dict()}
    assert nested["target"] == "tensorrt" and nested["gate"]["min_dice"] == 0.9
    assert config_from_dict(QuantizeConfig, json.loads(json.dumps(nested))) == cfg


def test_each_part_checks_its_own_options():
    with pytest.raises(ConfigError, match="--num-calib must be >= 1"):
        QuantizeConfig.from_options(input="m.onnx", num_calib=0)
    with pytest.raises(ConfigError, match=r"--min-dice must be in \[0, 1\]"):
        QuantizeConfig.from_options(input="m.onnx", min_dice=1.5)
    with pytest.raises(ConfigError, match="--calibrator must be one of"):
        QuantizeConfig.from_options(input="m.onnx", target="openvino", calibrator="kl")
    with pytest.raises(ConfigError, match="--search-budget has no effect with --no-search"):
        QuantizeConfig.from_options(input="m.onnx", search=False, search_budget=10.0)
    with pytest.raises(ConfigError, match="unknown --target 'tpu'"):
        QuantizeConfig.from_options(input="m.onnx", target="tpu")
    with pytest.raises(ConfigError, match="unknown key 'calibratr' in quantize config; did you mean 'calibrator'"):
        QuantizeConfig.from_options(input="m.onnx", calibratr="minmax")
    with pytest.raises(ConfigError, match="calibrator given beside a whole backend"):
        QuantizeConfig.from_options(input="m.onnx", backend=OnnxRuntimeConfig(), calibrator="entropy")


def test_pinned_options_and_search_candidates_stay_in_the_backend():
    cfg = QuantizeConfig.from_options(input="m.onnx", calibrator="entropy", pinned=("per_channel",))
    assert cfg.backend.pinned_options() == {"calibrator", "per_channel"}
    tried = cfg.with_backend(calibrator="minmax", reduce_range=False)
    assert tried.backend.calibrator == "minmax" and not tried.backend.reduce_range
    assert (tried.calibration, tried.gate, tried.input) == (cfg.calibration, cfg.gate, cfg.input)
    # NNCF has no percentile: its pinned options are only those it has.
    assert QuantizeConfig.from_options(input="m.onnx", target="openvino").backend.pinned_options() == frozenset()
    with pytest.raises(ConfigError, match="pinned names .*percentile.*which --target openvino does not take"):
        NNCFConfig(pinned=("percentile",))
