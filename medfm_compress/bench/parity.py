"""Accuracy parity: each artifact against the reference on real held-out data.

Logits are computed batch by batch from the raw split (each artifact preprocesses with its own metadata), so a
large test set never exists as a full preprocessed copy. Every number comes from :mod:`medfm_compress.metrics`.
"""

from __future__ import annotations

import numpy as np

from ..data.lazy import iter_batches
from ..errors import DataError
from ..runtime.tasks import get_task

__all__ = ["predict_logits", "predict_whole_logits", "check_data_matches", "evaluate", "parity"]


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


def predict_whole_logits(engine, cases: np.ndarray, shapes, sw_batch_size: int = 4, overlap: float = 0.25,
                         progress=None) -> np.ndarray:
    """Class maps ``(N, K, *spatial)`` of whole raw cases (volumes; images for a 2-D model trained on patches) by
    sliding windows (each case cropped to its true size from ``shapes``, segmented, and put back on the padded grid,
    whose padding is background), the way predict segments a case."""
    from ..runtime.sliding_window import whole_logits

    out = None
    for i, shape in enumerate(shapes):
        case = np.asarray(cases[i])[tuple(slice(0, n) for n in shape)]
        logits = whole_logits(engine, case, overlap=overlap, sw_batch_size=sw_batch_size)
        if out is None:
            out = np.zeros((len(shapes), logits.shape[0], *np.asarray(cases[0]).shape[:len(shape)]), np.float32)
            out[:, 0] = 1e4  # padding: background
        out[(i, slice(None), *(slice(0, n) for n in shape))] = logits
        if progress is not None:
            progress(i + 1, len(shapes))
    return out


def evaluate(logits: np.ndarray, labels: np.ndarray, task: str, label_names: list[str],
             thresholds: np.ndarray | None, spacing=None) -> dict:
    """Task metrics of one model at the reference's operating point, with the per-class breakdown (the task's
    :meth:`~medfm_compress.runtime.tasks.Task.evaluate`)."""
    return get_task(task).evaluate(logits, labels, label_names, thresholds, spacing=spacing)


def reference_thresholds(reference_logits: np.ndarray, labels: np.ndarray, task: str) -> np.ndarray | None:
    """The reference's operating point (Youden-optimal thresholds for binary and multi-label; None: argmax)."""
    return get_task(task).operating_point(reference_logits, labels)


def parity(reference_logits: np.ndarray, test_logits: np.ndarray, labels: np.ndarray, task: str,
           thresholds: np.ndarray | None, n_resamples: int = 1000, seed: int = 0) -> dict:
    """Output agreement and paired-bootstrap deltas of a test model against the reference."""
    if len(reference_logits) == 0:
        raise DataError("no held-out cases to compare on; the test split is empty")
    t = get_task(task)
    out = t.parity_metrics(reference_logits, test_logits)
    out["deltas"] = t.label_deltas(reference_logits, test_logits, labels, thresholds, n_resamples, seed)
    out.update(n_resamples=n_resamples if out["deltas"] else 0, seed=seed)
    return out
