"""``--target cpu --precision auto``: build every CPU candidate, time them in one interleaved loop, ship the fastest
that passes the parity gate (the most faithful among those within :data:`AUTO_TIE_PCT` of the fastest).

Candidates come from ONNX Runtime (fp32, static int8, dynamic int8, fp16) and from every provider registered with
:func:`register_auto_candidates` (OpenVINO registers its fp32/int8/bf16 IRs).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ExportError, GateFailure, ModelError
from ..runtime.onnx_loader import run_onnx
from . import latency
from .onnxruntime_quant import (
    DYNAMIC_OPS,
    copy_proto,
    dynamic_int8,
    fp16_model,
    parity_of,
    static_int8,
)
from .quantize import QuantizeContext, QuantizedModel, gate_passes, parity_report

__all__ = ["AUTO_TIE_PCT", "AUTO_CANDIDATE_PROVIDERS", "register_auto_candidates", "select_precision"]

# Candidates this close to the fastest (percent of its p50) are a tie on a shared machine's timer; among them the
# most faithful to fp32 is chosen (mobilenetv3 here: int8-dynamic 0.667 vs fp16 0.671 ms, agreement 0.9975 vs 1.0).
AUTO_TIE_PCT = 5.0

# Providers of extra ``--precision auto`` candidates from other CPU engines (OpenVINO registers one):
# ``fn(ctx, ref) -> [(row, QuantizedModel | None), ...]``, each row as in the auto table plus ``engine``.
AUTO_CANDIDATE_PROVIDERS: list[Any] = []


def register_auto_candidates(fn):
    """Add ``fn`` as a source of ``--target cpu --precision auto`` candidates (rows timed on this machine)."""
    if fn not in AUTO_CANDIDATE_PROVIDERS:
        AUTO_CANDIDATE_PROVIDERS.append(fn)
    return fn


def select_precision(ctx: QuantizeContext, ref: np.ndarray) -> QuantizedModel:
    """Build fp32, int8 static, int8 dynamic and fp16; keep the fastest that passes the gate (fp32 always does)."""
    cfg = ctx.cfg
    shape = (1, *ctx.input_shape)
    fp32_ms = latency.latency_ms(ctx.fp32_proto, shape, cfg.latency_runs)
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
    candidates: dict[str, QuantizedModel] = {"fp32": QuantizedModel(copy_proto(ctx.fp32_proto), "fp32", {}, {})}
    builders = {
        "int8": lambda: static_int8(ctx, ref),
        "int8-dynamic": lambda: QuantizedModel(
            p := dynamic_int8(ctx), "int8-dynamic", {"ops": DYNAMIC_OPS}, {"parity": parity_of(ctx, ref, p)}
        ),
        "fp16": lambda: QuantizedModel(
            p := fp16_model(ctx),
            "fp16",
            {"fp16_io": cfg.fp16_io},
            {"parity": parity_report(ref, run_onnx(p, ctx.calib.holdout), ctx.meta.task)},
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
        ms = latency.latency_ms(qm.proto, shape, cfg.latency_runs, input_dtype=dtype)
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
    for provider in AUTO_CANDIDATE_PROVIDERS:
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
    for name, ms in latency.interleaved_latency_ms(timed, shape, cfg.latency_runs, dtypes).items():
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
