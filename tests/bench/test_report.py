"""Report files and schema, and `medfm-compress report compare` verdicts and exit codes."""

from __future__ import annotations

import copy
import json
from xml.etree import ElementTree as ET

import pytest
from click.testing import CliRunner
from support.tiny import TINY_DATA

from medfm_compress.bench.harness import BenchConfig, parse_artifacts, run_bench
from medfm_compress.bench.report import SCHEMA_VERSION, compare_reports, load_report, parse_regression
from medfm_compress.cli import cli
from medfm_compress.errors import ConfigError


@pytest.fixture(scope="module")
def bench_dir(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    cfg = BenchConfig(
        artifacts=parse_artifacts([f"teacher={tiny_run / 'teacher'}", f"student={tiny_run}",
                                   f"baseline={tiny_run / 'baseline.json'}"]),
        reference="teacher", data=TINY_DATA, batch_sizes=(1, 2), iterations=5, warmup=1, n_resamples=100,
        min_agreement=0.0, max_size_mb=0.001, out=str(out), progress=False,
    )
    run_bench(cfg)
    return out


def test_report_files_and_schema(bench_dir):
    assert {p.name for p in bench_dir.iterdir()} >= {"report.json", "report.md", "junit.xml", "pareto.png"}
    assert not [p for p in bench_dir.iterdir() if p.name.startswith(".")]  # no temp files left
    report = json.loads((bench_dir / "report.json").read_text())  # strict JSON (no Infinity)
    assert report["schema_version"] == SCHEMA_VERSION
    fp = report["fingerprint"]
    assert {"cpu", "cores", "gpu", "driver", "versions"} <= set(fp) and "torch" in fp["versions"]
    assert [a["name"] for a in report["artifacts"]] == ["teacher", "student", "baseline"]
    for a in report["artifacts"]:
        assert {"name", "path", "sha256", "backend", "precision", "params", "size_bytes", "latency", "metrics",
                "parity", "end_to_end"} <= set(a)
        assert set(a["latency"]) == {"1", "2"} and a["latency"]["1"]["engine"]["p50_ms"] > 0
        assert {"accuracy", "macro_auc", "sensitivity", "per_class", "macro_auc_ci"} <= set(a["metrics"])
        assert len(a["metrics"]["per_class"]) == 4
    ref, stu = report["artifacts"][0], report["artifacts"][1]
    assert ref["parity"] is None and stu["parity"]["deltas"]["macro_auc"]["ci_low"] is not None
    assert {"top1_agreement", "cosine", "max_abs", "sqnr_db"} <= set(stu["parity"])
    gates = {g["name"]: g for g in report["gates"]}
    # min_agreement is relative to the reference; max_size_mb is absolute and judges the reference too.
    assert set(gates) == ({f"min_agreement[{a}]" for a in ("student", "baseline")}
                          | {f"max_size_mb[{a}]" for a in ("teacher", "student", "baseline")})
    assert all({"name", "value", "threshold", "passed"} <= set(g) for g in gates.values())
    assert report["passed"] is False and not gates["max_size_mb[student]"]["passed"]


def test_markdown_and_junit(bench_dir):
    md = (bench_dir / "report.md").read_text()
    assert "# Benchmark report: FAILED" in md and "| teacher (ref) |" in md and "**FAIL**" in md
    # The machine line names the instruction-set extensions the latency depends on (when the CPU reports any).
    from medfm_compress._env import fingerprint

    assert all(f in md.split("Machine:", 1)[1].splitlines()[0] for f in fingerprint()["cpu_features"])
    suite = ET.parse(bench_dir / "junit.xml").getroot().find("testsuite")
    cases = suite.findall("testcase")
    assert len(cases) == 5 and suite.get("failures") == "3"
    failed = {c.get("name") for c in cases if c.find("failure") is not None}
    assert failed == {"max_size_mb[teacher]", "max_size_mb[student]", "max_size_mb[baseline]"}
    assert (bench_dir / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _compare(base, new, *extra):
    return CliRunner().invoke(cli, ["report", "compare", str(base), str(new), *extra], catch_exceptions=False)


def _write(path, report):
    path.write_text(json.dumps(report))
    return path


def test_compare_same_report_passes(bench_dir):
    res = _compare(bench_dir / "report.json", bench_dir, "--max-regression", "10%")
    assert res.exit_code == 0, res.output
    assert "REGRESSION" not in res.output and "p50_ms" in res.output


def test_compare_latency_regression_exits_3(bench_dir, tmp_path):
    base = load_report(bench_dir)
    new = copy.deepcopy(base)
    new["artifacts"][1]["latency"]["2"]["engine"]["p50_ms"] *= 1.5
    res = _compare(bench_dir / "report.json", _write(tmp_path / "new.json", new), "--max-regression", "10%")
    assert res.exit_code == 3, res.output
    assert "student p50_ms@bs2" in res.output
    # within a larger allowance it passes
    assert _compare(bench_dir / "report.json", tmp_path / "new.json", "--max-regression", "60%").exit_code == 0


def test_compare_metric_regression_and_missing_artifact(bench_dir):
    base = load_report(bench_dir)
    new = copy.deepcopy(base)
    new["artifacts"][1]["metrics"]["accuracy"] = base["artifacts"][1]["metrics"]["accuracy"] - 0.05
    res = compare_reports(base, new, max_regression=0.5, max_metric_drop=0.01)
    assert not res["passed"] and [r["quantity"] for r in res["regressions"]] == ["accuracy"]
    new = copy.deepcopy(base)
    new["artifacts"].pop()
    res = compare_reports(base, new, max_regression=0.5)
    assert not res["passed"] and res["missing"] == ["baseline"]


def test_compare_refuses_fingerprint_mismatch(bench_dir, tmp_path):
    new = load_report(bench_dir)
    new["fingerprint"]["cpu"] = "Some Other CPU"
    new["fingerprint"]["cores"] = 64
    path = _write(tmp_path / "other.json", new)
    res = _compare(bench_dir, path)
    assert res.exit_code == 1
    assert "different machines" in res.output and "--allow-fingerprint-mismatch" in res.output
    assert len(res.output.strip().splitlines()) == 1
    res = _compare(bench_dir, path, "--allow-fingerprint-mismatch")
    assert res.exit_code == 0 and "not like for like" in res.output


def test_compare_tells_same_named_cpus_apart_by_features(bench_dir):
    """Two cloud VMs both called "AMD EPYC", one with AVX512-VNNI and bf16, one with AVX2 only, run different int8
    and bf16 kernels: not comparable. A report that does not record the features is compared on the rest."""
    from medfm_compress.bench.report import compare_reports

    base = load_report(bench_dir)
    assert isinstance(base["fingerprint"]["cpu_features"], list)
    new = load_report(bench_dir)
    base["fingerprint"]["cpu_features"], new["fingerprint"]["cpu_features"] = ["avx2"], ["avx2", "avx512_vnni"]
    with pytest.raises(ConfigError, match="cpu_features"):
        compare_reports(base, new)
    del base["fingerprint"]["cpu_features"]
    assert compare_reports(base, new, max_regression=10.0)["fingerprint_match"]


def test_compare_rejects_other_schema_version(bench_dir, tmp_path):
    other = load_report(bench_dir)
    other["schema_version"] = 99
    path = _write(tmp_path / "v99.json", other)
    res = _compare(bench_dir, path)
    assert res.exit_code == 1 and "schema version 99" in res.output
    res = _compare(bench_dir, tmp_path / "missing.json")
    assert res.exit_code == 1 and "does not exist" in res.output


def test_parse_regression():
    assert parse_regression("10%") == pytest.approx(0.10) and parse_regression("0.2") == 0.2
    with pytest.raises(ConfigError, match="percentage"):
        parse_regression("ten")
