"""Each calibration consumer (ORT static int8, ModelOpt torch and ONNX PTQ, NNCF) gives the same result on a
streamed (lazy) calibration set as on the same set held in memory."""

from __future__ import annotations

import numpy as np
import pytest

from medfm_compress.data import LazyImages


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory):
    from PIL import Image

    d = tmp_path_factory.mktemp("smallf")
    rng = np.random.default_rng(0)
    rows = ["file,label,split"]
    for i in range(90):
        Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(d / f"{i}.png")
        rows.append(f"{i}.png,{i % 2},{'test' if i % 3 == 0 else 'train'}")
    (d / "labels.csv").write_text("\n".join(rows) + "\n")
    return d


def _calib(folder, onnx_path, streamed, monkeypatch):
    from medfm_compress.compress.calibration import build_calibration
    from medfm_compress.runtime.onnx_loader import read_meta

    monkeypatch.setenv("MEDFM_MAX_IN_MEMORY_MB", "0" if streamed else "100")
    cal = build_calibration(
        f"folder:{folder}?stream={int(streamed)}", read_meta(onnx_path).preprocess, (1, 32, 32), 40, 20
    )
    assert isinstance(cal.images, LazyImages) == streamed and cal.provenance()["streamed"] == streamed
    return cal


def _context(cfg, onnx_path, cal, workdir):
    """A QuantizeContext for the 32x32 one-channel test model (what quantize() builds before a target runs)."""
    import onnx

    from medfm_compress.compress.quantize import QuantizeContext
    from medfm_compress.runtime.onnx_loader import read_meta

    return QuantizeContext(cfg=cfg, fp32_path=onnx_path, fp32_proto=onnx.load(str(onnx_path)),
                           meta=read_meta(onnx_path), calib=cal, input_shape=(1, 32, 32), workdir=workdir,
                           log=lambda msg: None)


def test_streamed_calibration_set_equals_in_memory(small_folder, gray_onnx, monkeypatch):
    lazy, eager = (_calib(small_folder, gray_onnx, s, monkeypatch) for s in (True, False))
    np.testing.assert_array_equal(np.asarray(lazy.images), eager.images)
    np.testing.assert_array_equal(np.asarray(lazy.holdout), eager.holdout)


def test_ort_static_calibration_streamed_in_chunks_is_exact(small_folder, gray_onnx, tmp_path, monkeypatch):
    import onnx

    from medfm_compress.compress import onnxruntime_quant

    monkeypatch.setattr(onnxruntime_quant, "STREAM_CHUNK_IMAGES", 8)  # 40 images: 5 ORT collect_data passes
    models = []
    for streamed in (True, False):
        cal = _calib(small_folder, gray_onnx, streamed, monkeypatch)
        (tmp_path / str(streamed)).mkdir()
        q = onnxruntime_quant.StaticQuantizer(gray_onnx, cal.images, tmp_path / str(streamed)).quantize()
        models.append({i.name: onnx.numpy_helper.to_array(i) for i in q.graph.initializer})
    assert models[0].keys() == models[1].keys()
    for k in models[0]:
        np.testing.assert_array_equal(models[0][k], models[1][k], err_msg=k)


def test_modelopt_torch_calibration_streamed_equals_in_memory(small_folder, gray_onnx, monkeypatch):
    pytest.importorskip("modelopt")
    import torch

    from medfm_compress.compress.quantize_trt import quantize_torch
    from medfm_compress.models import create_model

    torch.manual_seed(0)
    model = create_model("timm:medfm_resnet10_w16", 2, 1, 32).eval()
    x = torch.randn(4, 1, 32, 32)
    outs = []
    for streamed in (True, False):
        cal = _calib(small_folder, gray_onnx, streamed, monkeypatch)
        with torch.no_grad():
            outs.append(quantize_torch(model, cal.images, "int8", batch_size=8)(x))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def test_nncf_calibration_streamed_equals_in_memory(small_folder, gray_onnx, monkeypatch):
    pytest.importorskip("nncf")

    from medfm_compress.compress.quantize import QuantizeConfig
    from medfm_compress.compress.quantize_openvino import _fp32_ov, _ptq, _ref, _run_ov
    from medfm_compress.runtime.openvino_loader import compile_ov

    outs = []
    for streamed in (True, False):
        cal = _calib(small_folder, gray_onnx, streamed, monkeypatch)
        cfg = QuantizeConfig.from_options(
            input=str(gray_onnx), target="openvino", calib_data="x", min_agreement=0.0, progress=False
        )
        ctx = _context(cfg, gray_onnx, cal, None)
        q, _, _ = _ptq(ctx, _fp32_ov(ctx), _ref(ctx))
        outs.append(_run_ov(compile_ov(q, "CPU"), np.asarray(cal.holdout)))
    np.testing.assert_array_equal(outs[0], outs[1])


def test_modelopt_onnx_calibration_streamed_equals_in_memory(small_folder, gray_onnx, tmp_path, monkeypatch):
    pytest.importorskip("modelopt.onnx.quantization")
    import onnx

    from medfm_compress.compress.quantize import QuantizeConfig
    from medfm_compress.compress.quantize_trt import _onnx_path

    models = []
    for streamed in (True, False):
        cal = _calib(small_folder, gray_onnx, streamed, monkeypatch)
        work = tmp_path / str(streamed)
        work.mkdir()
        cfg = QuantizeConfig.from_options(input=str(gray_onnx), target="tensorrt", calib_data="x", progress=False)
        ctx = _context(cfg, gray_onnx, cal, work)
        proto, _ = _onnx_path(ctx)
        models.append({i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer})
    assert models[0].keys() == models[1].keys()
    for k in models[0]:
        np.testing.assert_array_equal(models[0][k], models[1][k], err_msg=k)


def test_distill_on_a_streamed_folder_trains_the_same_student(small_folder, tmp_path):
    """Distillation needs the whole training split: a streamed split is read in full and gives the same run."""
    from safetensors.numpy import load_file

    from medfm_compress.compress.distill import DistillConfig, distill
    from medfm_compress.models import create_model, save_state_dict

    w16 = "timm:medfm_resnet10_w16"
    save_state_dict(create_model(w16, 2, 1), tmp_path / "t.safetensors")
    students = []
    for streamed in (1, 0):
        out = tmp_path / f"o{streamed}"
        distill(
            DistillConfig.from_options(
                data=f"folder:{small_folder}?size=32&stream={streamed}",
                out=str(out),
                teacher=w16,
                teacher_weights=str(tmp_path / "t.safetensors"),
                student=w16,
                epochs=1,
                batch_size=16,
                augment=False,
                progress=False,
            )
        )
        students.append(load_file(str(out / "student.safetensors")))
    assert students[0].keys() == students[1].keys()
    for k in students[0]:
        np.testing.assert_array_equal(students[0][k], students[1][k], err_msg=k)
