"""TensorRT runtime backend: CPU-side refusals here; execution tests need a GPU (marked gpu/trt)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip(
    "tensorrt_rtx", reason="TensorRT-RTX is not installed (pip install 'medfm-compress[trt]')"
)

from medfm_compress.errors import DataError, ModelError  # noqa: E402
from medfm_compress.runtime.base import Engine, backend_for_path  # noqa: E402


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(engine path, onnx path, preprocessed inputs) for a tiny student, batch profile 1..8."""
    import torch

    from medfm_compress.export.onnx_build import export_model_to_onnx
    from medfm_compress.export.tensorrt import TensorRTConfig, build_engine
    from medfm_compress.models import create_model
    from medfm_compress.runtime.metadata import ModelMeta
    from medfm_compress.runtime.preprocess import PreprocessSpec

    d = tmp_path_factory.mktemp("trt-rt")
    torch.manual_seed(0)
    m = create_model("timm:medfm_resnet10_w16", 4, 3, 32).eval()
    meta = ModelMeta(
        PreprocessSpec(input_size=(32, 32), channels=3, mean=(0.5,) * 3, std=(0.25,) * 3),
        "multiclass",
        list("abcd"),
        "timm:medfm_resnet10_w16",
    )
    x = np.random.default_rng(0).normal(size=(16, 3, 32, 32)).astype(np.float32)
    onnx_path = export_model_to_onnx(m, meta, d / "m.onnx", torch.from_numpy(x[:1]))
    # "current" targets the GPU that builds it where one exists; the portable default otherwise.
    targets = ("current",) if torch.cuda.is_available() else None
    eng = build_engine(
        TensorRTConfig(str(onnx_path), str(d / "m.engine"), batch_sizes=(1, 4, 8), targets=targets),
        progress=False,
    ).path
    return eng, onnx_path, x


def test_engine_suffixes_pick_the_tensorrt_backend(tmp_path):
    assert backend_for_path(tmp_path / "a.engine") == "tensorrt"
    assert backend_for_path(tmp_path / "a.plan") == "tensorrt"


def test_no_gpu_is_one_clear_line(built):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ModelError, match="no usable CUDA GPU") as ei:
        Engine.load(built[0])
    assert "\n" not in str(ei.value)


def test_unknown_option_is_refused(built):
    from medfm_compress.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown tensorrt option"):
        Engine.load(built[0], cuda_graph=True)  # the option is cuda_graphs, as for torch


def _ort_logits(onnx_path, x):
    with Engine.load(onnx_path) as eng:
        return eng.run(x)


@pytest.mark.gpu
@pytest.mark.trt
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_engine_matches_onnxruntime_on_gpu(built, cuda_graphs):
    from medfm_compress.metrics import cosine_similarity, top1_agreement

    eng_path, onnx_path, x = built
    ref = _ort_logits(onnx_path, x[:8])
    with Engine.load(eng_path, cuda_graphs=cuda_graphs) as eng:
        assert eng.info["backend"] == "tensorrt" and eng.info["batch_range"] == [1, 8]
        for n in (1, 4, 8, 3):  # dynamic batch within the profile, repeated shapes reuse graphs
            got = eng.run(x[:n])
            assert got.shape == (n, 4)
            assert cosine_similarity(ref[:n], got) > 0.999
            assert top1_agreement(ref[:n], got) == 1.0


@pytest.mark.gpu
@pytest.mark.trt
def test_batch_outside_profile_is_one_line(built):
    eng_path, _, x = built
    with Engine.load(eng_path) as eng:
        with pytest.raises(DataError, match=r"batch sizes 1\.\.8 .* got 16"):
            eng.run(x[:16])


@pytest.mark.gpu
def test_onnxruntime_tensorrt_execution_provider(built):
    import onnxruntime as ort

    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime build has no TensorRT execution provider (install onnxruntime-gpu)")
    _, onnx_path, x = built
    ref = _ort_logits(onnx_path, x[:4])
    with Engine.load(onnx_path, backend="onnxruntime", device="tensorrt") as eng:
        got = eng.run(x[:4])
    assert np.abs(ref - got).max() < 1e-2
