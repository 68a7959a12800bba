"""Latency statistics, the paired bootstrap, and `medfm-compress bench` gates and exit codes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from support.cli import config_built
from support.tiny import TINY_DATA

from medfm_compress import metrics as M
from medfm_compress.bench.latency import LatencyConfig, measure_end_to_end, measure_engine, summarize
from medfm_compress.cli import cli
from medfm_compress.errors import ConfigError
from medfm_compress.runtime.tasks import get_task
from medfm_compress.runtime.tasks.classification import BOOTSTRAP_METRICS

FAST = ["--iterations", "5", "--warmup", "1", "--bootstrap", "200", "--quiet"]


@pytest.fixture(scope="module")
def student_onnx(tiny_run, tmp_path_factory):
    import torch

    from medfm_compress.export.onnx_build import export_model_to_onnx
    from medfm_compress.models import load_model
    from medfm_compress.runtime.metadata import ModelMeta

    model, card = load_model(tiny_run)
    dest = tmp_path_factory.mktemp("onnx") / "student.onnx"
    return export_model_to_onnx(model, ModelMeta.from_card(card), dest,
                                torch.zeros(1, card.in_chans, *card.preprocess.input_size))


# ----- latency -----


def test_summarize_known_values():
    s = summarize([0.001, 0.002, 0.003, 0.004, 0.010], batch_size=2)
    assert s["n"] == 5 and s["p50_ms"] == pytest.approx(3.0) and s["min_ms"] == pytest.approx(1.0)
    assert s["mean_ms"] == pytest.approx(4.0) and s["max_ms"] == pytest.approx(10.0)
    assert s["p99_ms"] == pytest.approx(np.percentile([1, 2, 3, 4, 10], 99))
    assert s["throughput_per_s"] == pytest.approx(2 * 1000 / 4.0)
    assert s["std_ms"] == pytest.approx(np.std([1, 2, 3, 4, 10]))
    with pytest.raises(ValueError):
        summarize([])


def test_latency_config_checks():
    with pytest.raises(ConfigError, match="iterations"):
        LatencyConfig(iterations=0)
    with pytest.raises(ConfigError, match="duration"):
        LatencyConfig(duration_s=0)


def test_measure_engine_and_end_to_end(student_onnx):
    from medfm_compress.data import load_data
    from medfm_compress.runtime import Engine

    images = load_data(TINY_DATA).split("test").images
    with Engine.load(student_onnx, threads=1) as eng:
        x = eng.preprocess(images[:4])
        s = measure_engine(eng, x, LatencyConfig(iterations=7, warmup=2))
        assert s["n"] == 7 and s["batch_size"] == 4 and s["threads"] == 1 and s["clock"] == "perf_counter"
        assert 0 < s["min_ms"] <= s["p50_ms"] <= s["p99_ms"] and s["peak_rss_bytes"] > 0
        d = measure_engine(eng, x[:1], LatencyConfig(iterations=3, warmup=0, warmup_s=0.05, duration_s=0.1))
        assert d["n"] >= 3 and d["n"] * d["mean_ms"] >= 0.1 * 1e3 * 0.9
        e = measure_end_to_end(eng, images, LatencyConfig(iterations=5, warmup=1))
        assert e["n"] == 5 and e["batch_size"] == 1


# ----- paired bootstrap -----


def _random_case(seed: int, n: int, task: str, k: int = 3):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, k))
    if task == "multilabel":
        labels = (rng.random((n, k)) > 0.5).astype(np.float32)
    else:
        labels = rng.integers(0, k, n)
    return logits, labels


@pytest.mark.parametrize("task,k", [("multiclass", 4), ("binary", 2), ("multilabel", 3)])
def test_bootstrap_of_a_model_against_itself_is_exactly_zero(task, k):
    logits, labels = _random_case(1, 150, task, k)
    t = get_task(task)
    th = t.operating_point(logits, labels)
    assert (th is None) == (task == "multiclass")
    res = t.paired_bootstrap(logits, logits.copy(), labels, th, n_resamples=300, seed=5)
    for m in BOOTSTRAP_METRICS:
        assert res[m]["delta"] == 0.0 and res[m]["ci_low"] == 0.0 and res[m]["ci_high"] == 0.0, m
    assert res["macro_auc"]["reference"] == pytest.approx(t.macro_auc(logits, labels))
    assert res["accuracy"]["reference"] == pytest.approx(t.accuracy(logits, labels))


def test_bootstrap_is_seeded_and_detects_a_worse_model():
    logits, labels = _random_case(2, 300, "multiclass", 3)
    good = logits.copy()
    good[np.arange(300), labels] += 3.0  # a model that is mostly right
    a = get_task("multiclass").paired_bootstrap(good, logits, labels, n_resamples=200, seed=0)
    b = get_task("multiclass").paired_bootstrap(good, logits, labels, n_resamples=200, seed=0)
    assert a == b
    assert a["macro_auc"]["ci_high"] < 0 and a["accuracy"]["ci_high"] < 0


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(20, 80), noise=st.floats(0.0, 2.0),
       task=st.sampled_from(["multiclass", "binary", "multilabel"]))
def test_bootstrap_ci_contains_the_point_estimate(seed, n, noise, task):
    k = 2 if task == "binary" else 3
    logits, labels = _random_case(seed, n, task, k)
    other = logits + np.random.default_rng(seed + 1).normal(scale=noise, size=logits.shape)
    res = get_task(task).paired_bootstrap(logits, other, labels, None if task == "multiclass" else np.full(
        1 if task == "binary" else k, 0.5), n_resamples=200, seed=seed)
    for m in ("accuracy", "macro_auc"):
        r = res[m]
        if r["delta"] is None or r["ci_low"] is None:
            continue
        assert r["ci_low"] - 1e-12 <= r["ci_high"]
        # the percentile interval of a paired difference brackets the observed difference (with a small slack
        # for the discreteness of accuracy on tiny sets)
        assert r["ci_low"] - 1e-9 <= r["delta"] + 1.0 / n and r["delta"] - 1.0 / n <= r["ci_high"] + 1e-9


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 60), ties=st.booleans())
def test_weighted_auc_equals_rank_auc_with_unit_weights(seed, n, ties):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, n).astype(float) if ties else rng.normal(size=n)
    targets = rng.random(n) > 0.5
    got = M.weighted_auc(scores, targets, np.ones((1, n)))[0]
    want = M.binary_auc(scores, targets)
    assert (np.isnan(got) and np.isnan(want)) or got == pytest.approx(want)
    # integer weights = repeating cases
    w = rng.integers(0, 3, n)
    rep = M.weighted_auc(np.repeat(scores, w), np.repeat(targets, w), np.ones((1, int(w.sum()))))[0]
    got_w = M.weighted_auc(scores, targets, w[None, :])[0]
    assert (np.isnan(rep) and np.isnan(got_w)) or got_w == pytest.approx(rep)


# ----- CLI gates -----


def _bench(args):
    return CliRunner().invoke(cli, ["bench", *args], catch_exceptions=False)


def test_bench_gates_pass_exit_0(tiny_run, student_onnx, tmp_path):
    out = tmp_path / "rep"
    res = _bench([f"teacher={tiny_run / 'teacher'}", f"student={student_onnx}", "--reference", "teacher",
                  "--data", TINY_DATA, "--batch-sizes", "1,4", *FAST, "--min-agreement", "0", "--max-size-mb", "100",
                  "--max-p50-ms", "10000", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["passed"] and {g["gate"] for g in report["gates"]} == {"min_agreement", "max_size_mb", "max_p50_ms"}
    assert set(report["artifacts"][1]["latency"]) == {"1", "4"}
    assert report["artifacts"][0]["self_check"]["macro_auc"]["ci_low"] == 0.0
    assert (out / "report.json").is_file() and (out / "junit.xml").is_file()


def test_bench_failed_gate_exit_3_after_writing_reports(tiny_run, student_onnx, tmp_path):
    out = tmp_path / "rep"
    res = _bench([f"student_torch={tiny_run}", f"student={student_onnx}", "--data", TINY_DATA, *FAST,
                  "--max-size-mb", "0.001", "--max-auc-drop", "1.0", "--out", str(out)])
    assert res.exit_code == 3, res.output
    assert "max_size_mb[student]" in res.output
    report = json.loads((out / "report.json").read_text())
    gates = {g["name"]: g for g in report["gates"]}
    assert not report["passed"] and not gates["max_size_mb[student]"]["passed"]
    # torch and ONNX of the same weights: the AUC drop CI is ~[0, 0], inside the 1-point margin
    assert gates["max_auc_drop[student]"]["passed"] and abs(gates["max_auc_drop[student]"]["value"]) < 0.5


def test_bench_user_errors_exit_1(tiny_run, student_onnx, tmp_path):
    res = _bench([f"a={student_onnx}", "--reference", "b", "--data", TINY_DATA, *FAST])
    assert res.exit_code == 1 and "--reference 'b' is not one of the artifacts" in res.output
    res = _bench([f"a={student_onnx}", "--backend", "nope", "--data", TINY_DATA, *FAST])
    assert res.exit_code == 1 and "unknown runtime backend 'nope'" in res.output
    # data whose label set does not match the model
    rng = np.random.default_rng(0)
    npz = tmp_path / "six.npz"
    arrays = {}
    for s, n in (("train", 12), ("val", 6), ("test", 12)):
        arrays[f"{s}_images"] = rng.integers(0, 255, (n, 32, 32), dtype=np.uint8)
        arrays[f"{s}_labels"] = (np.arange(n) % 6)[:, None]
    np.savez(npz, **arrays)
    res = _bench([f"a={student_onnx}", "--data", f"medmnist:{npz}", *FAST])
    assert res.exit_code == 1 and "predicts 4 classes but the data has 6" in res.output
    # 3-channel data for a 1-channel model
    for s in ("train", "val", "test"):
        arrays[f"{s}_images"] = np.repeat(arrays[f"{s}_images"][..., None], 3, axis=-1)
        arrays[f"{s}_labels"] = (np.arange(len(arrays[f"{s}_labels"])) % 4)[:, None]
    np.savez(npz, **arrays)
    res = _bench([f"a={student_onnx}", "--data", f"medmnist:{npz}", *FAST])
    assert res.exit_code == 1 and "expects 1-channel images but the data has 3" in res.output


def test_bench_skips_batch_sizes_a_static_artifact_cannot_take(student_onnx, tmp_path):
    import onnx

    proto = onnx.load(str(student_onnx))
    for v in (*proto.graph.input, *proto.graph.output):
        v.type.tensor_type.shape.dim[0].dim_value = 2
    fixed = tmp_path / "fixed2.onnx"
    onnx.save(proto, str(fixed))
    res = _bench([f"dyn={student_onnx}", f"fixed={fixed}", "--data", TINY_DATA, "--batch-sizes", "1,2", *FAST,
                  "--min-agreement", "0.99", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    lat = report["artifacts"][1]["latency"]
    assert "skipped" in lat["1"] and lat["2"]["engine"]["batch_size"] == 2
    assert report["artifacts"][1]["end_to_end"] is None
    assert report["artifacts"][1]["parity"]["top1_agreement"] == 1.0  # padded batches give the same outputs


@pytest.mark.gpu
def test_cuda_latency_uses_events_and_records_device_memory(tiny_run):
    from medfm_compress.data import load_data
    from medfm_compress.runtime import Engine

    images = load_data(TINY_DATA).split("test").images
    for graphs in (False, True):
        with Engine.load(tiny_run, device="cuda", cuda_graphs=graphs) as eng:
            s = measure_engine(eng, eng.preprocess(images[:4]), LatencyConfig(iterations=10, warmup=3))
            assert s["clock"] == "cuda_events" and s["peak_device_memory_bytes"] > 0 and s["p50_ms"] > 0


def test_artifact_options_parse_and_reach_the_backend(tiny_run):
    from medfm_compress.bench.harness import parse_artifacts, split_artifact_options
    from medfm_compress.errors import ConfigError

    assert split_artifact_options(f"{tiny_run}?name=teacher&cuda_graphs=true&precision=bf16&n=3") == (
        str(tiny_run), {"name": "teacher", "cuda_graphs": True, "precision": "bf16", "n": 3})
    assert parse_artifacts([f"{tiny_run}/student.json?precision=bf16"])[0][0] == "student"
    with pytest.raises(ConfigError, match="must be KEY=VALUE"):
        parse_artifacts([f"t={tiny_run}?teacher"])
    res = _bench([f"fp32={tiny_run}", f"bf16={tiny_run}?precision=bf16", "--data", TINY_DATA, *FAST, "--json"])
    assert res.exit_code == 0, res.output
    bf16 = json.loads(res.stdout)["artifacts"][1]
    assert bf16["options"] == {"precision": "bf16"} and bf16["precision"] == "bf16" and bf16["path"] == str(tiny_run)
    res = _bench([f"fp32={tiny_run}", f"x={tiny_run}?precison=bf16", "--data", TINY_DATA, *FAST])
    assert res.exit_code == 1 and "unknown torch backend option(s) precison" in res.output



class _RecordingEngine:
    """Stands in for an Engine: records which item each timed call belongs to."""

    def __init__(self, key, log):
        self.key, self.log, self.info = key, log, {"device": "cpu", "threads": 1}

    def check_input(self, x):
        return x

    def _run_impl(self, x):
        self.log.append(self.key)
        return x


def test_measure_engines_interleaves_rounds_and_splits_iterations():
    from medfm_compress.bench.latency import BLOCK_WARMUP, measure_engines
    from medfm_compress.errors import ConfigError

    log: list[str] = []
    x = np.zeros((2, 1, 4, 4), np.float32)
    items = {k: (_RecordingEngine(k, log), x) for k in ("a", "b")}
    done: list[str] = []
    stats = measure_engines(items, LatencyConfig(iterations=12, warmup=2), rounds=3, on_done=done.append)
    assert log[:4] == ["a", "a", "b", "b"]  # warm-up of each
    timed = log[4:]
    # 3 rounds of 4 timed calls each, a then b in every round: the items alternate block by block, each block
    # opened by untimed calls (the previous item's runtime may still be busy), which are not in the statistics.
    assert BLOCK_WARMUP >= 1
    assert timed == (["a"] * (BLOCK_WARMUP + 4) + ["b"] * (BLOCK_WARMUP + 4)) * 3
    assert stats["a"]["n"] == 12 and stats["a"]["batch_size"] == 2 and stats["b"]["rounds"] == 3
    assert done == ["a", "b"]
    with pytest.raises(ConfigError, match="rounds must be >= 1"):
        measure_engines(items, rounds=0)



def test_the_bench_cli_restates_no_default(monkeypatch):
    """Options left out on the command line are BenchConfig's own defaults; the drop gates are one option per task
    gate, generated from the task registry."""
    from medfm_compress.bench.harness import BenchConfig
    from medfm_compress.commands import bench as command

    cfg = config_built(monkeypatch, command, "run_bench", ["bench", "a=x.onnx", "--quiet"])
    assert cfg == BenchConfig(artifacts=(("a", "x.onnx"),), progress=False)
    cfg = config_built(monkeypatch, command, "run_bench", [
        "bench", "a=x.onnx", "b=y.onnx", "--quiet", "--batch-sizes", "1,4", "--max-dice-drop", "2",
        "--max-mae-increase", "0.5", "--gate-on", "b"])
    assert cfg == BenchConfig(artifacts=(("a", "x.onnx"), ("b", "y.onnx")), progress=False, batch_sizes=(1, 4),
                              max_dice_drop=2.0, max_mae_increase=0.5, gate_on=("b",))
