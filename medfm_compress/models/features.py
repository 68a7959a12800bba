"""Logits and embeddings from any classifier in one forward pass.

The embedding is the input of the model's classifier (timm's ``get_classifier()``, else its last
``nn.Linear``), captured with a forward pre-hook, so the same code serves timm models and user models.
A model without a head (``num_classes=0``, a bare foundation encoder) returns its output as embedding.
"""

from __future__ import annotations

import torch
from torch import nn

from .taps import ModuleTap, first_output

__all__ = ["FeatureTap", "MapTap", "classifier_of", "macs_of", "tokens_to_map", "PATCH_GRID"]

# The side of the grid a teacher's patch-token map is pooled to before it is cached (7: a 224 px CNN's last stage).
PATCH_GRID = 7


def classifier_of(model: nn.Module) -> nn.Module | None:
    """The module whose input is the embedding, or None for a head-less encoder."""
    get = getattr(model, "get_classifier", None)
    if callable(get):
        head = get()
        if isinstance(head, nn.Module) and not isinstance(head, nn.Identity):
            return head
        return None
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m
    return last


class FeatureTap(ModuleTap):
    """Context that records the classifier's input while a model runs.

    Usage: ``with FeatureTap(model) as tap: logits, emb = tap.run(x)``.
    """

    def __init__(self, model: nn.Module):
        super().__init__(classifier_of(model), pre=True)
        self.model = model
        self.head = self.module

    @property
    def embedding(self) -> torch.Tensor | None:
        return None if self.seen is None else torch.flatten(self.seen[0], 1)

    def run(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Return ``(logits, embedding)``; logits is None for a head-less encoder."""
        both = getattr(self.model, "logits_and_embedding", None)
        if both is not None:  # a teacher held as an engine gives both itself
            return both(x)
        out = first_output(self.model(x))
        if self.head is None:
            return None, torch.flatten(out, 1)
        return out, self.embedding


def tokens_to_map(t: torch.Tensor, prefix: int | None = None) -> torch.Tensor:
    """A ViT's tokens ``(N, T, D)`` as a map ``(N, D, g, g)``: the ``prefix`` leading tokens (class, registers; by
    default whatever is left over above the largest square) dropped, the rest laid out row by row. A map ``(N, C,
    H, W)`` is returned as it is."""
    if t.dim() == 4:
        return t
    if t.dim() != 3:
        raise ValueError(f"a patch-token map needs (N, T, D) tokens or an (N, C, H, W) map, got {tuple(t.shape)}")
    n, count, d = t.shape
    if prefix is None:
        g = int(count**0.5)
        prefix = count - g * g
    g = int(round((count - prefix) ** 0.5))
    if g * g != count - prefix:
        raise ValueError(f"{count - prefix} patch tokens do not make a square grid")
    return t[:, prefix:].transpose(1, 2).reshape(n, d, g, g)


class MapTap(ModuleTap):
    """Context that records a model's last feature map while it runs: the input of a CNN's global pooling (timm's
    ``global_pool``, ``head.global_pool``), or a ViT's final tokens (the output of its ``norm``) as a grid
    (:func:`tokens_to_map`). ``module`` is None where the model has neither."""

    def __init__(self, model: nn.Module):
        self.model = model
        pool = getattr(model, "global_pool", None)
        head = getattr(model, "head", None)
        if not isinstance(pool, nn.Module) and isinstance(getattr(head, "global_pool", None), nn.Module):
            pool = head.global_pool
        if isinstance(pool, nn.Module):
            super().__init__(pool, pre=True)
            self.prefix = None
        elif hasattr(model, "patch_embed") and isinstance(getattr(model, "norm", None), nn.Module):
            super().__init__(model.norm, pre=False)
            self.prefix = int(getattr(model, "num_prefix_tokens", 1))
        else:
            super().__init__(None, pre=True)

    @property
    def map(self) -> torch.Tensor | None:
        if self.seen is None:
            return None
        seen = self.seen[0] if self.pre else self.seen
        return tokens_to_map(seen, self.prefix)


def macs_of(model: nn.Module, example: torch.Tensor) -> int | None:
    """Multiply-accumulates of one forward pass (convolutions and linear layers), counted by hooks; None for a
    teacher held as an engine (its layers are not torch modules)."""
    if getattr(model, "is_engine", False):
        return None
    total = 0

    def conv_hook(m, _inp, out):
        nonlocal total
        k = m.weight.numel() // m.out_channels  # in/groups * kh * kw
        total += int(out.numel() // out.shape[0] * k)

    def lin_hook(m, inp, out):
        nonlocal total
        total += int(out.numel() // out.shape[0] * m.in_features)

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(lin_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total
