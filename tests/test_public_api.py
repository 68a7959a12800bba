"""The public Python API: the names documented at the package's top level resolve to the stage functions and
config classes, lazily (importing the package stays light, see test_lean_import.py)."""

import subprocess
import sys

import pytest

import medfm_compress


@pytest.mark.parametrize("name", [n for n in medfm_compress.__all__ if n != "__version__"])
def test_each_public_name_is_the_object_its_module_defines(name):
    import importlib

    obj = getattr(medfm_compress, name)
    assert obj is getattr(importlib.import_module(medfm_compress._PUBLIC[name]), name)
    assert name in dir(medfm_compress)


def test_the_documented_stages_are_there():
    from medfm_compress.compress.distill import distill
    from medfm_compress.runtime import Engine

    assert medfm_compress.distill is distill and medfm_compress.Engine is Engine
    assert {"distill", "quantize", "export_onnx", "run_bench", "predict", "Engine", "DistillConfig",
            "QuantizeConfig", "ExportConfig", "BenchConfig", "PredictConfig"} <= set(medfm_compress.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        medfm_compress.nope  # noqa: B018


def test_touching_predict_does_not_import_torch():
    code = ("import sys, medfm_compress; medfm_compress.predict; medfm_compress.Engine; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
