"""``--precision auto --batch-sizes``: the choice per batch size (fake timers), the files and tables it writes, the
recipe field and CLI flag, and the ``streams`` way of running an ONNX Runtime model it may recommend."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from support.quant_models import tiny_resnet_onnx
from support.tiny import TINY_DATA as TINY

from medfm_compress.bench.report import batch_choice_markdown, batch_choices
from medfm_compress.cli import cli
from medfm_compress.compress import auto_precision, latency
from medfm_compress.compress.quantize import QuantizeConfig, available_targets, quantize
from medfm_compress.errors import ConfigError
from medfm_compress.runtime import Engine
from medfm_compress.runtime.onnx_loader import BatchStreams, read_meta, run_onnx

FAST = {"num_calib": 32, "num_holdout": 32, "allow_small_holdout": True, "latency_runs": 5, "progress": False}


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    return tiny_resnet_onnx(tmp_path_factory.mktemp("qb") / "tiny.onnx")


def fake_timer(per_batch: dict[int, dict[str, float]], seen: list | None = None):
    """An ``interleaved_latency_ms`` that answers from ``per_batch[batch][key]`` (50 ms for keys not listed)."""

    def fake(models, shape, runs=50, dtypes=None, rounds=5, warmup=5):
        if seen is not None:
            seen.append((shape[0], dict(models)))
        return {k: per_batch[shape[0]].get(k, 50.0) for k in models}

    return fake


@pytest.fixture
def two_cores(monkeypatch):
    # ONNX Runtime candidates only (other engines' auto hooks are their own tests' business), two streams at batch > 1.
    # Targets are discovered first: the OpenVINO module registers its provider on import.
    available_targets()
    monkeypatch.setattr(auto_precision, "AUTO_CANDIDATE_PROVIDERS", [])
    monkeypatch.setattr(auto_precision, "auto_streams", lambda: 2)


def test_auto_chooses_per_batch_size_and_writes_the_other_winner(tiny_onnx, tmp_path, monkeypatch, two_cores):
    """int8 wins batch 1; at batch 32 fp16 run as two streams wins: both files are written and every artifact's
    metadata, the report and the result name the file and run settings for each batch size."""
    seen: list = []
    timer = (fake_timer(
        {1: {"fp32": 2.0, "int8": 1.0}, 32: {"fp32": 20.0, "int8": 30.0, "int8@streams2": 25.0, "fp16@streams2": 9.0}},
        seen))
    res = quantize(QuantizeConfig.from_options(input=str(tiny_onnx), out=str(tmp_path / "auto.onnx"), calib_data=TINY,
                                  precision="auto", batch_sizes=(1, 32), min_agreement=0.0, **FAST), timer=timer)
    # One interleaved loop per batch size; streams only where there is a batch to split.
    assert [b for b, _ in seen] == [1, 32]
    assert not any("@streams" in k for k in seen[0][1])
    assert {"fp32@streams2", "int8@streams2", "fp16@streams2"} <= set(seen[1][1])
    assert seen[1][1]["int8@streams2"][-1] == 2
    assert res.precision == "int8" and read_meta(res.path).precision == "int8"
    companion = tmp_path / "auto.bs32.onnx"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["auto.bs32.onnx", "auto.onnx"]
    assert read_meta(companion).precision == "fp16"
    rows = {r["batch_size"]: r for r in res.by_batch}
    assert rows[1]["path"] == res.path and rows[1]["streams"] == 1 and rows[1]["speedup_vs_fp32"] == 2.0
    assert rows[32]["path"] == companion and rows[32]["streams"] == 2 and rows[32]["candidate"] == "fp16"
    assert rows[32]["latency_ms"] == 9.0 and rows[32]["throughput_per_s"] == pytest.approx(32000 / 9.0)
    assert rows[32]["speedup_vs_fp32"] == pytest.approx(20.0 / 9.0)  # against fp32 as one run (the default)
    for path in (res.path, companion):
        auto = read_meta(path).provenance["quantization"]["auto"]
        assert auto["batch_sizes"] == [1, 32]
        assert [(r["batch_size"], r["artifact"], r["streams"]) for r in auto["by_batch"]] == [
            (1, "auto.onnx", 1), (32, "auto.bs32.onnx", 2)]
    assert read_meta(companion).provenance["quantization"]["auto"]["chosen"] == "fp16"
    table = {r["precision"]: r for r in res.report["auto_table"]}
    assert table["int8"]["batch_latency_ms"] == {"1": {"1": 1.0}, "32": {"1": 30.0, "2": 25.0}}
    assert table["int8"]["chosen_for_batch_sizes"] == [1] and table["fp16"]["chosen_for_batch_sizes"] == [32]
    assert "at batch 32: fp16 (onnxruntime, 2 streams) is the fastest at batch 32" in res.report["auto_reason"]


def test_an_ir_winning_batch_32_is_written_beside_the_onnx(tiny_onnx, tmp_path, monkeypatch, two_cores):
    """Without --out every engine competes: an OpenVINO-like IR candidate winning batch 32 is saved by its own writer
    as <stem>.bs32.xml (+ .bin), ONNX Runtime int8 at batch 1 as <stem>.int8.onnx."""
    import shutil

    from medfm_compress.compress.onnxruntime_quant import copy_proto
    from medfm_compress.compress.quantize import QuantizedModel

    def save(meta, out):
        out.write_text(json.dumps({"precision": meta.precision, "provenance": meta.provenance}))
        out.with_suffix(".bin").write_bytes(b"weights")
        return out

    def ir_candidates(ctx, ref):
        qm = QuantizedModel(copy_proto(ctx.fp32_proto), "int8", {"engine": "openvino"}, {}, save=save, suffix=".xml")
        return [({"precision": "openvino-int8", "engine": "openvino", "latency_ms": 1.0, "top1_agreement": 1.0,
                  "cosine": 1.0, "passes": True, "size_bytes": 7}, qm)]

    monkeypatch.setattr(auto_precision, "AUTO_CANDIDATE_PROVIDERS", [ir_candidates])
    timer = (fake_timer(
        {1: {"fp32": 2.0, "int8": 1.0}, 32: {"fp32": 20.0, "openvino-int8": 6.0}}))
    src = tmp_path / "student.onnx"
    shutil.copy(tiny_onnx, src)
    res = quantize(QuantizeConfig.from_options(input=str(src), calib_data=TINY, precision="auto", batch_sizes=(1, 32),
                                  min_agreement=0.0, **FAST), timer=timer)
    assert res.path == tmp_path / "student.int8.onnx"
    ir = tmp_path / "student.int8.bs32.xml"
    assert [(r["batch_size"], r["path"], r["engine"]) for r in res.by_batch] == [
        (1, res.path, "onnxruntime"), (32, ir, "openvino")]
    saved = json.loads(ir.read_text())
    assert saved["precision"] == "int8" and saved["provenance"]["quantization"]["auto"]["chosen"] == "openvino-int8"
    assert [r["artifact"] for r in saved["provenance"]["quantization"]["auto"]["by_batch"]] == [
        "student.int8.onnx", "student.int8.bs32.xml"]
    assert ir.with_suffix(".bin").is_file() and res.size_bytes == res.path.stat().st_size


def test_one_model_for_every_batch_size_is_written_once(tiny_onnx, tmp_path, monkeypatch, two_cores):
    """int8 wins both batch sizes (as two streams at batch 8): one file; the table says how to run it at each."""
    timer = (fake_timer(
        {1: {"fp32": 2.0, "int8": 1.0}, 8: {"fp32": 10.0, "int8": 8.0, "int8@streams2": 5.0}}))
    res = quantize(QuantizeConfig.from_options(input=str(tiny_onnx), out=str(tmp_path / "one.onnx"), calib_data=TINY,
                                  precision="auto", batch_sizes=(8, 1, 8), min_agreement=0.0, **FAST), timer=timer)
    assert [p.name for p in tmp_path.iterdir()] == ["one.onnx"]
    # Duplicates go, the order stays: the first batch size given decides the model at --out.
    assert [(r["batch_size"], r["path"].name, r["streams"]) for r in res.by_batch] == [(8, "one.onnx", 2),
                                                                                     (1, "one.onnx", 1)]
    assert res.report["auto_table"][1]["latency_ms"] == 5.0  # the first batch size, fastest way to run it


def test_a_tie_at_a_batch_size_keeps_the_simpler_run(tiny_onnx, tmp_path, monkeypatch, two_cores):
    """Within AUTO_TIE_PCT the most faithful wins, then one run over streams: int8 as streams 3% faster than int8
    as one run is no reason to recommend streams."""
    timer = (fake_timer(
        {1: {"int8": 1.0}, 16: {"fp32": 20.0, "int8": 10.3, "int8@streams2": 10.0}}))
    res = quantize(QuantizeConfig.from_options(input=str(tiny_onnx), out=str(tmp_path / "t.onnx"), calib_data=TINY,
                                  precision="auto", batch_sizes=(1, 16), min_agreement=0.0, **FAST), timer=timer)
    row = res.by_batch[1]
    assert (row["candidate"], row["streams"], row["latency_ms"]) == ("int8", 1, 10.3)
    assert "within 5% of the fastest at batch 16" in res.report["auto_reason"]


def test_without_batch_sizes_auto_times_batch_1_only(tiny_onnx, tmp_path, monkeypatch, two_cores):
    seen: list = []
    timer = (fake_timer({1: {"fp32": 1.0}}, seen))
    res = quantize(QuantizeConfig.from_options(input=str(tiny_onnx), out=str(tmp_path / "b1.onnx"), calib_data=TINY,
                                  precision="auto", min_agreement=0.0, **FAST), timer=timer)
    assert [b for b, _ in seen] == [1] and res.by_batch == [] and "auto_by_batch" not in res.report
    assert "by_batch" not in read_meta(res.path).provenance["quantization"]["auto"]


def test_batch_sizes_config_errors():
    with pytest.raises(ConfigError, match="with precision auto; precision int8 makes one model"):
        QuantizeConfig.from_options(input="m.onnx", batch_sizes=(1, 32))
    for bad in ((0,), (), (1, -2), (1.5,)):
        with pytest.raises(ConfigError, match="must be positive integers|must be an integer, got 1.5"):
            QuantizeConfig.from_options(input="m.onnx", precision="auto", batch_sizes=bad)
    assert QuantizeConfig.from_options(input="m.onnx", precision="auto",
                                       batch_sizes=(32, 1, 32)).backend.batch_sizes == (32, 1)
    # Only the cpu target chooses per batch size; another one refuses the option by name.
    with pytest.raises(ConfigError, match="--target openvino does not use batch_sizes"):
        QuantizeConfig.from_options(input="m.onnx", target="openvino", precision="auto", batch_sizes=(1,))


def test_recipe_variant_batch_sizes():
    from medfm_compress.pipeline import resolve_recipe

    r = resolve_recipe({"quantize": [{"name": "auto", "precision": "auto", "batch_sizes": [1, 32]}], "bench": None})
    assert r.quantize[0]["batch_sizes"] == [1, 32]
    with pytest.raises(ConfigError, match="remove batch_sizes"):
        resolve_recipe({"quantize": [{"name": "q", "precision": "int8", "batch_sizes": [1, 32]}], "bench": None})
    with pytest.raises(ConfigError, match="batch_sizes must be a list"):
        resolve_recipe({"quantize": [{"name": "q", "precision": "auto", "batch_sizes": "1,32"}], "bench": None})


def test_pipeline_benches_the_artifact_of_each_batch_size(tiny_onnx, tmp_path, monkeypatch, two_cores):
    """The bench stage of a recipe adds, per batch size, the artifact and run settings the auto variant names."""
    from medfm_compress.pipeline import _batch_artifacts

    timer = (fake_timer(
        {1: {"fp32": 2.0, "int8": 1.0}, 4: {"fp32": 9.0, "int8@streams2": 3.0}, 32: {"fp16": 5.0}}))
    variant = {"name": "auto", "target": "cpu", "precision": "auto", "batch_sizes": [1, 4, 32]}
    quantize(QuantizeConfig.from_options(input=str(tiny_onnx), out=str(tmp_path / "student.auto.onnx"), calib_data=TINY,
                            precision="auto", batch_sizes=(1, 4, 32), min_agreement=0.0, **FAST), timer=timer)
    assert _batch_artifacts(tmp_path, variant) == [
        ("student-auto-bs4", f"{tmp_path / 'student.auto.onnx'}?streams=2"),
        ("student-auto-bs32", str(tmp_path / "student.auto.bs32.onnx"))]
    assert _batch_artifacts(tmp_path, {**variant, "batch_sizes": None}) == []


def test_cli_batch_sizes(tiny_onnx, tmp_path, monkeypatch, two_cores):
    monkeypatch.setattr(latency, "interleaved_latency_ms", fake_timer(
        {1: {"fp32": 2.0, "int8": 1.0}, 32: {"fp32": 20.0, "int8@streams2": 8.0}}))
    out = tmp_path / "c.onnx"
    common = ["quantize", str(tiny_onnx), "--out", str(out), "--calib-data", TINY, "--min-agreement", "0",
              "--num-calib", "32", "--num-holdout", "32", "--allow-small-holdout", "--quiet"]
    args = [*common, "--precision", "auto"]
    r = CliRunner().invoke(cli, [*args, "--batch-sizes", "1,32"])
    assert r.exit_code == 0, r.output
    assert f"batch    1: use {out} (int8, onnxruntime): 1.000 ms" in r.output
    assert f"batch   32: use {out} (int8, onnxruntime, streams=2): 8.000 ms, 4000/s, 2.50x fp32" in r.output
    r = CliRunner().invoke(cli, [*args, "--batch-sizes", "1,x"])
    assert r.exit_code == 2 and "not a comma-separated list of int" in r.output
    r = CliRunner().invoke(cli, [*common, "--precision", "int8", "--batch-sizes", "1,32"])
    assert r.exit_code == 1 and "remove batch_sizes" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(cli, [*args, "--batch-sizes", "1,32", "--json"])
    rows = json.loads(r.output)["report"]["auto_by_batch"]
    assert [(x["batch_size"], x["streams"], x["artifact"]) for x in rows] == [(1, 1, "c.onnx"), (32, 2, "c.onnx")]


# ----- streams: running a batch as concurrent single-threaded sub-batches --------------------------------------


def test_batch_streams_split_and_join_in_order():
    calls = []

    def fn(x):
        calls.append(len(x))
        return x * 2

    bs = BatchStreams(3)
    try:
        x = np.arange(7, dtype=np.float32)[:, None]
        assert np.array_equal(bs.run(fn, x), x * 2) and sorted(calls) == [2, 2, 3]
        calls.clear()
        assert np.array_equal(bs.run(fn, x[:1]), x[:1] * 2) and calls == [1]  # nothing to split
    finally:
        bs.close()


def test_engine_streams_match_one_run_and_refuse_bad_values(tiny_onnx):
    x = np.random.default_rng(0).standard_normal((5, 1, 32, 32)).astype(np.float32)
    ref = run_onnx(onnx.load(str(tiny_onnx)), x)
    with Engine.load(tiny_onnx, threads=2, streams=2) as eng:
        assert np.allclose(eng.run(x), ref, atol=1e-5) and eng.info["streams"] == 2
    for bad, msg in ((3, r"streams \(3\) must not exceed the threads \(2\)"), (0, "integer >= 1"),
                     ("2", "integer >= 1")):
        with pytest.raises(ConfigError, match=msg):
            Engine.load(tiny_onnx, threads=2, streams=bad)


def test_interleaved_latency_times_streams(tiny_onnx):
    proto = onnx.load(str(tiny_onnx))
    ms = latency.interleaved_latency_ms({"one": ("onnxruntime", proto), "two": ("onnxruntime", proto, "fp32", 2)},
                                        (4, 1, 32, 32), runs=4, rounds=2, warmup=1)
    assert set(ms) == {"one", "two"} and all(v > 0 for v in ms.values())
    with pytest.raises(ValueError, match="streams apply to onnxruntime"):
        latency.candidate_call("openvino", proto, np.zeros((2, 1, 32, 32), np.float32), streams=2)


# ----- the bench report's batch-size table ----------------------------------------------------------------------


def _entry(name, p50s, reference=False, options=None):
    return {"name": name, "reference": reference, "backend": "onnxruntime", "precision": name, "threads": 2,
            "options": options or {}, "latency": {str(b): {"engine": {"p50_ms": ms}} for b, ms in p50s.items()}}


def test_report_says_which_artifact_at_which_batch_size():
    report = {"artifacts": [_entry("fp32", {1: 2.0, 32: 20.0}, reference=True), _entry("int8", {1: 0.8, 32: 18.0}),
                            _entry("int8-bs32", {1: 1.0, 32: 10.0}, options={"streams": 2}),
                            _entry("bad", {1: 0.1, 32: 1.0})],
              "gates": [{"gate": "min_agreement", "artifact": "bad", "passed": False},
                        {"gate": "min_speedup", "artifact": "int8", "passed": False}]}
    rows = {r["batch_size"]: r for r in batch_choices(report)}
    # "bad" fails an accuracy gate: never recommended; a missed speed gate does not disqualify.
    assert rows[1]["artifact"] == "int8" and rows[1]["speedup_vs_reference"] == pytest.approx(2.5)
    assert rows[32]["artifact"] == "int8-bs32" and rows[32]["runner_up"] == "int8"
    md = "\n".join(batch_choice_markdown(report))
    assert "## Which artifact at which batch size" in md
    assert ("| 32 | int8-bs32 (2 thread(s), streams=2) | onnxruntime | int8-bs32 | 10.000 | 3200.0 | 2.00x "
            "| int8 (1.80x) |") in md
    assert batch_choice_markdown({"artifacts": [_entry("x", {})], "gates": []}) == []
