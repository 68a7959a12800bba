"""Accuracy parity: each artifact against the reference on real held-out data.

Logits are computed batch by batch from the raw split (each artifact preprocesses with its own metadata), so a
large test set never exists as a full preprocessed copy. Every number comes from :mod:`medfm_compress.metrics`.
"""

from __future__ import annotations

import numpy as np

from .. import metrics as M
from ..data.lazy import iter_batches
from ..errors import DataError

__all__ = ["predict_logits", "predict_volume_logits", "check_data_matches", "evaluate", "parity"]


def check_data_matches(name: str, engine, task: str, num_classes: int, channels: int) -> None:
    """One-line error when the data cannot feed this artifact or its outputs cannot be scored on the labels."""
    meta = engine.meta
    want = meta.preprocess.channels
    if channels != want and not (channels == 1 and want == 3):
        raise DataError(f"artifact '{name}' expects {want}-channel images but the data has {channels} channels; "
                        "use data matching the model's input spec")
    if meta.task != task:
        raise DataError(f"artifact '{name}' is a {meta.task} model but the data is a {task} task")
    if len(meta.label_names) != num_classes:
        raise DataError(f"artifact '{name}' predicts {len(meta.label_names)} classes but the data has {num_classes} "
                        "labels; use the data the model was trained for")


def predict_logits(engine, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Logits for raw ``images``, preprocessed and run one batch at a time.

    Batches respect the artifact's accepted batch range (a static batch, a TensorRT profile): a last batch
    below the minimum is padded by repeating its final image and the padding's outputs are dropped.
    """
    lo, hi = engine.batch_range
    bs = max(lo, min(batch_size, hi or batch_size))
    out = []
    for batch in iter_batches(images, bs):
        x = engine.preprocess(batch)
        n = x.shape[0]
        if n < lo:
            x = np.concatenate([x, np.repeat(x[-1:], lo - n, axis=0)])
        out.append(np.asarray(engine.run(x), dtype=np.float32)[:n])
    return np.concatenate(out)


def predict_volume_logits(engine, volumes: np.ndarray, shapes, sw_batch_size: int = 4, overlap: float = 0.25,
                          progress=None) -> np.ndarray:
    """Class maps ``(N, K, X, Y, Z)`` of whole raw volumes by sliding windows (each case cropped to its true size
    from ``shapes``, segmented, and put back on the padded grid, whose padding is background), the way predict
    segments a volume."""
    from ..runtime.sliding_window import volume_logits

    out = None
    for i, shape in enumerate(shapes):
        case = np.asarray(volumes[i])[tuple(slice(0, n) for n in shape)]
        logits = volume_logits(engine, case, overlap=overlap, sw_batch_size=sw_batch_size)
        if out is None:
            out = np.zeros((len(shapes), logits.shape[0], *np.asarray(volumes[0]).shape), np.float32)
            out[:, 0] = 1e4  # padding: background
        out[(i, slice(None), *(slice(0, n) for n in shape))] = logits
        if progress is not None:
            progress(i + 1, len(shapes))
    return out


def evaluate(logits: np.ndarray, labels: np.ndarray, task: str, label_names: list[str],
             thresholds: np.ndarray | None, spacing=None) -> dict:
    """Task metrics of one model at the reference's operating point, with the per-class breakdown.

    An embedding model has no labels to score: its metrics are empty and its parity (cosine) says everything.
    """
    if task == "embedding":
        return {"accuracy": None, "macro_auc": None, "sensitivity": None, "specificity": None, "per_class": []}
    if task == "segmentation":
        return _evaluate_masks(logits.argmax(1), labels, label_names, spacing)
    n_cls = logits.shape[1]
    decisions = M.predicted_positive(logits, task, thresholds)
    sens, spec = M.sensitivity_specificity(decisions, M.positive_targets(labels, task, n_cls))
    return {
        "accuracy": M.accuracy(logits, labels, task),
        "macro_auc": _finite_or_none(M.macro_auc(logits, labels, task)),
        "sensitivity": _finite_or_none(sens),
        "specificity": _finite_or_none(spec),
        "per_class": M.per_class_metrics(logits, labels, task, label_names, thresholds),
    }


def _evaluate_masks(pred: np.ndarray, ref: np.ndarray, label_names: list[str], spacing=None) -> dict:
    """Segmentation scores of predicted label maps: mean Dice, Dice and HD95 per foreground class (in mm given the
    voxel ``spacing``, else in pixels), pixel accuracy.

    HD95 comes from MONAI (it needs torch); on an install without it the distances are left out (None).
    """
    from .. import segmetrics as S

    per = S.dice_per_case(pred, ref, len(label_names))
    dice = S.class_dice(per)
    try:
        hd = S.hd95_per_case(pred, ref, len(label_names), spacing=spacing)
    except ImportError:
        hd = None
    hd_cls = [None] * len(dice) if hd is None else [
        _finite_or_none(np.nanmean(c)) if np.isfinite(c).any() else None for c in hd.T]
    return {
        "accuracy": None, "macro_auc": None, "sensitivity": None, "specificity": None,
        "mean_dice": _finite_or_none(S.mean_dice(per)),
        "pixel_accuracy": S.pixel_agreement(pred, ref),
        "hd95": None if hd is None or not np.isfinite(hd).any() else float(np.nanmean(hd)),
        **({"hd95_unit": "mm"} if spacing is not None else {}),
        "per_class": [{"label": name, "dice": _finite_or_none(d), "hd95": h}
                      for name, d, h in zip(label_names[1:], dice, hd_cls, strict=True)],
    }


def reference_thresholds(reference_logits: np.ndarray, labels: np.ndarray, task: str) -> np.ndarray | None:
    """The reference's operating point: Youden-optimal thresholds (binary, multi-label); argmax (multi-class and
    each pixel of a segmentation)."""
    if task in ("multiclass", "embedding", "segmentation"):
        return None
    n_cls = reference_logits.shape[1]
    return M.youden_thresholds(M.positive_scores(reference_logits, task), M.positive_targets(labels, task, n_cls))


def parity(reference_logits: np.ndarray, test_logits: np.ndarray, labels: np.ndarray, task: str,
           thresholds: np.ndarray | None, n_resamples: int = 1000, seed: int = 0) -> dict:
    """Output agreement and paired-bootstrap deltas of a test model against the reference."""
    if len(reference_logits) == 0:
        raise DataError("no held-out cases to compare on; the test split is empty")
    out = M.parity_metrics(reference_logits, test_logits, task)
    if task == "segmentation":
        from ..segmetrics import dice_per_case, paired_dice_bootstrap

        k = reference_logits.shape[1]
        ref_dice = dice_per_case(reference_logits.argmax(1), labels, k)
        test_dice = dice_per_case(test_logits.argmax(1), labels, k)
        out["deltas"] = {"mean_dice": paired_dice_bootstrap(ref_dice, test_dice, n_resamples, seed)}
        out.update(n_resamples=n_resamples, seed=seed)
        return out
    if task == "embedding":
        # Embeddings have no classes: agreement is their cosine with the reference, no label deltas.
        out["top1_agreement"] = None
        out.update(deltas={}, n_resamples=0, seed=seed)
        return out
    out["deltas"] = M.paired_bootstrap(reference_logits, test_logits, labels, task, thresholds,
                                       n_resamples=n_resamples, seed=seed)
    out["n_resamples"] = n_resamples
    out["seed"] = seed
    return out


def _finite_or_none(v: float) -> float | None:
    return None if v is None or not np.isfinite(v) else float(v)
