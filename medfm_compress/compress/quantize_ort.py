"""``--target cpu``: ONNX Runtime quantization (static QDQ int8, dynamic int8, fp16, or auto).

The models are built by :mod:`medfm_compress.compress.onnxruntime_quant`; ``--precision auto`` is
:mod:`medfm_compress.compress.auto_precision`. An int8 model that misses the parity gate starts the recovery
search (:mod:`medfm_compress.compress.quantize_search`) unless ``--no-search``; this module gives it the ONNX
Runtime stages: calibrators and percentiles, weight range, per-channel or per-tensor weights, and exclusion of the
nodes that cost least time for the most fidelity (or the most damaging first, with ``--auto-exclude``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..errors import GateFailure
from ..runtime.onnx_loader import run_onnx
from .auto_precision import select_precision
from .onnxruntime_quant import (
    DYNAMIC_OPS,
    StaticQuantizer,
    dynamic_int8,
    fp16_model,
    parity_of,
    static_int8,
    static_provenance,
)
from .quantize import (
    CALIBRATORS,
    QuantizeContext,
    QuantizedModel,
    check_gate,
    gate_passes,
    parity_report,
    register_target,
)
from .quantize_config import OnnxRuntimeConfig
from .quantize_search import (
    SearchCandidate,
    SearchStage,
    SearchState,
    base_settings,
    register_search_stages,
    search,
    setting_stages,
    settings_label,
)
from .sensitivity import cheapest_exclusion

__all__ = ["quantize_cpu", "CPU_PRECISIONS", "SEARCH_PERCENTILES", "ort_search_stages"]

CPU_PRECISIONS = ("int8", "int8-dynamic", "fp16", "auto")
# Percentiles the search tries with the percentile calibrator (after --percentile): how much of each activation's
# tail to clip. Each one is a calibration pass.
SEARCH_PERCENTILES = (99.999, 99.99, 99.9)
ENGINE = "onnxruntime"


def _check_cpu(proto, cfg) -> None:
    """ONNX Runtime must be able to run the fp32 model at all (unknown ops fail here, before calibration)."""
    from ..runtime.onnx_loader import ort_session

    ort_session(proto)


@register_target(OnnxRuntimeConfig, precisions=CPU_PRECISIONS, methods=("ptq",), check=_check_cpu)
def quantize_cpu(ctx: QuantizeContext) -> QuantizedModel:
    """ONNX Runtime CPU: static QDQ U8S8 int8 (searched for a passing model when it misses the gate), dynamic int8,
    fp16, or the fastest that passes (auto)."""
    cfg = ctx.cfg
    precision = cfg.precision
    ref = run_onnx(ctx.fp32_proto, ctx.calib.holdout)
    if precision == "int8":
        sq = StaticQuantizer(ctx.fp32_path, ctx.calib.images, ctx.workdir, cfg.backend.calibrator, cfg.backend.per_channel,
                             cfg.backend.num_bins, cfg.backend.percentile, cfg.backend.reduce_range, cfg.progress)
        try:
            qm = static_int8(ctx, ref, sq)
        except GateFailure as e:  # --auto-exclude could not reach the gate, or only with a model slower than fp32
            if not cfg.backend.search:
                raise
            return _search_int8(ctx, ref, sq, e)
        if cfg.backend.search and not gate_passes(qm.report["parity"], cfg):
            return _search_int8(ctx, ref, sq, qm)
    elif precision == "int8-dynamic":
        proto = dynamic_int8(ctx)
        qm = QuantizedModel(
            proto,
            "int8-dynamic",
            {"ops": DYNAMIC_OPS, "weights": "int8", "per_channel": cfg.backend.per_channel,
             "reduce_range": cfg.backend.reduce_range},
            {"parity": parity_of(ctx, ref, proto)},
        )
    elif precision == "fp16":
        proto = fp16_model(ctx)
        qm = QuantizedModel(
            proto,
            "fp16",
            {"fp16_io": cfg.backend.fp16_io},
            {"parity": parity_report(ref, run_onnx(proto, ctx.calib.holdout), ctx.meta.task)},
        )
    else:
        return select_precision(ctx, ref)
    hint = "try --auto-exclude, another --calibrator, or " if precision == "int8" else "or "
    check_gate(qm.report["parity"], ctx, f"{precision} model", hint)
    return qm


# ----- the recovery search's ONNX Runtime stages ---------------------------------------------------------------


def _search_int8(ctx: QuantizeContext, ref: np.ndarray, sq: StaticQuantizer, first: QuantizedModel | GateFailure):
    """Search from the first int8 model (or the error its --auto-exclude ended in), reusing its calibration."""
    cfg = ctx.cfg
    settings = {**base_settings(cfg), "exclusion": "most-damaging" if cfg.backend.auto_exclude else None}
    if isinstance(first, QuantizedModel):
        settings["fp32_nodes"] = len(first.report.get("auto_exclude", {}).get("excluded", []))

    def build() -> QuantizedModel:
        if isinstance(first, GateFailure):
            raise first
        return first

    cand = SearchCandidate(ENGINE, settings, settings_label(settings), build, lambda: ctx.fp32_proto)
    return search(ctx, ref, cand, cache={"ort_quantizers": {(settings["calibrator"], settings["percentile"]): sq}})


def _variant(ctx: QuantizeContext, s: dict[str, Any], auto_exclude: bool = False) -> QuantizeContext:
    """``ctx`` with the settings ``s`` (what static_int8 and its provenance read)."""
    percentile = ctx.cfg.backend.percentile if s["percentile"] is None else s["percentile"]
    cfg = ctx.cfg.with_backend(calibrator=s["calibrator"], percentile=percentile, per_channel=s["per_channel"],
                               reduce_range=s["reduce_range"], auto_exclude=auto_exclude)
    return dataclasses.replace(ctx, cfg=cfg)


def _quantizer(state: SearchState, s: dict[str, Any]) -> StaticQuantizer:
    """A quantizer of settings ``s``: calibrated once per calibrator and percentile, weight settings on top."""
    ctx = state.ctx
    quantizers = state.cache.setdefault("ort_quantizers", {})
    key = (s["calibrator"], s["percentile"])
    if key not in quantizers:
        percentile = ctx.cfg.backend.percentile if s["percentile"] is None else s["percentile"]
        quantizers[key] = StaticQuantizer(ctx.fp32_path, ctx.calib.images, ctx.workdir, s["calibrator"], True,
                                          ctx.cfg.backend.num_bins, percentile, True, ctx.cfg.progress)
    return quantizers[key].with_weights(s["per_channel"], s["reduce_range"])


def _plain(state: SearchState, s: dict[str, Any]) -> SearchCandidate:
    s = {**s, "exclusion": None, "fp32_nodes": 0}
    ctx = state.ctx
    return SearchCandidate(ENGINE, s, settings_label(s), lambda: static_int8(_variant(ctx, s), state.ref,
                                                                               _quantizer(state, s)),
                           lambda: ctx.fp32_proto)


def _exclusion(state: SearchState, s: dict[str, Any]) -> SearchCandidate:
    """Nodes of the most faithful plain setting kept in fp32: the user's --auto-exclude method (most damaging
    first) when given, else the cheapest for the fidelity they bring back."""
    ctx, ref = state.ctx, state.ref
    most_damaging = "auto_exclude" in ctx.cfg.backend.pinned_options()
    s = {**s, "exclusion": "most-damaging" if most_damaging else "latency-aware", "fp32_nodes": 0}

    def build() -> QuantizedModel:
        vctx = _variant(ctx, s, auto_exclude=most_damaging)
        sq = _quantizer(state, s)
        if most_damaging:
            qm = static_int8(vctx, ref, sq)
            s["fp32_nodes"] = len(qm.report.get("auto_exclude", {}).get("excluded", []))
            return qm
        user = list(ctx.cfg.backend.exclude_nodes or [])
        res = cheapest_exclusion(vctx, sq, ref, user, should_stop=state.spent)
        s["fp32_nodes"] = len(res.excluded)
        prov = {**static_provenance(vctx.cfg), "excluded_nodes": sorted(set(user) | set(res.excluded)),
                "search_exclusion": {"method": "latency-aware", "excluded": res.excluded, "steps": res.steps}}
        report: dict[str, Any] = {"parity": res.parity, "sensitivity": res.order,
                                  "search_exclusion": {"excluded": res.excluded, "steps": res.steps}}
        if res.stopped:
            report["search_note"] = res.stopped
        return QuantizedModel(res.proto, "int8", prov, report)

    return SearchCandidate(ENGINE, s, settings_label(s), build, lambda: ctx.fp32_proto)


@register_search_stages("cpu")
def ort_search_stages(ctx: QuantizeContext, ref: np.ndarray) -> list[SearchStage]:
    """Calibrators and percentiles, weight range, granularity (greedy, see setting_stages), then exclusion."""

    def exclusion_skip(state: SearchState) -> str | None:
        if state.any_passes(ENGINE):
            return "an ONNX Runtime candidate already passes (nodes kept in fp32 would only slow it)"
        return None

    def exclusion(state: SearchState) -> Iterator[SearchCandidate]:
        row = state.best(ENGINE, plain=True)
        yield _exclusion(state, {k: row[k] for k in ("calibrator", "percentile", "per_channel", "reduce_range")}
                         if row is not None else base_settings(state.ctx.cfg))

    return [*setting_stages(ENGINE, CALIBRATORS, SEARCH_PERCENTILES, _plain, lambda state: base_settings(ctx.cfg)),
            SearchStage("exclusion", 50, exclusion, exclusion_skip)]
