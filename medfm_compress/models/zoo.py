"""Small architectures registered in timm's registry, usable as ``timm:NAME`` like any timm model.

They are ResNets with basic blocks at reduced width: the student class that deploys on CPUs and edge
boxes, with at least 10x fewer parameters than the ResNet-34/50 or ViT-S teachers they learn from.
"""

from __future__ import annotations

from timm.models import build_model_with_cfg, register_model
from timm.models.resnet import BasicBlock, ResNet

__all__ = ["medfm_resnet10_w32", "medfm_resnet10_w24", "medfm_resnet18_w32", "medfm_resnet10_w16"]


def _slim_resnet(variant, layers, channels, stem_width, **kwargs) -> ResNet:
    # Through timm's builder, as timm's own ResNets: features_only (smp's tu- encoders) works; never pretrained.
    kwargs.pop("pretrained", None)
    # No hub weights exist: an explicit empty config instead of timm's "no pretrained configuration" warning.
    # No pretraining statistics either (mean/std None): a teacher built on one takes the data's own.
    kwargs["pretrained_cfg"] = kwargs.get("pretrained_cfg") or {"architecture": variant, "mean": None, "std": None}
    return build_model_with_cfg(ResNet, variant, pretrained=False, block=BasicBlock, layers=layers, channels=channels,
                                stem_width=stem_width, **kwargs)


@register_model
def medfm_resnet10_w32(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-10 (one basic block per stage) at half width: about 1.2 M parameters."""
    return _slim_resnet("medfm_resnet10_w32", (1, 1, 1, 1), (32, 64, 128, 256), 32, **kwargs)


@register_model
def medfm_resnet10_w24(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-10 at 3/8 width: about 0.7 M parameters (the default student, 16x smaller than ResNet-18)."""
    return _slim_resnet("medfm_resnet10_w24", (1, 1, 1, 1), (24, 48, 96, 192), 24, **kwargs)


@register_model
def medfm_resnet18_w32(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-18 at half width: about 2.8 M parameters."""
    return _slim_resnet("medfm_resnet18_w32", (2, 2, 2, 2), (32, 64, 128, 256), 32, **kwargs)


@register_model
def medfm_resnet10_w16(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-10 at quarter width: about 0.3 M parameters (fast tests)."""
    return _slim_resnet("medfm_resnet10_w16", (1, 1, 1, 1), (16, 32, 64, 128), 16, **kwargs)
