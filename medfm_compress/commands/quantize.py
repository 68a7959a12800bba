"""``medfm-compress quantize``."""

from __future__ import annotations

import json

import click

from ..models.card import MODEL_ROLES
from ._common import csv_option, foreign_model_options


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
@click.option(
    "--target",
    default="cpu",
    show_default=True,
    help="Deployment target: cpu (ONNX Runtime; auto also tries OpenVINO), openvino (IR + NNCF), tensorrt.",
)
@click.option(
    "--precision",
    default="int8",
    show_default=True,
    help="cpu: int8 (static QDQ U8S8), int8-dynamic, fp16, auto (fastest that passes the gate); "
    "openvino: int8, fp32, bf16 (CPUs with native bf16; the IR is run at bf16).",
)
@click.option("--method", default="ptq", show_default=True, help="ptq (post-training).")
@click.option(
    "--calibrator",
    type=click.Choice(["minmax", "percentile", "entropy"]),
    default="minmax",
    show_default=True,
)
@click.option(
    "--num-calib", default=256, show_default=True, type=int, help="Calibration images (stratified)."
)
@click.option(
    "--num-holdout",
    default=512,
    show_default=True,
    type=int,
    help="Held-out images for the parity gate (val split first; at most the split's size). A volume model at "
    "this default is gated on 64 patches.",
)
@click.option(
    "--num-bins", default=2048, show_default=True, type=int, help="Histogram bins (percentile, entropy)."
)
@click.option("--percentile", default=99.999, show_default=True, type=float)
@click.option("--per-tensor", is_flag=True, help="Per-tensor instead of per-channel weight scales.")
@click.option(
    "--full-range-weights",
    is_flag=True,
    help="cpu/openvino int8: full 8-bit weights instead of the 7-bit range that ONNX Runtime's U8S8 kernels (and "
    "OpenVINO's, NNCF overflow fix) need on x86 without VNNI (they saturate otherwise); only for VNNI-only "
    "deployments.",
)
@click.option(
    "--auto-exclude", is_flag=True, help="Keep the most damaging nodes in fp32 until the gate holds."
)
@click.option("--exclude", default=None, help="Comma-separated node names to keep in fp32.")
@click.option(
    "--min-agreement",
    default=0.99,
    show_default=True,
    type=float,
    help="Gate: top-1 agreement with fp32 on held-out data.",
)
@click.option("--min-cosine", default=None, type=float, help="Gate: mean logit cosine with fp32.")
@click.option("--min-dice", default=0.99, show_default=True, type=float,
              help="Gate for segmentation models: mean over classes of the Dice of the quantized model's masks vs "
              "fp32's, each class over all held-out pixels (--min-agreement is then their pixel agreement).")
@click.option("--min-pearson", default=None, type=float,
              help="Gate for regression models: Pearson r of the quantized model's outputs with fp32's on held-out "
              "images [default: 0.99].")
@click.option(
    "--search/--no-search",
    default=True,
    show_default=True,
    help="int8 on cpu/openvino: when the first model misses the gate, try calibrators, percentiles, weight range, "
    "per-channel/per-tensor, latency-aware exclusion and (cpu) OpenVINO, and write the fastest that passes and beats "
    "fp32; options given explicitly are not varied. --no-search: refuse at once (exit 3).",
)
@click.option(
    "--search-budget",
    default=None,
    type=float,
    metavar="SECONDS",
    help="Seconds the search may spend, checked before each candidate [default: 300].",
)
@click.option(
    "--batch-sizes",
    default=None,
    metavar="N[,N...]",
    help="With --precision auto: the batch sizes the model will run at (e.g. 1,32); the choice is made per batch "
    "size (ONNX Runtime also timed as one single-threaded stream per core at batch > 1), another model winning a "
    "later batch size is written beside --out as <stem>.bs<N>.onnx|.xml [default: 1].",
)
@click.option("--fp16-io", is_flag=True, help="With fp16: float16 input and output too.")
@click.option(
    "--allow-random-calibration", is_flag=True, help="Calibrate on random tensors (recorded in metadata)."
)
@foreign_model_options
@click.option(
    "--model",
    "model_name",
    type=click.Choice(MODEL_ROLES),
    default="student",
    show_default=True,
    help="Which model of a run directory.",
)
@click.option("--teacher", default=None, help="Teacher for methods that need one (qat).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--force", is_flag=True, help="Use an input whose hash differs from the run manifest.")
@click.option("--quiet", is_flag=True, help="No progress output.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def command(
    input_path,
    out,
    calib_data,
    target,
    precision,
    method,
    calibrator,
    num_calib,
    num_holdout,
    num_bins,
    percentile,
    per_tensor,
    full_range_weights,
    auto_exclude,
    exclude,
    min_agreement,
    min_cosine,
    min_dice,
    min_pearson,
    search,
    search_budget,
    batch_sizes,
    fp16_io,
    allow_random_calibration,
    input_size,
    channels,
    mean,
    std,
    model_name,
    teacher,
    seed,
    force,
    quiet,
    as_json,
):
    """Quantize INPUT (an ONNX file or a run directory) for a deployment target.

    The output keeps the model's metadata with the new precision and the calibration provenance; a model that
    fails the parity gate on held-out data is not written.
    """
    from ..compress.quantize import QuantizeConfig, quantize

    cfg = QuantizeConfig(
        input=input_path,
        out=out,
        calib_data=calib_data,
        target=target,
        precision=precision,
        method=method,
        calibrator=calibrator,
        num_calib=num_calib,
        num_holdout=num_holdout,
        num_bins=num_bins,
        percentile=percentile,
        per_channel=not per_tensor,
        reduce_range=not full_range_weights,
        auto_exclude=auto_exclude,
        exclude_nodes=csv_option(exclude),
        min_agreement=min_agreement,
        min_cosine=min_cosine,
        min_dice=min_dice,
        **({"min_pearson": min_pearson} if min_pearson is not None else {}),
        fp16_io=fp16_io,
        allow_random_calibration=allow_random_calibration,
        input_size=input_size,
        channels=channels,
        mean=csv_option(mean, float),
        std=csv_option(std, float),
        model=model_name,
        teacher=teacher,
        search=search,
        search_budget=search_budget,
        batch_sizes=csv_option(batch_sizes, int),
        pinned=_given(click.get_current_context()),
        seed=seed,
        force=force,
        progress=not quiet and not as_json,
    )
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
