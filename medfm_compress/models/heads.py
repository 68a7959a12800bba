"""Small heads shared by models and training: the embedding projector (vectors, or feature maps with ``conv``)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Projector"]


class Projector(nn.Module):
    """Maps student embeddings to the teacher's embedding width (trained with the student, then dropped; a
    volume student keeps it as its head). ``hidden`` defaults to ``out_dim``. With ``conv``, it maps feature maps
    ``(N, C, H, W)`` channel-wise with 1x1 convolutions (dense students' feature KD)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int | None = None, conv: bool = False):
        super().__init__()
        hidden = hidden or out_dim
        layer = (lambda i, o: nn.Conv2d(i, o, 1)) if conv else nn.Linear
        self.net = nn.Sequential(layer(in_dim, hidden), nn.GELU(), layer(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
