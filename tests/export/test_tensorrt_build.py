"""TensorRT engine builds on the CPU (TensorRT-RTX ahead of time): precisions, profiles, sidecar, refusals."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

pytest.importorskip(
    "tensorrt_rtx", reason="TensorRT-RTX is not installed (pip install 'medfm-compress[trt]')"
)

from medfm_compress.errors import ConfigError, ExportError, IntegrityError, ModelError  # noqa: E402
from medfm_compress.export.tensorrt import TensorRTConfig, build_engine, qdq_kind
from medfm_compress.runtime.tensorrt_loader import check_engine, read_sidecar, sidecar_path

# Every timm student used in our tests, plus resnet18 (the resnet18-class student of the figures).
STUDENTS = ["timm:medfm_resnet10_w16", "timm:medfm_resnet10_w24", "timm:resnet18"]


def _meta(arch: str):
    from medfm_compress.runtime.metadata import ModelMeta
    from medfm_compress.runtime.preprocess import PreprocessSpec

    pre = PreprocessSpec(input_size=(32, 32), channels=3, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    return ModelMeta(pre, "multiclass", ["a", "b", "c", "d"], arch, "fp32", {"test": True})


def _model(arch: str):
    import torch

    from medfm_compress.models import create_model

    torch.manual_seed(0)
    return create_model(arch, 4, 3, 32).eval()


def _onnx_pair(arch: str, d) -> dict:
    """fp32 and modelopt-int8 QDQ ONNX of ``arch`` (random weights) in ``d``."""
    import torch

    from medfm_compress.compress.quantize_trt import export_quantized_onnx, quantize_torch
    from medfm_compress.export.onnx_build import export_model_to_onnx

    calib = np.random.default_rng(0).normal(size=(16, 3, 32, 32)).astype(np.float32)
    name = arch.split(":")[1]
    m = _model(arch)
    fp32 = export_model_to_onnx(m, _meta(arch), d / f"{name}.onnx", torch.from_numpy(calib[:1]))
    q = quantize_torch(m, calib, "int8")
    meta = _meta(arch)
    meta.precision = "int8"
    int8 = export_quantized_onnx(q, meta, d / f"{name}.int8.onnx", torch.from_numpy(calib[:1]))
    return {"fp32": fp32, "int8": int8}


@pytest.fixture(scope="module")
def w16_files(tmp_path_factory):
    """fp32 and int8 ONNX of the smallest student: all the refusal tests need."""
    return _onnx_pair(STUDENTS[0], tmp_path_factory.mktemp("trt-onnx-w16"))


@pytest.fixture(scope="module")
def onnx_files(w16_files, tmp_path_factory):
    """fp32 and modelopt-int8 QDQ ONNX for each student."""
    d = tmp_path_factory.mktemp("trt-onnx")
    return {STUDENTS[0]: w16_files, **{arch: _onnx_pair(arch, d) for arch in STUDENTS[1:]}}


@pytest.mark.slow  # builds an engine
@pytest.mark.parametrize("arch", STUDENTS)
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_rtx_engine_builds_under_10s(onnx_files, tmp_path, arch, precision):
    src = onnx_files[arch][precision]
    # CPU time of this process, not wall time: the 2-core CI machine is shared, and another job's load must
    # not fail this test (benchmarks/trt_build.py reports wall times).
    t0, w0 = time.process_time(), time.time()
    res = build_engine(
        TensorRTConfig(
            str(src), str(tmp_path / "m.engine"), flavour="rtx", precision=precision, batch_sizes=(1, 4, 16)
        ),
        progress=False,
    )
    cpu_s, wall_s = time.process_time() - t0, time.time() - w0
    assert cpu_s < 10, f"{arch} {precision} engine took {cpu_s:.1f} s CPU ({wall_s:.1f} s wall)"
    assert res.path.is_file() and res.size_bytes == res.path.stat().st_size > 10_000
    assert res.flavour == "rtx" and res.precision == precision


@pytest.mark.slow  # builds an engine
def test_sidecar_records_everything(w16_files, tmp_path):
    from medfm_compress._io import sha256_file
    from medfm_compress.runtime.metadata import decode_metadata

    src = w16_files["int8"]
    res = build_engine(
        TensorRTConfig(
            str(src),
            str(tmp_path / "s.plan"),
            precision="int8",
            batch_sizes=(16, 1, 4),
            workspace_mb=256,
            targets=("sm86", "sm89"),
        ),
        progress=False,
    )
    side = json.loads(sidecar_path(res.path).read_text())
    assert side == read_sidecar(res.path)
    assert side["flavour"] == "rtx" and side["tensorrt_module"] == "tensorrt_rtx"
    import tensorrt_rtx

    assert side["tensorrt_version"] == tensorrt_rtx.__version__
    assert side["targets"] == ["sm86", "sm89"] and side["targets_explicit"] is True
    assert side["profiles"] == [
        {"input": "input", "min": [1, 3, 32, 32], "opt": [4, 3, 32, 32], "max": [16, 3, 32, 32]}
    ]
    assert side["batch_sizes"] == [1, 4, 16]
    assert side["precision"] == "int8" and side["onnx_qdq"] == "int8" and side["workspace_mb"] == 256
    assert side["source_onnx_sha256"] == sha256_file(src)
    assert side["engine_sha256"] == sha256_file(res.path)
    meta = decode_metadata(side["metadata"], "sidecar")
    assert meta.precision == "int8" and meta.label_names == ["a", "b", "c", "d"] and meta.arch.endswith("w16")
    assert meta.preprocess.input_size == (32, 32)


@pytest.mark.slow  # builds an engine
def test_fp16_engine_from_fp32_onnx(w16_files, tmp_path):
    res = build_engine(
        TensorRTConfig(
            str(w16_files["fp32"]), str(tmp_path / "h.engine"), precision="fp16"
        ),
        progress=False,
    )
    fp32 = build_engine(
        TensorRTConfig(str(w16_files["fp32"]), str(tmp_path / "f.engine")),
        progress=False,
    )
    # fp16 weights: the engine is clearly smaller than the fp32 one.
    assert res.size_bytes < 0.8 * fp32.size_bytes


def _built(files, tmp_path, name="e.engine"):
    return build_engine(
        TensorRTConfig(str(files["fp32"]), str(tmp_path / name)),
        progress=False,
    ).path


def _rehash(engine):
    from medfm_compress._io import sha256_file

    sp = sidecar_path(engine)
    side = json.loads(sp.read_text())
    side["engine_sha256"] = sha256_file(engine)
    sp.write_text(json.dumps(side))


@pytest.mark.slow  # builds an engine
def test_refuses_engine_changed_since_build(w16_files, tmp_path):
    eng = _built(w16_files, tmp_path)
    data = bytearray(eng.read_bytes())
    data[100] ^= 0xFF
    eng.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="rebuild"):
        check_engine(eng)


@pytest.mark.slow  # builds an engine
def test_refuses_corrupted_header_before_deserializing(w16_files, tmp_path):
    eng = _built(w16_files, tmp_path)
    data = bytearray(eng.read_bytes())
    for i in range(0, 32):
        data[i] ^= 0x5A
    eng.write_bytes(bytes(data))
    _rehash(eng)  # consistent sidecar: only TensorRT-RTX's validity API can tell
    with pytest.raises(ModelError, match="not a TensorRT-RTX engine, or corrupted; rebuild"):
        check_engine(eng)


@pytest.mark.slow  # builds an engine
def test_refuses_foreign_file_posing_as_engine(w16_files, tmp_path):
    eng = _built(w16_files, tmp_path)
    eng.write_bytes(w16_files["fp32"].read_bytes())
    _rehash(eng)
    with pytest.raises(ModelError, match="rebuild"):
        check_engine(eng)


@pytest.mark.slow  # builds an engine
def test_refuses_engine_from_another_version(w16_files, tmp_path):
    eng = _built(w16_files, tmp_path)
    sp = sidecar_path(eng)
    side = json.loads(sp.read_text())
    side["tensorrt_version"] = "0.9.0.1"
    sp.write_text(json.dumps(side))
    with pytest.raises(ModelError, match=r"built with TensorRT-RTX 0\.9\.0\.1 .* rebuild"):
        check_engine(eng)


@pytest.mark.slow  # builds an engine
def test_refuses_missing_or_foreign_sidecar(w16_files, tmp_path):
    eng = _built(w16_files, tmp_path)
    sp = sidecar_path(eng)
    sp.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ModelError, match="not a medfm-compress engine sidecar"):
        check_engine(eng)
    sp.unlink()
    with pytest.raises(ModelError, match="no sidecar"):
        check_engine(eng)


@pytest.mark.slow  # builds an engine
def test_valid_engine_without_gpu_is_one_clear_line(w16_files, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    eng = _built(w16_files, tmp_path)
    with pytest.raises(ModelError, match="no usable CUDA GPU") as ei:
        check_engine(eng)
    assert "\n" not in str(ei.value)


def test_ort_u8s8_qdq_is_rejected_with_a_clear_message(w16_files, tmp_path):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    src = w16_files["fp32"]
    x = np.random.default_rng(1).normal(size=(8, 3, 32, 32)).astype(np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"input": x[i : i + 1]} for i in range(len(x))])

        def get_next(self):
            return next(self.items, None)

    u8 = tmp_path / "u8s8.onnx"
    quantize_static(
        str(src),
        str(u8),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    import onnx

    from medfm_compress.export.onnx_build import set_meta

    proto = onnx.load(str(u8))
    set_meta(proto, _meta("timm:medfm_resnet10_w16"))
    onnx.save(proto, str(u8))
    assert qdq_kind(proto) == "uint8"
    with pytest.raises(ExportError) as ei:
        build_engine(TensorRTConfig(str(u8), str(tmp_path / "u8.engine"), precision="int8"), progress=False)
    msg = str(ei.value)
    assert "parser rejected u8s8.onnx" in msg and "node '" in msg and "--target tensorrt" in msg
    assert "\n" not in msg
    assert not (tmp_path / "u8.engine").exists() and not (tmp_path / "u8.engine.json").exists()


def test_precision_must_match_the_onnx(w16_files, tmp_path):
    with pytest.raises(ConfigError, match="quantize --target tensorrt"):
        build_engine(
            TensorRTConfig(
                str(w16_files["fp32"]),
                str(tmp_path / "a.engine"),
                precision="int8",
            ),
            progress=False,
        )
    with pytest.raises(ConfigError, match="--precision int8"):
        build_engine(
            TensorRTConfig(
                str(w16_files["int8"]),
                str(tmp_path / "b.engine"),
                precision="fp32",
            ),
            progress=False,
        )
    with pytest.raises(ConfigError, match="fp8"):
        build_engine(
            TensorRTConfig(
                str(w16_files["int8"]),
                str(tmp_path / "c.engine"),
                precision="fp8",
            ),
            progress=False,
        )
    assert not list(tmp_path.glob("*.engine*"))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_sizes": ()}, "batch-sizes"),
        ({"batch_sizes": (0, 4)}, "batch-sizes"),
        ({"precision": "int4"}, "precision"),
        ({"flavour": "tensorrt-llm"}, "flavour"),
        ({"targets": ("sm90x",)}, "target"),
        ({"targets": ("current", "sm86")}, "current"),
        ({"workspace_mb": 0}, "workspace"),
        ({"out": "model.onnx"}, r"\.engine or \.plan"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    args = {"onnx": "m.onnx", "out": "m.engine", **kwargs}
    with pytest.raises(ConfigError, match=match):
        TensorRTConfig(**args)


def test_classic_flavour_missing_names_the_extra(w16_files, tmp_path):
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("classic TensorRT is installed here")
    from medfm_compress.errors import BackendMissingError

    with pytest.raises(BackendMissingError, match=r"medfm-compress\[trt\]"):
        build_engine(
            TensorRTConfig(
                str(w16_files["fp32"]),
                str(tmp_path / "c.engine"),
                flavour="classic",
            ),
            progress=False,
        )


@pytest.mark.slow  # builds an engine
def test_export_cli_builds_engine_from_onnx(w16_files, tmp_path):
    from click.testing import CliRunner

    from medfm_compress.cli import cli

    src = w16_files["fp32"]
    out = tmp_path / "cli.engine"
    r = CliRunner().invoke(
        cli,
        [
            "export",
            str(src),
            "--format",
            "tensorrt",
            "--batch-sizes",
            "1,4,16",
            "--precision",
            "fp16",
            "--out",
            str(out),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)
    assert rec["precision"] == "fp16" and rec["profile"]["max"][0] == 16 and out.is_file()
    assert read_sidecar(out)["precision"] == "fp16"

    r = CliRunner().invoke(
        cli,
        [
            "export",
            str(src),
            "--format",
            "tensorrt",
            "--precision",
            "int8",
            "--out",
            str(tmp_path / "bad.engine"),
        ],
    )
    assert r.exit_code == 1 and "error: --precision int8 needs explicit QDQ" in r.output
    assert not (tmp_path / "bad.engine").exists()
    r = CliRunner().invoke(cli, ["export", str(src), "--format", "tensorrt", "--batch-sizes", "1,x"])
    assert r.exit_code == 1 and "--batch-sizes" in r.output
