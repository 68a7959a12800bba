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
    "centered_cosine_similarity",
    "max_abs_error",
    "sqnr_db",
    "task_metrics",
    "positive_scores",
    "positive_targets",
    "youden_thresholds",
    "predicted_positive",
    "sensitivity_specificity",
    "per_class_metrics",
    "paired_bootstrap",
    "parity_metrics",
    "BOOTSTRAP_METRICS",
]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(logits, -60, 60)))


def probabilities(logits: np.ndarray, task: str) -> np.ndarray:
    """Class probabilities: sigmoid for multi-label, softmax otherwise; an embedding model's output as is."""
    logits = np.asarray(logits, dtype=np.float64)
    if task == "embedding":
        return logits
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


def centered_cosine_similarity(a: np.ndarray, b: np.ndarray, reference: np.ndarray) -> float:
    """:func:`cosine_similarity` of unit-normalised ``a`` and ``b`` after subtracting the mean unit vector of
    ``reference`` (e.g. the teacher's training embeddings) from both.

    Embeddings of a ReLU encoder share a large common direction, so their plain cosine is high even for a
    constant prediction; centring scores only how each input's direction departs from the common one (0 for a
    constant prediction, 1 for a perfect one). Normalising first keeps a change of norm from passing as one.
    """

    def unit(x):
        x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    c = unit(reference).mean(0, keepdims=True)
    return cosine_similarity(unit(a) - c, unit(b) - c)


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


# ----- operating points, per-class metrics and paired bootstrap -----------------------------------------


def positive_scores(logits: np.ndarray, task: str) -> np.ndarray:
    """``(N, P)`` scores of the "positive" columns an operating point applies to: the positive class of a
    binary task, every label of a multi-label task, every class (one-vs-rest) of a multi-class task."""
    probs = probabilities(logits, task)
    return probs[:, 1:2] if task == "binary" else probs


def positive_targets(labels: np.ndarray, task: str, num_classes: int) -> np.ndarray:
    """``(N, P)`` boolean targets matching :func:`positive_scores`."""
    labels = np.asarray(labels)
    if task == "binary":
        return (labels == 1)[:, None]
    if task == "multilabel":
        return labels > 0.5
    return labels[:, None] == np.arange(num_classes)[None, :]


def youden_thresholds(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per column, the score threshold maximising Youden's J (sensitivity + specificity - 1); the reference
    model's operating point. Columns without both classes get 0.5."""
    thresholds = np.full(scores.shape[1], 0.5)
    for k in range(scores.shape[1]):
        s, t = scores[:, k], targets[:, k]
        n_pos, n_neg = int(t.sum()), int((~t).sum())
        if n_pos == 0 or n_neg == 0:
            continue
        # Sort descending; predicted positive when score >= threshold, so the counts at each distinct score
        # are the cumulative counts up to the last case holding that score (O(N log N), no N x N matrix).
        order = np.argsort(-s, kind="mergesort")
        s_sorted, t_sorted = s[order], t[order]
        tp = np.cumsum(t_sorted)
        fp = np.cumsum(~t_sorted)
        last = np.flatnonzero(np.append(np.diff(s_sorted) != 0, True))
        cand = s_sorted[last]
        j = tp[last] / n_pos - fp[last] / n_neg
        thresholds[k] = float(cand[int(np.argmax(j))])
    return thresholds


def predicted_positive(logits: np.ndarray, task: str, thresholds: np.ndarray | None) -> np.ndarray:
    """``(N, P)`` decisions: for multi-class the argmax (the operating point of a multi-class classifier),
    otherwise scores at or above the reference's ``thresholds``."""
    if task == "multiclass":
        pred = np.asarray(logits).argmax(1)
        return pred[:, None] == np.arange(np.asarray(logits).shape[1])[None, :]
    return positive_scores(logits, task) >= np.asarray(thresholds)[None, :]


def sensitivity_specificity(decisions: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    """Macro-averaged sensitivity and specificity over the columns that have positives/negatives."""
    tp = (decisions & targets).sum(0)
    pos = targets.sum(0)
    tn = (~decisions & ~targets).sum(0)
    neg = (~targets).sum(0)
    sens = float(np.mean(tp[pos > 0] / pos[pos > 0])) if (pos > 0).any() else float("nan")
    spec = float(np.mean(tn[neg > 0] / neg[neg > 0])) if (neg > 0).any() else float("nan")
    return sens, spec


def per_class_metrics(logits: np.ndarray, labels: np.ndarray, task: str, label_names: list[str],
                      thresholds: np.ndarray | None = None) -> list[dict]:
    """Per class: support, sensitivity (recall), specificity and one-vs-rest AUC."""
    n_cls = np.asarray(logits).shape[1]
    scores = probabilities(logits, task)
    targets = positive_targets(labels, task, n_cls)
    decisions = predicted_positive(logits, task, thresholds)
    if task == "binary":
        # Report both classes: class 1 as scored, class 0 as its complement.
        targets = np.concatenate([~targets, targets], axis=1)
        decisions = np.concatenate([~decisions, decisions], axis=1)
    out = []
    for k in range(n_cls):
        t, d = targets[:, k], decisions[:, k]
        pos, neg = int(t.sum()), int((~t).sum())
        out.append({
            "label": label_names[k] if k < len(label_names) else str(k),
            "support": pos,
            "sensitivity": float((d & t).sum() / pos) if pos else None,
            "specificity": float((~d & ~t).sum() / neg) if neg else None,
            "auc": _none_if_nan(binary_auc(scores[:, k], t)),
        })
    return out


def _none_if_nan(v: float) -> float | None:
    return None if np.isnan(v) else float(v)


def _weighted_auc(scores: np.ndarray, targets: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC of one score column under many case-weight vectors at once.

    ``weights`` is ``(B, N)`` (bootstrap multiplicities); returns ``(B,)``. Cases are sorted once and tied
    scores grouped, so the result is the exact Mann-Whitney AUC (ties count half) of each resample, and
    with all weights 1 it equals :func:`binary_auc`.
    """
    if scores.size == 0:
        return np.full(weights.shape[0], np.nan)
    order = np.argsort(scores, kind="mergesort")
    s, t, w = scores[order], targets[order], weights[:, order].astype(np.float64)
    starts = np.concatenate(([0], np.flatnonzero(np.diff(s)) + 1))
    pos_g = np.add.reduceat(w * t[None, :], starts, axis=1)
    neg_g = np.add.reduceat(w * ~t[None, :], starts, axis=1)
    neg_below = np.cumsum(neg_g, axis=1) - neg_g
    u = (pos_g * (neg_below + 0.5 * neg_g)).sum(1)
    denom = pos_g.sum(1) * neg_g.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, u / np.where(denom > 0, denom, 1.0), np.nan)


def _weighted_metrics(logits: np.ndarray, labels: np.ndarray, task: str, thresholds: np.ndarray | None,
                      weights: np.ndarray) -> dict[str, np.ndarray]:
    """accuracy, macro AUC, sensitivity and specificity of one model under ``(B, N)`` case weights."""
    logits = np.asarray(logits)
    n_cls = logits.shape[1]
    total = weights.sum(1).astype(np.float64)
    if task == "multilabel":
        correct = ((logits > 0) == (np.asarray(labels) > 0.5)).mean(1)
    else:
        correct = (logits.argmax(1) == np.asarray(labels)).astype(np.float64)
    acc = (weights * correct[None, :]).sum(1) / total
    scores = positive_scores(logits, task)
    targets = positive_targets(labels, task, n_cls)
    aucs = np.stack([_weighted_auc(scores[:, k], targets[:, k], weights) for k in range(scores.shape[1])], 1)
    decisions = predicted_positive(logits, task, thresholds)
    wf = weights.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        pos = wf @ targets
        tp = wf @ (decisions & targets)
        neg = wf @ ~targets
        tn = wf @ (~decisions & ~targets)
        sens = np.where(pos > 0, tp / np.where(pos > 0, pos, 1), np.nan)
        spec = np.where(neg > 0, tn / np.where(neg > 0, neg, 1), np.nan)
    return {"accuracy": acc, "macro_auc": _nanmean_rows(aucs), "sensitivity": _nanmean_rows(sens),
            "specificity": _nanmean_rows(spec)}


def _nanmean_rows(a: np.ndarray) -> np.ndarray:
    valid = ~np.isnan(a)
    cnt = valid.sum(1)
    s = np.where(valid, a, 0.0).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, s / np.where(cnt > 0, cnt, 1), np.nan)


BOOTSTRAP_METRICS = ("accuracy", "macro_auc", "sensitivity", "specificity")


def paired_bootstrap(reference_logits: np.ndarray, test_logits: np.ndarray, labels: np.ndarray, task: str,
                     thresholds: np.ndarray | None = None, n_resamples: int = 1000, seed: int = 0,
                     confidence: float = 0.95, chunk: int = 200) -> dict[str, dict[str, float | None]]:
    """Task metrics of both models and the paired bootstrap CI of their difference (test - reference).

    Both models are scored on the SAME resampled cases (one multinomial weight vector per resample), so the
    CI reflects the models' disagreement, not the sampling of the test set; a model against itself gives
    exactly ``[0, 0]``. ``thresholds`` is the reference's operating point (see :func:`youden_thresholds`).

    Returns:
        ``{metric: {"reference", "test", "delta", "ci_low", "ci_high", "test_ci_low", "test_ci_high"}}`` for
        accuracy, macro AUC, sensitivity and specificity (None where a metric is undefined).
    """
    ref, test = np.asarray(reference_logits), np.asarray(test_logits)
    n = ref.shape[0]
    if test.shape != ref.shape:
        raise ValueError(f"logit shapes differ: reference {ref.shape}, test {test.shape}")
    ones = np.ones((1, n), dtype=np.int64)
    point_ref = _weighted_metrics(ref, labels, task, thresholds, ones)
    point_test = _weighted_metrics(test, labels, task, thresholds, ones)
    rng = np.random.default_rng(seed)
    diffs = {m: [] for m in BOOTSTRAP_METRICS}
    tests = {m: [] for m in BOOTSTRAP_METRICS}
    done = 0
    while done < n_resamples:
        b = min(chunk, n_resamples - done)
        # Multiplicities of each case in b resamples of size n: vectorised, bounded memory per chunk.
        weights = rng.multinomial(n, np.full(n, 1.0 / n), size=b)
        mr = _weighted_metrics(ref, labels, task, thresholds, weights)
        mt = mr if test is ref else _weighted_metrics(test, labels, task, thresholds, weights)
        for m in BOOTSTRAP_METRICS:
            diffs[m].append(mt[m] - mr[m])
            tests[m].append(mt[m])
        done += b
    alpha = (1.0 - confidence) / 2.0
    out = {}
    for m in BOOTSTRAP_METRICS:
        d = np.concatenate(diffs[m])
        t = np.concatenate(tests[m])
        pr, pt = float(point_ref[m][0]), float(point_test[m][0])
        out[m] = {
            "reference": _none_if_nan(pr),
            "test": _none_if_nan(pt),
            "delta": _none_if_nan(pt - pr),
            "ci_low": _quantile(d, alpha),
            "ci_high": _quantile(d, 1 - alpha),
            "test_ci_low": _quantile(t, alpha),
            "test_ci_high": _quantile(t, 1 - alpha),
        }
    return out


def _quantile(values: np.ndarray, q: float) -> float | None:
    v = values[~np.isnan(values)]
    return float(np.quantile(v, q)) if v.size else None


def parity_metrics(reference_logits: np.ndarray, test_logits: np.ndarray, task: str) -> dict[str, float]:
    """Output agreement of a test model with the reference: top-1 agreement, cosine, max-abs, SQNR (dB).

    Segmentation (``(N, K, H, W)`` class maps): top-1 agreement is the label maps' pixel agreement, and
    ``mean_dice`` the mean over classes of the Dice of the test model's label maps against the reference's over all
    the cases' pixels (:func:`medfm_compress.segmetrics.pooled_dice`: per case, a few-pixel speck that one model
    draws and the other does not would score that case 0)."""
    out = {
        "top1_agreement": top1_agreement(reference_logits, test_logits, task),
        "cosine": cosine_similarity(reference_logits, test_logits),
        "max_abs": max_abs_error(reference_logits, test_logits),
        "sqnr_db": sqnr_db(reference_logits, test_logits),
    }
    if task == "segmentation":
        from .segmetrics import pooled_dice

        ref, test = np.asarray(reference_logits), np.asarray(test_logits)
        out["mean_dice"] = pooled_dice(test.argmax(1), ref.argmax(1), ref.shape[1])
    return out
