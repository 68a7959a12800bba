"""Distillation losses: logit KD, embedding KD (through a :class:`~medfm_compress.models.heads.Projector`),
hard-label CE/BCE; for segmentation, per-pixel KD, feature-map KD and MONAI's Dice + cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["logit_kd_loss", "feature_kd_loss", "feature_map_kd_loss", "hard_label_loss", "labelled_loss",
           "LOSS_NAMES"]

LOSS_NAMES = ("kd", "feat", "ce")


def logit_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, task: str) -> torch.Tensor:
    """Temperature-scaled KL(teacher || student), times T^2 so gradients keep their scale (Hinton et al.).

    For multi-label tasks each label is a Bernoulli: binary cross-entropy against the teacher's tempered
    sigmoid. For segmentation (``(N, K, H, W)`` logits) the KL divergence is taken per pixel over the classes and
    averaged over pixels; teacher maps of another size are resized (bilinear) to the student's first.
    """
    t = float(temperature)
    if task == "segmentation":
        if teacher_logits.shape[-2:] != student_logits.shape[-2:]:
            teacher_logits = F.interpolate(teacher_logits, size=student_logits.shape[-2:], mode="bilinear",
                                           align_corners=False)
        log_p_s = F.log_softmax(student_logits / t, dim=1)
        log_p_t = F.log_softmax(teacher_logits / t, dim=1)
        per_pixel = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)
        return per_pixel.mean() * t * t
    if task == "multilabel":
        target = torch.sigmoid(teacher_logits / t)
        return F.binary_cross_entropy_with_logits(student_logits / t, target) * t * t
    log_p_s = F.log_softmax(student_logits / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean") * t * t


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


def _dice_ce():
    global _DICE_CE
    if _DICE_CE is None:
        from monai.losses import DiceCELoss

        # Softmax over the classes, the integer target one-hot encoded; background included in the Dice term. The
        # Dice is taken over the whole batch per class (batch=True), so a small lesion that most images lack still
        # gets a Dice term from the images that have it (per image, such a class scores nothing or noise; a teacher
        # trained that way for 4 epochs on the synthetic task never drew nodules or consolidations).
        _DICE_CE = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    return _DICE_CE


def hard_label_loss(logits: torch.Tensor, labels: torch.Tensor, task: str) -> torch.Tensor:
    """Cross-entropy on class indices, BCE on 0/1 label vectors for multi-label tasks, and for segmentation
    MONAI's ``DiceCELoss`` (Dice + cross-entropy) on ``(N, K, H, W)`` logits against ``(N, H, W)`` label maps."""
    if task == "segmentation":
        return _dice_ce()(logits, labels.long().unsqueeze(1))
    if task == "multilabel":
        return F.binary_cross_entropy_with_logits(logits, labels.float())
    return F.cross_entropy(logits, labels.long())


def labelled_loss(logits: torch.Tensor, labels: torch.Tensor, labelled: torch.Tensor, task: str) -> torch.Tensor:
    """:func:`hard_label_loss` on the cases of a batch whose labels may be used (``labelled``, a bool mask), scaled
    by their share of the batch; a batch without one gives a zero that keeps the graph."""
    if bool(labelled.any()):
        return hard_label_loss(logits[labelled], labels[labelled], task) * labelled.float().mean()
    return logits.sum() * 0.0
