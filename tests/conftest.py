"""Shared fixtures; the one place that skips slow/gpu/trt tests, with the reason."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.tiny import TINY_DATA, TINY_STUDENT, TINY_TEACHER


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False, help="run tests marked slow")


def _gpu_reason() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return "no NVIDIA GPU on this machine (nvidia-smi not found)"
    try:
        import torch

        if not torch.cuda.is_available():
            return "torch reports no usable CUDA device"
    except ImportError:
        return "torch is not installed"
    return None


def _trt_reason() -> str | None:
    reason = _gpu_reason()
    if reason:
        return reason
    import importlib.util

    if not (importlib.util.find_spec("tensorrt") or importlib.util.find_spec("tensorrt_rtx")):
        return "TensorRT is not installed (pip install 'medfm-compress[trt]')"
    return None


def pytest_collection_modifyitems(config, items):
    slow = None if config.getoption("--run-slow") else "slow test: run with --run-slow"
    gpu = _gpu_reason() if any("gpu" in i.keywords for i in items) else None
    trt = _trt_reason() if any("trt" in i.keywords for i in items) else None
    for item in items:
        if "slow" in item.keywords and slow:
            item.add_marker(pytest.mark.skip(reason=slow))
        if "gpu" in item.keywords and gpu:
            item.add_marker(pytest.mark.skip(reason=gpu))
        if "trt" in item.keywords and trt:
            item.add_marker(pytest.mark.skip(reason=trt))


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Generated data and trained default teachers go to a per-session cache, never the user's."""
    path = tmp_path_factory.mktemp("medfm-cache")
    old = os.environ.get("MEDFM_CACHE_DIR")
    os.environ["MEDFM_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("MEDFM_CACHE_DIR", None)
    else:
        os.environ["MEDFM_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def tiny_data() -> str:
    return TINY_DATA


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A finished distillation run directory on the tiny task (teacher, student, baseline)."""
    from medfm_compress.compress.distill import DistillConfig, distill

    out = tmp_path_factory.mktemp("tiny-run")
    cfg = DistillConfig.from_options(
        data=TINY_DATA, out=str(out), teacher=TINY_TEACHER, student=TINY_STUDENT, teacher_epochs=1, epochs=1,
        batch_size=32, baseline=True, progress=False,
    )
    distill(cfg)
    return out


@pytest.fixture(scope="session")
def reg_run(tmp_path_factory):
    """A finished regression run on the tiny regression task (teacher, student, baseline at half the values) with the
    student exported to ``student.onnx``."""
    from support.tiny import TINY_REG_DATA

    from medfm_compress.compress.distill import DistillConfig, distill
    from medfm_compress.export.onnx import ExportConfig, export_onnx

    out = tmp_path_factory.mktemp("reg-run")
    distill(DistillConfig.from_options(data=TINY_REG_DATA, out=str(out), teacher=TINY_TEACHER, teacher_epochs=2, student=TINY_STUDENT,
                          epochs=2, batch_size=32, label_fraction=0.5, baseline=True, progress=False))
    export_onnx(ExportConfig(source=str(out), out=str(out / "student.onnx"), num_check=16))
    return out


@pytest.fixture(scope="session")
def seg_run(tmp_path_factory):
    """A finished segmentation run on the tiny segmentation task (dense teacher, student, baseline at a quarter of
    the masks) with the student exported to ``student.onnx``."""
    pytest.importorskip("segmentation_models_pytorch")
    pytest.importorskip("monai")
    from support.tiny import TINY_SEG_DATA, TINY_SEG_STUDENT, TINY_SEG_TEACHER

    from medfm_compress.compress.distill import DistillConfig, distill
    from medfm_compress.export.onnx import ExportConfig, export_onnx

    out = tmp_path_factory.mktemp("seg-run")
    distill(DistillConfig.from_options(data=TINY_SEG_DATA, out=str(out), teacher=TINY_SEG_TEACHER, teacher_epochs=2,
                          student=TINY_SEG_STUDENT, epochs=3, batch_size=16, label_fraction=0.25, baseline=True,
                          augment=False, progress=False))
    export_onnx(ExportConfig(source=str(out), out=str(out / "student.onnx"), num_check=16))
    return out


@pytest.fixture(scope="session")
def gray_onnx(tmp_path_factory):
    """A 32x32 one-channel binary model (random weights) as ONNX with medfm metadata."""
    import torch

    from medfm_compress.data import PreprocessSpec
    from medfm_compress.export.onnx_build import export_model_to_onnx
    from medfm_compress.models import create_model
    from medfm_compress.runtime.metadata import ModelMeta

    torch.manual_seed(0)
    model = create_model("timm:medfm_resnet10_w16", 2, 1, 32).eval()
    meta = ModelMeta(
        PreprocessSpec((32, 32), 1, (0.5,), (0.25,)), "binary", ["a", "b"], "timm:medfm_resnet10_w16"
    )
    return export_model_to_onnx(
        model, meta, tmp_path_factory.mktemp("m") / "gray.onnx", torch.zeros(1, 1, 32, 32)
    )


REPO = Path(__file__).resolve().parents[1]


def _missing_toolchain() -> str | None:
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            return f"{tool} not found; the C++ runtime needs cmake and a C++17 compiler (apt-get install cmake g++)"
    return None


@pytest.fixture(scope="session")
def cpp_build() -> Path:
    """Configure and build the C++ runtime (csrc/) once per session (Release) into ``build/cpp-pytest``, under a
    lock so that concurrent pytest sessions do not build into each other; returns the build directory."""
    reason = _missing_toolchain()
    if reason:
        pytest.skip(reason)
    build = REPO / "build" / "cpp-pytest"
    build.parent.mkdir(parents=True, exist_ok=True)
    with open(REPO / "build" / ".cpp-pytest.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = subprocess.run(
            ["bash", str(REPO / "scripts" / "build_cpp_runtime.sh"), str(build)],
            env={**os.environ, "PYTHON": sys.executable, "JOBS": "2"},
            capture_output=True,
            text=True,
            timeout=600,
        )
    if proc.returncode != 0:
        pytest.fail(f"C++ runtime build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return build
