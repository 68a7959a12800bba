"""Per-node quantization sensitivity and automatic exclusion of the most damaging nodes.

Each quantizable node is quantized alone (every other node fp32) and the model's logits on calibration
images are compared with fp32: the SQNR of that comparison is the node's error contribution. Auto-exclusion
then keeps the worst nodes in fp32, growing the set geometrically, until the parity gate holds on held-out
data; the result must still be faster than fp32, or it is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import GateFailure
from .quantize import QuantizeContext, gate_passes, parity_report

__all__ = ["NodeSensitivity", "AutoExcludeResult", "node_sensitivity", "node_macs", "auto_exclude", "exclusion_schedule"]

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
    sq, nodes, x: np.ndarray, ref: np.ndarray, task: str, progress: bool = True
) -> list[NodeSensitivity]:
    """Quantize each node of ``nodes`` alone and measure the logits' SQNR against fp32 on ``x``; worst first."""
    from tqdm.auto import tqdm

    from ..runtime.onnx_loader import run_onnx

    out = []
    for node in tqdm(nodes, desc="sensitivity", disable=not progress, leave=False):
        got = run_onnx(sq.quantize(only=[node.name]), x)
        p = parity_report(ref, got, task)
        out.append(NodeSensitivity(node.name, node.op_type, p["sqnr_db"], p["cosine"], p["top1_agreement"]))
    return sorted(out, key=lambda s: s.sqnr_db)


def node_macs(proto) -> dict[str, int]:
    """Node name -> multiply-accumulates per image it does with its weights (weight elements times output
    positions): the cost of keeping that node in fp32. A 7x7 stem conv has few weights but runs at the largest
    resolution, so weight count alone misjudges it. Nodes whose output shape is not inferable count their
    weights once."""
    import onnx

    sizes = {i.name: int(np.prod(i.dims)) if len(i.dims) else 1 for i in proto.graph.initializer}
    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
        shapes = {
            v.name: [d.dim_value if d.HasField("dim_value") else 0 for d in v.type.tensor_type.shape.dim]
            for v in list(inferred.graph.value_info) + list(inferred.graph.output)
        }
    except Exception:  # a model shape inference cannot walk: fall back to weight counts
        shapes = {}
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
    from . import latency

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
        both = latency.interleaved_latency_ms({"fp32": ("onnxruntime", ctx.fp32_proto), "int8": ("onnxruntime", proto)},
                                      shape, cfg.latency_runs)
        ms, fp32_ms = both["int8"], both["fp32"]
        step["latency_ms"], step["fp32_latency_ms"] = ms, fp32_ms
        if ms >= fp32_ms:
            raise GateFailure(
                f"auto-exclude reaches the parity gate only with {k} of {len(ranking)} nodes in fp32, and that model "
                f"is not faster than fp32 ({ms:.2f} vs {fp32_ms:.2f} ms); use --precision auto or fp32"
            )
        return AutoExcludeResult(proto, parity, excluded, steps, [s.to_dict() for s in ranking], ms, fp32_ms)
    raise GateFailure(
        f"auto-exclude could not reach the parity gate (min agreement {cfg.min_agreement}) even with all "
        f"{len(ranking)} nodes in fp32; nothing written"
    )
