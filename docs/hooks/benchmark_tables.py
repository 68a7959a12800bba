"""MkDocs hook: the Benchmarks page's tables, generated at build time from ``benchmarks/results/``.

Every ``benchmarks/results/*.json`` record (and each GPU check's ``summary.json``) becomes a section with the
machine it ran on (the record's ``fingerprint``) and its figures as tables: scalar figures as one key/value table,
each list of records as a table of its own. Nothing here is typed in: a new or re-run benchmark shows up at the
next ``make docs``.
"""

from __future__ import annotations

import json
from pathlib import Path

MARKER = "<!-- benchmark-tables -->"
RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
# Inputs and bulky traces, not figures.
SKIP_KEYS = {"fingerprint", "env", "args", "config", "history", "argv"}
MAX_ROWS = 40
MAX_COLUMNS = 12
MAX_DEPTH = 3


def _cell(value) -> str:
    if isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, float):
        text = f"{value:.4g}"
    elif value is None:
        text = "-"
    elif isinstance(value, list):
        text = ", ".join(_cell(v) for v in value)
    else:
        text = str(value)
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= 160 else text[:157] + "..."


def _scalar(value) -> bool:
    if isinstance(value, list):
        return len(value) <= 8 and all(v is None or isinstance(v, str | int | float | bool) for v in value)
    return value is None or isinstance(value, str | int | float | bool)


def _records(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _keyed_records(value) -> bool:
    """A dict of two or more records keyed by name (``{"w16": {...}, "w32": {...}}``): a table, one row per key."""
    return isinstance(value, dict) and len(value) >= 2 and all(isinstance(v, dict) for v in value.values())


def _walk(obj: dict, prefix: str, depth: int, scalars: list, tables: list) -> None:
    for key, value in obj.items():
        if key in SKIP_KEYS:
            continue
        path = f"{prefix}{key}"
        if _scalar(value):
            scalars.append((path, value))
        elif _records(value):
            tables.append((path, value))
        elif _keyed_records(value):
            tables.append((path, [{"name": k, **v} for k, v in value.items()]))
        elif isinstance(value, dict) and depth < MAX_DEPTH:
            _walk(value, f"{path}.", depth + 1, scalars, tables)


def _flat(record: dict, prefix: str = "", depth: int = 0) -> dict:
    out = {}
    for key, value in record.items():
        if _scalar(value):
            out[f"{prefix}{key}"] = value
        elif isinstance(value, dict) and depth < 1:
            out.update(_flat(value, f"{prefix}{key}.", depth + 1))
    return out


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def fingerprint_line(fp: dict | None) -> str:
    """The machine a record was measured on, in one line."""
    if not fp:
        return "Machine: not recorded in this file."
    features = ", ".join(fp.get("cpu_features") or []) or "features not recorded"
    versions = fp.get("versions") or {}
    shown = ", ".join(f"{k} {versions[k]}" for k in sorted(versions))
    return (
        f"Machine: {fp.get('cpu', '?')} ({fp.get('cores', '?')} cores; {features}), GPU {fp.get('gpu') or 'none'}"
        f"{', driver ' + fp['driver'] if fp.get('driver') else ''}; {fp.get('os', '?')}, Python "
        f"{fp.get('python', '?')}" + (f"; {shown}" if shown else "") + "."
    )


def render_record(name: str, record, fingerprint: dict | None) -> list[str]:
    """One record as a section: its machine, then its figures."""
    lines = [f"## {name}", "", f"`benchmarks/results/{name}`", "", fingerprint_line(fingerprint), ""]
    scalars: list = []
    tables: list = []
    if isinstance(record, dict):
        _walk(record, "", 0, scalars, tables)
    elif _records(record):
        tables.append(("rows", record))
    if scalars:
        lines += _table(["figure", "value"], [[f"`{k}`", _cell(v)] for k, v in scalars[:MAX_ROWS]])
        if len(scalars) > MAX_ROWS:
            lines.append(f"\n({len(scalars) - MAX_ROWS} more figures in the file)")
        lines.append("")
    for path, rows in tables:
        flat = [_flat(r) for r in rows]
        columns: list[str] = []
        for r in flat:
            columns += [k for k in r if k not in columns]
        columns = columns[:MAX_COLUMNS]
        if not columns:
            continue
        lines += [f"**`{path}`**", ""]
        lines += _table(
            [f"`{c}`" for c in columns], [[_cell(r.get(c)) for c in columns] for r in flat[:MAX_ROWS]]
        )
        if len(rows) > MAX_ROWS:
            lines.append(f"\n({len(rows) - MAX_ROWS} more rows in the file)")
        lines.append("")
    return lines


def render_all(results: Path = RESULTS) -> str:
    """Every record under ``results``, in file-name order."""
    lines: list[str] = []
    for path in sorted(results.glob("*.json")):
        record = json.loads(path.read_text())
        fp = record.get("fingerprint") or record.get("env") if isinstance(record, dict) else None
        lines += render_record(path.name, record, fp)
    for path in sorted(results.glob("*/summary.json")):
        record = json.loads(path.read_text())
        env_file = path.parent / "env.json"
        fp = json.loads(env_file.read_text()).get("env") if env_file.is_file() else None
        lines += render_record(f"{path.parent.name}/{path.name}", record, fp)
    return "\n".join(lines)


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 - the hook's signature
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, render_all())
