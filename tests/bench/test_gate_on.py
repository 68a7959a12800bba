import json

import pytest
from click.testing import CliRunner
from support.onnx_fixtures import tiny_onnx

from medfm_compress.bench.harness import BenchConfig, evaluate_gates
from medfm_compress.cli import cli
from medfm_compress.errors import ConfigError, UsageError


def _entry(name, p50, size_mb, reference=False):
    return {"name": name, "reference": reference, "size_bytes": size_mb * 1e6,
            "latency": {"1": {"engine": {"p50_ms": p50}}}}


ARTS = (("teacher", "t"), ("fp32", "a"), ("int8", "b"))
ENTRIES = [_entry("teacher", 10.0, 40, reference=True), _entry("fp32", 1.0, 3), _entry("int8", 0.25, 1)]


def _judged(gates, kind):
    return {g["artifact"] for g in gates if g["gate"] == kind}


def test_gate_on_limits_the_gates_to_named_artifacts():
    every = evaluate_gates(BenchConfig(artifacts=ARTS, reference="teacher", min_speedup=30, max_size_mb=2), ENTRIES,
                           "multiclass")
    # Relative gates judge every artifact but the reference; absolute gates judge the reference too.
    assert _judged(every, "min_speedup") == {"fp32", "int8"}
    assert _judged(every, "max_size_mb") == {"teacher", "fp32", "int8"}
    assert {g["name"] for g in every if not g["passed"]} == {"min_speedup[fp32]", "max_size_mb[teacher]",
                                                             "max_size_mb[fp32]"}
    only = evaluate_gates(BenchConfig(artifacts=ARTS, reference="teacher", min_speedup=30, max_size_mb=2,
                                      gate_on=("int8",)), ENTRIES, "multiclass")
    assert {g["artifact"] for g in only} == {"int8"} and all(g["passed"] for g in only)
    assert only[0]["value"] == pytest.approx(40.0)


def test_absolute_gates_judge_a_lone_reference():
    lone = (("fp32", "a"),)
    gates = evaluate_gates(BenchConfig(artifacts=lone, max_p50_ms=1e-6, max_size_mb=100),
                           [_entry("fp32", 1.0, 3, reference=True)], "multiclass")
    assert {(g["name"], g["passed"]) for g in gates} == {("max_p50_ms[fp32]", False), ("max_size_mb[fp32]", True)}


@pytest.mark.parametrize("kw", [{"max_auc_drop": 1.0}, {"min_agreement": 0.99}, {"min_speedup": 2.0}])
def test_a_relative_gate_with_nothing_to_judge_is_a_usage_error(kw):
    with pytest.raises(UsageError, match="nothing else to judge"):
        BenchConfig(artifacts=(("fp32", "a"),), **kw)
    with pytest.raises(UsageError, match="--gate-on teacher leave"):
        BenchConfig(artifacts=ARTS, reference="teacher", gate_on=("teacher",), **kw)
    BenchConfig(artifacts=ARTS, reference="teacher", gate_on=("teacher", "int8"), **kw)  # int8 is judged


def test_gate_on_unknown_name_is_an_error():
    with pytest.raises(ConfigError, match="--gate-on names int4"):
        BenchConfig(artifacts=(("a", "x"), ("b", "y")), gate_on=("int4",))


DATA = "synthetic?size=32&n_train=64&n_val=16&n_test=48&seed=2"


def test_bench_cli_gates_always_judge_something(tmp_path):
    model = tiny_onnx(tmp_path / "m.onnx")
    base = ["bench", f"fp32={model}", "--reference", "fp32", "--data", DATA, "--iterations", "5", "--warmup", "1",
            "--quiet"]
    # One artifact, an impossible latency budget: the reference is judged and the run fails (it used to pass).
    res = CliRunner().invoke(cli, [*base, "--max-p50-ms", "0.000001", "--json"])
    assert res.exit_code == 3, res.output
    assert "max_p50_ms[fp32]" in res.output
    # A gate relative to the reference with nothing else to judge: a usage error, one line, nothing measured.
    res = CliRunner().invoke(cli, [*base, "--max-auc-drop", "1", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2
    assert res.output.strip().splitlines()[-1].startswith("error: --max-auc-drop compares artifacts")
    assert not (tmp_path / "r").exists()
    # A budget the model meets passes.
    res = CliRunner().invoke(cli, [*base, "--max-size-mb", "100", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert [g["name"] for g in report["gates"]] == ["max_size_mb[fp32]"] and report["passed"]
