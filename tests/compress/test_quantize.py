"""ONNX Runtime quantization: each precision on a tiny model, calibration sampling, the gate, bad input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper
from support.cli import config_built
from support.quant_models import tiny_resnet_onnx
from support.tiny import TINY_DATA as TINY

from medfm_compress.cli import cli
from medfm_compress.compress import auto_precision, latency, sensitivity
from medfm_compress.compress.calibration import build_calibration, stratified_indices, validate_inputs
from medfm_compress.compress.quantize import (
    OnnxRuntimeConfig,
    QuantizeConfig,
    available_targets,
    quantize,
    register_target,
)
from medfm_compress.data import PreprocessSpec
from medfm_compress.errors import ConfigError, DataError, GateFailure, ModelError
from medfm_compress.runtime.onnx_loader import ort_session, read_meta

FAST = {"num_calib": 32, "num_holdout": 32, "allow_small_holdout": True, "latency_runs": 5, "progress": False}


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    return tiny_resnet_onnx(tmp_path_factory.mktemp("q") / "tiny.onnx")


def _ops(proto):
    return [n.op_type for n in proto.graph.node]


def test_int8_static_is_u8s8_per_channel_qdq(tiny_onnx, tmp_path):
    out = tmp_path / "q.onnx"
    res = quantize(
        QuantizeConfig.from_options(input=str(tiny_onnx), out=str(out), calib_data=TINY, min_agreement=0.9, **FAST)
    )
    proto = onnx.load(str(out))
    ops = _ops(proto)
    assert ops.count("QuantizeLinear") > 5 and ops.count("DequantizeLinear") > 5
    inits = {i.name: i for i in proto.graph.initializer}
    zp_types = {
        inits[n.input[2]].data_type
        for n in proto.graph.node
        if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in inits
    }
    assert TensorProto.UINT8 in zp_types  # activations
    weights = [i for i in proto.graph.initializer if i.data_type == TensorProto.INT8 and len(i.dims) == 4]
    assert weights  # int8 conv weights stored quantized
    scales = [
        inits[n.input[1]]
        for n in proto.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in {w.name for w in weights}
    ]
    assert any(len(s.dims) == 1 and s.dims[0] > 1 for s in scales)  # per-channel
    meta = read_meta(out)
    assert meta.precision == "int8" and meta.preprocess.channels == 1
    q = meta.provenance["quantization"]
    assert q["calibration"]["num_calibration"] == 32 and q["calibration"]["random"] is False
    assert len(q["source_model_sha256"]) == 64 and q["calibrator"] == "minmax"
    assert res.report["parity"]["top1_agreement"] >= 0.9
    assert res.size_bytes * 3 < res.input_size_bytes
    ort_session(proto)


def _max_abs_int8_weight(proto) -> int:
    from onnx import numpy_helper

    return max(
        int(np.abs(numpy_helper.to_array(i).astype(np.int32)).max())
        for i in proto.graph.initializer
        if i.data_type == TensorProto.INT8 and len(i.dims) == 4
    )


def test_weights_use_the_7bit_range_unless_asked(tiny_onnx, tmp_path):
    """U8S8 kernels without VNNI saturate 16-bit pair sums of full-range weights: the default stays in -64..64."""
    common = {"input": str(tiny_onnx), "calib_data": TINY, "min_agreement": 0.0, **FAST}
    res = quantize(QuantizeConfig.from_options(out=str(tmp_path / "r.onnx"), **common))
    assert _max_abs_int8_weight(onnx.load(str(res.path))) <= 64
    q = res.meta.provenance["quantization"]
    assert q["reduce_range"] is True and "7-bit" in q["weights"]
    full = quantize(QuantizeConfig.from_options(out=str(tmp_path / "f.onnx"), reduce_range=False, **common))
    assert _max_abs_int8_weight(onnx.load(str(full.path))) == 127
    assert full.meta.provenance["quantization"]["reduce_range"] is False
    r = CliRunner().invoke(
        cli,
        ["quantize", str(tiny_onnx), "--calib-data", TINY, "--num-calib", "32", "--num-holdout", "32", "--allow-small-holdout",
         "--min-agreement", "0", "--full-range-weights", "--out", str(tmp_path / "c.onnx"), "--quiet"],
    )
    assert r.exit_code == 0, r.output
    assert read_meta(tmp_path / "c.onnx").provenance["quantization"]["reduce_range"] is False


def test_gate_holdout_is_the_validation_split(tiny_onnx):
    """Selection (auto, auto-exclude) is judged on val, so figures reported on test stay unseen."""
    pre = PreprocessSpec((32, 32), 1, (0.5,), (0.25,))
    cal = build_calibration(TINY, pre, (1, 32, 32), n=16, n_holdout=16)
    assert cal.info == {"calibration_split": "train", "holdout_split": "val"}


def test_entropy_records_bins(tiny_onnx, tmp_path):
    res = quantize(
        QuantizeConfig.from_options(
            input=str(tiny_onnx),
            out=str(tmp_path / "e.onnx"),
            calib_data=TINY,
            calibrator="entropy",
            num_bins=256,
            min_agreement=0.0,
            **FAST,
        )
    )
    assert res.meta.provenance["quantization"]["num_bins"] == 256


def test_histogram_calibration_with_a_partial_last_batch(tiny_onnx, tmp_path):
    # 37 images: two batches of 16 and a remainder of 5, which ORT's histogram collectors cannot stack with them.
    for calibrator in ("percentile", "entropy"):
        res = quantize(QuantizeConfig.from_options(input=str(tiny_onnx), out=str(tmp_path / f"{calibrator}.onnx"), calib_data=TINY,
                                      calibrator=calibrator, num_bins=128, min_agreement=0.0,
                                      **{**FAST, "num_calib": 37}))
        assert res.meta.provenance["quantization"]["calibration"]["num_calibration"] == 37


def test_dynamic_and_fp16(tiny_onnx, tmp_path):
    dyn = quantize(
        QuantizeConfig.from_options(
            input=str(tiny_onnx),
            out=str(tmp_path / "d.onnx"),
            calib_data=TINY,
            precision="int8-dynamic",
            **FAST,
        )
    )
    # Dynamic quantization covers the MatMul/Gemm head here (ONNX Runtime leaves the convs in fp32).
    assert dyn.precision == "int8-dynamic" and dyn.meta.precision == "int8-dynamic"
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= set(_ops(onnx.load(str(dyn.path))))
    fp16 = quantize(
        QuantizeConfig.from_options(
            input=str(tiny_onnx), out=str(tmp_path / "h.onnx"), calib_data=TINY, precision="fp16", **FAST
        )
    )
    sess = ort_session(fp16.path)
    assert sess.get_inputs()[0].type == "tensor(float)" and fp16.report["parity"]["cosine"] > 0.999
    assert fp16.size_bytes < 0.6 * fp16.input_size_bytes
    io16 = quantize(
        QuantizeConfig.from_options(
            input=str(tiny_onnx),
            out=str(tmp_path / "h2.onnx"),
            calib_data=TINY,
            precision="fp16",
            fp16_io=True,
            **FAST,
        )
    )
    assert ort_session(io16.path).get_inputs()[0].type == "tensor(float16)"


def test_auto_never_slower_than_fp32(tiny_onnx, tmp_path, monkeypatch):
    # Judge the ONNX Runtime candidates here; other engines' auto hooks are their own tests' business.
    monkeypatch.setattr(auto_precision, "AUTO_CANDIDATE_PROVIDERS", [])
    res = quantize(
        QuantizeConfig.from_options(
            input=str(tiny_onnx),
            out=str(tmp_path / "a.onnx"),
            calib_data=TINY,
            precision="auto",
            min_agreement=0.9,
            **FAST,
        )
    )
    table = res.report["auto_table"]
    # Other CPU engines (OpenVINO) may add rows; the ONNX Runtime candidates are always there.
    assert {"fp32", "int8", "int8-dynamic", "fp16"} <= {r["precision"] for r in table}
    chosen = next(r for r in table if r["chosen"])
    fp32 = next(r for r in table if r["precision"] == "fp32")
    assert chosen["passes"] and chosen["latency_ms"] <= fp32["latency_ms"]
    assert res.precision == chosen["precision"] == read_meta(res.path).precision
    assert read_meta(res.path).provenance["quantization"]["auto"]["chosen"] == chosen["precision"]


def test_auto_takes_the_most_faithful_of_a_timing_tie(tiny_onnx, tmp_path, monkeypatch):
    """Within AUTO_TIE_PCT of the fastest the timer cannot tell candidates apart: fp32 (exact) 3% slower than
    int8 wins; 20% slower it does not."""
    monkeypatch.setattr(auto_precision, "AUTO_CANDIDATE_PROVIDERS", [])

    def pick(fp32_ms):
        def fake(models, shape, runs=50, dtypes=None, rounds=5, warmup=5):
            return {k: {"fp32": fp32_ms, "int8": 1.0}.get(k, 5.0) for k in models}

        return quantize(QuantizeConfig.from_options(input=str(tiny_onnx), out=str(tmp_path / f"t{fp32_ms}.onnx"), calib_data=TINY,
                                       precision="auto", min_agreement=0.0, **FAST), timer=fake)

    res = pick(1.03)
    rows = {r["precision"]: r for r in res.report["auto_table"]}
    # agreement first, then logit cosine: on this tiny model int8 keeps every top-1 but not the logits
    assert rows["int8"]["cosine"] < rows["fp32"]["cosine"] == 1.0
    assert res.precision == "fp32" and "within 5% of the fastest" in res.report["auto_reason"]
    assert pick(1.2).precision == "int8"


def test_auto_decides_on_the_interleaved_timing(tiny_onnx, tmp_path, monkeypatch):
    """The pick follows the final interleaved loop of all candidates, not each candidate's build-time timing."""
    monkeypatch.setattr(auto_precision, "AUTO_CANDIDATE_PROVIDERS", [])
    seen = {}

    def fake_interleaved(models, shape, runs=50, dtypes=None, rounds=5, warmup=5):
        seen.update(models)
        return {k: (1.0 if k == "fp32" else 2.0) for k in models}

    res = quantize(
        QuantizeConfig.from_options(input=str(tiny_onnx), out=str(tmp_path / "i.onnx"), calib_data=TINY, precision="auto",
                       min_agreement=0.0, **FAST),
        timer=fake_interleaved,
    )
    assert {"fp32", "int8", "int8-dynamic", "fp16"} <= set(seen)
    assert res.precision == "fp32" and "interleaved" in res.report["auto_reason"]
    rows = {r["precision"]: r for r in res.report["auto_table"]}
    assert rows["int8"]["latency_ms"] == 2.0 and rows["int8"]["build_latency_ms"] > 0


def test_interleaved_latency_times_every_model(tiny_onnx):
    proto = onnx.load(str(tiny_onnx))
    ms = latency.interleaved_latency_ms(
        {"a": ("onnxruntime", proto), "b": ("onnxruntime", proto)}, (1, 1, 32, 32), runs=10, rounds=2, warmup=1
    )
    assert set(ms) == {"a", "b"} and all(v > 0 for v in ms.values())


def test_auto_exclude_keeps_worst_nodes_fp32(tiny_onnx, tmp_path, monkeypatch):
    # Latency on a 32x32 model is overhead-dominated and noisy; count QDQ pairs instead so the test judges
    # the exclusion logic, not this machine's timer.
    def fake_interleaved(models, shape, runs=50, dtypes=None, rounds=5, warmup=5):
        return {k: 10.0 - 0.1 * _ops(m).count("QuantizeLinear") for k, (_engine, m) in models.items()}

    monkeypatch.setattr(sensitivity, "SENSITIVITY_IMAGES", 8)
    cfg = QuantizeConfig.from_options(
        input=str(tiny_onnx),
        out=str(tmp_path / "x.onnx"),
        calib_data=TINY,
        min_agreement=0.0,
        min_cosine=0.99995,
        auto_exclude=True,
        **FAST,
    )
    # Deterministic (fixed calibration sample, faked timer): keeping a few of the worst nodes in fp32 meets
    # the cosine gate that plain int8 misses, so this writes a model; a GateFailure here is a regression.
    res = quantize(cfg, timer=fake_interleaved)
    ae = res.report["auto_exclude"]
    assert ae["excluded"] and res.report["parity"]["cosine"] >= 0.99995
    assert res.report["parity_naive"]["cosine"] < 0.99995
    ranking = res.report["sensitivity"]
    assert [r["sqnr_db"] for r in ranking] == sorted(r["sqnr_db"] for r in ranking)
    # Excluded nodes come from the worst of the ranking (some may have been given back to int8 afterwards).
    tried = max(s["excluded"] for s in ae["steps"])
    assert set(ae["excluded"]) <= {r["name"] for r in ranking[:tried]}
    assert set(ae["excluded"]) <= set(read_meta(res.path).provenance["quantization"]["excluded_nodes"])


def test_auto_exclude_refuses_a_model_no_faster_than_fp32(tiny_onnx, tmp_path, monkeypatch):
    """The gate holds only with some nodes in fp32, and that model is no faster than fp32: a GateFailure
    (exit 3) that says so, and nothing written."""

    def fp32_fastest(models, shape, runs=50, dtypes=None, rounds=5, warmup=5):
        return {k: 1.0 if k == "fp32" else 2.0 for k in models}

    monkeypatch.setattr(sensitivity, "SENSITIVITY_IMAGES", 8)
    cfg = QuantizeConfig.from_options(input=str(tiny_onnx), out=str(tmp_path / "x.onnx"), calib_data=TINY,
                         min_agreement=0.0, min_cosine=0.99995, auto_exclude=True, search=False, **FAST)
    msg = r"only with \d+ of \d+ nodes in fp32, and that model is not faster than fp32 \(2\.00 vs 1\.00 ms\)"
    with pytest.raises(GateFailure, match=msg):
        quantize(cfg, timer=fp32_fastest)
    assert list(tmp_path.iterdir()) == []


def test_node_macs_is_the_cost_of_a_fp32_node():
    from onnx import helper, numpy_helper

    # A stem conv (few weights, full resolution) and a matmul head over 5 tokens, batch axis dynamic.
    w = numpy_helper.from_array(np.ones((4, 1, 3, 3), np.float32), "w")
    b = numpy_helper.from_array(np.ones(4, np.float32), "b")
    m = numpy_helper.from_array(np.ones((16, 2), np.float32), "m")
    shape = numpy_helper.from_array(np.array([0, 5, 16], np.int64), "shape")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["c"], name="stem", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"], name="relu"),
            helper.make_node("Reshape", ["r", "shape"], ["t"], name="tokens"),
            helper.make_node("MatMul", ["t", "m"], ["y"], name="head"),
        ],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 1, 4, 5])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 5, 2])],
        [w, b, m, shape],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    cost = sensitivity.node_macs(proto)
    assert cost["stem"] == (36 + 4) * 4 * 5  # weights (and bias) applied at each of the 4x5 output positions
    assert cost["head"] == 32 * 5  # per token
    assert cost["relu"] == 0


def test_exclusion_schedule():
    assert sensitivity.exclusion_schedule(1) == [1]
    s = sensitivity.exclusion_schedule(50)
    assert s[0] == 1 and s[-1] == 50 and s == sorted(set(s))


def test_gate_failure_writes_nothing(tiny_onnx, tmp_path):
    """The single shot (--no-search): the first model misses the gate, refused with today's hints."""
    out = tmp_path / "g.onnx"
    with pytest.raises(GateFailure, match="parity gate.*try --auto-exclude, another --calibrator"):
        quantize(
            QuantizeConfig.from_options(input=str(tiny_onnx), out=str(out), calib_data=TINY, min_cosine=0.9999999, search=False,
                           **FAST)
        )
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_random_calibration_needs_flag_and_is_recorded(tiny_onnx, tmp_path):
    with pytest.raises(ConfigError, match="--calib-data"):
        quantize(QuantizeConfig.from_options(input=str(tiny_onnx), out=str(tmp_path / "r.onnx"), **FAST))
    res = quantize(
        QuantizeConfig.from_options(
            input=str(tiny_onnx),
            out=str(tmp_path / "r.onnx"),
            allow_random_calibration=True,
            min_agreement=0.0,
            **FAST,
        )
    )
    assert read_meta(res.path).provenance["quantization"]["calibration"]["random"] is True


# ----- calibration sampling -----------------------------------------------------------------------------------


def test_stratified_indices_keep_class_shares_and_seed():
    labels = np.array([0] * 80 + [1] * 15 + [2] * 5)
    idx = stratified_indices(labels, 20, seed=1)
    assert len(idx) == 20 and len(set(idx)) == 20
    counts = np.bincount(labels[idx], minlength=3)
    assert counts.tolist() == [16, 3, 1]
    assert (stratified_indices(labels, 20, seed=1) == idx).all()
    assert not (stratified_indices(labels, 20, seed=2) == idx).all()
    assert len(stratified_indices(labels, 500)) == 100
    rare = np.array([0] * 99 + [1])
    assert 1 in rare[stratified_indices(rare, 10)]  # every present class at least once


def test_calibration_from_unlabeled_folder_has_disjoint_holdout(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (20, 24), dtype=np.uint8)).save(tmp_path / f"im{i}.png")
    pre = PreprocessSpec((32, 32), 1, (0.5,), (0.25,))
    cal = build_calibration(f"folder:{tmp_path}", pre, (1, 32, 32), n=8, n_holdout=8)
    assert cal.images.shape == (8, 1, 32, 32) and cal.holdout.shape == (4, 1, 32, 32)
    flat = {a.tobytes() for a in cal.images}
    assert not any(h.tobytes() in flat for h in cal.holdout)


def test_held_out_images_never_share_a_source_with_calibration_images(tmp_path):
    """Crops of one photograph are one source when labels.csv says so (file,group): calibration and the gate's
    held-out images come from different photographs."""
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = ["file,group"]
    for photo in range(6):
        base = rng.integers(0, 255, (40, 40), dtype=np.uint8)
        for k, (y, x) in enumerate(((0, 0), (0, 8), (8, 0), (8, 8))):
            Image.fromarray(base[y:y + 32, x:x + 32]).save(tmp_path / f"p{photo}_{k}.png")
            rows.append(f"p{photo}_{k}.png,photo{photo}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    pre = PreprocessSpec((32, 32), 1, (0.5,), (0.25,))
    cal = build_calibration(f"folder:{tmp_path}", pre, (1, 32, 32), n=16, n_holdout=8)
    photos = {}
    for name, arr in (("cal", cal.images), ("hold", cal.holdout)):
        photos[name] = set()
        for a in arr:
            for photo in range(6):
                for k in range(4):
                    im = np.asarray(Image.open(tmp_path / f"p{photo}_{k}.png"))
                    if np.allclose(pre(im[None])[0], a):
                        photos[name].add(photo)
    assert photos["cal"] and photos["hold"] and not photos["cal"] & photos["hold"]
    assert cal.info["holdout_sources"] == len(photos["hold"])


def test_validate_inputs_errors():
    x = np.zeros((2, 1, 8, 8), np.float32)
    with pytest.raises(DataError, match="channel"):
        validate_inputs(x, (3, 8, 8), "d")
    with pytest.raises(DataError, match="--input-size"):
        validate_inputs(x, (1, 16, 16), "d")
    x[1, 0, 0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        validate_inputs(x, (1, 8, 8), "d")


def test_target_registry():
    assert "cpu" in available_targets()
    with pytest.raises(ValueError, match="already registered"):
        register_target(OnnxRuntimeConfig, precisions=("int8",))(lambda ctx: None)
    with pytest.raises(ConfigError, match="unknown --target"):
        quantize(QuantizeConfig.from_options(input="x.onnx", target="nosuch"))
    with pytest.raises(ConfigError, match="supports --precision"):
        quantize(QuantizeConfig.from_options(input="x.onnx", precision="int4"))


# ----- run directory ------------------------------------------------------------------------------------------


def test_quantize_run_dir_exports_first_and_records_manifest(tiny_run):
    res = quantize(QuantizeConfig.from_options(input=str(tiny_run), calib_data=TINY, min_agreement=0.0, **FAST))
    assert res.path == tiny_run / "student.int8.onnx" and (tiny_run / "student.onnx").is_file()
    stages = {s["stage"]: s for s in json.loads((tiny_run / "manifest.json").read_text())["stages"]}
    assert "export" in stages and stages["quantize"]["outputs"]["onnx"]["path"] == "student.int8.onnx"
    assert read_meta(res.path).label_names == read_meta(tiny_run / "student.onnx").label_names


# ----- bad input through the CLI: one line, exit 1, nothing written ----------------------------------------


def _cli(args):
    return CliRunner().invoke(cli, ["quantize", *args])


def _assert_one_line_error(r, out, code=1):
    assert r.exit_code == code, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    assert not out.exists()


def _write(model, path):
    path.write_bytes(model.SerializeToString())
    return path


def _conv_model(batch_dim, channels=1, op="Conv", domain=""):
    w = helper.make_tensor("w", TensorProto.FLOAT, [2, channels, 3, 3], np.ones(2 * channels * 9, np.float32))
    node = (
        helper.make_node(op, ["input", "w"], ["logits"], domain=domain)
        if op != "Conv"
        else helper.make_node("Conv", ["input", "w"], ["logits"], pads=[1, 1, 1, 1])
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch_dim, channels, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch_dim, 2, 8, 8])],
        [w],
    )
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets)


def test_cli_corrupt_file(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage\xff" * 10)
    out = tmp_path / "o.onnx"
    _assert_one_line_error(_cli([str(bad), "--calib-data", TINY, "--out", str(out)]), out)


def test_cli_foreign_onnx_needs_flags(tmp_path):
    m = _write(_conv_model("N"), tmp_path / "foreign.onnx")
    out = tmp_path / "o.onnx"
    r = _cli([str(m), "--calib-data", TINY, "--out", str(out), "--input-size", "8", "--channels", "1"])
    _assert_one_line_error(r, out)
    assert "--mean" in r.output and "--std" in r.output and "--channels" not in r.output


def test_cli_foreign_onnx_with_flags_works(tmp_path):
    m = _write(_conv_model("N"), tmp_path / "foreign.onnx")
    out = tmp_path / "o.onnx"
    r = _cli(
        [
            str(m),
            "--calib-data",
            TINY,
            "--out",
            str(out),
            "--input-size",
            "8",
            "--channels",
            "1",
            "--mean",
            "0.5",
            "--std",
            "0.25",
            "--num-calib",
            "16",
            "--num-holdout",
            "16",
            "--min-agreement",
            "0",
            "--quiet",
        ]
    )
    assert r.exit_code == 0, r.output
    assert read_meta(out).precision == "int8"


def test_cli_wrong_channels(tmp_path):
    m = _write(_conv_model("N", channels=3), tmp_path / "c3.onnx")
    out = tmp_path / "o.onnx"
    r = _cli(
        [
            str(m),
            "--calib-data",
            TINY,
            "--out",
            str(out),
            "--input-size",
            "8",
            "--channels",
            "1",
            "--mean",
            "0.5",
            "--std",
            "0.25",
        ]
    )
    _assert_one_line_error(r, out)
    assert "--channels" in r.output


def test_cli_no_batch_axis(tmp_path):
    m = _write(_conv_model(1), tmp_path / "fixed.onnx")
    out = tmp_path / "o.onnx"
    r = _cli(
        [
            str(m),
            "--calib-data",
            TINY,
            "--out",
            str(out),
            "--input-size",
            "8",
            "--channels",
            "1",
            "--mean",
            "0.5",
            "--std",
            "0.25",
        ]
    )
    _assert_one_line_error(r, out)
    assert "batch" in r.output


def test_cli_unsupported_op(tmp_path):
    m = _write(_conv_model("N", op="FancyConv", domain="com.example"), tmp_path / "custom.onnx")
    out = tmp_path / "o.onnx"
    r = _cli(
        [
            str(m),
            "--calib-data",
            TINY,
            "--out",
            str(out),
            "--input-size",
            "8",
            "--channels",
            "1",
            "--mean",
            "0.5",
            "--std",
            "0.25",
        ]
    )
    _assert_one_line_error(r, out)


def test_cli_nan_calibration(tiny_onnx, tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.random((20, 32, 32)).astype(np.float32)
    imgs[3, 4, 4] = np.nan
    np.savez(
        tmp_path / "nan.npz",
        train_images=imgs,
        train_labels=np.arange(20) % 2,
        test_images=imgs,
        test_labels=np.arange(20) % 2,
    )
    out = tmp_path / "o.onnx"
    r = _cli([str(tiny_onnx), "--calib-data", f"medmnist:{tmp_path / 'nan.npz'}", "--out", str(out)])
    _assert_one_line_error(r, out)
    assert "NaN" in r.output


def test_cli_wrong_calibration_channels(tiny_onnx, tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, (20, 32, 32, 3), dtype=np.uint8)
    np.savez(
        tmp_path / "rgb.npz",
        train_images=imgs,
        train_labels=np.arange(20) % 2,
        test_images=imgs,
        test_labels=np.arange(20) % 2,
    )
    out = tmp_path / "o.onnx"
    r = _cli([str(tiny_onnx), "--calib-data", f"medmnist:{tmp_path / 'rgb.npz'}", "--out", str(out)])
    _assert_one_line_error(r, out)
    assert "channel" in r.output


def test_cli_gate_failure_exit_3(tiny_onnx, tmp_path):
    out = tmp_path / "o.onnx"
    r = _cli(
        [
            str(tiny_onnx),
            "--calib-data",
            TINY,
            "--out",
            str(out),
            "--min-cosine",
            "0.9999999",
            "--num-calib",
            "16",
            "--num-holdout",
            "16",
            "--allow-small-holdout",
            "--no-search",
            "--quiet",
        ]
    )
    _assert_one_line_error(r, out, code=3)
    assert "try --auto-exclude, another --calibrator" in r.output and "search" not in r.output


def test_precision_mismatch_is_model_error(tmp_path, tiny_onnx):
    res = quantize(
        QuantizeConfig.from_options(
            input=str(tiny_onnx), out=str(tmp_path / "f.onnx"), calib_data=TINY, precision="fp16", **FAST
        )
    )
    with pytest.raises(ModelError, match="already fp16"):
        quantize(QuantizeConfig.from_options(input=str(res.path), out=str(tmp_path / "g.onnx"), calib_data=TINY, **FAST))


def test_a_first_shot_int8_model_is_timed_against_fp32(gray_onnx, tiny_data, tmp_path):
    """No search ran (the first model passed the gate), so quantize times it against fp32 itself and says so."""
    from medfm_compress.compress.quantize import QuantizeConfig, quantize

    res = quantize(QuantizeConfig.from_options(input=str(gray_onnx), calib_data=tiny_data, target="cpu", min_agreement=0.0,
                                  num_calib=16, num_holdout=16, allow_small_holdout=True, out=str(tmp_path / "q.onnx"), progress=False))
    s = res.report["speed_vs_fp32"]
    assert s["batch_size"] == 1 and s["ms"] > 0 and s["fp32_ms"] > 0
    assert s["speedup"] == pytest.approx(s["fp32_ms"] / s["ms"])



def test_the_cli_restates_no_default(monkeypatch):
    """Options left out on the command line are QuantizeConfig's own defaults (defaults live once, in the config);
    the flags given are passed, the searched ones pinned."""
    from medfm_compress.commands import quantize as command

    cfg = config_built(monkeypatch, command, "quantize", ["quantize", "m.onnx", "--quiet"])
    assert cfg == QuantizeConfig.from_options(input="m.onnx", progress=False)
    cfg = config_built(monkeypatch, command, "quantize", [
        "quantize", "m.onnx", "--quiet", "--per-tensor", "--calibrator", "minmax", "--min-pearson", "0.95",
        "--exclude", "a,b"])
    assert cfg == QuantizeConfig.from_options(input="m.onnx", progress=False, per_channel=False, calibrator="minmax",
                                 min_pearson=0.95, exclude_nodes=("a", "b"), pinned=("calibrator", "per_channel"))


def test_calibration_reader_reports_each_batch_for_a_progress_bar():
    from medfm_compress.compress.calibration import CalibrationReader

    seen = []
    reader = CalibrationReader("input", np.zeros((10, 1, 4, 4), np.float32), batch=4, on_batch=seen.append)
    while reader.get_next() is not None:
        pass
    assert seen == [4, 4, 2]


def test_a_holdout_too_small_for_the_gate_is_refused_before_quantizing(tiny_onnx, tmp_path):
    out = tmp_path / "q.onnx"
    r = CliRunner().invoke(cli, ["quantize", str(tiny_onnx), "--calib-data", TINY, "--num-calib", "32",
                                 "--num-holdout", "32", "--no-search", "--quiet", "--out", str(out)])
    assert r.exit_code == 1 and r.output.count("\n") == 1, r.output
    assert "32 held-out images cannot show top-1 agreement >= 0.975" in r.output
    assert "it takes at least 150 images that all agree" in r.output and "--allow-small-holdout" in r.output
    assert not out.exists()
