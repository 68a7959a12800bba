import pytest

from medfm_compress.bench.harness import BenchConfig, evaluate_gates
from medfm_compress.errors import ConfigError


def _entry(name, p50, size_mb, reference=False):
    return {"name": name, "reference": reference, "size_bytes": size_mb * 1e6,
            "latency": {"1": {"engine": {"p50_ms": p50}}}}


def test_gate_on_limits_the_gates_to_named_artifacts():
    arts = (("teacher", "t"), ("fp32", "a"), ("int8", "b"))
    entries = [_entry("teacher", 10.0, 40, reference=True), _entry("fp32", 1.0, 3), _entry("int8", 0.25, 1)]
    every = evaluate_gates(BenchConfig(artifacts=arts, reference="teacher", min_speedup=30, max_size_mb=2), entries)
    assert {g["artifact"] for g in every} == {"fp32", "int8"}
    assert not all(g["passed"] for g in every)
    only = evaluate_gates(BenchConfig(artifacts=arts, reference="teacher", min_speedup=30, max_size_mb=2,
                                      gate_on=("int8",)), entries)
    assert {g["artifact"] for g in only} == {"int8"} and all(g["passed"] for g in only)
    assert only[0]["value"] == pytest.approx(40.0)


def test_gate_on_unknown_name_is_an_error():
    with pytest.raises(ConfigError, match="--gate-on names int4"):
        BenchConfig(artifacts=(("a", "x"), ("b", "y")), gate_on=("int4",))
