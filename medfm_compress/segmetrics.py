"""Segmentation metrics on integer label maps: Dice per case and class, mean Dice, and the paired bootstrap of a
mean-Dice difference over cases (NumPy only: the edge install scores masks without torch).

Conventions (those of nnU-Net's evaluation and MONAI's ``DiceMetric(ignore_empty=True)`` for the first one):

- Dice is computed per case and foreground class (class 0, the background, is not scored).
- A class absent from both the reference and the prediction of a case is not scored for that case (NaN), so a
  case without a lesion neither helps nor hurts the lesion's Dice; a class predicted where the reference has none
  scores 0 (a false positive costs).
- A class's Dice is the mean over the cases that score it; the mean Dice is the mean over classes.
- :func:`pooled_dice` compares two models' masks instead (the parity of a quantized model with its fp32 self): each
  class's Dice over all pixels of all cases, so that a one-pixel speck one model draws and the other does not costs a
  pixel, not a whole case's score.

The 95th-percentile Hausdorff distance comes from MONAI (:func:`hd95_per_case`, lazily imported: it needs torch).
"""

from __future__ import annotations

import numpy as np

__all__ = ["dice_per_case", "class_dice", "mean_dice", "pooled_dice", "dice_summary", "paired_dice_bootstrap",
           "hd95_per_case", "pixel_agreement"]


def dice_per_case(pred: np.ndarray, ref: np.ndarray, num_classes: int) -> np.ndarray:
    """``(N, num_classes - 1)`` Dice of each case and foreground class (NaN where both masks lack the class)."""
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"predicted masks {pred.shape} and reference masks {ref.shape} differ in shape")
    n = len(pred)
    p, r = pred.reshape(n, -1), ref.reshape(n, -1)
    out = np.full((n, max(num_classes - 1, 0)), np.nan)
    for k in range(1, num_classes):
        pk, rk = p == k, r == k
        inter = np.count_nonzero(pk & rk, axis=1)
        total = np.count_nonzero(pk, axis=1) + np.count_nonzero(rk, axis=1)
        scored = total > 0
        out[scored, k - 1] = 2.0 * inter[scored] / total[scored]
    return out


def class_dice(per_case: np.ndarray) -> np.ndarray:
    """Each foreground class's Dice: the mean over the cases that score it (NaN if none does)."""
    per_case = np.asarray(per_case, dtype=np.float64)
    scored = ~np.isnan(per_case)
    counts = scored.sum(axis=0)
    sums = np.where(scored, per_case, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def mean_dice(per_case: np.ndarray) -> float:
    """The mean over classes of :func:`class_dice` (classes no case scores are left out)."""
    c = class_dice(per_case)
    return float(np.nanmean(c)) if np.isfinite(c).any() else float("nan")


def pooled_dice(pred: np.ndarray, ref: np.ndarray, num_classes: int) -> float:
    """Mean over foreground classes of each class's Dice over all pixels of all cases (classes in neither set of masks
    are left out; 1.0 when no class is in either)."""
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"predicted masks {pred.shape} and reference masks {ref.shape} differ in shape")
    scores = []
    for k in range(1, num_classes):
        pk, rk = pred == k, ref == k
        total = np.count_nonzero(pk) + np.count_nonzero(rk)
        if total:
            scores.append(2.0 * np.count_nonzero(pk & rk) / total)
    return float(np.mean(scores)) if scores else 1.0


def pooled_dice_interval(pred: np.ndarray, ref: np.ndarray, num_classes: int, n_boot: int = 1000,
                         seed: int = 0) -> tuple[float, float]:
    """The 95% percentile-bootstrap interval of :func:`pooled_dice` over cases (cases resampled with replacement;
    each class's counts pooled over the resample)."""
    pred, ref = np.asarray(pred), np.asarray(ref)
    n = len(ref)
    axes = tuple(range(1, ref.ndim))
    inter = np.stack([np.count_nonzero((pred == k) & (ref == k), axis=axes) for k in range(1, num_classes)], 1)
    total = np.stack([np.count_nonzero(pred == k, axis=axes) + np.count_nonzero(ref == k, axis=axes)
                      for k in range(1, num_classes)], 1)
    rng = np.random.default_rng(seed)
    scores = np.empty(n_boot)
    for b in range(n_boot):
        idx = rng.integers(0, n, n)
        i, t = inter[idx].sum(0), total[idx].sum(0)
        shown = t > 0
        scores[b] = float(np.mean(2.0 * i[shown] / t[shown])) if shown.any() else 1.0
    return float(np.quantile(scores, 0.025)), float(np.quantile(scores, 0.975))


def pixel_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of pixels on which two sets of label maps agree."""
    return float(np.mean(np.asarray(a) == np.asarray(b)))


def dice_summary(pred: np.ndarray, ref: np.ndarray, label_names: list[str]) -> dict:
    """Mean Dice, Dice per foreground class (by name) and pixel accuracy of ``pred`` against ``ref``."""
    per = dice_per_case(pred, ref, len(label_names))
    cls = class_dice(per)
    return {
        "mean_dice": mean_dice(per),
        "dice": {name: (None if np.isnan(v) else float(v)) for name, v in zip(label_names[1:], cls, strict=True)},
        "pixel_accuracy": pixel_agreement(pred, ref),
    }


def paired_dice_bootstrap(reference: np.ndarray, test: np.ndarray, n_resamples: int = 1000, seed: int = 0,
                          alpha: float = 0.05) -> dict:
    """Mean Dice of ``test`` minus that of ``reference`` (per-case Dice arrays of the same cases, from
    :func:`dice_per_case`) with a paired bootstrap percentile CI: cases are resampled, both models keep their pair.
    Also each model's mean Dice and the test model's own CI from the same resamples.
    """
    reference, test = np.asarray(reference, dtype=np.float64), np.asarray(test, dtype=np.float64)
    if reference.shape != test.shape:
        raise ValueError(f"per-case Dice arrays differ in shape: {reference.shape} vs {test.shape}")
    n = len(reference)
    delta = mean_dice(test) - mean_dice(reference)
    rng = np.random.default_rng(seed)
    draws = np.empty(n_resamples)
    test_draws = np.empty(n_resamples)
    for i in range(n_resamples):
        idx = rng.integers(0, n, n)
        test_draws[i] = mean_dice(test[idx])
        draws[i] = test_draws[i] - mean_dice(reference[idx])

    def ci(values):
        values = values[np.isfinite(values)]
        return (np.quantile(values, [alpha / 2, 1 - alpha / 2]) if len(values) else (np.nan, np.nan))

    lo, hi = ci(draws)
    t_lo, t_hi = ci(test_draws)
    return {"delta": float(delta), "ci_low": float(lo), "ci_high": float(hi), "reference": mean_dice(reference),
            "test": mean_dice(test), "test_ci_low": float(t_lo), "test_ci_high": float(t_hi), "n": int(n),
            "n_resamples": int(n_resamples)}


def hd95_per_case(pred: np.ndarray, ref: np.ndarray, num_classes: int, spacing=None) -> np.ndarray:
    """``(N, num_classes - 1)`` 95th-percentile Hausdorff distance in pixels, or in mm given the voxel ``spacing``
    (one size per spatial axis), (NaN where the reference or the
    prediction lacks the class), with MONAI's steps: the masks' edges by binary erosion and the symmetric Euclidean
    edge-to-edge distances (``monai.metrics.utils.get_edge_surface_distance``), the larger of the two directions'
    95th percentiles, as ``compute_hausdorff_distance(percentile=95)``.

    Only the (case, class) pairs both masks contain are computed, and the edges of the whole image are taken at once
    (the ``mask`` argument) instead of MONAI's foreground crop: the same distances (erosion pads with background at
    the border as the crop's margin does; the distance transform is exact), without the crop transform's
    per-pair cost, which made this ~8x slower on 64x64 cases (``tests/test_segmetrics.py`` checks it against
    ``compute_hausdorff_distance``)."""
    import warnings

    import torch
    from monai.metrics.utils import get_edge_surface_distance

    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"predicted masks {pred.shape} and reference masks {ref.shape} differ in shape")
    n = len(pred)
    out = np.full((n, max(num_classes - 1, 0)), np.nan)
    whole = torch.ones(pred.shape[1:], dtype=torch.bool)
    with warnings.catch_warnings():  # MONAI 1.5-1.6 passes its own deprecated argument to get_mask_edges
        warnings.simplefilter("ignore", FutureWarning)
        for k in range(1, num_classes):
            pk, rk = pred == k, ref == k
            both = pk.reshape(n, -1).any(axis=1) & rk.reshape(n, -1).any(axis=1)
            for i in np.flatnonzero(both):
                _, distances, _ = get_edge_surface_distance(torch.from_numpy(pk[i]), torch.from_numpy(rk[i]),
                                                            symmetric=True, mask=whole, warn_empty=False,
                                                            spacing=spacing)
                out[i, k - 1] = max(float(torch.quantile(d.double(), 0.95)) for d in distances)
    return out
