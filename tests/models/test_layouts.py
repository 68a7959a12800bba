"""Foundation-model checkpoint layouts (Hugging Face CLIP / DINOv2, OpenAI CLIP) load into timm's architectures."""

from __future__ import annotations

from functools import partial

import numpy as np
import onnx
import pytest
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

from medfm_compress.errors import ModelError
from medfm_compress.models.layouts import detect_layout, onnx_state_dict
from medfm_compress.models.weights import load_weights


def _quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


class QuickGELU(torch.nn.Module):
    def forward(self, x):
        return _quick_gelu(x)


def _clip_vit(seed=0):
    torch.manual_seed(seed)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, pre_norm=True,
                             num_classes=16, class_token=True, global_pool="token", act_layer=QuickGELU,
                             norm_layer=partial(torch.nn.LayerNorm, eps=1e-5)).eval()


def _as_hf_clip(m) -> dict:
    """The tiny CLIP tower in Hugging Face's CLIPVisionModelWithProjection names (the inverse of the loader's map)."""
    sd = {k: v.detach().clone() for k, v in m.state_dict().items()}
    p = "vision_model."
    out = {p + "embeddings.class_embedding": sd["cls_token"][0, 0], p + "embeddings.patch_embedding.weight":
           sd["patch_embed.proj.weight"], p + "embeddings.position_embedding.weight": sd["pos_embed"][0],
           p + "pre_layrnorm.weight": sd["norm_pre.weight"], p + "pre_layrnorm.bias": sd["norm_pre.bias"],
           p + "post_layernorm.weight": sd["norm.weight"], p + "post_layernorm.bias": sd["norm.bias"],
           "visual_projection.weight": sd["head.weight"]}
    for i in range(2):
        b, h = f"blocks.{i}.", f"{p}encoder.layers.{i}."
        for t in ("weight", "bias"):
            q, k, v = sd[f"{b}attn.qkv.{t}"].chunk(3)
            out |= {f"{h}self_attn.q_proj.{t}": q, f"{h}self_attn.k_proj.{t}": k, f"{h}self_attn.v_proj.{t}": v,
                    f"{h}self_attn.out_proj.{t}": sd[f"{b}attn.proj.{t}"], f"{h}layer_norm1.{t}": sd[f"{b}norm1.{t}"],
                    f"{h}layer_norm2.{t}": sd[f"{b}norm2.{t}"], f"{h}mlp.fc1.{t}": sd[f"{b}mlp.fc1.{t}"],
                    f"{h}mlp.fc2.{t}": sd[f"{b}mlp.fc2.{t}"]}
    return out


def test_a_hugging_face_clip_tower_loads_into_timm_with_its_projection(tmp_path):
    src = _clip_vit(0)
    # CLIP's projection has no bias; timm's filter gives the head a zero one.
    with torch.no_grad():
        src.head.bias.zero_()
    sd = _as_hf_clip(src)
    assert detect_layout(sd) == "hf-clip"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "clip.safetensors"))
    dst = _clip_vit(1)
    load_weights(dst, tmp_path / "clip.safetensors", what="teacher")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x), rtol=1e-5, atol=1e-5)
    # A Hugging Face model directory holds the same file as model.safetensors.
    (tmp_path / "hf").mkdir()
    (tmp_path / "clip.safetensors").rename(tmp_path / "hf" / "model.safetensors")
    load_weights(_clip_vit(2), tmp_path / "hf", what="teacher")


def _dinov2_vit(img_size, seed=0):
    torch.manual_seed(seed)
    return VisionTransformer(img_size=img_size, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0,
                             init_values=1e-1).eval()


def _as_hf_dinov2(m) -> dict:
    sd = {k: v.detach().clone() for k, v in m.state_dict().items()}
    out = {"embeddings.cls_token": sd["cls_token"], "embeddings.position_embeddings": sd["pos_embed"],
           "embeddings.mask_token": torch.zeros(1, 32),
           "embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
           "embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
           "layernorm.weight": sd["norm.weight"], "layernorm.bias": sd["norm.bias"]}
    for i in range(2):
        b, h = f"blocks.{i}.", f"encoder.layer.{i}."
        for t in ("weight", "bias"):
            q, k, v = sd[f"{b}attn.qkv.{t}"].chunk(3)
            out |= {f"{h}attention.attention.query.{t}": q, f"{h}attention.attention.key.{t}": k,
                    f"{h}attention.attention.value.{t}": v, f"{h}attention.output.dense.{t}": sd[f"{b}attn.proj.{t}"],
                    f"{h}norm1.{t}": sd[f"{b}norm1.{t}"], f"{h}norm2.{t}": sd[f"{b}norm2.{t}"],
                    f"{h}mlp.fc1.{t}": sd[f"{b}mlp.fc1.{t}"], f"{h}mlp.fc2.{t}": sd[f"{b}mlp.fc2.{t}"]}
        out[f"{h}layer_scale1.lambda1"] = sd[f"{b}ls1.gamma"]
        out[f"{h}layer_scale2.lambda1"] = sd[f"{b}ls2.gamma"]
    return out


def test_a_hugging_face_dinov2_loads_at_another_input_size_with_its_grid_resampled(tmp_path):
    src = _dinov2_vit(64)  # an 8x8 grid of patches
    sd = _as_hf_dinov2(src)
    assert detect_layout(sd) == "hf-dinov2"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "dino.safetensors"))
    same = _dinov2_vit(64, seed=1)
    load_weights(same, tmp_path / "dino.safetensors")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(same.forward_features(x), src.forward_features(x), rtol=1e-5, atol=1e-5)
    small = _dinov2_vit(32, seed=2)  # a 4x4 grid: the table is resampled, bicubic, as DINOv2 does
    load_weights(small, tmp_path / "dino.safetensors")
    want = resample_abs_pos_embed(src.pos_embed.detach(), new_size=(4, 4), old_size=(8, 8), num_prefix_tokens=1,
                                  interpolation="bicubic", antialias=False)
    torch.testing.assert_close(small.pos_embed.detach(), want)
    torch.testing.assert_close(small.blocks[1].ls2.gamma.detach(), src.blocks[1].ls2.gamma.detach())


def test_a_partial_tower_is_refused_by_name(tmp_path):
    sd = _as_hf_clip(_clip_vit(0))
    del sd["vision_model.pre_layrnorm.weight"]
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ModelError, match="hf-clip checkpoint without 'vision_model.pre_layrnorm.weight'"):
        load_weights(_clip_vit(1), tmp_path / "bad.safetensors")


def test_onnx_weights_come_back_named_by_their_nodes_and_dequantized(tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj = torch.nn.Linear(16, 24)
            self.fc2 = torch.nn.Linear(24, 8, bias=False)

        def forward(self, x):
            return self.fc2(torch.relu(self.q_proj(x)))

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = Block()

        def forward(self, x):
            return self.layer(x)

    torch.manual_seed(0)
    net = Net().eval()
    path = tmp_path / "net.onnx"
    torch.onnx.export(net, torch.randn(2, 5, 16), str(path), input_names=["x"], dynamo=False)
    sd = onnx_state_dict(path)
    torch.testing.assert_close(sd["layer.q_proj.weight"], net.layer.q_proj.weight.detach())
    torch.testing.assert_close(sd["layer.fc2.weight"], net.layer.fc2.weight.detach())
    torch.testing.assert_close(sd["layer.q_proj.bias"], net.layer.q_proj.bias.detach())
    # int8 weights (MatMulInteger with a scale per output channel) come back within their quantization step.
    q = tmp_path / "net.int8.onnx"
    quantize_dynamic(str(path), str(q), weight_type=QuantType.QInt8, per_channel=True)
    if not any(n.op_type == "MatMulInteger" for n in onnx.load(str(q)).graph.node):
        pytest.skip("this onnxruntime quantizes these MatMuls another way")
    sdq = onnx_state_dict(q)
    w = net.layer.q_proj.weight.detach()
    step = w.abs().amax(1, keepdim=True) / 127
    assert torch.all((sdq["layer.q_proj.weight"] - w).abs() <= step * 0.51 + 1e-7)
    assert np.isfinite(sdq["layer.fc2.weight"].numpy()).all()


def test_a_file_that_is_not_an_onnx_model_is_one_line(tmp_path):
    (tmp_path / "bad.onnx").write_text("not a model")
    with pytest.raises(ModelError, match="is not a readable ONNX model"):
        onnx_state_dict(tmp_path / "bad.onnx")
    with pytest.raises(ModelError, match="does not exist"):
        onnx_state_dict(tmp_path / "none.onnx")
