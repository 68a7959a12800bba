"""The runtime Engine: torch and ONNX Runtime backends on the tiny run, input checks, backend registry."""

from __future__ import annotations

import numpy as np
import pytest
from support.tiny import TINY_DATA

from medfm_compress.errors import BackendMissingError, ConfigError, DataError, ModelError
from medfm_compress.runtime import Engine, available_backends, backend_for_path, get_backend, register_backend
from medfm_compress.runtime.base import require_module


@pytest.fixture(scope="module")
def test_images():
    from medfm_compress.data import load_data

    return load_data(TINY_DATA).split("test").images[:12]


def export_onnx(run_dir, dest, name="student", fixed_batch=None):
    """The tiny run's model as ONNX with medfm metadata (export/onnx.py), optionally with a static batch."""
    import onnx
    import torch

    from medfm_compress.export.onnx_build import export_model_to_onnx
    from medfm_compress.models import load_model
    from medfm_compress.runtime.metadata import ModelMeta

    model, card = load_model(run_dir, name=name)
    example = torch.zeros(2, card.in_chans, *card.preprocess.input_size)
    export_model_to_onnx(model, ModelMeta.from_card(card), dest, example)
    if fixed_batch:
        proto = onnx.load(str(dest))
        for v in (*proto.graph.input, *proto.graph.output):
            v.type.tensor_type.shape.dim[0].dim_value = fixed_batch
        onnx.save(proto, str(dest))
    return dest


@pytest.fixture(scope="module")
def student_onnx(tiny_run, tmp_path_factory):
    return export_onnx(tiny_run, tmp_path_factory.mktemp("onnx") / "student.onnx")


def test_backend_picked_from_path(tiny_run, student_onnx):
    assert backend_for_path(tiny_run) == "torch"
    assert backend_for_path(tiny_run / "teacher") == "torch"  # run-directory stem
    assert backend_for_path(tiny_run / "student.json") == "torch"
    assert backend_for_path(tiny_run / "student.safetensors") == "torch"
    assert backend_for_path(student_onnx) == "onnxruntime"
    with pytest.raises(ModelError, match="does not exist"):
        backend_for_path(tiny_run / "nothing.bin")


def test_torch_engine_run_predict_info(tiny_run, test_images):
    with Engine.load(tiny_run / "teacher") as eng:
        assert eng.info["backend"] == "torch" and eng.meta.task == "multiclass"
        logits, probs = eng.predict(test_images)
        assert logits.shape == (12, 4) and logits.dtype == np.float32
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
        info = eng.info
        assert info["params"] > 0 and info["size_bytes"] == (tiny_run / "teacher.safetensors").stat().st_size
        assert info["path"].endswith("teacher.safetensors") and len(info["sha256"]) == 64
        # the same weights through the card path give the same logits
        with Engine.load(tiny_run / "teacher.json") as eng2:
            np.testing.assert_allclose(eng2.run(eng.preprocess(test_images)), logits, atol=1e-6)
    with pytest.raises(ModelError, match="closed"):
        eng.run(eng.preprocess(test_images))


def test_onnxruntime_engine_matches_torch_with_dynamic_batch(tiny_run, student_onnx, test_images):
    with Engine.load(tiny_run) as ref, Engine.load(student_onnx, threads=1) as eng:
        assert eng.info["backend"] == "onnxruntime" and eng.info["threads"] == 1
        assert eng.info["providers"] == ["CPUExecutionProvider"] and eng.fixed_batch is None
        assert eng.meta.label_names == ref.meta.label_names
        for n in (1, 5, 12):
            x = eng.preprocess(test_images[:n])
            np.testing.assert_allclose(eng.run(x), ref.run(x), atol=1e-4)
        _, probs = eng.predict(test_images)
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def test_input_checks(student_onnx, test_images):
    with Engine.load(student_onnx) as eng:
        x = eng.preprocess(test_images[:2])
        with pytest.raises(DataError, match="float32"):
            eng.run(x.astype(np.float64))
        with pytest.raises(DataError, match="shape"):
            eng.run(x[:, :, :16, :16])
        with pytest.raises(DataError, match="shape"):
            eng.run(np.repeat(x, 3, axis=1))
        with pytest.raises(DataError, match="numpy array"):
            eng.run(x.tolist())
        with pytest.raises(DataError, match="empty batch"):
            eng.run(x[:0])
        # a non-contiguous view is accepted and gives the same result
        np.testing.assert_allclose(eng.run(x[::-1][::-1]), eng.run(x), atol=0)


def test_static_batch_artifact(tiny_run, tmp_path, test_images):
    from medfm_compress.bench.parity import predict_logits

    path = export_onnx(tiny_run, tmp_path / "fixed.onnx", fixed_batch=4)
    with Engine.load(path) as eng, Engine.load(tiny_run) as ref:
        assert eng.fixed_batch == 4 and eng.batch_range == (4, 4)
        with pytest.raises(DataError, match="batch size 4"):
            eng.run(eng.preprocess(test_images[:3]))
        # 12 cases in padded batches of 4 and a ragged set of 10: outputs match the dynamic reference
        np.testing.assert_allclose(predict_logits(eng, test_images[:10], 32),
                                   predict_logits(ref, test_images[:10], 32), atol=1e-4)


def test_onnxruntime_options_and_errors(student_onnx, tmp_path):
    with pytest.raises(ConfigError, match="unknown onnxruntime option"):
        Engine.load(student_onnx, providerz=["CPUExecutionProvider"])
    with pytest.raises(ConfigError, match="CUDAExecutionProvider"):
        Engine.load(student_onnx, device="cuda")
    with Engine.load(student_onnx, graph_optimization_level="basic",
                     provider_options={"CPUExecutionProvider": {}}) as eng:
        assert eng.info["providers"] == ["CPUExecutionProvider"]
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="cannot load"):
        Engine.load(bad)


def test_onnx_without_metadata_is_refused(tiny_run, tmp_path):
    import onnx

    path = export_onnx(tiny_run, tmp_path / "nometa.onnx")
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    onnx.save(proto, str(path))
    with pytest.raises(ModelError, match="no medfm-compress metadata"):
        Engine.load(path)


def test_registry_errors():
    assert {"torch", "onnxruntime"} <= set(available_backends())
    with pytest.raises(ConfigError, match="unknown runtime backend 'nope'; available backends: .*onnxruntime.*torch"):
        get_backend("nope")
    with pytest.raises(ValueError, match="already registered"):

        @register_backend("onnxruntime")
        class Duplicate(Engine):
            pass

    assert get_backend("onnxruntime").__name__ == "OnnxRuntimeEngine"
    with pytest.raises(TypeError, match="Engine subclass"):
        register_backend("not-an-engine")(object)


def test_missing_backend_package_names_the_extra(tmp_path):
    with pytest.raises(BackendMissingError, match=r"pip install 'medfm-compress\[trt\]'"):
        require_module("medfm_no_such_module_xyz", "tensorrt", "trt")
    xml = tmp_path / "model.xml"
    xml.write_text("<net/>")
    if "openvino" not in available_backends():
        with pytest.raises(ConfigError, match="openvino runtime backend is not available"):
            Engine.load(xml)


def test_torch_backend_rejects_bad_options(tiny_run):
    with pytest.raises(ConfigError, match="unknown torch backend option"):
        Engine.load(tiny_run, nme="teacher")
    with pytest.raises(ConfigError, match="threads must be >= 1"):
        Engine.load(tiny_run, threads=0)


def test_torch_backend_precision_and_layout_options(tiny_run, test_images):
    with Engine.load(tiny_run) as ref, Engine.load(tiny_run, precision="bf16", channels_last=True) as low:
        x = ref.preprocess(test_images)
        want, got = ref.run(x), low.run(x)
        assert got.dtype == np.float32 and got.shape == want.shape
        assert low.info["precision"] == "bf16" and low.info["channels_last"] is True
        assert low.meta.precision == "bf16" and low.info["params"] == ref.info["params"]
        # bf16 keeps 8 mantissa bits: close to fp32 but not equal (so the cast really happened).
        assert 0 < np.abs(got - want).max() < 0.25 * max(1.0, np.abs(want).max())
        assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9


def test_torch_backend_rejects_bad_precision_and_compile_mode(tiny_run):
    with pytest.raises(ConfigError, match="precision must be one of fp32, fp16, bf16"):
        Engine.load(tiny_run, precision="int4")
    with pytest.raises(ConfigError, match="compile must be one of"):
        Engine.load(tiny_run, compile="fastest")


@pytest.mark.gpu
def test_torch_cuda_fp16_graphs_and_compile(tiny_run, test_images):
    with Engine.load(tiny_run, device="cpu") as cpu:
        x = cpu.preprocess(test_images[:4])
        want = cpu.run(x)
    for opts in ({"precision": "fp16", "channels_last": True, "cuda_graphs": True},
                 {"compile": "max-autotune-no-cudagraphs", "cuda_graphs": True}):
        with Engine.load(tiny_run, device="cuda", **opts) as gpu:
            np.testing.assert_allclose(gpu.run(x), want, atol=5e-2)
            np.testing.assert_allclose(gpu.run(x), want, atol=5e-2)  # graph replay
    with pytest.raises(ConfigError, match="already captures CUDA graphs"):
        Engine.load(tiny_run, device="cuda", compile="reduce-overhead", cuda_graphs=True)


@pytest.mark.gpu
def test_torch_cuda_engine_with_cuda_graphs(tiny_run, test_images):
    with Engine.load(tiny_run, device="cpu") as cpu, Engine.load(tiny_run, device="cuda", cuda_graphs=True) as gpu:
        x = cpu.preprocess(test_images[:4])
        np.testing.assert_allclose(gpu.run(x), cpu.run(x), atol=1e-3)
        np.testing.assert_allclose(gpu.run(x), cpu.run(x), atol=1e-3)  # graph replay
        assert gpu.info["device"] == "cuda" and gpu.info["cuda_graphs"] is True
