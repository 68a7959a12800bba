"""Small 3-D students for volume foundation teachers: a ResNet-style 3-D CNN with an embedding head.

``student3d`` is the factory named in model cards as ``python:medfm_compress.models.volume:student3d``, so
``ModelCard.build()``, ``load_model`` and ``medfm-compress export`` rebuild it like any other architecture.
Input ``[B, 1, X, Y, Z]`` (the teacher's unit-scaled HU window), output ``[B, embed_dim]``: the student's
prediction of the teacher embedding.
"""

from __future__ import annotations

import torch
from torch import nn

from .heads import Projector

__all__ = ["Student3D", "student3d", "STUDENT3D_ARCH", "DEFAULT_WIDTHS"]

STUDENT3D_ARCH = "python:medfm_compress.models.volume:student3d"
# 2.0 M parameters (58x fewer than astra-ct); its INT8 model runs a 96x96x64 crop in ~11 ms on two cores (benchmarks/ct_foundation.py).
DEFAULT_WIDTHS = (16, 32, 64, 128)


class _Block3d(nn.Module):
    """Basic residual block (two 3x3x3 convolutions), strided by the first, with a 1x1x1 projection skip."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(cout)
        self.conv2 = nn.Conv3d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.skip = (
            nn.Sequential(nn.Conv3d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm3d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.skip(x))


class Student3D(nn.Module):
    """Patchify stem (4x4x4, stride 4), one residual block per stage at stride 2, global average, MLP head.

    The stem's stride 4 keeps the cost of a 96x96x64 crop near 0.1 GMAC (default widths), so the INT8 model
    runs in milliseconds on two CPU cores.
    """

    def __init__(
        self, in_chans: int = 1, widths=DEFAULT_WIDTHS, embed_dim: int = 2048, head_hidden: int = 512
    ):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        self.stem = nn.Sequential(
            nn.Conv3d(in_chans, widths[0], 4, stride=4, bias=False),
            nn.BatchNorm3d(widths[0]),
            nn.ReLU(inplace=True),
        )
        self.stages = nn.Sequential(
            *[_Block3d(a, b, 2) for a, b in zip(widths[:-1], widths[1:], strict=True)]
        )
        self.num_features = widths[-1]
        self.head = Projector(widths[-1], embed_dim, head_hidden)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x)).mean(dim=(2, 3, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def student3d(
    in_chans: int = 1, widths=DEFAULT_WIDTHS, embed_dim: int = 2048, head_hidden: int = 512, **_ignored
) -> Student3D:
    """Factory for model cards; ``num_classes``/``img_size`` from the generic factory call are not used."""
    return Student3D(
        in_chans=in_chans, widths=tuple(widths), embed_dim=int(embed_dim), head_hidden=int(head_hidden)
    )
