"""ONNX Runtime quantization building blocks: static QDQ int8, dynamic int8 and fp16 models of one fp32 model.

Static int8 uses uint8 activations and per-channel int8 weights (U8S8): measured here on resnet18 at batch 1,
ORT fp32 19.7 ms, U8S8 QDQ 6.4 ms, S8S8 QDQ (ORT's default types) 21.2 ms because fewer convolutions fuse.
Calibration ranges are computed once (with an explicit histogram size: ``quantize_static`` would silently use
128 bins for entropy) and cached, so sensitivity analysis and auto-exclusion re-quantize without
re-calibrating. The ``cpu`` target (:mod:`medfm_compress.compress.quantize_ort`) and ``--precision auto``
(:mod:`medfm_compress.compress.auto_precision`) are made of these.
"""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..data.lazy import is_lazy
from ..errors import ModelError
from ..runtime.onnx_loader import run_onnx
from .calibration import CalibrationReader
from .quantize import QuantizeContext, QuantizedModel, gate_passes, parity_report
from .sensitivity import auto_exclude

__all__ = [
    "StaticQuantizer",
    "DYNAMIC_OPS",
    "quiet_ort",
    "preprocessed",
    "parity_of",
    "static_int8",
    "static_provenance",
    "dynamic_int8",
    "fp16_model",
    "copy_proto",
]

# Images per ORT ``collect_data`` call for a streamed set: ORT keeps every intermediate output of a call in
# memory until it reduces them, so a large set is fed in chunks (min/max ranges merge exactly across calls).
STREAM_CHUNK_IMAGES = 256
# Output file numbers of every quantizer (and its weight variants) sharing one work directory.
_QUANTIZED_FILES = itertools.count(1)
# Dynamic quantization only pays off for matrix products; dynamic Conv (ConvInteger) measured 115 ms vs
# 19.7 ms fp32 on resnet18 here.
DYNAMIC_OPS = ["MatMul", "Gemm", "Attention", "LSTM", "GRU"]


def quiet_ort():
    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.WARNING))


def preprocessed(fp32_path: Path, workdir: Path) -> Path:
    """ORT's quantization pre-processing (shape inference + graph optimisation) of ``fp32_path``, cached in
    ``workdir``; models it cannot handle fall back to plain ONNX shape inference."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = Path(workdir) / "fp32-pre.onnx"
    if out.is_file():
        return out
    try:
        quant_pre_process(str(fp32_path), str(out))
    except Exception:  # symbolic shape inference gives up on some graphs; plain inference is enough then
        onnx.save(onnx.shape_inference.infer_shapes(onnx.load(str(fp32_path))), str(out))
    return out


# Images per calibration batch.
CALIB_BATCH = 16


class StaticQuantizer:
    """Static QDQ quantization of one fp32 model with calibration ranges computed once."""

    def __init__(
        self,
        fp32_path: Path,
        calib_images: np.ndarray,
        workdir: Path,
        calibrator: str = "minmax",
        per_channel: bool = True,
        num_bins: int = 2048,
        percentile: float = 99.999,
        reduce_range: bool = True,
        progress: bool = False,
    ):
        from onnxruntime.quantization import CalibrationMethod

        quiet_ort()
        self.fp32_path = Path(fp32_path)
        self.workdir = Path(workdir)
        self.per_channel = per_channel
        self.reduce_range = reduce_range
        self.method = {
            "minmax": CalibrationMethod.MinMax,
            "percentile": CalibrationMethod.Percentile,
            "entropy": CalibrationMethod.Entropy,
        }[calibrator]
        self.calibrator = calibrator
        self.num_bins = num_bins
        self.percentile = percentile
        # One cache per calibration setting: quantizers of several settings (the recovery search) share a workdir.
        setting = {"minmax": "", "percentile": f"-p{percentile:g}-b{num_bins}", "entropy": f"-b{num_bins}"}
        self.cache = self.workdir / f"calib-{calibrator}{setting[calibrator]}.json"
        self.progress = progress
        self._calibrate(calib_images)

    def with_weights(self, per_channel: bool, reduce_range: bool) -> StaticQuantizer:
        """This quantizer with other weight settings, on the same activation ranges (no re-calibration)."""
        other = copy.copy(self)
        other.per_channel, other.reduce_range = per_channel, reduce_range
        return other

    def _calibrate(self, x: np.ndarray) -> None:
        import onnx
        from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
        from tqdm.auto import tqdm

        inferred = preprocessed(self.fp32_path, self.workdir)
        model = onnx.load(str(inferred))
        extra: dict[str, Any] = {}
        if self.calibrator == "percentile":
            extra = {"num_bins": self.num_bins, "percentile": self.percentile}
        elif self.calibrator == "entropy":
            extra = {"num_bins": self.num_bins, "num_quantized_bins": 128}
        try:
            cal = create_calibrator(
                inferred,
                None,
                augmented_model_path=str(self.workdir / "augmented.onnx"),
                calibrate_method=self.method,
                extra_options=extra,
            )
            name = model.graph.input[0].name
            # A streamed set goes in chunks so ORT never holds more than one chunk's activations; an in-memory
            # set goes in one pass as before (histogram calibrators re-bin across passes).
            chunk = STREAM_CHUNK_IMAGES if is_lazy(x) else max(len(x), 1)
            # ORT's histogram calibrators print their progress to stdout, which must stay clean for --json; ours
            # goes to stderr (a large model takes minutes to calibrate).
            bar = tqdm(total=len(x), desc=f"calibrating ({self.calibrator})", unit="img", leave=False,
                       disable=not self.progress, dynamic_ncols=True)
            with bar, contextlib.redirect_stdout(io.StringIO()):
                for start in range(0, len(x), chunk):
                    end = min(len(x), start + chunk)
                    # ORT's histogram collectors stack the batches of one pass into one array, so a pass must
                    # hold batches of one size: the full batches first, the remainder in a pass of its own.
                    full = start + (end - start) // CALIB_BATCH * CALIB_BATCH
                    for a, b in ((start, full), (full, end)):
                        if b > a:
                            cal.collect_data(CalibrationReader(name, x, CALIB_BATCH, a, b, on_batch=bar.update))
                save_tensors_data(cal.compute_data(), self.cache)
        except Exception as e:  # ORT raises its own types for ops it cannot run
            raise ModelError(
                f"calibration failed in ONNX Runtime: {str(e).strip().splitlines()[0][:300]}"
            ) from None
        self.fp32_inferred = inferred

    def quantize(self, exclude: list[str] | None = None, only: list[str] | None = None):
        """A QDQ ``ModelProto``; ``exclude`` nodes stay fp32, ``only`` restricts quantization to those nodes."""
        import onnx
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

        out = self.workdir / f"q{next(_QUANTIZED_FILES)}.onnx"
        try:
            quantize_static(
                str(self.fp32_inferred),
                str(out),
                calibration_data_reader=None,
                quant_format=QuantFormat.QDQ,
                per_channel=self.per_channel,
                reduce_range=self.reduce_range,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_quantize=only,
                nodes_to_exclude=exclude or None,
                calibrate_method=self.method,
                calibration_cache_path=str(self.cache),
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )
        except Exception as e:  # unsupported op or graph shape for the quantizer
            raise ModelError(
                f"ONNX Runtime cannot quantize this model: {str(e).strip().splitlines()[0][:300]}"
            ) from None
        proto = onnx.load(str(out))
        out.unlink(missing_ok=True)
        return proto

    def quantizable_nodes(self, proto) -> list[Any]:
        """Nodes of the fp32 graph that the full QDQ model actually quantized (their inputs got a DQ)."""
        produced_by_dq = {o for n in proto.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        qnames = {
            n.name
            for n in proto.graph.node
            if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
            and any(i in produced_by_dq for i in n.input)
        }
        fp32 = __import__("onnx").load(str(self.fp32_inferred))
        return [n for n in fp32.graph.node if n.name in qnames]


def parity_of(ctx: QuantizeContext, ref: np.ndarray, proto) -> dict[str, float]:
    """Parity of ``proto`` against the fp32 logits ``ref`` on the held-out images."""
    return parity_report(ref, run_onnx(proto, ctx.calib.holdout), ctx.meta.task)


def static_int8(ctx: QuantizeContext, ref: np.ndarray, sq: StaticQuantizer | None = None) -> QuantizedModel:
    """Static QDQ int8 of the context's model, calibrated as its config says (``sq``: an existing quantizer
    whose ranges are reused); with ``auto_exclude`` and a failed gate, the costliest-to-keep nodes go back to fp32."""
    if sq is None:
        cfg = ctx.cfg
        sq = StaticQuantizer(ctx.fp32_path, ctx.calib.images, ctx.workdir, cfg.backend.calibrator, cfg.backend.per_channel,
                             cfg.backend.num_bins, cfg.backend.percentile, cfg.backend.reduce_range, cfg.progress)
    cfg = ctx.cfg
    exclude = list(cfg.backend.exclude_nodes or [])
    proto = sq.quantize(exclude=exclude)
    parity = parity_of(ctx, ref, proto)
    prov = static_provenance(cfg)
    report: dict[str, Any] = {"parity_naive": parity}
    if cfg.backend.auto_exclude and not gate_passes(parity, cfg):
        res = auto_exclude(ctx, sq, ref, exclude)
        proto, parity = res.proto, res.parity
        prov["auto_exclude"] = {"excluded": res.excluded, "steps": res.steps}
        report["sensitivity"] = res.ranking
        report["auto_exclude"] = {
            "excluded": res.excluded,
            "steps": res.steps,
            "latency_ms": res.latency_ms,
            "fp32_latency_ms": res.fp32_latency_ms,
        }
    prov["excluded_nodes"] = sorted(set(exclude) | set(prov.get("auto_exclude", {}).get("excluded", [])))
    report["parity"] = parity
    return QuantizedModel(proto, "int8", prov, report)


def static_provenance(cfg) -> dict[str, Any]:
    """What a static int8 model of ``cfg``'s settings records about how it was quantized."""
    prov: dict[str, Any] = {
        "calibrator": cfg.backend.calibrator,
        "activations": "uint8",
        "weights": "int8 (7-bit range)" if cfg.backend.reduce_range else "int8",
        "per_channel": cfg.backend.per_channel,
        "reduce_range": cfg.backend.reduce_range,
        "format": "QDQ",
    }
    if cfg.backend.calibrator != "minmax":
        prov["num_bins"] = cfg.backend.num_bins
    if cfg.backend.calibrator == "percentile":
        prov["percentile"] = cfg.backend.percentile
    return prov


def dynamic_int8(ctx: QuantizeContext):
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quiet_ort()
    out = ctx.workdir / "dynamic.onnx"
    try:
        quantize_dynamic(
            str(preprocessed(ctx.fp32_path, ctx.workdir)),
            str(out),
            op_types_to_quantize=DYNAMIC_OPS,
            per_channel=ctx.cfg.backend.per_channel,
            reduce_range=ctx.cfg.backend.reduce_range,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(ctx.cfg.backend.exclude_nodes or []) or None,
        )
    except Exception as e:
        raise ModelError(
            f"ONNX Runtime cannot quantize this model: {str(e).strip().splitlines()[0][:300]}"
        ) from None
    return onnx.load(str(out))


def fp16_model(ctx: QuantizeContext):
    from ..export.onnx_build import to_fp16

    return to_fp16(ctx.fp32_proto, keep_io_types=not ctx.cfg.backend.fp16_io)


def copy_proto(proto):
    import onnx

    p = onnx.ModelProto()
    p.CopyFrom(proto)
    return p
