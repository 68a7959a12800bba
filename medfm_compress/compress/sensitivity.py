"""Per-node quantization sensitivity and automatic exclusion of nodes from quantization.

Each quantizable node is quantized alone (every other node fp32) and the model's logits on calibration
images are compared with fp32: the SQNR of that comparison is the node's error contribution. Auto-exclusion
(``--auto-exclude``) then keeps the worst nodes in fp32, growing the set geometrically, until the parity gate
holds on held-out data; the result must still be faster than fp32, or it is refused.

The recovery search (:mod:`medfm_compress.compress.quantize_search`) uses :func:`cheapest_exclusion` instead: nodes
ordered by fidelity gained per unit of fp32 cost (:func:`latency_aware_order`), so what stays fp32 is what costs
least time for the most fidelity, not merely what hurts most.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import GateFailure
from .quantize import QuantizeContext, gate_passes, parity_report

__all__ = [
    "NodeSensitivity",
    "AutoExcludeResult",
    "ExclusionResult",
    "node_sensitivity",
    "node_macs",
    "node_fp32_cost",
    "latency_aware_order",
    "auto_exclude",
    "cheapest_exclusion",
    "exclusion_schedule",
]

# Images used to rank nodes: enough to order them, small enough to quantize every node once.
SENSITIVITY_IMAGES = 32


@dataclass
class NodeSensitivity:
    name: str
    op_type: str
    sqnr_db: float
    cosine: float
    top1_agreement: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "op_type": self.op_type,
            "sqnr_db": self.sqnr_db,
            "cosine": self.cosine,
            "top1_agreement": self.top1_agreement,
        }


@dataclass
class AutoExcludeResult:
    proto: Any
    parity: dict[str, float]
    excluded: list[str]
    steps: list[dict[str, Any]] = field(default_factory=list)
    ranking: list[dict[str, Any]] = field(default_factory=list)
    latency_ms: float | None = None
    fp32_latency_ms: float | None = None


def node_sensitivity(
    sq, nodes, x: np.ndarray, ref: np.ndarray, task: str, progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
) -> list[NodeSensitivity]:
    """Quantize each node of ``nodes`` alone and measure the logits' SQNR against fp32 on ``x``; worst first.

    ``should_stop()``, checked before each node, ends the ranking early (the result then has fewer nodes)."""
    from tqdm.auto import tqdm

    from ..runtime.onnx_loader import run_onnx

    out = []
    for node in tqdm(nodes, desc="sensitivity", disable=not progress, leave=False):
        if should_stop is not None and should_stop():
            break
        got = run_onnx(sq.quantize(only=[node.name]), x)
        p = parity_report(ref, got, task)
        out.append(NodeSensitivity(node.name, node.op_type, p["sqnr_db"], p["cosine"], p["top1_agreement"]))
    return sorted(out, key=lambda s: s.sqnr_db)


def _value_shapes(proto) -> dict[str, list[int]]:
    """Tensor name -> inferred dims (0 where unknown); empty for a model shape inference cannot walk."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # a model shape inference cannot walk: callers fall back to weight counts
        return {}
    return {
        v.name: [d.dim_value if d.HasField("dim_value") else 0 for d in v.type.tensor_type.shape.dim]
        for v in list(inferred.graph.value_info) + list(inferred.graph.output)
    }


def node_macs(proto) -> dict[str, int]:
    """Node name -> multiply-accumulates per image it does with its weights (weight elements times output
    positions): the cost of keeping that node in fp32. A 7x7 stem conv has few weights but runs at the largest
    resolution, so weight count alone misjudges it. Nodes whose output shape is not inferable count their
    weights once."""
    sizes = {i.name: int(np.prod(i.dims)) if len(i.dims) else 1 for i in proto.graph.initializer}
    shapes = _value_shapes(proto)
    out = {}
    for n in proto.graph.node:
        w = sum(sizes.get(i, 0) for i in n.input)
        dims = shapes.get(n.output[0] if n.output else "", [])[1:]  # without the batch axis
        positions = 1
        if len(dims) >= 2 and all(dims):
            # per output element of one channel: conv outputs are channels-first, matmul/gemm channels-last
            positions = int(np.prod(dims[1:] if n.op_type.startswith("Conv") else dims[:-1]))
        out[n.name] = w * positions
    return out


def node_fp32_cost(proto) -> dict[str, int]:
    """Node name -> what keeping it in fp32 costs per image: its multiply-accumulates (:func:`node_macs`) plus the
    elements of its output, which an fp32 island converts back to int8 (so a weightless Add or pool is cheap but
    not free). At least 1."""
    macs = node_macs(proto)
    shapes = _value_shapes(proto)
    out = {}
    for n in proto.graph.node:
        dims = shapes.get(n.output[0] if n.output else "", [])[1:]
        elements = int(np.prod(dims)) if dims and all(dims) else 0
        out[n.name] = max(1, macs.get(n.name, 0) + elements)
    return out


def latency_aware_order(ranking: list[NodeSensitivity], cost: dict[str, int]) -> list[dict[str, Any]]:
    """The nodes of ``ranking`` ordered by fidelity gained per unit of fp32 cost, best first.

    A node's gain is the error power it adds when quantized alone, ``10^(-SQNR/10)`` (relative to the logits'
    power; errors of separate nodes add roughly in power); its cost is :func:`node_fp32_cost`. Ties go by name, so
    the order is deterministic."""
    rows = []
    for s in ranking:
        # No error at all (SQNR +inf) gains nothing; an error beyond measure (-inf, NaN) gains the most.
        gain = 0.0 if s.sqnr_db == float("inf") else (
            float(10.0 ** (-s.sqnr_db / 10.0)) if np.isfinite(s.sqnr_db) else float("inf"))
        c = int(cost.get(s.name, 1))
        rows.append({**s.to_dict(), "gain": gain, "cost": c, "gain_per_cost": gain / c})
    return sorted(rows, key=lambda r: (-r["gain_per_cost"], r["name"]))


def exclusion_schedule(n: int) -> list[int]:
    """How many of the worst nodes to try excluding: 1, 2, 3, 4, 6, 8, 11, 16, ... up to ``n``."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k = max(k + 1, int(round(k * 1.4)))
    ks.append(n)
    return ks


def auto_exclude(
    ctx: QuantizeContext, sq, ref: np.ndarray, base_exclude: list[str]
) -> AutoExcludeResult:
    """Exclude the most damaging nodes until the parity gate holds on held-out data, staying faster than fp32."""
    from ..runtime.onnx_loader import run_onnx

    cfg = ctx.cfg
    full = sq.quantize(exclude=base_exclude)
    nodes = [n for n in sq.quantizable_nodes(full) if n.name not in set(base_exclude)]
    x = ctx.calib.images[:SENSITIVITY_IMAGES]
    ctx.log(f"sensitivity: quantizing {len(nodes)} nodes one at a time on {len(x)} calibration images")
    ranking = node_sensitivity(sq, nodes, x, run_onnx(ctx.fp32_proto, x), ctx.meta.task, cfg.progress)
    shape = (1, *ctx.input_shape)
    steps: list[dict[str, Any]] = []
    for k in exclusion_schedule(len(ranking)):
        excluded = [s.name for s in ranking[:k]]
        proto = sq.quantize(exclude=base_exclude + excluded)
        parity = parity_report(ref, run_onnx(proto, ctx.calib.holdout), ctx.meta.task)
        step = {"excluded": k, "top1_agreement": parity["top1_agreement"], "cosine": parity["cosine"]}
        steps.append(step)
        ctx.log(
            f"auto-exclude: {k:3d} node(s) fp32 -> agreement {parity['top1_agreement']:.4f} "
            f"cosine {parity['cosine']:.5f}"
        )
        if not gate_passes(parity, cfg):
            continue
        # The geometric schedule may overshoot and sensitivity is measured node by node: give back to int8
        # every excluded node whose return keeps the gate, since each fp32 island costs speed and size. The
        # costliest nodes (most multiply-accumulates) are tried first, so what stays fp32 is the cheapest set.
        macs = node_macs(ctx.fp32_proto)
        for name in sorted(excluded, key=lambda n: -macs.get(n, 0)):
            if len(excluded) == 1:
                break
            trial = [e for e in excluded if e != name]
            trial_proto = sq.quantize(exclude=base_exclude + trial)
            trial_parity = parity_report(ref, run_onnx(trial_proto, ctx.calib.holdout), ctx.meta.task)
            if gate_passes(trial_parity, cfg):
                excluded, proto, parity = trial, trial_proto, trial_parity
                steps.append(
                    {
                        "excluded": len(excluded),
                        "returned_to_int8": name,
                        "top1_agreement": parity["top1_agreement"],
                        "cosine": parity["cosine"],
                    }
                )
                ctx.log(f"auto-exclude: {name} back to int8 -> agreement {parity['top1_agreement']:.4f}")
        k = len(excluded)
        # fp32 and the candidate timed in one interleaved loop: two separate timings on a drifting machine
        # can differ by more than the speed-up being judged.
        both = ctx.time_ms({"fp32": ("onnxruntime", ctx.fp32_proto), "int8": ("onnxruntime", proto)}, shape)
        ms, fp32_ms = both["int8"], both["fp32"]
        step["latency_ms"], step["fp32_latency_ms"] = ms, fp32_ms
        if ms >= fp32_ms:
            raise GateFailure(
                f"auto-exclude reaches the parity gate only with {k} of {len(ranking)} nodes in fp32, and that model "
                f"is not faster than fp32 ({ms:.2f} vs {fp32_ms:.2f} ms); use --precision auto or fp32"
            )
        return AutoExcludeResult(proto, parity, excluded, steps, [s.to_dict() for s in ranking], ms, fp32_ms)
    raise GateFailure(
        f"auto-exclude could not reach the parity gate (min agreement {cfg.gate.min_agreement}) even with all "
        f"{len(ranking)} nodes in fp32; nothing written"
    )


@dataclass
class ExclusionResult:
    """The outcome of :func:`cheapest_exclusion`: the last model tried (the passing one when ``passes``)."""

    proto: Any
    parity: dict[str, float]
    excluded: list[str]
    passes: bool
    steps: list[dict[str, Any]] = field(default_factory=list)
    order: list[dict[str, Any]] = field(default_factory=list)
    stopped: str | None = None


def cheapest_exclusion(
    ctx: QuantizeContext, sq, ref: np.ndarray, base_exclude: list[str],
    should_stop: Callable[[], bool] = lambda: False,
) -> ExclusionResult:
    """Keep in fp32 the nodes that cost least time for the most fidelity until the parity gate holds.

    Nodes are ranked on calibration images (:func:`node_sensitivity`) and ordered by :func:`latency_aware_order`;
    the first ``k`` of them stay fp32 for ``k`` on :func:`exclusion_schedule` (never all: that is fp32), each model
    judged on the held-out images; the first ``k`` that passes is narrowed by bisection towards the previous one.
    ``should_stop()`` (the search's budget) is checked before each quantization; when it stops the search, the
    result says so in ``stopped``.
    """
    from ..runtime.onnx_loader import run_onnx

    cfg = ctx.cfg
    full = sq.quantize(exclude=base_exclude)
    nodes = [n for n in sq.quantizable_nodes(full) if n.name not in set(base_exclude)]
    none = ExclusionResult(full, parity_report(ref, run_onnx(full, ctx.calib.holdout), ctx.meta.task), [], False)
    if len(nodes) < 2:
        none.stopped = f"{len(nodes)} quantized node(s): nothing to keep in fp32 short of the fp32 model"
        return none
    x = ctx.calib.images[:SENSITIVITY_IMAGES]
    ctx.log(f"search: ranking {len(nodes)} nodes by fidelity per fp32 cost on {len(x)} calibration images")
    ranking = node_sensitivity(sq, nodes, x, run_onnx(ctx.fp32_proto, x), ctx.meta.task, cfg.progress, should_stop)
    if len(ranking) < len(nodes):
        none.stopped = f"search budget spent while ranking nodes ({len(ranking)} of {len(nodes)})"
        return none
    order = latency_aware_order(ranking, node_fp32_cost(ctx.fp32_proto))
    names = [r["name"] for r in order]
    steps: list[dict[str, Any]] = []
    tried: dict[int, tuple[Any, dict[str, float], bool]] = {}

    def trial(k: int):
        proto = sq.quantize(exclude=base_exclude + names[:k])
        parity = parity_report(ref, run_onnx(proto, ctx.calib.holdout), ctx.meta.task)
        ok = gate_passes(parity, cfg)
        tried[k] = (proto, parity, ok)
        steps.append({"fp32_nodes": k, "top1_agreement": parity["top1_agreement"], "cosine": parity["cosine"],
                      "passes": ok})
        ctx.log(f"search: exclusion {k:3d} node(s) fp32 -> agreement {parity['top1_agreement']:.4f} "
                f"cosine {parity['cosine']:.5f}")
        return ok

    # Excluding every node is the fp32 model, never faster than itself: the schedule stops one short.
    schedule = [k for k in exclusion_schedule(len(names)) if k < len(names)]
    if schedule[-1] != len(names) - 1:
        schedule.append(len(names) - 1)
    lo, hi, stopped = 0, None, None
    for k in schedule:
        if should_stop():
            stopped = "search budget spent during the exclusion"
            break
        if trial(k):
            hi = k
            break
        lo = k
    # Overshoot of the geometric schedule: bisect between the last failing and the first passing k.
    while hi is not None and hi - lo > 1 and stopped is None:
        if should_stop():
            stopped = "search budget spent while narrowing the exclusion"
            break
        mid = (lo + hi) // 2
        if trial(mid):
            hi = mid
        else:
            lo = mid
    if not tried:
        none.stopped, none.order = stopped, order
        return none
    k = hi if hi is not None else max(tried)
    proto, parity, ok = tried[k]
    return ExclusionResult(proto, parity, names[:k], ok, steps, order, stopped)
