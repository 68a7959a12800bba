"""Checkpoint layouts that foundation models ship in, brought to timm's.

A vision transformer's weights come as timm names, as the original release's (OpenAI CLIP ``visual.*``, open_clip,
DINOv2 ``blocks.N.*`` with ``mask_token``), or as Hugging Face transformers modules (``CLIPVisionModel`` /
``CLIPVisionModelWithProjection``: ``vision_model.*`` and ``visual_projection``; ``Dinov2Model``: ``embeddings.*``,
``encoder.layer.N.*``). :func:`to_timm` renames the Hugging Face layouts to the original ones and hands the result to
the timm architecture's own ``checkpoint_filter_fn``, which converts OpenAI CLIP and DINOv2 checkpoints and resamples
the position grid to the model's input size (a 518 px DINOv2 grid for a 224 px teacher). timm's filter maps a CLIP
projection onto the model's head: build the model with as many outputs as the projection has.

:func:`onnx_state_dict` reads the weights of an exported ONNX model back as a state dict (named initializers as they
are; the unnamed weights of ``MatMul`` / ``MatMulInteger`` nodes by their node's module path, dequantized with their
per-channel scales), for models that ship only as ONNX.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError

__all__ = ["detect_layout", "to_timm", "onnx_state_dict", "hf_clip_to_openai", "hf_dinov2_to_original"]


def detect_layout(keys) -> str:
    """``hf-clip``, ``hf-dinov2``, ``openai-clip``, ``dinov2`` or ``timm`` (anything else)."""
    keys = set(keys)
    if "vision_model.embeddings.class_embedding" in keys:
        return "hf-clip"
    if "embeddings.cls_token" in keys and any(k.startswith("encoder.layer.") for k in keys):
        return "hf-dinov2"
    if "visual.class_embedding" in keys:
        return "openai-clip"
    if "mask_token" in keys and any(k.startswith("blocks.") for k in keys):
        return "dinov2"
    return "timm"


def _layers(sd: dict[str, Any], pattern: str) -> list[int]:
    """The block indices ``pattern``'s group matches in ``sd``'s keys, in order."""
    return sorted({int(m.group(1)) for k in sd if (m := re.match(pattern, k))})


def hf_clip_to_openai(sd: dict[str, Any]) -> dict[str, Any]:
    """A Hugging Face CLIP vision tower (``vision_model.*``, optional ``visual_projection.weight``) in OpenAI CLIP's
    layout (``visual.*``; q, k and v concatenated into ``in_proj``; the projection as ``visual.proj`` [width, dim])."""
    import torch

    out: dict[str, Any] = {}
    p = "vision_model."
    out["visual.class_embedding"] = sd[p + "embeddings.class_embedding"]
    out["visual.conv1.weight"] = sd[p + "embeddings.patch_embedding.weight"]
    out["visual.positional_embedding"] = sd[p + "embeddings.position_embedding.weight"]
    for ours, theirs in (("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")):
        for t in ("weight", "bias"):
            out[f"visual.{ours}.{t}"] = sd[f"{p}{theirs}.{t}"]
    for i in _layers(sd, rf"{p}encoder\.layers\.(\d+)\."):
        src, dst = f"{p}encoder.layers.{i}.", f"visual.transformer.resblocks.{i}."
        for t in ("weight", "bias"):
            out[f"{dst}ln_1.{t}"] = sd[f"{src}layer_norm1.{t}"]
            out[f"{dst}ln_2.{t}"] = sd[f"{src}layer_norm2.{t}"]
            out[f"{dst}attn.in_proj_{t}"] = torch.cat([sd[f"{src}self_attn.{q}_proj.{t}"] for q in "qkv"])
            out[f"{dst}attn.out_proj.{t}"] = sd[f"{src}self_attn.out_proj.{t}"]
            out[f"{dst}mlp.c_fc.{t}"] = sd[f"{src}mlp.fc1.{t}"]
            out[f"{dst}mlp.c_proj.{t}"] = sd[f"{src}mlp.fc2.{t}"]
    if "visual_projection.weight" in sd:
        out["visual.proj"] = sd["visual_projection.weight"].t().contiguous()
    return out


def hf_dinov2_to_original(sd: dict[str, Any]) -> dict[str, Any]:
    """A Hugging Face ``Dinov2Model`` in the original DINOv2 layout (``blocks.N.*``, ``mask_token``), which timm's
    filter converts."""
    import torch

    out: dict[str, Any] = {
        "cls_token": sd["embeddings.cls_token"],
        "pos_embed": sd["embeddings.position_embeddings"],
        "mask_token": sd.get("embeddings.mask_token", torch.zeros(1, sd["embeddings.cls_token"].shape[-1])),
        "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": sd["layernorm.weight"],
        "norm.bias": sd["layernorm.bias"],
    }
    for i in _layers(sd, r"encoder\.layer\.(\d+)\."):
        src, dst = f"encoder.layer.{i}.", f"blocks.{i}."
        for t in ("weight", "bias"):
            out[f"{dst}norm1.{t}"] = sd[f"{src}norm1.{t}"]
            out[f"{dst}norm2.{t}"] = sd[f"{src}norm2.{t}"]
            out[f"{dst}attn.qkv.{t}"] = torch.cat([sd[f"{src}attention.attention.{q}.{t}"]
                                                   for q in ("query", "key", "value")])
            out[f"{dst}attn.proj.{t}"] = sd[f"{src}attention.output.dense.{t}"]
            out[f"{dst}mlp.fc1.{t}"] = sd[f"{src}mlp.fc1.{t}"]
            out[f"{dst}mlp.fc2.{t}"] = sd[f"{src}mlp.fc2.{t}"]
        out[f"{dst}ls1.gamma"] = sd[f"{src}layer_scale1.lambda1"]
        out[f"{dst}ls2.gamma"] = sd[f"{src}layer_scale2.lambda1"]
    return out


_TO_ORIGINAL = {"hf-clip": hf_clip_to_openai, "hf-dinov2": hf_dinov2_to_original}


def to_timm(sd: dict[str, Any], model) -> dict[str, Any]:
    """``sd`` in ``model``'s timm names: Hugging Face layouts renamed to the original ones, then the timm module's
    own ``checkpoint_filter_fn`` (OpenAI CLIP, DINOv2, open_clip conversions; position grid resampled bicubic to the
    model's). A model timm has no filter for gets ``sd`` as it is."""
    layout = detect_layout(sd)
    if layout in _TO_ORIGINAL:
        try:
            sd = _TO_ORIGINAL[layout](sd)
        except KeyError as e:
            raise ModelError(f"a {layout} checkpoint without {e.args[0]!r}: not a whole vision tower") from None
    module = sys.modules.get(type(model).__module__)
    filt = getattr(module, "checkpoint_filter_fn", None)
    if filt is None or not type(model).__module__.startswith("timm."):
        return sd
    # DINOv2 resamples its position grid bicubic without antialiasing (its own interpolate_pos_encoding, and Hugging
    # Face's): the same here keeps a 518 px checkpoint's 224 px features those of the original.
    kwargs = {"antialias": False} if layout in ("dinov2", "hf-dinov2") else {}
    try:
        return filt(sd, model, **kwargs)
    except TypeError:  # a filter without those keywords
        return filt(sd, model)


def _dequantize(q: np.ndarray, zero_point: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return (q.astype(np.float32) - zero_point.astype(np.float32)) * scale.astype(np.float32)


def onnx_state_dict(path: str | Path, strip_prefix: str = "", unnamed: bool = False) -> dict[str, Any]:
    """The weights of the ONNX model at ``path`` as a torch state dict in its exporter's module names.

    Named initializers (``vision_model.embeddings.class_embedding``) are kept; a ``MatMul`` or ``MatMulInteger``
    weight with a generated name is named after its node (``/a/b/q_proj/MatMul_quant`` -> ``a.b.q_proj.weight``),
    transposed to ``nn.Linear``'s ``[out, in]`` and, for int8 weights, dequantized with their per-output-channel
    scale and zero point. ``strip_prefix`` is removed from every name that starts with it."""
    import onnx
    import torch
    from onnx import numpy_helper

    if not Path(path).is_file():
        raise ModelError(f"{path} does not exist; give the ONNX model's path")
    try:
        model = onnx.load(str(path))
    except Exception as e:  # noqa: BLE001 - protobuf raises several types for a file that is not an ONNX model
        raise ModelError(f"{path} is not a readable ONNX model ({type(e).__name__}); give the package's .onnx") from None
    inits = {i.name: i for i in model.graph.initializer}
    out: dict[str, Any] = {}
    used = set()
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "MatMulInteger") or len(node.input) < 2 or node.input[1] not in inits:
            continue
        w_name = node.input[1]
        base = w_name[: -len("_quantized")] if w_name.endswith("_quantized") else w_name
        w = numpy_helper.to_array(inits[w_name])
        if node.op_type == "MatMulInteger":
            zp, scale = inits.get(base + "_zero_point"), inits.get(base + "_scale")
            if scale is None:
                raise ModelError(f"{path}: int8 weight {w_name} has no {base}_scale to dequantize it with")
            zp_a = numpy_helper.to_array(zp) if zp is not None else np.zeros(w.shape[1], np.int8)
            w = _dequantize(w, zp_a.reshape(1, -1), numpy_helper.to_array(scale).reshape(1, -1))
            used |= {base + "_zero_point", base + "_scale"}
        if base.startswith("onnx::") or "." not in base:  # a generated name: the node's module, nn.Linear's layout
            module = node.name.strip("/").rsplit("/", 1)[0].replace("/", ".")
            out[f"{module}.weight"] = torch.from_numpy(np.ascontiguousarray(w.T.astype(np.float32)))
        else:  # a named weight (OpenAI CLIP's visual.proj, used as x @ proj) keeps its name and layout
            out[base] = torch.from_numpy(np.ascontiguousarray(w.astype(np.float32)))
        used.add(w_name)
    reader = {}
    for node in model.graph.node:
        for i in node.input:
            reader.setdefault(i, node.name.strip("/").rsplit("/", 1)[0].replace("/", "."))
    for name, init in inits.items():
        if name in used or init.data_type != onnx.TensorProto.FLOAT:
            continue
        if name.startswith("onnx::") or "." not in name:
            if unnamed and name in reader:
                out[f"{reader[name]}:{name}"] = torch.from_numpy(np.array(numpy_helper.to_array(init), np.float32))
            continue
        out[name] = torch.from_numpy(np.array(numpy_helper.to_array(init), dtype=np.float32))
    if strip_prefix:
        out = {k[len(strip_prefix):] if k.startswith(strip_prefix) else k: v for k, v in out.items()}
    return out
