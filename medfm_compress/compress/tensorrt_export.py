"""``medfm-compress export SOURCE --format tensorrt``: a TensorRT engine from an ONNX file or a run directory.

From a run directory the model is exported to ONNX first; for int8/fp8 it is quantized with the ``tensorrt``
target (ModelOpt symmetric QDQ) first, which is why this orchestration sits above the builder
(:mod:`medfm_compress.export.tensorrt`) in the compress layer.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..export.formats import ExportOutcome, ExportRequest, register_format
from ..export.tensorrt import EngineResult, TensorRTConfig, build_engine
from ..layout import RunLayout

__all__ = ["export_tensorrt"]



def export_tensorrt(
    source: str,
    out: str | None = None,
    model: str = "student",
    precision: str = "fp32",
    batch_sizes: tuple[int, ...] = (1,),
    flavour: str = "auto",
    workspace_mb: int | None = None,
    timing_cache: str | None = None,
    targets: tuple[str, ...] | None = None,
    calib_data: str | None = None,
    force: bool = False,
    progress: bool = True,
    allow_small_holdout: bool = False,
) -> EngineResult:
    """Engine from an ONNX file, or from a run directory (exported to ONNX first; for int8/fp8 quantized with
    the ``tensorrt`` target, i.e. ModelOpt symmetric QDQ) -- the engine input is always our ONNX."""
    src = Path(source)
    if src.is_dir():
        stem = model
        base = Path(out).parent if out else src
        engine = Path(out) if out else src / f"{model}.{precision}.engine"
        if precision in ("int8", "fp8"):
            from ..models.card import ModelCard
            from .quantize import QuantizeConfig, quantize

            if calib_data is None and RunLayout(src).card(model).is_file():
                # Calibrate on the data the model was trained on unless told otherwise.
                calib_data = ModelCard.load(RunLayout(src).card(model)).provenance.get("data")

            onnx_path = base / f"{stem}.trt-{precision}.onnx"
            quantize(
                QuantizeConfig.from_options(
                    input=str(src),
                    out=str(onnx_path),
                    calib_data=calib_data,
                    target="tensorrt",
                    precision=precision,
                    model=model,
                    force=force,
                    progress=progress,
                    allow_small_holdout=allow_small_holdout,
                )
            )
        else:
            from ..export.onnx import ExportConfig, export_onnx

            onnx_path = base / f"{stem}.onnx"
            export_onnx(
                ExportConfig(source=str(src), out=str(onnx_path), model=model, data=calib_data, force=force)
            )
    elif src.suffix.lower() == ".onnx":
        onnx_path = src
        engine = Path(out) if out else src.with_suffix(".engine")
    else:
        raise ConfigError(f"{src}: give a run directory or an .onnx file to build a TensorRT engine from")
    cfg = TensorRTConfig(
        onnx=str(onnx_path),
        out=str(engine),
        flavour=flavour,
        precision=precision,
        batch_sizes=tuple(batch_sizes),
        workspace_mb=workspace_mb,
        timing_cache=timing_cache,
        targets=tuple(targets) if targets else None,
        force=force,
    )
    return build_engine(cfg, progress=progress)


@register_format("tensorrt", options=("precision", "batch_sizes", "flavour", "targets", "workspace_mb",
                                      "timing_cache", "data", "allow_small_holdout"),
                 description="TensorRT / TensorRT-RTX engine (+ sidecar .json)")
def _tensorrt_format(req: ExportRequest) -> ExportOutcome:
    opts = req.options("precision", "batch_sizes", "flavour", "workspace_mb", "timing_cache", "targets",
                       "allow_small_holdout")
    res = export_tensorrt(req.source, out=req.out, model=req.model, calib_data=req.data, force=req.force,
                          progress=req.progress, **opts)
    return ExportOutcome(
        res.path,
        [res.path, res.sidecar],
        [f"note: {n}" for n in res.notes],
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
    )
