"""A tiny torch-exported ONNX classifier whose int8 error is visible: shared by the quantization tests."""

from __future__ import annotations


def tiny_resnet_onnx(path, channels: int = 1, size: int = 32):
    """``timm:medfm_resnet10_w16`` (4 classes) as ONNX with medfm metadata, BatchNorms randomised (timm
    zero-initialises the last BN of each block, which would hide quantization error)."""
    import torch

    from medfm_compress.data import PreprocessSpec
    from medfm_compress.export.onnx_build import export_model_to_onnx
    from medfm_compress.models import create_model
    from medfm_compress.runtime.metadata import ModelMeta

    torch.manual_seed(0)
    m = create_model("timm:medfm_resnet10_w16", 4, channels, size).eval()
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
            mod.running_var.data.uniform_(0.5, 2.0)
    pre = PreprocessSpec((size, size), channels, (0.5,) * channels, (0.25,) * channels)
    meta = ModelMeta(pre, "multiclass", ["a", "b", "c", "d"], "timm:medfm_resnet10_w16")
    return export_model_to_onnx(m, meta, path, torch.zeros(1, channels, size, size))
