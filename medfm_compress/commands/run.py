"""``medfm-compress run RECIPE`` and ``medfm-compress demo``."""

from __future__ import annotations

from pathlib import Path

import click

from ..pipeline import DEMOS


def _finish(result, tail: list[str] | None = None) -> None:
    """Print what ran and the report; ``tail``: lines printed after the report, also when a gate failed."""
    from ..errors import GateFailure

    click.echo(f"stages run: {', '.join(result.ran) or 'none'}; cached: {', '.join(result.cached) or 'none'} "
               f"({result.seconds:.0f} s)")
    if result.report is not None:
        md = result.report_files.get("report.md")
        if md is not None:
            click.echo("")
            click.echo(md.read_text(encoding="utf-8"))
        for name in ("report.json", "report.md", "junit.xml", "pareto.png"):
            if name in result.report_files:
                click.echo(f"{name}: {result.report_files[name]}")
        for line in tail or []:
            click.echo(line)
        if not result.report.get("passed", False):
            failed = [g["name"] for g in result.report.get("gates", []) if not g.get("passed")]
            raise GateFailure(f"benchmark gates failed: {', '.join(failed)}; see {result.report_files.get('report.md')}")
    click.echo(f"run directory: {result.run_dir}")


@click.command(name="run")
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--from", "from_stage", default=None, help="Re-run this stage (e.g. quantize or quantize:int8) and later ones.")
@click.option("--only", default=None, help="Run only this stage (its inputs must exist).")
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Override the recipe's run directory.")
@click.option("--print-config", is_flag=True, help="Print the fully resolved recipe (YAML) and exit.")
@click.option("--quiet", is_flag=True, help="No progress output.")
@click.option("--force", is_flag=True, help="Let stages use run-directory files whose hash differs from the manifest.")
def command(recipe, from_stage, only, out, print_config, quiet, force):
    """Run the whole chain described by RECIPE (a YAML file, or the name of a shipped recipe: demo, segmentation-2d,
    segmentation-3d, ct-foundation-3d, ...); unchanged stages are taken from the cache."""
    from ..pipeline import dump_recipe, load_recipe, run_pipeline

    rec = load_recipe(recipe)
    if out:
        rec.out = out
    if print_config:
        click.echo(dump_recipe(rec), nl=False)
        return
    _finish(run_pipeline(rec, from_stage=from_stage, only=only, progress=not quiet, force=force))


@click.command(name="demo")
@click.option("--task", type=click.Choice(list(DEMOS)), default=next(iter(DEMOS)), show_default=True,
              help="Which demo: " + "; ".join(f"{task}: the shipped recipe {name}" for task, name in DEMOS.items())
              + " (medfm-compress run NAME runs one, --print-config shows it).")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Run directory [default: runs/demo, runs/demo-segmentation, runs/demo-segmentation-3d].")
@click.option("--print-config", is_flag=True, help="Print the demo recipe (YAML) and exit.")
@click.option("--quiet", is_flag=True, help="No progress output.")
def demo_command(task, out, print_config, quiet):
    """The whole chain on the embedded synthetic default, offline: teacher, student distilled with a tenth of the
    labels, label-only baseline, INT8/FP16 variants, TensorRT engines, benchmark with gates. It ends with what
    distillation bought over the baseline and what the INT8 student costs against the teacher, with 95% CIs.
    --task segmentation runs it on label maps (dense teacher and student, Dice); --task segmentation-3d on CT-like
    volumes (MONAI U-Nets on patches, whole volumes segmented by sliding windows)."""
    from .. import pipeline

    raw = pipeline.demo_recipe(task)
    rec = pipeline.resolve_recipe({**raw, "out": out or raw["out"]}, where="demo recipe")
    dump_recipe, run_pipeline, demo_summary = pipeline.dump_recipe, pipeline.run_pipeline, pipeline.demo_summary
    if print_config:
        click.echo(dump_recipe(rec), nl=False)
        return
    result = run_pipeline(rec, progress=not quiet)
    _finish(result, tail=demo_summary(result.report))
