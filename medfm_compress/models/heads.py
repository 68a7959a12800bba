"""Small heads shared by models and training: the embedding projector."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Projector"]


class Projector(nn.Module):
    """Maps student embeddings to the teacher's embedding width (trained with the student, then dropped; a
    volume student keeps it as its head). ``hidden`` defaults to ``out_dim``."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or out_dim
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
