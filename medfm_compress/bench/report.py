"""Benchmark reports (``report.json``, ``report.md``, ``junit.xml``, ``pareto.png``) and report comparison.

``report.json`` is the one structured record; the other files are views of it. Its schema is versioned by
``schema_version``; a reader refuses other versions instead of guessing. Non-finite numbers are written as
strings (``"inf"``, ``"-inf"``) or null (NaN) so the file is strict JSON.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from .._io import atomic_path, atomic_write_json, atomic_write_text, ensure_dir, read_json
from ..errors import ConfigError, GateFailure
from ..runtime.tasks import Shown, drop_gates, get_task

__all__ = [
    "SCHEMA_VERSION",
    "write_reports",
    "load_report",
    "to_markdown",
    "training_markdown",
    "batch_choices",
    "batch_choice_markdown",
    "to_junit",
    "plot_pareto",
    "compare_reports",
    "compare_to_markdown",
    "parse_regression",
    "FINGERPRINT_KEYS",
]

SCHEMA_VERSION = 1

# What makes latency numbers comparable: the same processor, core count and GPU.
FINGERPRINT_KEYS = ("cpu", "cores", "gpu")


def jsonable(obj: Any) -> Any:
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return obj
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return jsonable(obj.item())
    except ImportError:  # pragma: no cover
        pass
    return obj


def write_reports(report: dict, out: str | os.PathLike) -> dict[str, Path]:
    """Write report.json, report.md, junit.xml and pareto.png into ``out`` (each atomically).

    The plot needs matplotlib (the ``plots`` extra, part of ``train`` and ``all``); an edge install without it
    writes the other three and says so on stderr.
    """
    import importlib.util

    out_dir = ensure_dir(out)
    clean = jsonable(report)
    paths = {
        "json": atomic_write_json(out_dir / "report.json", clean),
        "markdown": atomic_write_text(out_dir / "report.md", to_markdown(clean)),
        "junit": atomic_write_text(out_dir / "junit.xml", to_junit(clean)),
    }
    if importlib.util.find_spec("matplotlib") is not None:
        paths["pareto"] = plot_pareto(clean, out_dir / "pareto.png")
    else:
        import sys

        print("note: pareto.png not written: it needs matplotlib (pip install 'medfm-compress[plots]')",
              file=sys.stderr)
    return paths


def load_report(path: str | os.PathLike) -> dict:
    """Read a report.json (or a directory holding one); another schema version is a one-line error."""
    p = Path(path)
    if p.is_dir():
        p = p / "report.json"
    report = read_json(p, "report", ConfigError, "; give a report.json written by 'medfm-compress bench'")
    if not isinstance(report, dict) or "schema_version" not in report:
        raise ConfigError(f"{p} is not a medfm-compress bench report (no schema_version)")
    if report["schema_version"] != SCHEMA_VERSION:
        raise ConfigError(f"{p} has report schema version {report['schema_version']!r}; this tool reads version "
                          f"{SCHEMA_VERSION}; re-run 'medfm-compress bench' with this version to regenerate it")
    return report


# ----- views --------------------------------------------------------------------------------------------


def _f(v: Any, fmt: str = ".4f") -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    return format(v, fmt)


def _ci(d: dict | None, scale: float = 1.0, fmt: str = "+.4f") -> str:
    if not d or d.get("delta") is None:
        return "-"
    lo = "-" if d["ci_low"] is None else format(scale * d["ci_low"], fmt)
    hi = "-" if d["ci_high"] is None else format(scale * d["ci_high"], fmt)
    return f"{format(scale * d['delta'], fmt)} [{lo}, {hi}]"


def _verdict(ci: list) -> str:
    if ci[0] is not None and ci[0] > 0:
        return "distillation pays here"
    if ci[1] is not None and ci[1] < 0:
        return "distillation loses here"
    return "no significant difference" if None not in ci else ""


def training_markdown(t: dict | None, task: str | None = None) -> list[str]:
    """The "How the student was trained" section: teacher, student and label-only baseline on the test split at
    the run's label fraction (in the columns of the run's task, or ``task`` where the metrics name none), the
    distilled-minus-baseline difference with its paired 95% CI (in the task's points), and warnings."""
    if not t:
        return []
    task = get_task(t.get("task") or task)
    cols = task.score_columns(t.get("student") or {})
    shown = task.shown
    gain_key, scale, fmt, unit, what = shown.gain_key, shown.points, shown.points_fmt, shown.points_unit, shown.headline
    masks = shown.labels != Shown.labels
    lines = ["", "## How the student was trained", "",
             f"Labelled fraction of the training split{f' ({shown.labels})' if masks else ''}: "
             f"{t.get('label_fraction', 1.0):g}; "
             f"test split {t.get('test_size')} cases.", "",
             "| model | arch | params | " + " | ".join(c[0] for c in cols) + " |", "|---|---|---|" + "---|" * len(cols)]
    for role in ("teacher", "student", "baseline"):
        r = t.get(role)
        if r:
            name = {"student": "student (distilled)", "baseline": "baseline (labels only, same steps)"}.get(role, role)
            params = f"{r['params'] / 1e6:.2f}M" if r.get("params") else "-"
            lines.append(f"| {name} | {r.get('arch', '-')} | {params} | "
                         + " | ".join(_f(r.get(key), f) for _, key, f in cols) + " |")
    lines.append("")
    gain = t.get(f"distill_gain_{gain_key}")
    if gain is not None:
        ci = t.get(f"distill_gain_{gain_key}_ci") or [None, None]
        verdict = _verdict(ci)
        lo, hi = (None if v is None else scale * v for v in ci)
        lines.append(f"Distilled minus label-only {what}: {scale * gain:{fmt}}{unit} [{_f(lo, fmt)}, {_f(hi, fmt)}] "
                     "(paired bootstrap 95% CI over test cases)" + (f": {verdict}." if verdict else "."))
    retention = t.get(f"{gain_key}_retention")
    if retention is not None:
        lines.append(f"Student vs teacher {shown.headline}: {task.retention_words(retention)}; "
                     f"{task.agreement_words} {_f(t.get('student_teacher_agreement'))}.")
    for w in t.get("warnings") or []:
        lines.append(f"\n**warning:** {w}")
    return lines


def to_markdown(report: dict) -> str:
    """Markdown tables a reviewer reads in a pull request."""
    fp = report["fingerprint"]
    status = "PASSED" if report["passed"] else "FAILED"
    lines = [
        f"# Benchmark report: {status}",
        "",
        f"Data `{report['data']['spec']}` ({report['data']['split']} split, {report['data']['n']} cases, "
        f"{report['data']['task']}); reference **{report['reference']}**.",
        f"Machine: {fp.get('cpu')} ({fp.get('cores')} cores"
        + (f"; {', '.join(fp['cpu_features'])}" if fp.get("cpu_features") else "")
        + f"), GPU {fp.get('gpu') or 'none'}; "
        + ", ".join(f"{k} {v}" for k, v in sorted(fp.get("versions", {}).items())),
        "",
        "## Accuracy and parity",
        "",
    ]
    task = get_task(report["data"]["task"])
    volumes = bool(report.get("data", {}).get("volumes"))
    lines += _accuracy_markdown(report, task.report_columns(volumes))
    lines += ["", "## Latency (engine-only, ms)", "",
              "| artifact | batch | p50 | p90 | p99 | mean | std | min | throughput/s | threads |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for a in report["artifacts"]:
        for b, v in a["latency"].items():
            if "engine" not in v:
                lines.append(f"| {a['name']} | {b} | {v.get('skipped', '-')} | | | | | | | |")
                continue
            s = v["engine"]
            lines.append(f"| {a['name']} | {b} | {_f(s['p50_ms'], '.3f')} | {_f(s['p90_ms'], '.3f')} "
                         f"| {_f(s['p99_ms'], '.3f')} | {_f(s['mean_ms'], '.3f')} | {_f(s['std_ms'], '.3f')} "
                         f"| {_f(s['min_ms'], '.3f')} | {_f(s['throughput_per_s'], '.1f')} | {s.get('threads')} |")
    lines += batch_choice_markdown(report)
    title = ("## End-to-end per volume (NIfTI read -> resampling -> sliding-window inference -> mask on the volume's "
             "grid -> NIfTI written), ms" if volumes else
             f"## End-to-end per case (raw image -> preprocessing -> engine -> {task.shown.result}), ms")
    lines += ["", title, "",
              "| artifact | p50 | p90 | p99 | size MB | params | peak RSS MB |", "|---|---|---|---|---|---|---|"]
    for a in report["artifacts"]:
        s = a.get("end_to_end") or {}
        params = f"{a['params'] / 1e6:.2f}M" if a.get("params") else "-"
        rss = f"{s['peak_rss_bytes'] / 1e6:.0f}" if s.get("peak_rss_bytes") else "-"
        lines.append(f"| {a['name']} | {_f(s.get('p50_ms'), '.3f')} | {_f(s.get('p90_ms'), '.3f')} "
                     f"| {_f(s.get('p99_ms'), '.3f')} | {a['size_bytes'] / 1e6:.2f} | {params} | {rss} |")
    title, cell_keys = task.per_class_table(volumes)
    lines += ["", f"## {title}", ""]
    labels = [c["label"] for c in report["artifacts"][0]["metrics"]["per_class"]]
    lines += ["| artifact | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for a in report["artifacts"]:
        cells = [" / ".join(_f(c.get(k), f) for k, f in cell_keys) for c in a["metrics"]["per_class"]]
        lines.append(f"| {a['name']} | " + " | ".join(cells) + " |")
    lines += training_markdown(report.get("training"), report["data"]["task"])
    lines += ["", "## Gates", ""]
    if report["gates"]:
        lines += ["| gate | value | threshold | result |", "|---|---|---|---|"]
        for g in report["gates"]:
            lines.append(f"| {g['name']} | {_f(g['value'])} | {_f(g['threshold'])} | "
                         f"{'pass' if g['passed'] else '**FAIL**'} |")
    else:
        lines.append("No gates were set.")
    return "\n".join(lines) + "\n"


def _accuracy_markdown(report: dict, columns: list[tuple[str, str, str, str]]) -> list[str]:
    """The accuracy and parity table: per artifact, its scores against the labels and its agreement with the
    reference, in the columns its task names (:meth:`~medfm_compress.runtime.tasks.Task.report_columns`)."""
    lines = ["| artifact | backend | precision | " + " | ".join(c[0] for c in columns) + " |",
             "|---|---|---|" + "---|" * len(columns)]
    for a in report["artifacts"]:
        m, p = a["metrics"], a["parity"] or {}
        cells = []
        for _, source, key, fmt in columns:
            if source == "metric":
                cells.append(_f(m.get(key), fmt))
            elif source == "metric_ci":
                ci = m.get(f"{key}_ci") or [None, None]
                cells.append(f"{_f(m.get(key), fmt)} [{_f(ci[0], fmt)}, {_f(ci[1], fmt)}]")
            elif source == "delta":
                cells.append(_ci((p.get("deltas") or {}).get(key)))
            else:
                cells.append(_f(p.get(key), fmt))
        lines.append(f"| {a['name']}{' (ref)' if a['reference'] else ''} | {a['backend']} | {a['precision']} | "
                     + " | ".join(cells) + " |")
    return lines


# Gates that judge an artifact's outputs: one that fails them is never the artifact to use.
_ACCURACY_GATES = (*drop_gates(), "min_agreement")


def batch_choices(report: dict) -> list[dict[str, Any]]:
    """Per batch size measured, the fastest artifact (engine-only p50) among those that pass every accuracy gate
    judging them, with the runner-up and the speed-up over the reference at that batch size."""
    failed = {g["artifact"] for g in report.get("gates", []) if g.get("gate") in _ACCURACY_GATES and not g["passed"]}
    ref = next((a for a in report["artifacts"] if a.get("reference")), None)
    batches = sorted({int(b) for a in report["artifacts"] for b, v in a["latency"].items() if "engine" in v})
    out = []
    for b in batches:
        timed = sorted(((a["latency"][str(b)]["engine"]["p50_ms"], a) for a in report["artifacts"]
                        if a["name"] not in failed and "engine" in a["latency"].get(str(b), {})),
                       key=lambda t: t[0])
        if not timed:
            continue
        ms, best = timed[0]
        ref_ms = ((ref or {}).get("latency", {}).get(str(b)) or {}).get("engine", {}).get("p50_ms")
        out.append({"batch_size": b, "artifact": best["name"], "options": best.get("options") or {},
                    "threads": best.get("threads"), "backend": best.get("backend"),
                    "precision": best.get("precision"), "p50_ms": ms, "throughput_per_s": b * 1000.0 / ms,
                    "speedup_vs_reference": ref_ms / ms if ref_ms else None,
                    "runner_up": timed[1][1]["name"] if len(timed) > 1 else None,
                    "runner_up_ratio": timed[1][0] / ms if len(timed) > 1 else None})
    return out


def batch_choice_markdown(report: dict) -> list[str]:
    """``## Which artifact at which batch size``: :func:`batch_choices` as a table (nothing when no latency)."""
    rows = batch_choices(report)
    if not rows:
        return []
    lines = ["", "## Which artifact at which batch size", "",
             "The fastest artifact (engine-only p50, all artifacts timed in the same interleaved rounds) among those "
             "that pass every accuracy gate judging them.", "",
             "| batch | use | backend | precision | p50 ms | throughput/s | vs reference | runner-up (x slower) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        runner = f"{r['runner_up']} ({r['runner_up_ratio']:.2f}x)" if r["runner_up"] else "-"
        vs = f"{r['speedup_vs_reference']:.2f}x" if r["speedup_vs_reference"] else "-"
        run = ", ".join([f"{r['threads']} thread(s)"] * bool(r["threads"])
                        + [f"{k}={v}" for k, v in r["options"].items()])
        use = f"{r['artifact']} ({run})" if run else r["artifact"]
        lines.append(f"| {r['batch_size']} | {use} | {r['backend']} | {r['precision']} | {r['p50_ms']:.3f} "
                     f"| {r['throughput_per_s']:.1f} | {vs} | {runner} |")
    return lines


def to_junit(report: dict) -> str:
    """JUnit XML: one test case per gate, a failure element for each failed gate."""
    gates = report["gates"]
    failures = sum(not g["passed"] for g in gates)
    suite = ET.Element("testsuite", name="medfm-compress bench", tests=str(len(gates)), failures=str(failures),
                       errors="0", skipped="0", timestamp=str(report.get("created", "")))
    for g in gates:
        case = ET.SubElement(suite, "testcase", classname=f"bench.{g['gate']}", name=g["name"])
        if not g["passed"]:
            f = ET.SubElement(case, "failure", message=f"{g['name']}: value {g['value']} vs threshold {g['threshold']}")
            f.text = g.get("detail", "")
    suites = ET.Element("testsuites", tests=str(len(gates)), failures=str(failures))
    suites.append(suite)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def plot_pareto(report: dict, path: str | os.PathLike) -> Path:
    """Latency (engine-only p50, smallest batch) vs macro AUC (segmentation: mean Dice), one point per artifact,
    with CI bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    key = get_task(report["data"]["task"]).headline_metric
    for a in report["artifacts"]:
        measured = sorted((int(b), v["engine"]["p50_ms"]) for b, v in a["latency"].items() if "engine" in v)
        auc = a["metrics"].get(key)
        if not measured or auc is None:
            continue
        x = measured[0][1]
        lo, hi = a["metrics"].get(f"{key}_ci") or [None, None]
        yerr = [[auc - lo], [hi - auc]] if lo is not None and hi is not None else None
        ax.errorbar([x], [auc], yerr=yerr, fmt="o", capsize=4, label=a["name"])
        ax.annotate(a["name"], (x, auc), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("engine-only p50 latency (ms, log scale, smallest batch)")
    ax.set_ylabel("mean Dice (95% bootstrap CI)" if key == "mean_dice" else "macro AUC (95% bootstrap CI)")
    ax.set_title("latency vs accuracy")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    dest = Path(path)
    with atomic_path(dest, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return dest


# ----- comparison ---------------------------------------------------------------------------------------


def parse_regression(value: str | float) -> float:
    """``"10%"`` or ``"0.1"`` -> 0.1."""
    s = str(value).strip()
    try:
        v = float(s[:-1]) / 100.0 if s.endswith("%") else float(s)
    except ValueError:
        raise ConfigError(f"--max-regression must be a percentage like 10% or a fraction like 0.1, got {value!r}") \
            from None
    if v < 0:
        raise ConfigError(f"--max-regression must be >= 0, got {value!r}")
    return v


_HIGHER_IS_BETTER = ("accuracy", "macro_auc", "mean_dice", "sensitivity", "top1_agreement")


def compare_reports(base: dict, new: dict, max_regression: float = 0.10, allow_fingerprint_mismatch: bool = False,
                    max_metric_drop: float | None = None) -> dict[str, Any]:
    """Per artifact and batch size, latency and metric deltas of ``new`` against ``base``.

    Args:
        base, new: report dicts (``load_report``).
        max_regression: allowed relative p50 increase (0.10 = 10%).
        allow_fingerprint_mismatch: compare latency across different machines anyway.
        max_metric_drop: allowed absolute drop of accuracy / macro AUC / sensitivity / agreement
            (default: ``max_regression`` relative to the base value).

    Returns:
        ``{"rows": [...], "regressions": [...], "missing": [...], "fingerprint_match": bool, "passed": bool}``.
        Raises :class:`ConfigError` when the fingerprints differ and mismatches are not allowed.
    """
    for r, what in ((base, "base"), (new, "new")):
        if r.get("schema_version") != SCHEMA_VERSION:
            raise ConfigError(f"{what} report has schema version {r.get('schema_version')!r}; this tool reads "
                              f"{SCHEMA_VERSION}")
    fb, fn = base.get("fingerprint", {}), new.get("fingerprint", {})
    diffs = {k: (fb.get(k), fn.get(k)) for k in FINGERPRINT_KEYS if fb.get(k) != fn.get(k)}
    # Reports written before cpu_features was recorded are compared on the other keys.
    if "cpu_features" in fb and "cpu_features" in fn and fb["cpu_features"] != fn["cpu_features"]:
        diffs["cpu_features"] = (fb["cpu_features"], fn["cpu_features"])
    if diffs and not allow_fingerprint_mismatch:
        detail = "; ".join(f"{k}: {a!r} vs {b!r}" for k, (a, b) in diffs.items())
        raise ConfigError(f"the reports come from different machines ({detail}); latency is not comparable: rerun "
                          "the baseline on this machine or pass --allow-fingerprint-mismatch")
    rows: list[dict] = []
    regressions: list[dict] = []
    base_by_name = {a["name"]: a for a in base["artifacts"]}
    new_by_name = {a["name"]: a for a in new["artifacts"]}
    missing = sorted(set(base_by_name) - set(new_by_name))
    for name, b in base_by_name.items():
        n = new_by_name.get(name)
        if n is None:
            continue
        for bs, bv in b["latency"].items():
            nv = n["latency"].get(bs, {})
            if "engine" not in bv or "engine" not in nv:
                continue
            p_b, p_n = bv["engine"]["p50_ms"], nv["engine"]["p50_ms"]
            rel = (p_n - p_b) / p_b if p_b else None
            row = {"artifact": name, "batch": bs, "quantity": "p50_ms", "base": p_b, "new": p_n, "delta": p_n - p_b,
                   "relative": rel, "regression": rel is not None and rel > max_regression}
            rows.append(row)
        metric_pairs = [(m, b["metrics"].get(m), n["metrics"].get(m))
                        for m in ("accuracy", "macro_auc", "mean_dice", "sensitivity")]
        if b.get("parity") and n.get("parity"):
            metric_pairs.append(("top1_agreement", b["parity"]["top1_agreement"], n["parity"]["top1_agreement"]))
        for m, vb, vn in metric_pairs:
            if not isinstance(vb, int | float) or not isinstance(vn, int | float):
                continue
            allowed = max_metric_drop if max_metric_drop is not None else max_regression * abs(vb)
            rows.append({"artifact": name, "batch": None, "quantity": m, "base": vb, "new": vn, "delta": vn - vb,
                         "relative": (vn - vb) / vb if vb else None, "regression": (vb - vn) > allowed + 1e-12})
    regressions = [r for r in rows if r["regression"]]
    return {"rows": rows, "regressions": regressions, "missing": missing, "fingerprint_match": not diffs,
            "fingerprint_differences": {k: list(v) for k, v in diffs.items()}, "max_regression": max_regression,
            "passed": not regressions and not missing}


def compare_to_markdown(result: dict) -> str:
    """A table of the comparison, regressions marked."""
    lines = ["| artifact | batch | quantity | base | new | change | verdict |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        change = f"{100 * r['relative']:+.1f}%" if r["relative"] is not None else f"{r['delta']:+.4g}"
        lines.append(f"| {r['artifact']} | {r['batch'] or '-'} | {r['quantity']} | {r['base']:.4g} | {r['new']:.4g} "
                     f"| {change} | {'**REGRESSION**' if r['regression'] else 'ok'} |")
    for m in result["missing"]:
        lines.append(f"| {m} | - | - | present | **missing** | - | **REGRESSION** |")
    if not result["fingerprint_match"]:
        lines.append("")
        lines.append("Warning: reports come from different machines; latency deltas are not like for like.")
    return "\n".join(lines)


def raise_on_regression(result: dict) -> None:
    """Raise :class:`GateFailure` (exit 3) when ``result`` holds a regression."""
    if not result["passed"]:
        worst = [f"{r['artifact']} {r['quantity']}" + (f"@bs{r['batch']}" if r["batch"] else "")
                 for r in result["regressions"]] + [f"{m} missing" for m in result["missing"]]
        raise GateFailure(f"regression beyond {100 * result['max_regression']:.1f}%: {', '.join(worst)}")
