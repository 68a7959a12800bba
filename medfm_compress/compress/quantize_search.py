"""The recovery search of ``quantize``: when the first model misses the parity gate, try the target's remedies
within a time budget and ship the fastest candidate that passes the gate and is faster than fp32.

Targets contribute *stages* with :func:`register_search_stages`: ordered groups of candidates, each group choosing
its candidates from the results so far (greedy: the weight-range stage starts from the most faithful setting the
calibrator stage found). The ``cpu`` target (:mod:`medfm_compress.compress.quantize_ort`) contributes ONNX Runtime
calibrators and percentiles, the weight range, per-channel or per-tensor weights and a latency-aware exclusion of
nodes; OpenVINO (:mod:`medfm_compress.compress.quantize_openvino`) contributes NNCF int8 and accuracy control to
``cpu``, and its own settings to ``openvino``.

* Every candidate is judged on the held-out images, never on the calibration images.
* An option the user pinned (:meth:`Int8SearchConfig.pinned_options`) is never varied; its stage says so.
* The budget (``--search-budget``) is checked before each candidate starts; what it cut is said.
* The candidates that pass and the fp32 model of each of their engines are timed in one interleaved loop (as
  ``--precision auto`` does); a candidate not faster than fp32 on its engine does not ship. Of the rest the fastest
  wins, or among those within :data:`AUTO_TIE_PCT` of it the most faithful.
* Nothing ships: a :class:`~medfm_compress.errors.GateFailure` (exit 3), one line naming the best candidate's
  figures; nothing is written.

The table of what was tried, and why the winner won, goes in the artifact's metadata under
``provenance["quantization"]["search"]`` and in the result's report under ``"search"``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import GateFailure, MedfmError
from .quantize import (
    AUTO_TIE_PCT,
    QuantizeConfig,
    QuantizeContext,
    QuantizedModel,
    fidelity_key,
    gate_flags,
    gate_passes,
    gate_settings,
    gate_text,
    parity_columns,
    parity_text,
    pick_candidate,
)

__all__ = [
    "FLAGS",
    "SearchCandidate",
    "SearchStage",
    "SearchState",
    "SEARCH_STAGE_PROVIDERS",
    "register_search_stages",
    "base_settings",
    "settings_label",
    "setting_stages",
    "search",
    "search_table_lines",
]

# The command-line flag that pins each searched option, for "pinned by ..." notes.
FLAGS = {"calibrator": "--calibrator", "percentile": "--percentile", "per_channel": "--per-tensor",
         "reduce_range": "--full-range-weights", "auto_exclude": "--auto-exclude"}
# The settings every candidate row records (None where they do not apply).
SETTINGS = ("calibrator", "percentile", "per_channel", "reduce_range", "exclusion", "fp32_nodes")

# target name -> providers ``fn(ctx, ref) -> [SearchStage, ...]``.
SEARCH_STAGE_PROVIDERS: dict[str, list[Callable[[QuantizeContext, np.ndarray], list[SearchStage]]]] = {}


def register_search_stages(target: str):
    """Decorator adding ``fn(ctx, ref) -> [SearchStage, ...]`` to the search of ``--target target``."""

    def deco(fn):
        providers = SEARCH_STAGE_PROVIDERS.setdefault(target, [])
        if fn not in providers:
            providers.append(fn)
        return fn

    return deco


@dataclass
class SearchCandidate:
    """One model to try. ``build`` returns it with its held-out parity in ``report["parity"]`` (and may fill
    ``settings["fp32_nodes"]`` once it knows); ``fp32`` returns the fp32 model of ``engine`` it must beat."""

    engine: str
    settings: dict[str, Any]
    label: str
    build: Callable[[], QuantizedModel]
    fp32: Callable[[], Any]

    def key(self) -> tuple:
        return (self.engine, *(self.settings.get(k) for k in SETTINGS if k != "fp32_nodes"))


@dataclass
class SearchStage:
    """An ordered group of candidates. ``candidates(state)`` is iterated lazily, so each can depend on the rows of
    the ones before it; ``skip(state)`` returns why the stage does not run (pinned, pointless), or None."""

    name: str
    order: int
    candidates: Callable[[SearchState], Iterable[SearchCandidate]]
    skip: Callable[[SearchState], str | None] = lambda state: None


@dataclass
class SearchState:
    """What the stages see: the context, the fp32 logits on the held-out images, the rows so far."""

    ctx: QuantizeContext
    ref: np.ndarray
    deadline: float
    started: float
    rows: list[dict[str, Any]] = field(default_factory=list)
    models: dict[int, QuantizedModel] = field(default_factory=dict)
    candidates: dict[int, SearchCandidate] = field(default_factory=dict)
    # Shared by the stages of one search: calibrated quantizers, converted fp32 models.
    cache: dict[str, Any] = field(default_factory=dict)
    seen: set[tuple] = field(default_factory=set)

    def spent(self) -> bool:
        return time.perf_counter() >= self.deadline

    def judged(self, engine: str | None = None, plain: bool | None = None) -> list[dict[str, Any]]:
        """Rows with parity figures (no error), of ``engine`` and plain (no exclusion) or not, when given."""
        return [r for r in self.rows if "top1_agreement" in r and (engine is None or r["engine"] == engine)
                and (plain is None or (r["exclusion"] is None) == plain)]

    def best(self, engine: str | None = None, plain: bool | None = None) -> dict[str, Any] | None:
        """The most faithful row (:func:`~.quantize.fidelity_key`; the earliest of equals)."""
        rows = self.judged(engine, plain)
        return max(rows, key=fidelity_key) if rows else None

    def any_passes(self, engine: str | None = None) -> bool:
        return any(r["passes"] for r in self.judged(engine))

    def evaluate(self, cand: SearchCandidate, stage: str) -> dict[str, Any]:
        ctx, cfg = self.ctx, self.ctx.cfg
        index = len(self.rows) + 1
        self.seen.add(cand.key())
        t0 = time.perf_counter()
        row: dict[str, Any] = {"#": index, "stage": stage, "engine": cand.engine}
        try:
            qm = cand.build()
        except MedfmError as e:  # a candidate the backend refuses (or whose own exclusion gives up) is a row
            row.update(passes=False, error=str(e))
        else:
            p = qm.report["parity"]
            row.update({k: float(v) for k, v in parity_columns(p).items()}, passes=gate_passes(p, cfg))
            if qm.report.get("search_note"):
                row["note"] = qm.report["search_note"]
            self.models[index] = qm
        row.update({k: cand.settings.get(k) for k in SETTINGS})
        row["candidate"] = cand.label + (f" + {row['fp32_nodes']} fp32 node(s) ({row['exclusion']})"
                                         if row["exclusion"] else "")
        row["seconds"] = round(time.perf_counter() - t0, 2)
        self.rows.append(row)
        self.candidates[index] = cand
        figures = ((f"mean Dice {row['mean_dice']:.4f} " if "mean_dice" in row else "") +
                   f"agreement {row['top1_agreement']:.4f} cosine {row['cosine']:.5f} "
                   f"{'passes' if row['passes'] else 'misses'} the gate") if "top1_agreement" in row else row["error"]
        ctx.log(f"search: #{index} {cand.engine} {row['candidate']}: {figures} "
                f"({time.perf_counter() - self.started:.0f} of {cfg.backend.search_budget_s:g} s)")
        return row


def base_settings(cfg: QuantizeConfig, percentiles: bool = True) -> dict[str, Any]:
    """The settings ``cfg`` asks for, as a plain (no exclusion) candidate's (a percentile only where the backend
    has one: ONNX Runtime's, not NNCF's)."""
    b = cfg.backend
    percentile = getattr(b, "percentile", None) if percentiles and b.calibrator == "percentile" else None
    return {"calibrator": b.calibrator, "percentile": percentile, "per_channel": b.per_channel,
            "reduce_range": b.reduce_range, "exclusion": None, "fp32_nodes": 0}


def settings_label(s: dict[str, Any]) -> str:
    """``percentile 99.99, per-channel, 7-bit weights`` (a row adds `` + k fp32 node(s) (<exclusion method>)``)."""
    return ", ".join([s["calibrator"] + (f" {s['percentile']:g}" if s.get("percentile") is not None else ""),
                      "per-channel" if s["per_channel"] else "per-tensor",
                      "7-bit weights" if s["reduce_range"] else "full-range weights"])


def setting_stages(
    engine: str,
    calibrators: tuple[str, ...],
    percentiles: tuple[float, ...],
    make: Callable[[SearchState, dict[str, Any]], SearchCandidate],
    start: Callable[[SearchState], dict[str, Any]],
) -> list[SearchStage]:
    """The calibrator, weight-range and granularity stages of one engine, greedy: each varies one option of the
    most faithful plain candidate of ``engine`` so far (``start(state)`` before there is one) and leaves the
    options the user pinned alone. ``percentiles``: the values the percentile calibrator tries (empty: the engine
    has no percentile setting). ``make(state, settings)`` builds a candidate."""

    def base(state: SearchState) -> dict[str, Any]:
        row = state.best(engine, plain=True)
        return {k: row[k] for k in SETTINGS} if row is not None else dict(start(state))

    def pinned(state: SearchState) -> frozenset[str]:
        return state.ctx.cfg.backend.pinned_options()

    def calibrator_skip(state: SearchState) -> str | None:
        cfg, p = state.ctx.cfg, pinned(state)
        if "calibrator" not in p:
            return None
        if cfg.backend.calibrator == "percentile" and percentiles and "percentile" not in p:
            return None
        if cfg.backend.calibrator not in calibrators:
            return f"pinned by --calibrator {cfg.backend.calibrator}, which {engine} does not have"
        flags = " and ".join(FLAGS[o] for o in ("calibrator", "percentile") if o in p)
        return f"pinned by {flags}"

    def calibrator_candidates(state: SearchState) -> Iterator[SearchCandidate]:
        cfg, p = state.ctx.cfg, pinned(state)
        b = base(state)
        for cal in ([cfg.backend.calibrator] if "calibrator" in p else list(calibrators)):
            values: list[float | None] = [None]
            if cal == "percentile" and percentiles:
                user = cfg.backend.percentile
                values = [user] if "percentile" in p else list(dict.fromkeys((user, *percentiles)))
            for v in values:
                yield make(state, {**b, "calibrator": cal, "percentile": v})

    def flip(option: str) -> Callable[[SearchState], Iterator[SearchCandidate]]:
        def candidates(state: SearchState) -> Iterator[SearchCandidate]:
            b = base(state)
            yield make(state, {**b, option: not b[option]})

        return candidates

    def pinned_skip(option: str) -> Callable[[SearchState], str | None]:
        return lambda state: f"pinned by {FLAGS[option]}" if option in pinned(state) else None

    return [
        SearchStage("calibrator", 10, calibrator_candidates, calibrator_skip),
        SearchStage("weight range", 20, flip("reduce_range"), pinned_skip("reduce_range")),
        SearchStage("granularity", 30, flip("per_channel"), pinned_skip("per_channel")),
    ]


def search(ctx: QuantizeContext, ref: np.ndarray, first: SearchCandidate,
           cache: dict[str, Any] | None = None) -> QuantizedModel:
    """Judge ``first`` (the model as requested, which missed the gate), then the stages registered for the target,
    within ``cfg.backend.search_budget_s``; return the fastest candidate that passes and beats fp32, with the search's
    record in its provenance and report. Nothing ships: :class:`GateFailure`."""
    cfg = ctx.cfg
    t0 = time.perf_counter()
    state = SearchState(ctx, ref, deadline=t0 + cfg.backend.search_budget_s, started=t0, cache=dict(cache or {}))
    ctx.log(f"search: the first {cfg.precision} model cannot ship (parity gate, or its --auto-exclude gave up); trying "
            f"the remedies of --target {cfg.target} for up to {cfg.backend.search_budget_s:g} s (--search-budget; --no-search "
            "refuses instead)")
    state.evaluate(first, "as requested")
    stages = sorted((s for provider in SEARCH_STAGE_PROVIDERS.get(cfg.target, []) for s in provider(ctx, ref)),
                    key=lambda s: (s.order, s.name))
    log: list[dict[str, str]] = []
    cut: list[str] = []
    for stage in stages:
        why = stage.skip(state)
        if why:
            log.append({"stage": stage.name, "status": f"skipped: {why}"})
            ctx.log(f"search: {stage.name} skipped: {why}")
            continue
        if state.spent():
            log.append({"stage": stage.name, "status": "not tried: search budget spent"})
            cut.append(stage.name)
            continue
        tried, stopped = 0, False
        for cand in stage.candidates(state):
            if cand.key() in state.seen:
                continue
            if state.spent():
                stopped = True
                break
            state.evaluate(cand, stage.name)
            tried += 1
        status = f"tried {tried}" + ("; search budget spent before the rest" if stopped else "")
        log.append({"stage": stage.name, "status": status})
        if stopped:
            cut.append(stage.name)
    budget_note = (f"the search budget ({cfg.backend.search_budget_s:g} s) ran out before: {', '.join(cut)}" if cut else None)
    if budget_note:
        ctx.log(f"search: {budget_note}")
    _time_passing(state)
    record = {
        "gate": {**gate_settings(cfg, ctx.meta.task),
                 "holdout_images": len(ctx.calib.holdout),
                 "holdout_split": ctx.calib.info.get("holdout_split", ctx.calib.source)},
        "budget_s": cfg.backend.search_budget_s,
        "elapsed_s": round(time.perf_counter() - t0, 1),
        "budget_spent": budget_note,
        "pinned": sorted(cfg.backend.pinned_options()),
        "stages": log,
        "table": state.rows,
    }
    eligible = [r for r in state.rows if r.get("eligible")]
    if not eligible:
        raise GateFailure(_failure_line(state, record))
    best, fastest = pick_candidate(eligible, lambda r: r["latency_ms"], lambda r: (*fidelity_key(r), -r["latency_ms"]))
    for r in state.rows:
        r["chosen"] = r is best
    record["chosen"] = best["#"]
    record["reason"] = _reason(best, fastest, eligible, cfg, ctx.meta.task)
    ctx.log(f"search: chose #{best['#']}: {record['reason']}")
    qm = state.models[best["#"]]
    return QuantizedModel(qm.proto, qm.precision, {**qm.provenance, "search": record}, {**qm.report, "search": record},
                          save=qm.save, suffix=qm.suffix)


def _time_passing(state: SearchState) -> None:
    """Time every passing candidate and the fp32 model of its engine in one interleaved loop; mark which may ship
    (faster than fp32, and of the kind ``--out`` names)."""
    cfg = state.ctx.cfg
    passing = [r for r in state.rows if r["passes"]]
    if not passing:
        return
    models: dict[str, tuple[Any, ...]] = {}
    for r in passing:
        engine, qm = r["engine"], state.models[r["#"]]
        if f"fp32:{engine}" not in models:
            fp32 = state.candidates[r["#"]].fp32()
            models[f"fp32:{engine}"] = (engine, fp32) if engine == "onnxruntime" else (engine, fp32, "fp32")
        models[f"#{r['#']}"] = (engine, qm.proto) if engine == "onnxruntime" else (engine, qm.proto, qm.precision)
    ms = state.ctx.time_ms(models, (1, *state.ctx.input_shape))
    want_ir = str(cfg.out).lower().endswith(".xml") if cfg.out else None
    for r in passing:
        r["latency_ms"], r["fp32_latency_ms"] = ms[f"#{r['#']}"], ms[f"fp32:{r['engine']}"]
        r["faster_than_fp32"] = r["latency_ms"] < r["fp32_latency_ms"]
        kind_ok = want_ir is None or (r["engine"] == "openvino") == want_ir
        if not kind_ok:
            r["note"] = f"cannot be written as {cfg.out}"
        r["eligible"] = r["faster_than_fp32"] and kind_ok


def _figures(r: dict[str, Any]) -> str:
    return parity_text(r)


def _failure_line(state: SearchState, record: dict[str, Any]) -> str:
    cfg = state.ctx.cfg
    gate = gate_text(cfg, state.ctx.meta.task)
    tried = f"{len(state.rows)} candidate(s) tried in {record['elapsed_s']:.0f} s"
    budget = f"; {record['budget_spent']} (raise --search-budget)" if record["budget_spent"] else ""
    passing = [r for r in state.rows if r["passes"]]
    if passing:
        # Passes, but slower than fp32 (or not writable as --out): name the one closest to paying off.
        r = min(passing, key=lambda r: r["latency_ms"] / max(r["fp32_latency_ms"], 1e-9))
        why = (f"takes {r['latency_ms']:.2f} ms vs {r['fp32_latency_ms']:.2f} ms for fp32 on {r['engine']}"
               if not r["faster_than_fp32"] else r.get("note", ""))
        return (f"no quantized model both passes the parity gate ({gate}) on {record['gate']['holdout_images']} "
                f"held-out images and ships: the best, #{r['#']} {r['engine']} {r['candidate']}, passes "
                f"({_figures(r)}) but {why}; {tried}{budget}; use --precision auto or fp32, or lower "
                f"{gate_flags(state.ctx.meta.task)}; "
                "nothing written")
    best = state.best()
    if best is None:
        return (f"no quantized model could be built for the parity gate ({gate}): {tried}, the first failing with: "
                f"{state.rows[0].get('error', '')}{budget}; nothing written")
    return (f"no quantized model passes the parity gate ({gate}) on {record['gate']['holdout_images']} held-out "
            f"images: the best of {tried}, #{best['#']} {best['engine']} {best['candidate']}, reaches "
            f"{_figures(best)}{budget}; lower {gate_flags(state.ctx.meta.task)} or use --precision auto; nothing written")


def _reason(best: dict[str, Any], fastest: dict[str, Any], eligible: list[dict[str, Any]], cfg: QuantizeConfig,
            task: str) -> str:
    gate = gate_text(cfg, task)
    head = (f"#{best['#']} {best['engine']} {best['candidate']} ({best['latency_ms']:.3f} ms vs fp32 "
            f"{best['fp32_latency_ms']:.3f} ms, {_figures(best)})")
    if best is fastest:
        return (f"{head} is the fastest of {len(eligible)} candidate(s) that pass the parity gate ({gate}) on the "
                "held-out images and beat fp32 (p50 at batch 1 over interleaved rounds on this machine)")
    return (f"{head} is within {AUTO_TIE_PCT:g}% of the fastest, #{fastest['#']} ({fastest['latency_ms']:.3f} ms), of "
            f"{len(eligible)} candidate(s) that pass the parity gate ({gate}) and beat fp32, and more faithful "
            f"({_figures(fastest)} there)")


def search_table_lines(record: dict[str, Any]) -> list[str]:
    """The search as printed: a summary line, one row per candidate (``*`` marks the one shipped), why it won,
    what was pinned and what each stage did."""
    g = record["gate"]
    gate = f"top-1 agreement >= {g['min_agreement']}" + (f", cosine >= {g['min_cosine']}" if g["min_cosine"] is not None
                                                          else "")
    rows = record["table"]
    lines = [f"search: the first model did not ship (gate: {gate} on {g['holdout_images']} held-out images, "
             f"{g['holdout_split']}); {len(rows)} candidate(s) in {record['elapsed_s']:.0f} s of a "
             f"{record['budget_s']:g} s budget"]
    width = min(max([len(r["candidate"]) for r in rows] + [9]), 90)
    lines.append(f"     #  {'engine':<12} {'candidate':<{width}}  {'agreement':>9}  {'cosine':>8}  {'ms':>8}  "
                 f"{'fp32 ms':>8}  result")
    for r in rows:
        if "top1_agreement" in r:
            figs = f"{r['top1_agreement']:>9.4f}  {r['cosine']:>8.5f}"
        else:
            figs = f"{'-':>9}  {'-':>8}"
        ms = (f"{r['latency_ms']:>8.3f}  {r['fp32_latency_ms']:>8.3f}" if "latency_ms" in r else f"{'-':>8}  {'-':>8}")
        if "error" in r:
            result = f"error: {r['error'][:80]}"
        elif not r["passes"]:
            result = "misses the gate"
        elif not r.get("faster_than_fp32"):
            result = "passes, not faster than fp32"
        else:
            result = "passes" + (", chosen" if r.get("chosen") else "")
        if r.get("note"):
            result += f" ({r['note']})"
        lines.append(f"  {'*' if r.get('chosen') else ' '} {r['#']:>2}  {r['engine']:<12} "
                     f"{r['candidate'][:width]:<{width}}  {figs}  {ms}  {result}")
    if record.get("reason"):
        lines.append(f"chosen: {record['reason']}")
    if record["pinned"]:
        lines.append("not varied (given explicitly): " + ", ".join(f"{p} ({FLAGS[p]})" for p in record["pinned"]))
    lines.append("stages: " + "; ".join(f"{s['stage']}: {s['status']}" for s in record["stages"]))
    return lines
