"""Transposed convolutions rewritten as sub-pixel convolutions, for an engine whose ConvTranspose kernels are slow.

A ConvTranspose of stride ``s`` whose output is exactly ``s`` times its input along every axis (a decoder's
upsampling layer: kernel 3, pad 1, output padding 1; kernel 2, pad 0; kernel 4, pad 1; ...) equals one ordinary
convolution producing the ``prod(s)`` output phases as channels, followed by a pixel shuffle (Reshape, Transpose,
Reshape) that interleaves them (Shi et al., "Is the deconvolution layer the same as a convolutional layer?", 2016).
Per axis, output index ``n = s*q + r`` receives input ``q + t`` through kernel tap ``k = k0(r) + s*j`` with
``t = c(r) - j``; the convolution's kernel spans the union of those offsets, with zeros where a phase has no tap.

Why: OpenVINO's CPU plugin runs ConvTranspose3d in f32 whatever the inference precision; it took 40% of a MONAI
U-Net student's time at bf16 on an AVX512-VNNI/BF16 CPU. Rewritten, the whole model runs in bf16: the synthetic3d
student's bf16 IR went from 11.0 to 6.9 ms at batch 4 on one thread (ONNX Runtime fp32: 14.4 ms), 5.6 to 3.4 ms on
two. Where it does not pay, it is not applied: in f32 the dense kernel's extra taps (2.4x the multiply-adds for
kernel 3, stride 2) make the convolution slower than OpenVINO's deconvolution (5.6 -> 7.5 ms); NNCF int8 lost to two
reference-implementation reorders around the pixel shuffle (5.4 -> 6.3 ms); ONNX Runtime's ConvTranspose beats the
rewrite too (0.84x). So only bf16 OpenVINO models are converted with it (``onnx_to_ov(..., subpixel=True)``).

Nodes that do not fit (groups, dilation, ``auto_pad``/``output_shape``, output not exactly ``s`` x input, weights
that are not initializers, spatial sizes shape inference cannot fix) are left as they are.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

__all__ = ["conv_transpose_to_subpixel"]


def _attrs(node) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _axis_taps(kernel: int, stride: int, pad_begin: int) -> tuple[list[list[tuple[int, int]]], int, int]:
    """Per output phase ``r`` the (input offset, kernel tap) pairs, and the offsets' range (low, high)."""
    phases = []
    for r in range(stride):
        k0 = (r + pad_begin) % stride
        c = (r + pad_begin - k0) // stride
        phases.append([(c - j, k0 + stride * j) for j in range((kernel - k0 + stride - 1) // stride)])
    offsets = [t for taps in phases for t, _ in taps]
    return phases, min(offsets), max(offsets)


def _rewrite_one(node, weight: np.ndarray, bias: np.ndarray | None, in_spatial: list[int], uid: str):
    """(new nodes, new initializers) for one fitting ConvTranspose node, or None when it does not fit."""
    from onnx import helper, numpy_helper

    a = _attrs(node)
    n = weight.ndim - 2
    if a.get("group", 1) != 1 or any(d != 1 for d in a.get("dilations", [1] * n)):
        return None
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or "output_shape" in a:
        return None
    kernel = list(weight.shape[2:])
    strides = list(a.get("strides", [1] * n))
    pads = list(a.get("pads", [0] * (2 * n)))
    out_pad = list(a.get("output_padding", [0] * n))
    if len(strides) != n or len(pads) != 2 * n or len(out_pad) != n or all(s == 1 for s in strides):
        return None
    for ax in range(n):
        # Output = stride x input exactly (ONNX: s*(L-1) + op + K - pads): what a pixel shuffle produces.
        if out_pad[ax] + kernel[ax] - pads[ax] - pads[n + ax] - strides[ax] != 0:
            return None
    axes = [_axis_taps(kernel[ax], strides[ax], pads[ax]) for ax in range(n)]
    if any(lo > 0 or hi < 0 for _, lo, hi in axes):
        return None  # the kernel would need negative padding
    cin, cout = weight.shape[:2]
    span = [hi - lo + 1 for _, lo, hi in axes]
    n_phases = int(np.prod(strides))
    w = np.zeros((n_phases * cout, cin, *span), weight.dtype)
    for p, rs in enumerate(itertools.product(*(range(s) for s in strides))):
        for taps in itertools.product(*(axes[ax][0][rs[ax]] for ax in range(n))):
            u = tuple(t - axes[ax][1] for ax, (t, _) in enumerate(taps))
            k = tuple(kk for _, kk in taps)
            w[(slice(p * cout, (p + 1) * cout), slice(None), *u)] = weight[(slice(None), slice(None), *k)].T
    names = {x: f"{uid}_{x}" for x in ("w", "b", "phases", "shape1", "perm", "shuffled", "shape2")}
    inits = [numpy_helper.from_array(w, names["w"])]
    conv_inputs = [node.input[0], names["w"]]
    if bias is not None:
        inits.append(numpy_helper.from_array(np.tile(bias, n_phases).astype(bias.dtype), names["b"]))
        conv_inputs.append(names["b"])
    # The convolution keeps the node's name: it holds the weights, so an exclusion by name (NNCF's ignored scope,
    # --exclude-nodes) still finds it.
    conv = helper.make_node("Conv", conv_inputs, [names["phases"]], name=node.name or f"{uid}_conv", kernel_shape=span,
                            pads=[-lo for _, lo, _ in axes] + [hi for _, _, hi in axes], strides=[1] * n)
    # (B, P*C, L...) -> (B, s_1..s_n, C, L_1..L_n) -> (B, C, L_1, s_1, ..., L_n, s_n) -> (B, C, s_1*L_1, ...)
    inits.append(numpy_helper.from_array(np.array([-1, *strides, cout, *in_spatial], np.int64), names["shape1"]))
    inits.append(numpy_helper.from_array(
        np.array([-1, cout, *(s * size for s, size in zip(strides, in_spatial, strict=True))], np.int64),
        names["shape2"]))
    perm = [0, n + 1, *itertools.chain.from_iterable((n + 2 + ax, 1 + ax) for ax in range(n))]
    nodes = [
        conv,
        helper.make_node("Reshape", [names["phases"], names["shape1"]], [f"{uid}_split"], name=f"{uid}_reshape1"),
        helper.make_node("Transpose", [f"{uid}_split"], [names["shuffled"]], name=f"{uid}_shuffle", perm=perm),
        helper.make_node("Reshape", [names["shuffled"], names["shape2"]], [node.output[0]], name=f"{uid}_reshape2"),
    ]
    return nodes, inits


def conv_transpose_to_subpixel(proto) -> tuple[Any, int]:
    """A copy of ``proto`` with every fitting ConvTranspose as Conv + pixel shuffle, and how many were rewritten
    (``proto`` itself, and 0, when none fits)."""
    import onnx
    from onnx import numpy_helper, shape_inference

    candidates = [nd for nd in proto.graph.node if nd.op_type == "ConvTranspose"]
    if not candidates:
        return proto, 0
    inits = {i.name: i for i in proto.graph.initializer}
    try:
        inferred = shape_inference.infer_shapes(proto)
    except Exception:  # noqa: BLE001 - an uninferable graph keeps its ConvTranspose nodes
        return proto, 0
    shapes = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.input]:
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    new_nodes, new_inits, dropped, count = [], [], set(), 0
    for node in out.graph.node:
        rewritten = None
        has_bias = len(node.input) > 2 and bool(node.input[2])
        if node.op_type == "ConvTranspose" and node.input[1] in inits and (not has_bias or node.input[2] in inits):
            weight = numpy_helper.to_array(inits[node.input[1]])
            bias = numpy_helper.to_array(inits[node.input[2]]) if has_bias else None
            spatial = shapes.get(node.input[0], [])[2:]
            if weight.ndim >= 3 and len(spatial) == weight.ndim - 2 and all(
                    isinstance(d, int) and d > 0 for d in spatial):
                rewritten = _rewrite_one(node, weight, bias, spatial, f"subpixel{count}_{node.name or 'ct'}")
        if rewritten is None:
            new_nodes.append(node)
            continue
        nodes, extra = rewritten
        new_nodes.extend(nodes)
        new_inits.extend(extra)
        dropped.update(node.input[1:])
        count += 1
    if not count:
        return proto, 0
    still_used = {i for nd in new_nodes for i in nd.input}
    kept = [i for i in out.graph.initializer if i.name not in dropped or i.name in still_used]
    del out.graph.node[:]
    out.graph.node.extend(new_nodes)
    del out.graph.initializer[:]
    out.graph.initializer.extend([*kept, *new_inits])
    return out, count
