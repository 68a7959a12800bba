"""``--target cpu``: ONNX Runtime quantization (static QDQ int8, dynamic int8, fp16, auto).

Static int8 uses uint8 activations and per-channel int8 weights (U8S8): measured here on resnet18 at batch 1,
ORT fp32 19.7 ms, U8S8 QDQ 6.4 ms, S8S8 QDQ (ORT's default types) 21.2 ms because fewer convolutions fuse.
Calibration ranges are computed once (with an explicit histogram size: ``quantize_static`` would silently use
128 bins for entropy) and cached, so sensitivity analysis and auto-exclusion re-quantize without
re-calibrating.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..bench.latency import BLOCK_WARMUP
from ..data.lazy import is_lazy
from ..errors import ExportError, GateFailure, ModelError
from .calibration import CalibrationReader
from .quantize import QuantizeContext, QuantizedModel, gate_passes, parity_report, register_target

__all__ = [
    "quantize_cpu",
    "StaticQuantizer",
    "latency_ms",
    "interleaved_latency_ms",
    "CPU_PRECISIONS",
    "register_auto_candidates",
]

CPU_PRECISIONS = ("int8", "int8-dynamic", "fp16", "auto")
# Images per ORT ``collect_data`` call for a streamed set: ORT keeps every intermediate output of a call in
# memory until it reduces them, so a large set is fed in chunks (min/max ranges merge exactly across calls).
STREAM_CHUNK_IMAGES = 256
# Dynamic quantization only pays off for matrix products; dynamic Conv (ConvInteger) measured 115 ms vs
# 19.7 ms fp32 on resnet18 here.
DYNAMIC_OPS = ["MatMul", "Gemm", "Attention", "LSTM", "GRU"]
# --precision auto: candidates this close to the fastest (percent of its p50) are a tie on a shared machine's
# timer; among them the most faithful to fp32 is chosen (mobilenetv3 here: int8-dynamic 0.667 vs fp16 0.671 ms,
# agreement 0.9975 vs 1.0).
AUTO_TIE_PCT = 5.0


def _quiet_ort():
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


def latency_ms(
    proto_or_path,
    shape: tuple[int, ...],
    runs: int = 50,
    warmup: int = 5,
    threads: int | None = None,
    input_dtype=np.float32,
) -> float:
    """p50 latency (ms) of one ORT CPU session at the given input shape (all cores unless ``threads``)."""
    from ..export.onnx import ort_session

    sess = ort_session(proto_or_path, threads=threads)
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal(shape).astype(input_dtype)
    for _ in range(warmup):
        sess.run(None, {name: x})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, {name: x})
        times.append(time.perf_counter() - t)
    return float(np.percentile(times, 50) * 1000.0)


def _timer(engine: str, model, x: np.ndarray, precision: str = "fp32"):
    """A no-argument call that runs ``model`` once on ``x`` in its engine (onnxruntime or openvino); an OpenVINO
    model runs at the inference precision of an artifact of ``precision`` (bf16 for bf16, else f32)."""
    if engine == "openvino":
        from ..export.openvino import compile_ov, ov_inference_precision

        req = compile_ov(model, "CPU", inference_precision=ov_inference_precision(precision)).create_infer_request()
        return lambda: req.infer(x, share_inputs=True)
    from ..export.onnx import ort_session

    sess = ort_session(model)
    feed = {sess.get_inputs()[0].name: x}
    return lambda: sess.run(None, feed)


def interleaved_latency_ms(
    models: dict[str, tuple[Any, ...]],
    shape: tuple[int, ...],
    runs: int = 50,
    dtypes: dict[str, Any] | None = None,
    rounds: int = 5,
    warmup: int = 5,
) -> dict[str, float]:
    """p50 latency (ms) of each ``name -> (engine, model[, artifact precision])`` at ``shape``, every model timed in each of ``rounds``
    rounds (``runs`` calls in all), so background load drifting over the measurement hits all of them alike."""
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    calls = {k: _timer(eng, m, x.astype((dtypes or {}).get(k, np.float32)), *rest)
             for k, (eng, m, *rest) in models.items()}
    for call in calls.values():
        for _ in range(warmup):
            call()
    per = max(1, runs // rounds)
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(rounds):
        for k, call in calls.items():
            for _ in range(BLOCK_WARMUP):  # the previous model's runtime may still spin its threads: untimed
                call()
            for _ in range(per):
                t = time.perf_counter()
                call()
                times[k].append(time.perf_counter() - t)
    return {k: float(np.percentile(v, 50) * 1000.0) for k, v in times.items()}


def _run(proto, x: np.ndarray) -> np.ndarray:
    from ..export.onnx import ort_session, run_onnx

    return run_onnx(ort_session(proto), x)


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
    ):
        from onnxruntime.quantization import CalibrationMethod

        _quiet_ort()
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
        self.cache = self.workdir / f"calib-{calibrator}.json"
        self._count = 0
        self._calibrate(calib_images)

    def _calibrate(self, x: np.ndarray) -> None:
        import onnx
        from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

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
            for start in range(0, len(x), chunk):
                cal.collect_data(CalibrationReader(name, x, 16, start, start + chunk))
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

        self._count += 1
        out = self.workdir / f"q{self._count}.onnx"
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


def _parity(ctx: QuantizeContext, ref: np.ndarray, proto) -> dict[str, float]:
    return parity_report(ref, _run(proto, ctx.calib.holdout), ctx.meta.task)


def _static(
    ctx: QuantizeContext, sq: StaticQuantizer, ref: np.ndarray
) -> QuantizedModel:
    from .sensitivity import auto_exclude

    cfg = ctx.cfg
    exclude = list(cfg.exclude_nodes or [])
    proto = sq.quantize(exclude=exclude)
    parity = _parity(ctx, ref, proto)
    prov: dict[str, Any] = {
        "calibrator": cfg.calibrator,
        "activations": "uint8",
        "weights": "int8 (7-bit range)" if cfg.reduce_range else "int8",
        "per_channel": cfg.per_channel,
        "reduce_range": cfg.reduce_range,
        "format": "QDQ",
    }
    if cfg.calibrator != "minmax":
        prov["num_bins"] = cfg.num_bins
    report: dict[str, Any] = {"parity_naive": parity}
    if cfg.auto_exclude and not gate_passes(parity, cfg):
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


def _dynamic(ctx: QuantizeContext):
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    _quiet_ort()
    out = ctx.workdir / "dynamic.onnx"
    try:
        quantize_dynamic(
            str(preprocessed(ctx.fp32_path, ctx.workdir)),
            str(out),
            op_types_to_quantize=DYNAMIC_OPS,
            per_channel=ctx.cfg.per_channel,
            reduce_range=ctx.cfg.reduce_range,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(ctx.cfg.exclude_nodes or []) or None,
        )
    except Exception as e:
        raise ModelError(
            f"ONNX Runtime cannot quantize this model: {str(e).strip().splitlines()[0][:300]}"
        ) from None
    return onnx.load(str(out))


def _fp16(ctx: QuantizeContext):
    from ..export.onnx import to_fp16

    return to_fp16(ctx.fp32_proto, keep_io_types=not ctx.cfg.fp16_io)


def _copy(proto):
    import onnx

    p = onnx.ModelProto()
    p.CopyFrom(proto)
    return p


def _run_any(proto, x: np.ndarray) -> np.ndarray:
    """Run a model whose input may be float16 (``--fp16-io``)."""
    from ..export.onnx import ort_session, run_onnx

    sess = ort_session(proto)
    if sess.get_inputs()[0].type == "tensor(float16)":
        name = sess.get_inputs()[0].name
        return np.concatenate(
            [sess.run(None, {name: x[i : i + 32].astype(np.float16)})[0] for i in range(0, len(x), 32)]
        ).astype(np.float32)
    return run_onnx(sess, x)


def _check_cpu(proto, cfg) -> None:
    """ONNX Runtime must be able to run the fp32 model at all (unknown ops fail here, before calibration)."""
    from ..export.onnx import ort_session

    ort_session(proto)


@register_target("cpu", precisions=CPU_PRECISIONS, methods=("ptq",), check=_check_cpu)
def quantize_cpu(ctx: QuantizeContext) -> QuantizedModel:
    """ONNX Runtime CPU: static QDQ U8S8 int8, dynamic int8, fp16, or the fastest that passes (auto)."""
    cfg = ctx.cfg
    precision = cfg.precision
    ref = _run(ctx.fp32_proto, ctx.calib.holdout)
    if precision == "int8":
        sq = StaticQuantizer(
            ctx.fp32_path,
            ctx.calib.images,
            ctx.workdir,
            cfg.calibrator,
            cfg.per_channel,
            cfg.num_bins,
            cfg.percentile,
            cfg.reduce_range,
        )
        qm = _static(ctx, sq, ref)
    elif precision == "int8-dynamic":
        proto = _dynamic(ctx)
        qm = QuantizedModel(
            proto,
            "int8-dynamic",
            {"ops": DYNAMIC_OPS, "weights": "int8", "per_channel": cfg.per_channel,
             "reduce_range": cfg.reduce_range},
            {"parity": _parity(ctx, ref, proto)},
        )
    elif precision == "fp16":
        proto = _fp16(ctx)
        qm = QuantizedModel(
            proto,
            "fp16",
            {"fp16_io": cfg.fp16_io},
            {"parity": parity_report(ref, _run_any(proto, ctx.calib.holdout), ctx.meta.task)},
        )
    else:
        return _auto(ctx, ref)
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


# Providers of extra ``--precision auto`` candidates from other CPU engines (OpenVINO registers one):
# ``fn(ctx, ref) -> [(row, QuantizedModel | None), ...]``, each row as in the auto table plus ``engine``.
_AUTO_CANDIDATES: list[Any] = []


def register_auto_candidates(fn):
    """Add ``fn`` as a source of ``--target cpu --precision auto`` candidates (rows timed on this machine)."""
    if fn not in _AUTO_CANDIDATES:
        _AUTO_CANDIDATES.append(fn)
    return fn


def _auto(ctx: QuantizeContext, ref: np.ndarray) -> QuantizedModel:
    """Build fp32, int8 static, int8 dynamic and fp16; keep the fastest that passes the gate (fp32 always does)."""
    cfg = ctx.cfg
    shape = (1, *ctx.input_shape)
    fp32_ms = latency_ms(ctx.fp32_proto, shape, cfg.latency_runs)
    table: list[dict[str, Any]] = [
        {
            "precision": "fp32",
            "latency_ms": fp32_ms,
            "top1_agreement": 1.0,
            "cosine": 1.0,
            "passes": True,
            "size_bytes": ctx.fp32_proto.ByteSize(),
        }
    ]
    candidates: dict[str, QuantizedModel] = {"fp32": QuantizedModel(_copy(ctx.fp32_proto), "fp32", {}, {})}
    builders = {
        "int8": lambda: _static(
            ctx,
            StaticQuantizer(
                ctx.fp32_path,
                ctx.calib.images,
                ctx.workdir,
                cfg.calibrator,
                cfg.per_channel,
                cfg.num_bins,
                cfg.percentile,
                cfg.reduce_range,
            ),
            ref,
        ),
        "int8-dynamic": lambda: QuantizedModel(
            p := _dynamic(ctx), "int8-dynamic", {"ops": DYNAMIC_OPS}, {"parity": _parity(ctx, ref, p)}
        ),
        "fp16": lambda: QuantizedModel(
            p := _fp16(ctx),
            "fp16",
            {"fp16_io": cfg.fp16_io},
            {"parity": parity_report(ref, _run_any(p, ctx.calib.holdout), ctx.meta.task)},
        ),
    }
    for name, build in builders.items():
        ctx.log(f"auto: building {name}")
        try:
            qm = build()
        except (ModelError, ExportError, GateFailure) as e:
            table.append({"precision": name, "error": str(e), "passes": False})
            continue
        dtype = np.float16 if name == "fp16" and cfg.fp16_io else np.float32
        ms = latency_ms(qm.proto, shape, cfg.latency_runs, input_dtype=dtype)
        p = qm.report["parity"]
        table.append(
            {
                "precision": name,
                "latency_ms": ms,
                "top1_agreement": p["top1_agreement"],
                "cosine": p["cosine"],
                "passes": gate_passes(p, cfg),
                "size_bytes": qm.proto.ByteSize(),
            }
        )
        candidates[name] = qm
    for r in table:
        r.setdefault("engine", "onnxruntime")
    for provider in _AUTO_CANDIDATES:
        for row, qm in provider(ctx, ref):
            table.append(row)
            if qm is not None:
                candidates[row["precision"]] = qm
    # The decision is timed again with every candidate in one interleaved loop (each timed in every round), so
    # load drifting while candidates were built, or during one candidate's timing, hits all of them alike.
    timed = {
        r["precision"]: (r["engine"], candidates[r["precision"]].proto, candidates[r["precision"]].precision)
        for r in table
        if "latency_ms" in r and r["precision"] in candidates
    }
    dtypes = {"fp16": np.float16 if cfg.fp16_io else np.float32}
    for name, ms in interleaved_latency_ms(timed, shape, cfg.latency_runs, dtypes).items():
        row = next(r for r in table if r["precision"] == name)
        row["build_latency_ms"], row["latency_ms"] = row["latency_ms"], ms
    # --out fixes the artifact kind: an .xml keeps only IR candidates, an .onnx only ONNX ones.
    want_ir = bool(cfg.out) and str(cfg.out).lower().endswith(".xml")
    passing = [
        r
        for r in table
        if r["passes"] and "latency_ms" in r and (not cfg.out or (r["engine"] == "openvino") == want_ir)
    ]
    if not passing:
        raise ModelError(f"--precision auto: no candidate can be written as {cfg.out}; give another --out")
    # Candidates within AUTO_TIE_PCT of the fastest are a tie on this timer: the most faithful of them wins.
    fastest = min(passing, key=lambda r: r["latency_ms"])
    tied = [r for r in passing if r["latency_ms"] <= fastest["latency_ms"] * (1 + AUTO_TIE_PCT / 100)]
    best = max(tied, key=lambda r: (r["top1_agreement"], r["cosine"], -r["latency_ms"]))
    for r in table:
        r["chosen"] = r is best
        ctx.log(
            f"auto: {r['precision']:<13} "
            + (
                f"{r['latency_ms']:.3f} ms  agreement {r['top1_agreement']:.4f}  "
                f"{'pass' if r['passes'] else 'FAIL'}"
                if "latency_ms" in r
                else f"error: {r['error']}"
            )
        )
    chosen = candidates[best["precision"]]
    reason = (
        f"{best['precision']} ({best['engine']}) is the fastest at batch 1 of {len(passing)} candidate(s) that "
        f"pass the parity gate (top-1 agreement >= {cfg.min_agreement}) on this machine (p50 over interleaved "
        "rounds of all candidates)"
    )
    if best is not fastest:
        reason = (
            f"{best['precision']} ({best['engine']}, {best['latency_ms']:.3f} ms) is within {AUTO_TIE_PCT:g}% of the "
            f"fastest at batch 1, {fastest['precision']} ({fastest['latency_ms']:.3f} ms), of {len(passing)} "
            f"candidate(s) that pass the parity gate (top-1 agreement >= {cfg.min_agreement}), and more faithful "
            f"(agreement {best['top1_agreement']:.4f} vs {fastest['top1_agreement']:.4f}, logit cosine "
            f"{best['cosine']:.6f} vs {fastest['cosine']:.6f}); p50 over interleaved "
            "rounds of all candidates on this machine"
        )
    prov = {**chosen.provenance, "auto": {"chosen": best["precision"], "reason": reason, "table": table}}
    report = {**chosen.report, "auto_table": table, "chosen": best["precision"], "auto_reason": reason}
    report.setdefault(
        "parity", {"top1_agreement": 1.0, "cosine": 1.0, "max_abs": 0.0, "sqnr_db": float("inf")}
    )
    return QuantizedModel(
        chosen.proto, chosen.precision, prov, report, save=chosen.save, suffix=chosen.suffix
    )
