"""The distillation losses every task shares: embedding KD (through a
:class:`~medfm_compress.models.heads.Projector`), feature-map KD, MONAI's Dice + cross-entropy, and a task's label loss
on the labelled cases of a batch. What a loss against labels or against the teacher's outputs is for one task lives with
the task (:mod:`medfm_compress.compress.tasks`: ``hard_loss``, ``kd_loss``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["feature_kd_loss", "feature_map_kd_loss", "dice_ce", "labelled_loss", "weighted_terms", "LOSS_NAMES"]

LOSS_NAMES = ("kd", "feat", "patch", "ce")


def feature_kd_loss(projected: torch.Tensor, teacher_embedding: torch.Tensor, kind: str) -> torch.Tensor:
    """Embedding distillation: ``1 - cosine`` or MSE between projected student and teacher embeddings."""
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(projected, teacher_embedding, dim=1)).mean()
    if kind == "mse":
        return F.mse_loss(projected, teacher_embedding)
    raise ValueError(f"unknown feature loss {kind!r}")


def feature_map_kd_loss(projected: torch.Tensor, teacher_map: torch.Tensor, kind: str) -> torch.Tensor:
    """Feature-map distillation for dense models: per-position ``1 - cosine`` (over channels) or MSE between the
    projected student map and the teacher's, the teacher's resized (bilinear) to the student's size."""
    if teacher_map.shape[-2:] != projected.shape[-2:]:
        teacher_map = F.interpolate(teacher_map, size=projected.shape[-2:], mode="bilinear", align_corners=False)
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(projected, teacher_map, dim=1)).mean()
    if kind == "mse":
        return F.mse_loss(projected, teacher_map)
    raise ValueError(f"unknown feature loss {kind!r}")


_DICE_CE = None


def dice_ce():
    """MONAI's Dice + cross-entropy loss as segmentation trains with it (one instance, made on first use)."""
    global _DICE_CE
    if _DICE_CE is None:
        from monai.losses import DiceCELoss

        # Softmax over the classes, the integer target one-hot encoded; background included in the Dice term. The
        # Dice is taken over the whole batch per class (batch=True), so a small lesion that most images lack still
        # gets a Dice term from the images that have it (per image, such a class scores nothing or noise; a teacher
        # trained that way for 4 epochs on the synthetic task never drew nodules or consolidations).
        _DICE_CE = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    return _DICE_CE


def labelled_loss(loss, logits: torch.Tensor, labels: torch.Tensor, labelled: torch.Tensor) -> torch.Tensor:
    """``loss(logits, labels)`` (a task's loss against labels) on the cases of a batch whose labels may be used
    (``labelled``, a bool mask), scaled by their share of the batch; a batch without one gives a zero that keeps the
    graph."""
    if bool(labelled.any()):
        return loss(logits[labelled], labels[labelled]) * labelled.float().mean()
    return logits.sum() * 0.0


def weighted_terms(cfg, losses: tuple[str, ...], device, terms) -> tuple[torch.Tensor, dict[str, float]]:
    """One step's loss: each of ``losses`` computed by its callable in ``terms`` and weighted by the loss config's
    ``<name>_weight``, summed in the order kd, feat, patch, ce; and each term's value, for the log."""
    total = torch.zeros((), device=device)
    shown = {}
    for name in LOSS_NAMES:
        if name in losses:
            value = terms[name]()
            total = total + getattr(cfg, f"{name}_weight") * value
            shown[name] = float(value.detach())
    return total, shown
