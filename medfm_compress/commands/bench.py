"""``medfm-compress bench``."""

from __future__ import annotations

import json

import click

from ..bench.harness import BenchConfig, parse_artifacts, run_bench
from ..runtime.tasks import drop_gates, get_task, models_where, task_names
from ._common import csv_option, field_default, given_options


def _default(name: str) -> str:
    return field_default(BenchConfig, name)


def _drop_gate_options(fn):
    """One ``--<gate>`` option per drop gate of the registered tasks (``--max-auc-drop`` for classifiers...), its help
    from the tasks that use it: a new task's gate is a new option without an edit here."""
    for gate in reversed(drop_gates()):
        models = models_where(lambda t, g=gate: t.drop_gate == g)
        detail = next(get_task(n).drop_detail for n in task_names() if get_task(n).drop_gate == gate)
        fn = click.option(f"--{gate.replace('_', '-')}", gate, default=None, type=float,
                          help=f"Gate ({models}): the {detail} must be below it.")(fn)
    return fn


@click.command(name="bench")
@click.argument("artifacts", nargs=-1, required=True)
@click.option("--reference", default=None, help="Name of the artifact the others are compared with (default: first).")
@click.option("--data", default=None, help="Data spec whose --split holds real held-out cases with labels."
              + _default("data"))
@click.option("--split", default=None, help="Split to evaluate on." + _default("split"))
@click.option("--batch-sizes", default=None, help="Comma-separated batch sizes to time [default: 1].")
@click.option("--iterations", default=None, type=int, help="Timed calls per measurement." + _default("iterations"))
@click.option("--warmup", default=None, type=int, help="Untimed warm-up calls." + _default("warmup"))
@click.option("--warmup-s", default=None, type=float, help="Minimum warm-up time (s)." + _default("warmup_s"))
@click.option("--duration", "duration_s", default=None, type=float,
              help="Time for at least this many seconds per measurement (instead of --iterations alone).")
@click.option("--rounds", default=None, type=int,
              help="Interleaved timing rounds: each times every artifact and batch size in turn "
                   "(--iterations and --duration are totals split over the rounds)." + _default("rounds"))
@click.option("--threads", default=None, type=int, help="Intra-op CPU threads (default: all cores).")
@click.option("--device", default=None, help="cpu, cuda[:N] (default: cpu).")
@click.option("--backend", default=None, help="Force one runtime backend for every artifact.")
@click.option("--bootstrap", "n_resamples", default=None, type=int,
              help="Paired bootstrap resamples for the confidence intervals." + _default("n_resamples"))
@click.option("--seed", default=None, type=int, help="Bootstrap seed." + _default("seed"))
@_drop_gate_options
@click.option("--min-agreement", default=None, type=float,
              help="Gate: minimum top-1 agreement with the reference (segmentation: pixel agreement of the masks).")
@click.option("--min-speedup", default=None, type=float, help="Gate: minimum reference p50 / artifact p50 (batch 1).")
@click.option("--max-p50-ms", default=None, type=float, help="Gate: maximum engine-only p50 at batch 1 (ms).")
@click.option("--max-size-mb", default=None, type=float, help="Gate: maximum artifact size (MB).")
@click.option("--gate-on", default=None,
              help="Comma-separated artifact names the gates judge (default: all). --max-p50-ms and --max-size-mb "
                   "judge the reference too; the gates relative to it judge the others. A gate with nothing to judge "
                   "is a usage error (exit 2).")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Directory for report.json, report.md, junit.xml and pareto.png.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--force", is_flag=True, default=None, help="Benchmark artifacts whose hash differs from their run "
              "manifest.")
def command(artifacts, batch_sizes, gate_on, quiet, as_json, **options):
    """Benchmark ARTIFACTS (NAME=PATH ...): latency, accuracy parity against --reference, gates.

    Exit status 0 when every gate holds, 3 when a gate fails (reports are written first), 1 for bad input, 2 for
    a gate with nothing to judge.

    \b
    medfm-compress bench teacher=runs/p/teacher student=runs/p/student.onnx --reference teacher \\
        --data medmnist:pneumoniamnist_64.npz --batch-sizes 1,8 --max-auc-drop 1.0 --out reports/p
    """
    from ..bench.report import to_markdown
    from ..errors import GateFailure

    given = given_options(options) | given_options({"batch_sizes": csv_option(batch_sizes, int),
                                                    "gate_on": csv_option(gate_on)})
    cfg = BenchConfig(artifacts=parse_artifacts(artifacts), **given, progress=not quiet and not as_json)
    report = run_bench(cfg)
    if as_json:
        from ..bench.report import jsonable

        click.echo(json.dumps(jsonable(report), indent=2))
    else:
        click.echo(to_markdown(_clean(report)))
        if cfg.out:
            click.echo(f"reports in {cfg.out}")
    failed = [g["name"] for g in report["gates"] if not g["passed"]]
    if failed:
        raise GateFailure(f"{len(failed)} gate(s) failed: {', '.join(failed)}")


def _clean(report: dict) -> dict:
    from ..bench.report import jsonable

    return jsonable(report)
