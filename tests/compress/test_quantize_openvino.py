"""``quantize --target openvino`` and the OpenVINO candidates of ``--target cpu --precision auto`` (tiny model)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from support.onnx_fixtures import tiny_onnx  # noqa: E402

from medfm_compress.errors import ConfigError, ExportError, GateFailure  # noqa: E402

DATA = "synthetic?size=32&n_train=64&n_val=32&n_test=48&seed=3"


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    return tiny_onnx(tmp_path_factory.mktemp("qov") / "tiny.onnx")


def _cfg(fp32, **kw):
    from medfm_compress.compress.quantize import QuantizeConfig

    base = dict(input=str(fp32), calib_data=DATA, num_calib=32, num_holdout=32, allow_small_holdout=True, min_agreement=0.5,
                latency_runs=5, progress=False)
    return QuantizeConfig.from_options(**{**base, **kw})


@pytest.mark.slow  # runs NNCF
def test_int8_ir_with_metadata(fp32, tmp_path):
    from medfm_compress.compress.quantize import quantize
    from medfm_compress.runtime import Engine
    from medfm_compress.runtime.onnx_loader import read_meta

    res = quantize(_cfg(fp32, target="openvino", precision="int8", out=str(tmp_path / "q.xml")))
    assert res.path == tmp_path / "q.xml" and (tmp_path / "q.bin").is_file()
    assert res.size_bytes == (tmp_path / "q.xml").stat().st_size + (tmp_path / "q.bin").stat().st_size
    meta = read_meta(res.path)
    q = meta.provenance["quantization"]
    assert meta.precision == "int8" and meta.label_names == ["a", "b", "c", "d"]
    assert q["target"] == "openvino" and q["model_type"] == "default" and q["calibration"]["num_calibration"] == 32
    # This net has no near-ties: int8 keeps (nearly) every top-1 of the 32 held-out images and the logits.
    assert res.report["parity"]["top1_agreement"] >= 0.95 and res.report["parity"]["cosine"] > 0.9999
    with Engine.load(res.path) as eng:
        assert eng.info["precision"] == "int8"
        x = np.random.default_rng(0).standard_normal((3, 1, 32, 32)).astype(np.float32)
        assert eng.run(x).shape == (3, 4)
        # NNCF inserted FakeQuantize ops: the IR really is quantized.
        from medfm_compress.runtime.openvino_loader import load_ir_checked

        assert any(op.get_type_name() == "FakeQuantize" for op in load_ir_checked(res.path).get_ops())


@pytest.mark.slow  # runs NNCF
def test_fp32_default_name_and_refusals(fp32, tmp_path):
    from medfm_compress.compress.quantize import quantize

    res = quantize(_cfg(fp32, target="openvino", precision="fp32"))
    assert res.path.name == "tiny.fp32.xml" and res.report["parity"]["top1_agreement"] == 1.0
    with pytest.raises(ConfigError, match=".xml"):
        quantize(_cfg(fp32, target="openvino", out=str(tmp_path / "q.onnx")))
    with pytest.raises(ConfigError, match="entropy"):
        quantize(_cfg(fp32, target="openvino", calibrator="entropy"))
    with pytest.raises(ConfigError, match="--precision"):
        quantize(_cfg(fp32, target="openvino", precision="fp16"))
    with pytest.raises(GateFailure, match="--auto-exclude"):
        # An agreement above what plain PTQ reaches on this random-weight net (checked below) fails the gate.
        quantize(_cfg(fp32, target="openvino", min_agreement=1.0, min_cosine=0.999999, search=False))
    assert not list(tmp_path.iterdir())


def test_bf16_ir_runs_at_bf16_or_is_refused(fp32, tmp_path, monkeypatch):
    from medfm_compress.compress.quantize import quantize
    from medfm_compress.runtime import Engine
    from medfm_compress.runtime import openvino_loader as ovl

    if ovl.ov_supports("bf16"):
        res = quantize(_cfg(fp32, target="openvino", precision="bf16", out=str(tmp_path / "b.xml")))
        assert res.precision == "bf16" and res.meta.precision == "bf16"
        assert res.meta.provenance["quantization"]["inference_precision"] == "bf16"
        assert 0.0 < res.report["parity"]["cosine"] < 1.0  # really bf16 (fp32 IRs agree to ~1e-7 here)
        with Engine.load(res.path) as eng:
            assert eng.info["inference_precision"] == "bf16"
        with Engine.load(res.path, inference_precision="f32") as eng:
            assert eng.info["inference_precision"] == "f32"
    # A CPU without native bf16: refused before any calibration, by name, never silently emulated.
    monkeypatch.setattr(ovl, "ov_supports", lambda precision, device="CPU": precision == "f32")
    with pytest.raises(ConfigError, match="native bf16"):
        quantize(_cfg(fp32, target="openvino", precision="bf16", calib_data=None, out=str(tmp_path / "c.xml")))
    assert not (tmp_path / "c.xml").exists()


def test_unconvertible_op_fails_before_calibration(tmp_path):
    from medfm_compress.compress.quantize import quantize

    bad = tiny_onnx(tmp_path / "bad.onnx", custom_op="FooBarOp")
    # No calibration data given: the op error must come first.
    with pytest.raises(ExportError, match="FooBarOp"):
        quantize(_cfg(bad, target="openvino", calib_data=None, out=str(tmp_path / "o.xml")))


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
    """Two classes tied on the images the gate holds out (the val split): each wins about half of them by a
    margin far below int8 noise, so plain PTQ flips some."""
    import onnxruntime as ort

    from medfm_compress.data import load_data
    from medfm_compress.runtime.onnx_loader import read_meta

    path = tmp_path_factory.mktemp("qov_tied") / "tied.onnx"
    tiny_onnx(path, tied=True)
    x = read_meta(path).preprocess(load_data(DATA).split("val").images)
    logits = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    return tiny_onnx(path, tied=True, tie_offset=float(np.median(logits[:, 0] - logits[:, 1])))


@pytest.mark.slow  # runs NNCF
def test_accuracy_control_is_the_auto_exclude(tied, tmp_path):
    from medfm_compress.compress.quantize import quantize

    res = quantize(_cfg(tied, target="openvino", min_agreement=1.0, auto_exclude=True, out=str(tmp_path / "a.xml")))
    # Plain PTQ flips near-tied classes; accuracy control reverted layers until top-1 agreement with fp32 held
    # on every held-out image.
    assert res.report["parity_naive"]["top1_agreement"] < 1.0
    assert res.report["parity"]["top1_agreement"] == 1.0
    assert res.report["auto_exclude"]["method"] == "nncf.quantize_with_accuracy_control"
    # Agreement went up, so NNCF gave at least one int8 op back to fp32, and the report names it.
    excluded = res.report["auto_exclude"]["excluded"]
    assert excluded and all(isinstance(n, str) and n for n in excluded)
    assert res.meta.provenance["quantization"]["accuracy_control"]["metric"] == "top1_agreement"


@pytest.mark.slow  # runs NNCF
def test_accuracy_control_from_the_cli(tied, tmp_path):
    import re

    from click.testing import CliRunner

    from medfm_compress.cli import cli

    out = tmp_path / "cli.xml"
    r = CliRunner().invoke(cli, ["quantize", str(tied), "--calib-data", DATA, "--num-calib", "32", "--num-holdout",
                                 "32", "--allow-small-holdout", "--target", "openvino", "--min-agreement", "1.0",
                                 "--auto-exclude",
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    kept = re.search(r"auto-exclude kept (\d+) node\(s\) in fp32", r.output)
    assert kept and int(kept.group(1)) >= 1, r.output
    assert out.exists() and out.with_suffix(".bin").exists()


def test_is_transformer():
    import onnx
    from onnx import helper

    from medfm_compress.compress.quantize_openvino import is_transformer

    empty = helper.make_model(helper.make_graph([], "g", [], []))
    assert is_transformer(empty, "timm:vit_tiny_patch16_224")
    assert not is_transformer(empty, "timm:resnet18")
    g = helper.make_graph([helper.make_node(op, [], []) for op in ("LayerNormalization", "MatMul", "Softmax")],
                          "g", [], [])
    assert is_transformer(onnx.helper.make_model(g), "")


@pytest.mark.slow  # runs NNCF
def test_cpu_auto_considers_openvino(fp32, tmp_path):
    from click.testing import CliRunner

    from medfm_compress.cli import cli

    out = tmp_path / "auto.xml"
    r = CliRunner().invoke(cli, ["quantize", str(fp32), "--target", "cpu", "--precision", "auto", "--calib-data",
                                 DATA, "--num-calib", "32", "--num-holdout", "32", "--allow-small-holdout", "--min-agreement", "0.5",
                                 "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)["report"]
    engines = {row["engine"] for row in rep["auto_table"]}
    assert engines == {"onnxruntime", "openvino"}
    from medfm_compress.runtime.openvino_loader import ov_supports

    # bf16 is a candidate exactly where the CPU runs it natively.
    names = {row["precision"] for row in rep["auto_table"]}
    assert ("openvino-bf16" in names) == ov_supports("bf16")
    chosen = [row for row in rep["auto_table"] if row["chosen"]]
    assert len(chosen) == 1 and chosen[0]["engine"] == "openvino"  # --out .xml keeps IR candidates only
    assert "fastest" in rep["auto_reason"] and out.is_file() and out.with_suffix(".bin").is_file()
    # --out .onnx: OpenVINO is skipped with a row saying why, and the artifact is ONNX.
    res_onnx = tmp_path / "auto.onnx"
    r = CliRunner().invoke(cli, ["quantize", str(fp32), "--precision", "auto", "--calib-data", DATA, "--num-calib",
                                 "32", "--num-holdout", "32", "--allow-small-holdout", "--min-agreement", "0.5", "--out", str(res_onnx)])
    assert r.exit_code == 0, r.output
    assert "skipped: --out names an .onnx" in r.output and res_onnx.is_file()
    # A stem (neither .onnx nor .xml): both engines compete and the winner's suffix completes the name.
    stem = tmp_path / "stem" / "student.auto"
    stem.parent.mkdir()
    r = CliRunner().invoke(cli, ["quantize", str(fp32), "--precision", "auto", "--calib-data", DATA, "--num-calib",
                                 "32", "--num-holdout", "32", "--allow-small-holdout", "--min-agreement", "0.5", "--out", str(stem), "--json"])
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    rep = got["report"]
    assert {row["engine"] for row in rep["auto_table"] if row.get("passes")} == {"onnxruntime", "openvino"}
    (winner,) = [row for row in rep["auto_table"] if row["chosen"]]
    suffix = ".xml" if winner["engine"] == "openvino" else ".onnx"
    assert Path(got["path"]) == stem.with_name("student.auto" + suffix)
    written = sorted(p.name for p in stem.parent.iterdir())
    assert written == (["student.auto.bin", "student.auto.xml"] if suffix == ".xml" else ["student.auto.onnx"])


@pytest.mark.slow  # runs NNCF
@pytest.mark.parametrize("int8_faster", [False, True])
def test_auto_runs_accuracy_control_only_where_int8_can_win(tied, tmp_path, monkeypatch, int8_faster):
    from medfm_compress.compress import latency
    from medfm_compress.compress.quantize import quantize

    real = latency.interleaved_latency_ms

    def timed(models, *a, **kw):  # the int8-vs-fp32 check sees the speed this case wants; the rest is real
        if set(models) == {"int8", "fp32"}:
            return {"int8": 1.0 if int8_faster else 3.0, "fp32": 2.0}
        return real(models, *a, **kw)

    res = quantize(_cfg(tied, target="cpu", precision="auto", min_agreement=1.0, auto_exclude=True,
                        out=str(tmp_path / "auto.xml")), timer=timed)
    row = next(r for r in res.report["auto_table"] if r["precision"] == "openvino-int8")
    if int8_faster:
        # Accuracy control ran and restored full agreement on the held-out images.
        assert "note" not in row and row["top1_agreement"] == 1.0 and row["passes"]
    else:
        # Plain int8 kept, failing the gate, with the reason accuracy control did not run.
        assert "no faster than OpenVINO fp32" in row["note"] and not row["passes"]


@pytest.mark.slow  # runs NNCF
def test_settings_reach_nncf_and_accuracy_control(tied, tmp_path):
    """The percentile calibrator, per-tensor weights and the weight range reach NNCF, in plain PTQ and in
    accuracy control (which names its advanced parameters differently), and provenance records them."""
    from medfm_compress.compress.quantize import quantize

    res = quantize(_cfg(tied, target="openvino", calibrator="percentile", per_channel=False, min_agreement=1.0,
                        auto_exclude=True, out=str(tmp_path / "p.xml")))
    q = res.meta.provenance["quantization"]
    assert q["calibrator"] == "percentile" and q["per_channel"] is False
    # 7-bit weights on every layer by default (x86 without VNNI saturates otherwise), as on the cpu target.
    assert q["overflow_fix"] == "enable" and q["bias_correction"] == "full"
    assert res.report["parity"]["top1_agreement"] == 1.0 and "accuracy_control" in q
    full = quantize(_cfg(tied, target="openvino", reduce_range=False, min_agreement=0.0,
                         out=str(tmp_path / "f.xml")))
    assert full.meta.provenance["quantization"]["overflow_fix"] == "first_layer_only"


@pytest.mark.slow  # runs NNCF
@pytest.mark.parametrize("calibrator,estimator", [("minmax", "MINMAX"), ("percentile", "MEAN_QUANTILE")])
def test_calibrator_reaches_nncf_as_the_same_range(fp32, tmp_path, monkeypatch, calibrator, estimator):
    """--calibrator minmax is the global min/max over the calibration set, as for ONNX Runtime (NNCF's own default
    for activations averages per-image extremes); percentile is NNCF's mean quantile."""
    import nncf
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    from medfm_compress.compress.quantize import quantize

    seen = {}
    real = nncf.quantize

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(nncf, "quantize", spy)
    quantize(_cfg(fp32, target="openvino", calibrator=calibrator, min_agreement=0.0, out=str(tmp_path / "q.xml")))
    got = seen["advanced_parameters"].activations_range_estimator_params
    assert got == getattr(RangeEstimatorParametersSet, estimator)
