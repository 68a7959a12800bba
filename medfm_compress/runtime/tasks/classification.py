"""Classification: one label per image (``multiclass``, ``binary``: softmax over K classes) or any number of labels
(``multilabel``: a sigmoid per label).

What differs between the three is which output columns count as "positive" for an operating point, how a label
array is read, and how a case's decision is made; everything else (accuracy, macro AUC, sensitivity/specificity at
the reference's operating point, per-class breakdown, paired bootstrap deltas, what ``predict`` writes) is shared.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ... import metrics as M
from .base import PredictWriter, Shown, Task, label_columns, number

__all__ = ["Classification", "MultiClass", "Binary", "MultiLabel", "BOOTSTRAP_METRICS"]

BOOTSTRAP_METRICS = ("accuracy", "macro_auc", "sensitivity", "specificity")


class Classification(Task):
    """Shared behaviour of the classification tasks: softmax outputs, one class per case (argmax)."""

    postprocess: ClassVar[str] = "softmax"
    headline_metric: ClassVar[str | None] = "macro_auc"
    shown: ClassVar[Shown] = Shown(headline="macro AUC", gain_key="auc")
    drop_gate: ClassVar[str | None] = "max_auc_drop"
    drop_detail: ClassVar[str] = "upper 95% CI bound of the macro AUC drop vs the reference (percentage points)"
    models_text: ClassVar[str] = "classifiers"
    label_dtype: ClassVar[str] = "int64"

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return M.softmax(np.asarray(logits, dtype=np.float64))

    def correct(self, logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Per case, the fraction of its decisions that match the labels (1 or 0 for one class per case)."""
        return (np.asarray(logits).argmax(1) == np.asarray(labels)).astype(np.float64)

    def class_targets(self, labels: np.ndarray, num_classes: int) -> np.ndarray:
        """``(N, K)`` boolean: case i has class k."""
        return np.asarray(labels)[:, None] == np.arange(num_classes)[None, :]

    def positive_scores(self, logits: np.ndarray) -> np.ndarray:
        """``(N, P)`` scores of the columns an operating point applies to (every class, one-vs-rest)."""
        return self.probabilities(logits)

    def positive_targets(self, labels: np.ndarray, num_classes: int) -> np.ndarray:
        """``(N, P)`` boolean targets matching :meth:`positive_scores`."""
        return self.class_targets(labels, num_classes)

    def decisions(self, logits: np.ndarray, thresholds: np.ndarray | None) -> np.ndarray:
        """``(N, P)`` decisions: scores at or above the reference's ``thresholds``."""
        return self.positive_scores(logits) >= np.asarray(thresholds)[None, :]

    # ----- metrics -----
    def accuracy(self, logits: np.ndarray, labels: np.ndarray) -> float:
        """Top-1 accuracy (multi-label: the mean per-label accuracy at 0.5)."""
        return float(self.correct(logits, labels).mean())

    def macro_auc(self, logits: np.ndarray, labels: np.ndarray) -> float:
        """Macro-averaged one-vs-rest AUC; classes absent from the labels are skipped."""
        probs = self.probabilities(logits)
        targets = self.class_targets(labels, probs.shape[1])
        aucs = [a for k in range(probs.shape[1]) if not np.isnan(a := M.binary_auc(probs[:, k], targets[:, k]))]
        return float(np.mean(aucs)) if aucs else float("nan")

    def task_metrics(self, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """Accuracy and macro AUC."""
        return {"accuracy": self.accuracy(logits, labels), "macro_auc": self.macro_auc(logits, labels)}

    def operating_point(self, reference_logits: np.ndarray, labels: np.ndarray) -> np.ndarray | None:
        """Youden-optimal thresholds of the reference (binary, multi-label); None: argmax (multi-class)."""
        n_cls = np.asarray(reference_logits).shape[1]
        return M.youden_thresholds(self.positive_scores(reference_logits), self.positive_targets(labels, n_cls))

    def per_class_columns(self, logits, labels, thresholds) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per class ``(scores, targets, decisions)``, one column per output class."""
        n_cls = np.asarray(logits).shape[1]
        return (self.probabilities(logits), self.positive_targets(labels, n_cls),
                self.decisions(logits, thresholds))

    def per_class_metrics(self, logits: np.ndarray, labels: np.ndarray, label_names: list[str],
                          thresholds: np.ndarray | None = None) -> list[dict]:
        """Per class: support, sensitivity (recall), specificity and one-vs-rest AUC."""
        scores, targets, decisions = self.per_class_columns(logits, labels, thresholds)
        out = []
        for k in range(np.asarray(logits).shape[1]):
            t, d = targets[:, k], decisions[:, k]
            pos, neg = int(t.sum()), int((~t).sum())
            out.append({
                "label": label_names[k] if k < len(label_names) else str(k),
                "support": pos,
                "sensitivity": float((d & t).sum() / pos) if pos else None,
                "specificity": float((~d & ~t).sum() / neg) if neg else None,
                "auc": M.none_if_nan(M.binary_auc(scores[:, k], t)),
            })
        return out

    def weighted_metrics(self, logits: np.ndarray, labels: np.ndarray, thresholds: np.ndarray | None,
                         weights: np.ndarray) -> dict[str, np.ndarray]:
        """Accuracy, macro AUC, sensitivity and specificity under ``(B, N)`` case weights (``(B,)`` each)."""
        logits = np.asarray(logits)
        n_cls = logits.shape[1]
        total = weights.sum(1).astype(np.float64)
        acc = (weights * self.correct(logits, labels)[None, :]).sum(1) / total
        scores = self.positive_scores(logits)
        targets = self.positive_targets(labels, n_cls)
        aucs = np.stack([M.weighted_auc(scores[:, k], targets[:, k], weights) for k in range(scores.shape[1])], 1)
        decisions = self.decisions(logits, thresholds)
        wf = weights.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            pos = wf @ targets
            tp = wf @ (decisions & targets)
            neg = wf @ ~targets
            tn = wf @ (~decisions & ~targets)
            sens = np.where(pos > 0, tp / np.where(pos > 0, pos, 1), np.nan)
            spec = np.where(neg > 0, tn / np.where(neg > 0, neg, 1), np.nan)
        return {"accuracy": acc, "macro_auc": M.nanmean_rows(aucs), "sensitivity": M.nanmean_rows(sens),
                "specificity": M.nanmean_rows(spec)}

    def paired_bootstrap(self, reference_logits: np.ndarray, test_logits: np.ndarray, labels: np.ndarray,
                         thresholds: np.ndarray | None = None, n_resamples: int = 1000, seed: int = 0,
                         confidence: float = 0.95) -> dict[str, dict[str, float | None]]:
        """Accuracy, macro AUC, sensitivity and specificity of both models at the reference's operating point, and
        the paired bootstrap CI of each difference (test - reference); see :func:`medfm_compress.metrics.paired_bootstrap`."""
        ref, test = np.asarray(reference_logits), np.asarray(test_logits)
        if test.shape != ref.shape:
            raise ValueError(f"logit shapes differ: reference {ref.shape}, test {test.shape}")

        def score(weights):
            mr = self.weighted_metrics(ref, labels, thresholds, weights)
            return mr, (mr if test is ref else self.weighted_metrics(test, labels, thresholds, weights))

        return M.paired_bootstrap(score, ref.shape[0], n_resamples, seed, confidence)

    def evaluate(self, logits, labels, label_names, thresholds=None, spacing=None) -> dict[str, Any]:
        n_cls = np.asarray(logits).shape[1]
        sens, spec = M.sensitivity_specificity(self.decisions(logits, thresholds),
                                               self.positive_targets(labels, n_cls))
        return {
            "accuracy": self.accuracy(logits, labels),
            "macro_auc": _finite_or_none(self.macro_auc(logits, labels)),
            "sensitivity": _finite_or_none(sens),
            "specificity": _finite_or_none(spec),
            "per_class": self.per_class_metrics(logits, labels, label_names, thresholds),
        }

    def label_deltas(self, reference_logits, test_logits, labels, thresholds, n_resamples, seed) -> dict:
        return self.paired_bootstrap(reference_logits, test_logits, labels, thresholds, n_resamples, seed)

    # ----- reports -----
    def report_columns(self, volumes):
        return [("accuracy", "metric", "accuracy", ".4f"), ("macro AUC [95% CI]", "metric_ci", "macro_auc", ".4f"),
                ("sensitivity", "metric", "sensitivity", ".4f"), ("ΔAUC vs ref [95% CI]", "delta", "macro_auc", ""),
                ("top-1 agreement", "parity", "top1_agreement", ".4f"), *super().report_columns(volumes)]

    def score_columns(self, metrics):
        return [("accuracy", "accuracy", ".4f"), ("macro AUC", "macro_auc", ".4f")]

    def per_class_table(self, volumes):
        return "Per-class sensitivity / AUC", (("sensitivity", ".3f"), ("auc", ".3f"))

    def retention_words(self, retention):
        """Over 100% is the student beating the teacher, not a share kept."""
        if retention > 1.0:
            return f"the student beats the teacher ({100 * (retention - 1):.2f}% higher macro AUC)"
        return f"the student keeps {100 * retention:.1f}% of the teacher's macro AUC"

    # ----- predict -----
    def case_result(self, logits, raw_hw):
        probs = self.probabilities(logits)
        return probs, probs.argmax(1)

    def choose(self, probs: np.ndarray, labels: list[str]) -> tuple[str, Any]:
        """One case's decision from its probabilities: ``(JSON key, value)``; the CSV shows it as text."""
        return "label", labels[int(np.argmax(probs))]

    def decision_column(self) -> str:
        return "label"

    def predict_writer(self, csv_file, json_file, out, labels) -> PredictWriter:
        return _ClassWriter(self, csv_file, json_file, out, labels)


class MultiClass(Classification):
    """One of K classes per case."""

    name: ClassVar[str] = "multiclass"
    agreement_per_case: ClassVar[bool] = True

    def decisions(self, logits, thresholds):
        """The argmax: the operating point of a multi-class classifier."""
        pred = np.asarray(logits).argmax(1)
        return pred[:, None] == np.arange(np.asarray(logits).shape[1])[None, :]

    def operating_point(self, reference_logits, labels):
        return None


class Binary(Classification):
    """Two classes, class 1 the positive one: one operating point on its probability."""

    name: ClassVar[str] = "binary"
    agreement_per_case: ClassVar[bool] = True

    def positive_scores(self, logits):
        return self.probabilities(logits)[:, 1:2]

    def positive_targets(self, labels, num_classes):
        return (np.asarray(labels) == 1)[:, None]

    def macro_auc(self, logits, labels):
        return M.binary_auc(self.probabilities(logits)[:, 1], np.asarray(labels) == 1)

    def per_class_columns(self, logits, labels, thresholds):
        # Both classes are reported: class 1 as scored, class 0 as its complement.
        scores, targets, decisions = super().per_class_columns(logits, labels, thresholds)
        return scores, np.concatenate([~targets, targets], 1), np.concatenate([~decisions, decisions], 1)


class MultiLabel(Classification):
    """Any number of K labels per case, each a sigmoid at 0.5 (labels: ``(N, K)`` 0/1)."""

    name: ClassVar[str] = "multilabel"
    postprocess: ClassVar[str] = "sigmoid"
    label_dtype: ClassVar[str] = "float32"
    label_rank: ClassVar[int | None] = 2

    def probabilities(self, logits):
        return M.sigmoid(np.asarray(logits, dtype=np.float64))

    def correct(self, logits, labels):
        return ((np.asarray(logits) > 0) == (np.asarray(labels) > 0.5)).mean(1)

    def class_targets(self, labels, num_classes):
        return np.asarray(labels) > 0.5

    def strata(self, labels):
        """A case's first label (its strata for a label fraction)."""
        return np.asarray(labels).argmax(1)

    def agreement(self, reference, test):
        """Fraction of cases where both models predict the same label set."""
        return float(((np.asarray(reference) > 0) == (np.asarray(test) > 0)).all(axis=1).mean())

    def choose(self, probs, labels):
        return "labels", [lab for lab, v in zip(labels, probs, strict=True) if v >= 0.5]

    def decision_column(self) -> str:
        return "labels"


class _ClassWriter(PredictWriter):
    """``file``, the decision (``label``; multi-label: ``labels``, ``|``-separated), one probability per label."""

    def __init__(self, task: Classification, *args):
        self.task = task
        super().__init__(*args)

    def columns(self) -> list[str]:
        return [self.task.decision_column(), *label_columns(self.labels)]

    def add_batch(self, names, logits, sizes) -> None:
        probs = self.task.probabilities(logits).astype(np.float32)
        for name, p in zip(names, probs, strict=True):
            values = [number(v) for v in p]
            key, chosen = self.task.choose(p, self.labels)
            self.row(name, ["|".join(chosen) if isinstance(chosen, list) else chosen, *values])
            self.record({"file": name, key: chosen, "probabilities": dict(zip(self.labels, values, strict=True))})
        self.predicted += len(names)


def _finite_or_none(v: float | None) -> float | None:
    return None if v is None or not np.isfinite(v) else float(v)
