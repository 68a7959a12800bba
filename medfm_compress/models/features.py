"""Logits and embeddings from any classifier in one forward pass.

The embedding is the input of the model's classifier (timm's ``get_classifier()``, else its last
``nn.Linear``), captured with a forward pre-hook, so the same code serves timm models and user models.
A model without a head (``num_classes=0``, a bare foundation encoder) returns its output as embedding.
"""

from __future__ import annotations

import torch
from torch import nn

from .taps import ModuleTap, first_output

__all__ = ["FeatureTap", "classifier_of", "macs_of"]


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
