"""``medfm-compress quantize``."""

from __future__ import annotations

import json

import click

from ..compress.quantize import CALIBRATORS, DEFAULT_SEARCH_BUDGET_S, QuantizeConfig, quantize
from ..models.card import MODEL_ROLES
from ._common import csv_option, field_default, foreign_model_options, given_options


def _default(name: str) -> str:
    return field_default(QuantizeConfig, name)


@click.command(name="quantize")
@click.argument("input_path", metavar="INPUT", type=click.Path())
@click.option(
    "--out",
    default=None,
    type=click.Path(dir_okay=False),
    help="Output ONNX, or .xml for an OpenVINO IR (default: next to the input, <name>.<precision>.onnx|.xml; "
    "with --precision auto an .onnx/.xml suffix limits the candidates to that kind, and a name with neither is a "
    "stem the winner's suffix completes, e.g. student.auto -> student.auto.xml).",
)
@click.option("--calib-data", default=None, help="Calibration data spec (folder:DIR needs no labels.csv).")
@click.option("--target", default=None, help="Deployment target: cpu (ONNX Runtime; auto also tries OpenVINO), "
              "openvino (IR + NNCF), tensorrt." + _default("target"))
@click.option("--precision", default=None, help="cpu: int8 (static QDQ U8S8), int8-dynamic, fp16, auto (fastest that "
              "passes the gate); openvino: int8, fp32, bf16 (CPUs with native bf16; the IR is run at bf16)."
              + _default("precision"))
@click.option("--method", default=None, help="ptq (post-training); qat (tensorrt, from a run directory)."
              + _default("method"))
@click.option("--calibrator", type=click.Choice(CALIBRATORS), default=None, help="Activation ranges."
              + _default("calibrator"))
@click.option("--num-calib", default=None, type=int, help="Calibration images (stratified)." + _default("num_calib"))
@click.option("--num-holdout", default=None, type=int, help="Held-out images for the parity gate (val split first; at "
              "most the split's size). A volume model at this default is gated on 64 patches." + _default("num_holdout"))
@click.option("--num-bins", default=None, type=int, help="Histogram bins (percentile, entropy)." + _default("num_bins"))
@click.option("--percentile", default=None, type=float, help="Percentile calibrator's percentile."
              + _default("percentile"))
@click.option("--per-tensor", is_flag=True, default=None, help="Per-tensor instead of per-channel weight scales.")
@click.option(
    "--full-range-weights",
    is_flag=True,
    default=None,
    help="cpu/openvino int8: full 8-bit weights instead of the 7-bit range that ONNX Runtime's U8S8 kernels (and "
    "OpenVINO's, NNCF overflow fix) need on x86 without VNNI (they saturate otherwise); only for VNNI-only "
    "deployments.",
)
@click.option("--auto-exclude", is_flag=True, default=None,
              help="Keep the most damaging nodes in fp32 until the gate holds.")
@click.option("--exclude", default=None, help="Comma-separated node names to keep in fp32.")
@click.option("--min-agreement", default=None, type=float, help="Gate: top-1 agreement with fp32 on held-out data, "
              "judged by its 95% lower bound (Wilson)." + _default("min_agreement"))
@click.option("--allow-small-holdout", is_flag=True, default=None,
              help="Judge the gate by point values when the held-out set is too small for its 95% lower bound to "
              "reach --min-agreement at all (refused otherwise, with the number of images it takes).")
@click.option("--min-cosine", default=None, type=float, help="Gate: mean logit cosine with fp32 (an embedding model's "
              "gate, 0.99 when not given).")
@click.option("--min-dice", default=None, type=float,
              help="Gate for segmentation models: mean over classes of the Dice of the quantized model's masks vs "
              "fp32's, each class over all held-out pixels (--min-agreement is then their pixel agreement)."
              + _default("min_dice"))
@click.option("--min-pearson", default=None, type=float,
              help="Gate for regression models: Pearson r of the quantized model's outputs with fp32's on held-out "
              "images." + _default("min_pearson"))
@click.option(
    "--search/--no-search",
    default=None,
    help="int8 on cpu/openvino: when the first model misses the gate, try calibrators, percentiles, weight range, "
    "per-channel/per-tensor, latency-aware exclusion and (cpu) OpenVINO, and write the fastest that passes and beats "
    "fp32; options given explicitly are not varied. --no-search: refuse at once (exit 3)." + _default("search"),
)
@click.option(
    "--search-budget",
    default=None,
    type=float,
    metavar="SECONDS",
    help=f"Seconds the search may spend, checked before each candidate [default: {DEFAULT_SEARCH_BUDGET_S:g}].",
)
@click.option(
    "--batch-sizes",
    default=None,
    metavar="N[,N...]",
    help="With --precision auto: the batch sizes the model will run at (e.g. 1,32); the choice is made per batch "
    "size (ONNX Runtime also timed as one single-threaded stream per core at batch > 1), another model winning a "
    "later batch size is written beside --out as <stem>.bs<N>.onnx|.xml [default: 1].",
)
@click.option("--fp16-io", is_flag=True, default=None, help="With fp16: float16 input and output too.")
@click.option("--allow-random-calibration", is_flag=True, default=None,
              help="Calibrate on random tensors (recorded in metadata).")
@foreign_model_options
@click.option("--model", "model_name", type=click.Choice(MODEL_ROLES), default=None,
              help="Which model of a run directory." + _default("model"))
@click.option("--teacher", default=None, help="Teacher for methods that need one (qat).")
@click.option("--seed", default=None, type=int, help="Sampling seed." + _default("seed"))
@click.option("--force", is_flag=True, default=None, help="Use an input whose hash differs from the run manifest.")
@click.option("--quiet", is_flag=True, help="No progress output.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def command(input_path, per_tensor, full_range_weights, exclude, mean, std, batch_sizes, model_name, quiet, as_json,
            **options):
    """Quantize INPUT (an ONNX file or a run directory) for a deployment target.

    The output keeps the model's metadata with the new precision and the calibration provenance; a model that
    fails the parity gate on held-out data is not written. Options left out take QuantizeConfig's defaults.
    """
    given = given_options(options)
    renamed = {"per_channel": None if per_tensor is None else not per_tensor,
               "reduce_range": None if full_range_weights is None else not full_range_weights,
               "exclude_nodes": csv_option(exclude), "mean": csv_option(mean, float), "std": csv_option(std, float),
               "batch_sizes": csv_option(batch_sizes, int), "model": model_name}
    given |= {k: v for k, v in renamed.items() if v is not None}
    pinned = _given(click.get_current_context())
    cfg = QuantizeConfig.from_options("", input=input_path, **given, **({"pinned": pinned} if pinned else {}),
                                      progress=not quiet and not as_json)
    res = quantize(cfg)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "path": str(res.path),
                    "precision": res.precision,
                    "size_bytes": res.size_bytes,
                    "seconds": res.seconds,
                    "report": res.report,
                },
                indent=2,
                default=str,
            )
        )
        return
    p = res.report.get("parity", {})
    click.echo(
        f"wrote {res.path} ({res.precision}, {res.size_bytes / 1e6:.2f} MB, "
        f"{res.input_size_bytes / max(res.size_bytes, 1):.2f}x smaller, {res.seconds:.1f} s)"
    )
    if p:
        from ..compress.quantize import parity_text

        click.echo(f"held-out parity vs fp32: {parity_text(p)}, SQNR {p['sqnr_db']:.1f} dB")
    for w in res.report.get("warnings", []):
        click.echo(f"warning: {w}", err=True)
    if "auto_table" in res.report:
        for r in res.report["auto_table"]:
            state = (f"{r['latency_ms']:8.3f} ms  agreement {r['top1_agreement']:.4f}  "
                     f"{'pass' if r['passes'] else 'FAIL'}") if "latency_ms" in r else r.get("error", "")
            click.echo(f"  {'*' if r.get('chosen') else ' '} {r.get('engine', ''):<12} {r['precision']:<14} {state}")
            if r.get("note"):
                click.echo(f"      {r['note']}")
        click.echo(f"chosen: {res.report.get('auto_reason', res.report.get('chosen'))}")
    for row in res.by_batch:
        run = f"{row['engine']}" + (f", streams={row['streams']}" if row["streams"] > 1 else "")
        click.echo(f"batch {row['batch_size']:>4}: use {row['path']} ({row['candidate']}, {run}): "
                   f"{row['latency_ms']:.3f} ms, {row['throughput_per_s']:.0f}/s, {row['speedup_vs_fp32']:.2f}x fp32")
    if "auto_exclude" in res.report:
        click.echo(f"auto-exclude kept {len(res.report['auto_exclude'].get('excluded', []))} node(s) in fp32")
    if "search" in res.report:
        from ..compress.quantize_search import search_table_lines

        for line in search_table_lines(res.report["search"]):
            click.echo(line)


# Flag -> the QuantizeConfig option it sets, for the options the recovery search would otherwise vary.
_SEARCHED_FLAGS = {"calibrator": "calibrator", "percentile": "percentile", "per_tensor": "per_channel",
                   "full_range_weights": "reduce_range", "auto_exclude": "auto_exclude"}


def _given(ctx: click.Context) -> tuple[str, ...]:
    """The searched options given on the command line, even at their default value (``--calibrator minmax``)."""
    from click.core import ParameterSource

    given = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    return tuple(opt for flag, opt in _SEARCHED_FLAGS.items() if ctx.get_parameter_source(flag) in given)
