"""``medfm-compress export``."""

from __future__ import annotations

import json

import click

from ..models.card import MODEL_ROLES

# Output formats this command can write. Only ONNX exists so far; the TensorRT engine builder adds
# "tensorrt" here (and a branch in `command`) when it lands.
FORMATS = ("onnx", "tensorrt", "openvino")


@click.command(name="export")
@click.argument("source", type=click.Path())
@click.option(
    "--out",
    default=None,
    type=click.Path(dir_okay=False),
    help="Output file (default: SOURCE/<model>.onnx for a run directory).",
)
@click.option(
    "--model",
    "model_name",
    type=click.Choice(MODEL_ROLES),
    default="student",
    show_default=True,
    help="Which model of a run directory to export.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="onnx",
    show_default=True,
    help="Output format: onnx, tensorrt (an engine; see --precision, --batch-sizes) or openvino (.xml + .bin IR).",
)
# TensorRT engine options (used with --format tensorrt; medfm_compress.export.tensorrt).
@click.option(
    "--precision",
    default="fp32",
    show_default=True,
    type=click.Choice(["fp32", "fp16", "int8", "fp8"]),
    help="tensorrt: engine precision (int8/fp8 quantize a run directory with --target tensorrt first).",
)
@click.option(
    "--batch-sizes", default="1", show_default=True, help="tensorrt: batch sizes, e.g. 1,4,16 (profile)."
)
@click.option(
    "--flavour",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "rtx", "classic"]),
    help="tensorrt: TensorRT-RTX (builds without a GPU) or classic TensorRT.",
)
@click.option(
    "--targets", default=None, help="tensorrt (RTX): compute capabilities, e.g. sm86,sm89 or current."
)
@click.option("--workspace-mb", default=None, type=int, help="tensorrt: builder workspace limit in MiB.")
@click.option(
    "--timing-cache",
    default=None,
    type=click.Path(dir_okay=False),
    help="tensorrt (classic): timing cache file reused across builds.",
)
@click.option("--opset", default=17, show_default=True, type=int, help="ONNX opset (>= 17).")
@click.option(
    "--atol",
    default=1e-4,
    show_default=True,
    type=float,
    help="Largest allowed |ONNX Runtime - torch| on the check inputs.",
)
@click.option(
    "--data", default=None, help="Data spec for the self-check (default: the data the model was trained on)."
)
@click.option(
    "--num-check", default=64, show_default=True, type=int, help="Real images used by the self-check."
)
@click.option(
    "--dynamo", is_flag=True, help="Use torch's dynamo exporter instead of the (faster) classic one."
)
@click.option("--no-simplify", is_flag=True, help="Skip the onnxslim graph clean-up.")
@click.option("--force", is_flag=True, help="Use weights whose hash differs from the run manifest.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def command(
    source,
    out,
    model_name,
    fmt,
    precision,
    batch_sizes,
    flavour,
    targets,
    workspace_mb,
    timing_cache,
    opset,
    atol,
    data,
    num_check,
    dynamo,
    no_simplify,
    force,
    as_json,
):
    """Export a trained model (run directory, .json card or .safetensors) to a checked ONNX file.

    The ONNX file carries the preprocessing, labels and provenance; ONNX Runtime's outputs are compared
    with torch's on real task images and random tensors before anything is written.
    """
    if fmt == "openvino":
        return _openvino(source, out, model_name, force, as_json)
    if fmt == "tensorrt":
        return _tensorrt(
            source,
            out,
            model_name,
            precision,
            batch_sizes,
            flavour,
            targets,
            workspace_mb,
            timing_cache,
            data,
            force,
            as_json,
        )
    from ..export.onnx import ExportConfig, export_onnx

    cfg = ExportConfig(
        source=source,
        out=out,
        model=model_name,
        format=fmt,
        opset=opset,
        atol=atol,
        data=data,
        num_check=num_check,
        dynamo=dynamo,
        simplify=not no_simplify,
        force=force,
    )
    res = export_onnx(cfg)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "path": str(res.path),
                    "size_bytes": res.size_bytes,
                    "seconds": res.seconds,
                    "check": res.check,
                },
                indent=2,
            )
        )
        return
    c = res.check
    click.echo(f"wrote {res.path} ({res.size_bytes / 1e6:.2f} MB, {res.seconds:.1f} s)")
    click.echo(
        f"self-check vs torch: {c.get('real_n', 0)} real + {c.get('random_n', 0)} random inputs, "
        f"max-abs {c['max_abs']:.3g}, cosine {c['cosine']:.7f}"
    )


def _tensorrt(
    source,
    out,
    model_name,
    precision,
    batch_sizes,
    flavour,
    targets,
    workspace_mb,
    timing_cache,
    data,
    force,
    as_json,
):
    from ..errors import ConfigError
    from ..export.tensorrt import export_tensorrt

    try:
        sizes = tuple(int(b) for b in batch_sizes.split(",") if b.strip())
    except ValueError:
        raise ConfigError(f"--batch-sizes must be comma-separated integers, got {batch_sizes!r}") from None
    res = export_tensorrt(
        source,
        out=out,
        model=model_name,
        precision=precision,
        batch_sizes=sizes,
        flavour=flavour,
        workspace_mb=workspace_mb,
        timing_cache=timing_cache,
        targets=tuple(t for t in targets.split(",") if t.strip()) if targets else None,
        calib_data=data,
        force=force,
        progress=not as_json,
    )
    if as_json:
        click.echo(
            json.dumps(
                {
                    "path": str(res.path),
                    "sidecar": str(res.sidecar),
                    "flavour": res.flavour,
                    "tensorrt_version": res.trt_version,
                    "precision": res.precision,
                    "profile": res.profile,
                    "targets": res.targets,
                    "build_seconds": res.build_seconds,
                    "size_bytes": res.size_bytes,
                    "notes": res.notes,
                },
                indent=2,
            )
        )
        return
    for note in res.notes:
        click.echo(f"note: {note}")


def _openvino(source, out, model_name, force, as_json):
    from ..export.openvino import export_openvino

    res = export_openvino(source, out=out, model=model_name, force=force)
    if as_json:
        click.echo(json.dumps({"path": str(res.path), "weights": str(res.path.with_suffix(".bin")),
                               "size_bytes": res.size_bytes, "seconds": res.seconds, "check": res.check}, indent=2))
        return
    click.echo(f"wrote {res.path} + {res.path.with_suffix('.bin').name} ({res.size_bytes / 1e6:.2f} MB, "
               f"{res.seconds:.1f} s); OpenVINO vs ONNX Runtime cosine {res.check['cosine']:.7f}")
