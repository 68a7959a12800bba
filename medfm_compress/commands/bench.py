"""``medfm-compress bench``."""

from __future__ import annotations

import json

import click

from ._common import csv_option


@click.command(name="bench")
@click.argument("artifacts", nargs=-1, required=True)
@click.option("--reference", default=None, help="Name of the artifact the others are compared with (default: first).")
@click.option("--data", default="synthetic", show_default=True,
              help="Data spec whose --split holds real held-out cases with labels.")
@click.option("--split", default="test", show_default=True, help="Split to evaluate on.")
@click.option("--batch-sizes", default="1", show_default=True, help="Comma-separated batch sizes to time.")
@click.option("--iterations", default=100, show_default=True, type=int, help="Timed calls per measurement.")
@click.option("--warmup", default=10, show_default=True, type=int, help="Untimed warm-up calls.")
@click.option("--warmup-s", default=0.0, show_default=True, type=float, help="Minimum warm-up time (s).")
@click.option("--duration", "duration_s", default=None, type=float,
              help="Time for at least this many seconds per measurement (instead of --iterations alone).")
@click.option("--rounds", default=5, show_default=True, type=int,
              help="Interleaved timing rounds: each times every artifact and batch size in turn "
                   "(--iterations and --duration are totals split over the rounds).")
@click.option("--threads", default=None, type=int, help="Intra-op CPU threads (default: all cores).")
@click.option("--device", default=None, help="cpu, cuda[:N] (default: cpu).")
@click.option("--backend", default=None, help="Force one runtime backend for every artifact.")
@click.option("--bootstrap", "n_resamples", default=1000, show_default=True, type=int,
              help="Paired bootstrap resamples for the confidence intervals.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--max-auc-drop", default=None, type=float,
              help="Gate: upper 95% CI bound of the macro AUC drop vs the reference, in AUC points (1.0 = 0.01).")
@click.option("--max-dice-drop", default=None, type=float,
              help="Gate (segmentation): upper 95% CI bound of the mean Dice drop vs the reference, in Dice points "
              "(1.0 = 0.01), paired bootstrap over cases.")
@click.option("--max-mae-increase", default=None, type=float,
              help="Gate (regression): upper 95% CI bound of the mean absolute error's increase over the reference, in "
              "the target's units, paired bootstrap over cases.")
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
@click.option("--force", is_flag=True, help="Benchmark artifacts whose hash differs from their run manifest.")
def command(artifacts, reference, data, split, batch_sizes, iterations, warmup, warmup_s, duration_s, rounds, threads,
            device, backend, n_resamples, seed, max_auc_drop, max_dice_drop, max_mae_increase, min_agreement, min_speedup, max_p50_ms, max_size_mb, gate_on, out, quiet,
            as_json, force):
    """Benchmark ARTIFACTS (NAME=PATH ...): latency, accuracy parity against --reference, gates.

    Exit status 0 when every gate holds, 3 when a gate fails (reports are written first), 1 for bad input, 2 for
    a gate with nothing to judge.

    \b
    medfm-compress bench teacher=runs/p/teacher student=runs/p/student.onnx --reference teacher \\
        --data medmnist:pneumoniamnist_64.npz --batch-sizes 1,8 --max-auc-drop 1.0 --out reports/p
    """
    from ..bench.harness import BenchConfig, parse_artifacts, run_bench
    from ..bench.report import to_markdown
    from ..errors import GateFailure

    cfg = BenchConfig(
        artifacts=parse_artifacts(artifacts), reference=reference, data=data, split=split,
        batch_sizes=csv_option(batch_sizes, int), iterations=iterations, warmup=warmup, warmup_s=warmup_s,
        duration_s=duration_s, rounds=rounds, threads=threads, device=device, backend=backend,
        n_resamples=n_resamples, seed=seed,
        max_auc_drop=max_auc_drop, max_dice_drop=max_dice_drop, max_mae_increase=max_mae_increase,
        min_agreement=min_agreement, min_speedup=min_speedup, max_p50_ms=max_p50_ms,
        max_size_mb=max_size_mb, gate_on=csv_option(gate_on), out=out, progress=not quiet and not as_json, force=force,
    )
    report = run_bench(cfg)
    if as_json:
        from ..bench.report import jsonable

        click.echo(json.dumps(jsonable(report), indent=2))
    else:
        click.echo(to_markdown(_clean(report)))
        if out:
            click.echo(f"reports in {out}")
    failed = [g["name"] for g in report["gates"] if not g["passed"]]
    if failed:
        raise GateFailure(f"{len(failed)} gate(s) failed: {', '.join(failed)}")


def _clean(report: dict) -> dict:
    from ..bench.report import jsonable

    return jsonable(report)
