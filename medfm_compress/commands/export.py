"""``medfm-compress export``: one format from the export-format registry."""

from __future__ import annotations

import json

import click

from ..models.card import MODEL_ROLES
from ._common import csv_option

# Listed here (not imported from the registry) so that --help never imports a format's heavy module.
FORMATS = ("onnx", "tensorrt", "openvino")


@click.command(name="export")
@click.argument("source", type=click.Path())
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="Output file (default: SOURCE/<model>.onnx for a run directory).")
@click.option("--model", "model_name", type=click.Choice(MODEL_ROLES), default="student", show_default=True,
              help="Which model of a run directory to export.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="onnx", show_default=True,
              help="Output format: onnx, tensorrt (an engine; see --precision, --batch-sizes) or openvino "
                   "(.xml + .bin IR). An option the format does not use is refused.")
@click.option("--precision", default=None, type=click.Choice(["fp32", "fp16", "int8", "fp8"]),
              help="tensorrt: engine precision [default: fp32] (int8/fp8 quantize a run directory with "
                   "--target tensorrt first).")
@click.option("--batch-sizes", default=None, help="tensorrt: batch sizes of the profile, e.g. 1,4,16 [default: 1].")
@click.option("--flavour", default=None, type=click.Choice(["auto", "rtx", "classic"]),
              help="tensorrt: TensorRT-RTX (builds without a GPU) or classic TensorRT [default: auto].")
@click.option("--targets", default=None, help="tensorrt (RTX): compute capabilities, e.g. sm86,sm89 or current.")
@click.option("--workspace-mb", default=None, type=int, help="tensorrt: builder workspace limit in MiB.")
@click.option("--timing-cache", default=None, type=click.Path(dir_okay=False),
              help="tensorrt (classic): timing cache file reused across builds.")
@click.option("--opset", default=None, type=int, help="onnx: ONNX opset (>= 17) [default: 17].")
@click.option("--atol", default=None, type=float,
              help="onnx: largest allowed |ONNX Runtime - torch| on the check inputs [default: 1e-4].")
@click.option("--data", default=None,
              help="Data spec for the onnx self-check or tensorrt int8 calibration (default: the data the model "
                   "was trained on).")
@click.option("--num-check", default=None, type=int, help="onnx: real images used by the self-check [default: 64].")
@click.option("--allow-small-holdout", is_flag=True, default=None,
              help="tensorrt int8/fp8 from a run directory: judge the quantization gate by point values where the "
                   "held-out set is too small to show it by its 95% lower bound (see quantize).")
@click.option("--dynamo", is_flag=True, default=None,
              help="onnx: use torch's dynamo exporter instead of the (faster) classic one.")
@click.option("--no-simplify", is_flag=True, help="onnx: skip the onnxslim graph clean-up.")
@click.option("--force", is_flag=True, help="Use weights whose hash differs from the run manifest.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def command(source, out, model_name, fmt, precision, batch_sizes, flavour, targets, workspace_mb, timing_cache,
            opset, atol, data, num_check, allow_small_holdout, dynamo, no_simplify, force, as_json):
    """Export a trained model (run directory, .json card, .safetensors or .onnx) to ONNX, OpenVINO IR or a
    TensorRT engine.

    The ONNX file carries the preprocessing, labels and provenance; ONNX Runtime's outputs are compared
    with torch's on real task images and random tensors before anything is written.
    """
    from ..errors import ConfigError
    from ..export.formats import ExportRequest, export_artifact

    try:
        sizes = tuple(int(b) for b in batch_sizes.split(",") if b.strip()) if batch_sizes is not None else None
    except ValueError:
        raise ConfigError(f"--batch-sizes must be comma-separated integers, got {batch_sizes!r}") from None
    request = ExportRequest(
        source=source, out=out, model=model_name, force=force, progress=not as_json,
        precision=precision, batch_sizes=sizes, flavour=flavour,
        targets=csv_option(targets), workspace_mb=workspace_mb, timing_cache=timing_cache,
        opset=opset, atol=atol, data=data, num_check=num_check, dynamo=dynamo or None,
        simplify=False if no_simplify else None, allow_small_holdout=allow_small_holdout,
    )
    res = export_artifact(fmt, request)
    if as_json:
        click.echo(json.dumps(res.record, indent=2))
        return
    for line in res.lines:
        click.echo(line)
