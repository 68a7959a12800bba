"""``medfm-compress report compare``."""

from __future__ import annotations

import json

import click


@click.group(name="report")
def command():
    """Work with benchmark reports (report.json)."""


@command.command(name="compare")
@click.argument("base", type=click.Path())
@click.argument("new", type=click.Path())
@click.option("--max-regression", default="10%", show_default=True,
              help="Allowed p50 latency increase and relative metric drop (e.g. 10% or 0.1).")
@click.option("--max-metric-drop", default=None, type=float,
              help="Allowed absolute drop of accuracy/AUC/sensitivity/agreement (default: --max-regression, relative).")
@click.option("--allow-fingerprint-mismatch", is_flag=True,
              help="Compare latency even though the reports come from different machines.")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON on stdout.")
def compare(base, new, max_regression, max_metric_drop, allow_fingerprint_mismatch, as_json):
    """Compare NEW against BASE (report.json files or their directories); exit 3 on a regression."""
    from ..bench.report import (
        compare_reports,
        compare_to_markdown,
        load_report,
        parse_regression,
        raise_on_regression,
    )

    result = compare_reports(load_report(base), load_report(new), max_regression=parse_regression(max_regression),
                             allow_fingerprint_mismatch=allow_fingerprint_mismatch, max_metric_drop=max_metric_drop)
    click.echo(json.dumps(result, indent=2) if as_json else compare_to_markdown(result))
    raise_on_regression(result)
