"""Distillation losses: logit KD, embedding KD (through a :class:`~medfm_compress.models.heads.Projector`),
hard-label CE/BCE."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["logit_kd_loss", "feature_kd_loss", "hard_label_loss", "LOSS_NAMES"]

LOSS_NAMES = ("kd", "feat", "ce")


def logit_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, task: str) -> torch.Tensor:
    """Temperature-scaled KL(teacher || student), times T^2 so gradients keep their scale (Hinton et al.).

    For multi-label tasks each label is a Bernoulli: binary cross-entropy against the teacher's tempered
    sigmoid.
    """
    t = float(temperature)
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


def hard_label_loss(logits: torch.Tensor, labels: torch.Tensor, task: str) -> torch.Tensor:
    """Cross-entropy on class indices, or BCE on 0/1 label vectors for multi-label tasks."""
    if task == "multilabel":
        return F.binary_cross_entropy_with_logits(logits, labels.float())
    return F.cross_entropy(logits, labels.long())
