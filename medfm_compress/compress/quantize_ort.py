"""``--target cpu``: ONNX Runtime quantization (static QDQ int8, dynamic int8, fp16, or auto).

The models are built by :mod:`medfm_compress.compress.onnxruntime_quant`; ``--precision auto`` is
:mod:`medfm_compress.compress.auto_precision`.
"""

from __future__ import annotations

from ..errors import GateFailure
from ..runtime.onnx_loader import run_onnx
from .auto_precision import select_precision
from .onnxruntime_quant import (
    DYNAMIC_OPS,
    dynamic_int8,
    fp16_model,
    parity_of,
    static_int8,
)
from .quantize import QuantizeContext, QuantizedModel, gate_passes, parity_report, register_target

__all__ = ["quantize_cpu", "CPU_PRECISIONS"]

CPU_PRECISIONS = ("int8", "int8-dynamic", "fp16", "auto")


def _check_cpu(proto, cfg) -> None:
    """ONNX Runtime must be able to run the fp32 model at all (unknown ops fail here, before calibration)."""
    from ..runtime.onnx_loader import ort_session

    ort_session(proto)


@register_target("cpu", precisions=CPU_PRECISIONS, methods=("ptq",), check=_check_cpu,
                 options=("calibrator", "num_bins", "percentile", "per_channel", "reduce_range", "auto_exclude",
                          "exclude_nodes", "fp16_io", "latency_runs"))
def quantize_cpu(ctx: QuantizeContext) -> QuantizedModel:
    """ONNX Runtime CPU: static QDQ U8S8 int8, dynamic int8, fp16, or the fastest that passes (auto)."""
    cfg = ctx.cfg
    precision = cfg.precision
    ref = run_onnx(ctx.fp32_proto, ctx.calib.holdout)
    if precision == "int8":
        qm = static_int8(ctx, ref)
    elif precision == "int8-dynamic":
        proto = dynamic_int8(ctx)
        qm = QuantizedModel(
            proto,
            "int8-dynamic",
            {"ops": DYNAMIC_OPS, "weights": "int8", "per_channel": cfg.per_channel,
             "reduce_range": cfg.reduce_range},
            {"parity": parity_of(ctx, ref, proto)},
        )
    elif precision == "fp16":
        proto = fp16_model(ctx)
        qm = QuantizedModel(
            proto,
            "fp16",
            {"fp16_io": cfg.fp16_io},
            {"parity": parity_report(ref, run_onnx(proto, ctx.calib.holdout), ctx.meta.task)},
        )
    else:
        return select_precision(ctx, ref)
    if not gate_passes(qm.report["parity"], cfg):
        p = qm.report["parity"]
        hint = "try --auto-exclude, another --calibrator, " if precision == "int8" else ""
        raise GateFailure(
            f"{precision} model fails the parity gate on {len(ctx.calib.holdout)} held-out images: top-1 agreement "
            f"{p['top1_agreement']:.4f} (min {cfg.min_agreement}), cosine {p['cosine']:.5f}"
            f"{f' (min {cfg.min_cosine})' if cfg.min_cosine is not None else ''}; {hint}or lower --min-agreement; "
            "nothing written"
        )
    return qm
