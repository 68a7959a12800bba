"""``--target cpu --precision auto``: build every CPU candidate, time them in one interleaved loop, ship the fastest
that passes the parity gate (the most faithful among those within :data:`AUTO_TIE_PCT` of the fastest).

Candidates come from ONNX Runtime (fp32, static int8, dynamic int8, fp16) and from every provider registered with
:func:`register_auto_candidates` (OpenVINO registers its fp32/int8/bf16 IRs).

With ``--batch-sizes 1,32`` (a recipe variant's ``batch_sizes``) every candidate is timed at every batch size, ONNX
Runtime ones at batch > 1 also as concurrent single-threaded sub-batches (``streams``: one per core), and the choice
is made per batch size: the winner at the first batch size is written at ``--out``; a different model winning
another batch size is written beside it (``<stem>.bs<N>.onnx|.xml``); each artifact's metadata, the report and the
output name the artifact and run settings to use at each batch size. Measured on this AVX2 machine for a
resnet18-class student at 64x64: ORT int8 2.6x ORT fp32 at batch 1 but ~1.1x at batch 32 in one run, because ORT's
QLinearConv splits only each image's pixels among threads (layer4 at 2x2 pixels gets one task per image); run as two
single-threaded streams it is ~2x (see benchmarks/results/quantize_cpu.json).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ExportError, GateFailure, ModelError
from ..runtime.onnx_loader import run_onnx
from ..runtime.tasks import get_task
from . import latency
from .onnxruntime_quant import (
    DYNAMIC_OPS,
    copy_proto,
    dynamic_int8,
    fp16_model,
    parity_of,
    static_int8,
)
from .quantize import (
    AUTO_TIE_PCT,
    QuantizeContext,
    QuantizedModel,
    fidelity_key,
    gate_passes,
    gate_text,
    out_is_stem,
    parity_columns,
    parity_report,
    pick_candidate,
)

__all__ = ["AUTO_TIE_PCT", "AUTO_CANDIDATE_PROVIDERS", "register_auto_candidates", "select_precision", "auto_streams"]

# Candidates this close to the fastest (percent of its p50) are a tie on a shared machine's timer; among them the
# most faithful to fp32 is chosen (mobilenetv3 here: int8-dynamic 0.667 vs fp16 0.671 ms, agreement 0.9975 vs 1.0).
VOLUME_SW_BATCH = 4

# Providers of extra ``--precision auto`` candidates from other CPU engines (OpenVINO registers one):
# ``fn(ctx, ref) -> [(row, QuantizedModel | None), ...]``, each row as in the auto table plus ``engine``.
AUTO_CANDIDATE_PROVIDERS: list[Any] = []


def register_auto_candidates(fn):
    """Add ``fn`` as a source of ``--target cpu --precision auto`` candidates (rows timed on this machine)."""
    if fn not in AUTO_CANDIDATE_PROVIDERS:
        AUTO_CANDIDATE_PROVIDERS.append(fn)
    return fn


def auto_streams() -> int:
    """How many concurrent single-threaded streams a batch > 1 is also timed with: one per core (1: none)."""
    import os

    return max(1, os.cpu_count() or 1)


def select_precision(ctx: QuantizeContext, ref: np.ndarray) -> QuantizedModel:
    """Build fp32, int8 static, int8 dynamic and fp16; keep the fastest that passes the gate (fp32 always does) at
    each of ``cfg.backend.batch_sizes`` (default batch 1)."""
    cfg = ctx.cfg
    # A volume model (or a 2-D one trained on patches) runs in a sliding window, its windows batched
    # (runtime.sliding_window.segment_volume's default of 4 per call): it is timed at that batch unless told otherwise,
    # so the pick is by sliding-window throughput.
    task = get_task(ctx.meta.task)
    windowed = task.dense and ctx.meta.preprocess.windowed
    batch_sizes = tuple(cfg.backend.batch_sizes or ((VOLUME_SW_BATCH,) if windowed else (1,)))
    shape = (batch_sizes[0], *ctx.input_shape)
    # Each candidate's own timing when built (the table's build_latency_ms); the decision times them all again in one
    # interleaved loop through the context's timer.
    fp32_ms = latency.latency_ms(ctx.fp32_proto, shape, cfg.backend.latency_runs)
    table: list[dict[str, Any]] = [
        {
            "precision": "fp32",
            "latency_ms": fp32_ms,
            "top1_agreement": 1.0,
            "cosine": 1.0,
            "passes": True,
            "size_bytes": ctx.fp32_proto.ByteSize(),
            **{m: 1.0 for m in task.gate_metrics},
        }
    ]
    candidates: dict[str, QuantizedModel] = {"fp32": QuantizedModel(copy_proto(ctx.fp32_proto), "fp32", {}, {})}
    # Dynamic int8 quantizes only DYNAMIC_OPS; a model without them (a convolutional network) would come back as
    # fp32 under an int8 name, and could win a tie as such.
    has_dynamic = any(n.op_type in DYNAMIC_OPS for n in ctx.fp32_proto.graph.node)
    if not has_dynamic:
        table.append({"precision": "int8-dynamic", "passes": False,
                      "error": f"skipped: the model has none of the ops dynamic int8 quantizes ({', '.join(DYNAMIC_OPS)})"})
    builders = {
        "int8": lambda: static_int8(ctx, ref),
        "int8-dynamic": lambda: QuantizedModel(
            p := dynamic_int8(ctx), "int8-dynamic", {"ops": DYNAMIC_OPS}, {"parity": parity_of(ctx, ref, p)}
        ),
        "fp16": lambda: QuantizedModel(
            p := fp16_model(ctx),
            "fp16",
            {"fp16_io": cfg.backend.fp16_io},
            {"parity": parity_report(ref, run_onnx(p, ctx.calib.holdout), ctx.meta.task)},
        ),
    }
    for name, build in builders.items():
        if name == "int8-dynamic" and not has_dynamic:
            continue
        ctx.log(f"auto: building {name}")
        try:
            qm = build()
        except (ModelError, ExportError, GateFailure) as e:
            table.append({"precision": name, "error": str(e), "passes": False})
            continue
        dtype = np.float16 if name == "fp16" and cfg.backend.fp16_io else np.float32
        ms = latency.latency_ms(qm.proto, shape, cfg.backend.latency_runs, input_dtype=dtype)
        p = qm.report["parity"]
        table.append(
            {
                "precision": name,
                "latency_ms": ms,
                **parity_columns(p),
                "passes": gate_passes(p, cfg),
                "size_bytes": qm.proto.ByteSize(),
            }
        )
        candidates[name] = qm
    for r in table:
        r.setdefault("engine", "onnxruntime")
    for provider in AUTO_CANDIDATE_PROVIDERS:
        for row, qm in provider(ctx, ref):
            if any(r["precision"] == row["precision"] for r in table):
                raise ValueError(f"auto candidate {row['precision']!r} of {provider.__name__} is already in the table")
            table.append(row)
            if qm is not None:
                candidates[row["precision"]] = qm
    _time_interleaved(ctx, table, candidates, batch_sizes)
    # --out fixes the artifact kind: an .xml keeps only IR candidates, an .onnx only ONNX ones (at every batch size);
    # a stem (no such suffix) keeps both.
    fixed = bool(cfg.out) and not out_is_stem(cfg)
    want_ir = fixed and str(cfg.out).lower().endswith(".xml")
    passing = [
        r
        for r in table
        if r["passes"] and "latency_ms" in r and (not fixed or (r["engine"] == "openvino") == want_ir)
    ]
    if not passing:
        raise ModelError(f"--precision auto: no candidate can be written as {cfg.out}; give another --out")
    decisions = {b: _decide(passing, b, cfg, ctx.meta.task) for b in batch_sizes}
    best = decisions[batch_sizes[0]]["row"]
    for r in table:
        r["chosen"] = r is best
        r["chosen_for_batch_sizes"] = [b for b in batch_sizes if decisions[b]["row"] is r]
        ctx.log(
            f"auto: {r['precision']:<13} "
            + (
                f"{_ms_text(r)}  " + (f"mean Dice {r['mean_dice']:.4f}  " if "mean_dice" in r else "")
                + f"agreement {r['top1_agreement']:.4f}  {'pass' if r['passes'] else 'FAIL'}"
                if "latency_ms" in r
                else f"error: {r['error']}"
            )
        )
    fp32_row = next(r for r in table if r["precision"] == "fp32")
    by_batch = [_recommendation(b, decisions[b], fp32_row) for b in batch_sizes]
    reason = "; ".join(d["reason"] if i == 0 else f"at batch {b}: {d['reason']}"
                       for i, (b, d) in enumerate(decisions.items()))
    auto = {"chosen": best["precision"], "reason": reason, "table": table}
    if len(batch_sizes) > 1:
        auto.update(batch_sizes=list(batch_sizes), by_batch=by_batch)
    chosen = candidates[best["precision"]]
    # Models that win another batch size: quantize() writes them beside the main output.
    others = {d["row"]["precision"] for d in decisions.values()} - {best["precision"]}
    per_batch = {}
    for name in sorted(others, key=lambda n: min(b for b, d in decisions.items() if d["row"]["precision"] == n)):
        qm = candidates[name]
        per_batch[name] = QuantizedModel(qm.proto, qm.precision, {**qm.provenance, "auto": {**auto, "chosen": name}},
                                         qm.report, save=qm.save, suffix=qm.suffix)
        ctx.log(f"auto: {name} ({qm.precision}) wins batch size(s) "
                f"{', '.join(str(b) for b, d in decisions.items() if d['row']['precision'] == name)}: written too")
    prov = {**chosen.provenance, "auto": auto}
    report = {**chosen.report, "auto_table": table, "chosen": best["precision"], "auto_reason": reason}
    if len(batch_sizes) > 1:
        report["auto_by_batch"] = by_batch
    report.setdefault(
        "parity", {"top1_agreement": 1.0, "cosine": 1.0, "max_abs": 0.0, "sqnr_db": float("inf")}
    )
    return QuantizedModel(
        chosen.proto, chosen.precision, prov, report, save=chosen.save, suffix=chosen.suffix, per_batch=per_batch
    )


def _time_interleaved(ctx: QuantizeContext, table: list[dict[str, Any]], candidates: dict[str, QuantizedModel],
                      batch_sizes: tuple[int, ...]) -> None:
    """Time every candidate again in one interleaved loop per batch size (each timed in every round), so load
    drifting while candidates were built, or during one candidate's timing, hits all of them alike. At batch > 1 an
    ONNX Runtime candidate is also timed as concurrent single-threaded sub-batches (``streams``). Sets each row's
    ``latency_ms`` (first batch size, fastest way to run it) and ``batch_latency_ms`` (batch -> streams -> ms)."""
    cfg = ctx.cfg
    timed = {
        r["precision"]: (r["engine"], candidates[r["precision"]].proto, candidates[r["precision"]].precision)
        for r in table
        if "latency_ms" in r and r["precision"] in candidates
    }
    dtype16 = np.float16 if cfg.backend.fp16_io else np.float32
    streams = auto_streams()
    for b in batch_sizes:
        models: dict[str, tuple[Any, ...]] = dict(timed)
        if b > 1 and streams > 1:
            models.update({f"{k}{_STREAMS}{streams}": (*v, streams) for k, v in timed.items() if v[0] == "onnxruntime"})
        dtypes = {k: dtype16 for k in models if k.split(_STREAMS)[0] == "fp16"}
        ms = ctx.time_ms(models, (b, *ctx.input_shape), dtypes)
        for key, value in ms.items():
            name, _, n = key.partition(_STREAMS)
            row = next(r for r in table if r["precision"] == name)
            row.setdefault("batch_latency_ms", {}).setdefault(str(b), {})[n or "1"] = value
    for row in table:
        if "batch_latency_ms" in row:
            row["build_latency_ms"] = row["latency_ms"]
            row["latency_ms"] = min(row["batch_latency_ms"][str(batch_sizes[0])].values())


# Key suffix of a candidate timed as concurrent streams in the interleaved loop ("int8@streams2").
_STREAMS = "@streams"


def _decide(passing: list[dict[str, Any]], batch: int, cfg, task: str) -> dict[str, Any]:
    """The pick at ``batch``: the fastest (candidate, streams) that passes; within AUTO_TIE_PCT of it (a tie on this
    timer) the most faithful, then one run over streams."""
    options = [(r, int(s), ms) for r in passing for s, ms in r["batch_latency_ms"][str(batch)].items()]
    (row, streams, ms), fastest = pick_candidate(options, lambda o: o[2], lambda o: (*fidelity_key(o[0]), -o[1], -o[2]))
    gate = gate_text(cfg, task)
    n = len(passing)

    def label(r, s):
        return f"{r['precision']} ({r['engine']}{f', {s} streams' if s > 1 else ''}"

    if row is fastest[0] and streams == fastest[1]:
        reason = (
            f"{label(row, streams)}) is the fastest at batch {batch} of {n} candidate(s) that pass the parity gate "
            f"({gate}) on this machine (p50 over interleaved rounds of all candidates)"
        )
    else:
        f_row, f_streams, f_ms = fastest
        reason = (
            f"{label(row, streams)}, {ms:.3f} ms) is within {AUTO_TIE_PCT:g}% of the fastest at batch {batch}, "
            f"{label(f_row, f_streams)}, {f_ms:.3f} ms), of {n} candidate(s) that pass the parity gate ({gate}), "
            "and more faithful or simpler to run ("
            + (f"mean Dice {row['mean_dice']:.4f} vs {f_row['mean_dice']:.4f}, " if "mean_dice" in row else "")
            + f"agreement {row['top1_agreement']:.4f} vs "
            f"{f_row['top1_agreement']:.4f}, logit cosine {row['cosine']:.6f} vs {f_row['cosine']:.6f}); p50 over "
            "interleaved rounds of all candidates on this machine"
        )
    return {"row": row, "streams": streams, "latency_ms": ms, "reason": reason}


def _recommendation(batch: int, d: dict[str, Any], fp32_row: dict[str, Any]) -> dict[str, Any]:
    """One line of the batch-size table: which candidate, how to run it, its p50 and speed-up over ORT fp32 run as
    one session run (the default); ``artifact`` is filled in by quantize() when the files are named."""
    fp32_ms = fp32_row["batch_latency_ms"][str(batch)]["1"]
    row = d["row"]
    return {
        "batch_size": batch,
        "candidate": row["precision"],
        "engine": row["engine"],
        "streams": d["streams"],
        "latency_ms": d["latency_ms"],
        "throughput_per_s": batch * 1000.0 / d["latency_ms"],
        "fp32_latency_ms": fp32_ms,
        "speedup_vs_fp32": fp32_ms / d["latency_ms"],
        "top1_agreement": row["top1_agreement"],
        "cosine": row["cosine"],
        **({"mean_dice": row["mean_dice"]} if "mean_dice" in row else {}),
    }


def _ms_text(r: dict[str, Any]) -> str:
    per = r.get("batch_latency_ms") or {}
    if len(per) <= 1 and all(len(v) == 1 for v in per.values()):
        return f"{r['latency_ms']:.3f} ms"
    return ", ".join(f"bs{b} " + "/".join(f"{ms:.3f}" + (f" ({s} streams)" if s != "1" else "") for s, ms in v.items())
                     + " ms" for b, v in per.items())
