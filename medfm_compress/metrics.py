"""The metric primitives every task builds on: ROC AUC (plain and under bootstrap case weights), operating points,
parity between two models' outputs (top-1 agreement, cosine, max-abs error, SQNR) and the paired bootstrap.

What a metric means for a task (which columns are "positive", how labels are read) lives with the task
(:mod:`medfm_compress.runtime.tasks`); Dice and HD95 live in :mod:`medfm_compress.segmetrics`. All functions take
numpy arrays and are pure: the metric of a model against itself is exact.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = [
    "softmax",
    "sigmoid",
    "binary_auc",
    "top1_agreement",
    "cosine_similarity",
    "centered_cosine_similarity",
    "max_abs_error",
    "sqnr_db",
    "youden_thresholds",
    "sensitivity_specificity",
    "weighted_auc",
    "nanmean_rows",
    "none_if_nan",
    "paired_bootstrap",
    "wilson_interval",
    "wilson_cases_needed",
]

Z95 = 1.959963984540054  # the two-sided 95% normal quantile


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(logits, -60, 60)))


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


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval (95% by default) of a proportion of ``k`` successes in ``n`` trials: what ``k/n``
    can show about the true rate. Unlike the normal approximation it stays inside [0, 1] and is honest at 0 and n."""
    if n <= 0:
        return 0.0, 1.0
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def wilson_cases_needed(threshold: float, z: float = Z95) -> int:
    """The fewest trials whose Wilson lower bound can reach ``threshold`` at all (every trial a success:
    ``n / (n + z^2) >= threshold``)."""
    if threshold <= 0:
        return 1
    if threshold >= 1:
        raise ValueError("no finite sample shows a rate of 1")
    return int(np.ceil(z * z * threshold / (1 - threshold) - 1e-9))


def top1_agreement(logits_a: np.ndarray, logits_b: np.ndarray) -> float:
    """Fraction of cases (or, for ``(N, K, *spatial)`` class maps, of pixels) where both models' argmax agrees."""
    a, b = np.asarray(logits_a), np.asarray(logits_b)
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


# ----- operating points, per-class metrics and paired bootstrap -----------------------------------------


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


def sensitivity_specificity(decisions: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    """Macro-averaged sensitivity and specificity over the columns that have positives/negatives."""
    tp = (decisions & targets).sum(0)
    pos = targets.sum(0)
    tn = (~decisions & ~targets).sum(0)
    neg = (~targets).sum(0)
    sens = float(np.mean(tp[pos > 0] / pos[pos > 0])) if (pos > 0).any() else float("nan")
    spec = float(np.mean(tn[neg > 0] / neg[neg > 0])) if (neg > 0).any() else float("nan")
    return sens, spec


def none_if_nan(v: float) -> float | None:
    return None if np.isnan(v) else float(v)


def weighted_auc(scores: np.ndarray, targets: np.ndarray, weights: np.ndarray) -> np.ndarray:
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


def nanmean_rows(a: np.ndarray) -> np.ndarray:
    valid = ~np.isnan(a)
    cnt = valid.sum(1)
    s = np.where(valid, a, 0.0).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, s / np.where(cnt > 0, cnt, 1), np.nan)


def paired_bootstrap(score: Callable[[np.ndarray], tuple[dict[str, np.ndarray], dict[str, np.ndarray]]],
                     n_cases: int, n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95,
                     chunk: int = 200) -> dict[str, dict[str, float | None]]:
    """Metrics of two models and the paired bootstrap CI of their difference (test - reference).

    ``score(weights)`` takes ``(B, n_cases)`` case multiplicities and returns the reference's and the test model's
    metrics, each ``{name: (B,) array}``. Both models are scored on the SAME resampled cases (one multinomial weight
    vector per resample), so the CI reflects the models' disagreement, not the sampling of the test set; a model
    against itself gives exactly ``[0, 0]``.

    Returns:
        ``{metric: {"reference", "test", "delta", "ci_low", "ci_high", "test_ci_low", "test_ci_high"}}`` (None
        where a metric is undefined).
    """
    point_ref, point_test = score(np.ones((1, n_cases), dtype=np.int64))
    names = list(point_ref)
    rng = np.random.default_rng(seed)
    diffs: dict[str, list] = {m: [] for m in names}
    tests: dict[str, list] = {m: [] for m in names}
    done = 0
    while done < n_resamples:
        b = min(chunk, n_resamples - done)
        # Multiplicities of each case in b resamples of size n: vectorised, bounded memory per chunk.
        weights = rng.multinomial(n_cases, np.full(n_cases, 1.0 / n_cases), size=b)
        mr, mt = score(weights)
        for m in names:
            diffs[m].append(mt[m] - mr[m])
            tests[m].append(mt[m])
        done += b
    alpha = (1.0 - confidence) / 2.0
    out = {}
    for m in names:
        d = np.concatenate(diffs[m])
        t = np.concatenate(tests[m])
        pr, pt = float(point_ref[m][0]), float(point_test[m][0])
        out[m] = {
            "reference": none_if_nan(pr),
            "test": none_if_nan(pt),
            "delta": none_if_nan(pt - pr),
            "ci_low": _quantile(d, alpha),
            "ci_high": _quantile(d, 1 - alpha),
            "test_ci_low": _quantile(t, alpha),
            "test_ci_high": _quantile(t, 1 - alpha),
        }
    return out


def _quantile(values: np.ndarray, q: float) -> float | None:
    v = values[~np.isnan(values)]
    return float(np.quantile(v, q)) if v.size else None
