"""Every metric in one place: task metrics (accuracy, macro AUC) and parity metrics between two models'
outputs (top-1 agreement, cosine, max-abs error, SQNR).

All functions take numpy arrays and are pure: the metric of a model against itself is exact.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "softmax",
    "sigmoid",
    "probabilities",
    "accuracy",
    "binary_auc",
    "macro_auc",
    "top1_agreement",
    "cosine_similarity",
    "max_abs_error",
    "sqnr_db",
    "task_metrics",
]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(logits, -60, 60)))


def probabilities(logits: np.ndarray, task: str) -> np.ndarray:
    """Class probabilities: sigmoid for multi-label, softmax otherwise."""
    logits = np.asarray(logits, dtype=np.float64)
    return sigmoid(logits) if task == "multilabel" else softmax(logits)


def accuracy(logits: np.ndarray, labels: np.ndarray, task: str) -> float:
    """Top-1 accuracy (multi-class/binary) or mean per-label accuracy at 0.5 (multi-label)."""
    logits = np.asarray(logits)
    if task == "multilabel":
        return float(((logits > 0) == (np.asarray(labels) > 0.5)).mean())
    return float((logits.argmax(1) == np.asarray(labels)).mean())


def binary_auc(scores: np.ndarray, positives: np.ndarray) -> float:
    """ROC AUC via the Mann-Whitney U statistic with average ranks for ties; NaN if one class is absent."""
    scores = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positives).astype(bool)
    n_pos = int(pos.sum())
    n_neg = int(pos.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(scores.size, dtype=np.float64)
    sorted_scores = scores[order]
    # Average ranks over tied runs.
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [scores.size]))
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def macro_auc(logits: np.ndarray, labels: np.ndarray, task: str) -> float:
    """Macro-averaged one-vs-rest AUC (binary: AUC of the positive class). Classes absent from the labels
    are skipped."""
    probs = probabilities(logits, task)
    labels = np.asarray(labels)
    if task == "binary":
        return binary_auc(probs[:, 1], labels == 1)
    aucs = []
    for k in range(probs.shape[1]):
        target = labels[:, k] > 0.5 if task == "multilabel" else labels == k
        a = binary_auc(probs[:, k], target)
        if not np.isnan(a):
            aucs.append(a)
    return float(np.mean(aucs)) if aucs else float("nan")


def top1_agreement(logits_a: np.ndarray, logits_b: np.ndarray, task: str = "multiclass") -> float:
    """Fraction of cases where both models predict the same class (same label set for multi-label)."""
    a, b = np.asarray(logits_a), np.asarray(logits_b)
    if task == "multilabel":
        return float(((a > 0) == (b > 0)).all(axis=1).mean())
    return float((a.argmax(1) == b.argmax(1)).mean())


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Mean per-sample cosine similarity of two output arrays (1.0 for identical outputs)."""
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.where(np.abs(a - b).max(1) == 0, 1.0, 0.0))
    return float(cos.mean())


def max_abs_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB; +inf when the outputs are identical."""
    ref = np.asarray(reference, dtype=np.float64)
    noise = ref - np.asarray(test, dtype=np.float64)
    pn = float((noise**2).sum())
    ps = float((ref**2).sum())
    if pn == 0:
        return float("inf")
    return float(10 * np.log10(ps / pn)) if ps > 0 else float("-inf")


def task_metrics(logits: np.ndarray, labels: np.ndarray, task: str) -> dict[str, float]:
    """Accuracy and macro AUC."""
    return {"accuracy": accuracy(logits, labels, task), "macro_auc": macro_auc(logits, labels, task)}
