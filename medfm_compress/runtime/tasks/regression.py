"""Regression: a continuous target per image (bone age, ejection fraction, a lesion's volume), ``(N, K)`` outputs in
the target's own units, one column per target (usually one). Scored by mean absolute error, RMSE and Pearson r;
two models are compared by the mean absolute difference of their outputs and their correlation."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ... import metrics as M
from .base import PredictWriter, Shown, Task, label_columns, number

__all__ = ["Regression"]

SCORES = ("mae", "rmse", "pearson_r")


class Regression(Task):
    name: ClassVar[str] = "regression"
    postprocess: ClassVar[str] = "identity"
    gate_metrics: ClassVar[tuple[str, ...]] = ("pearson_r",)
    headline_metric: ClassVar[str | None] = "mae"
    higher_is_better: ClassVar[bool] = False
    drop_gate: ClassVar[str | None] = "max_mae_increase"
    gate_scale: ClassVar[float] = 1.0
    drop_detail: ClassVar[str] = ("upper 95% CI bound of the mean absolute error's increase over the reference (in the "
                                  "target's units)")
    models_text: ClassVar[str] = "regression models"
    agreement_text: ClassVar[str] = "Pearson r of the outputs with the reference's"
    agreement_words: ClassVar[str] = "Pearson r"
    label_rank: ClassVar[int | None] = None  # (N,) one target, (N, K) several
    continuous: ClassVar[bool] = True
    shown: ClassVar[Shown] = Shown(headline="MAE", gain_key="mae", points_fmt="+.4g", labels="values", result="values")

    @staticmethod
    def _columns(a) -> np.ndarray:
        a = np.asarray(a, dtype=np.float64)
        return a.reshape(len(a), -1)

    def agreement(self, reference, test):
        """Regression outputs have no classes to agree on: two models are compared by their outputs' Pearson r."""
        return None

    def parity_metrics(self, reference, test):
        """Max-abs and SQNR of the outputs, their mean absolute difference (``mae``, in the target's units) and the
        mean over targets of their Pearson r."""
        ref, got = self._columns(reference), self._columns(test)
        return {"top1_agreement": None, "cosine": M.cosine_similarity(ref, got), "max_abs": M.max_abs_error(ref, got),
                "sqnr_db": M.sqnr_db(ref, got), "mae": float(np.abs(ref - got).mean()),
                "pearson_r": _pearson(ref, got)}

    def strata(self, labels):
        """Quintiles of the (first) target: a label fraction keeps the spread of values."""
        values = self._columns(labels)[:, 0]
        if len(values) < 5:
            return np.zeros(len(values), dtype=np.int64)
        edges = np.quantile(values, [0.2, 0.4, 0.6, 0.8])
        return np.searchsorted(edges, values, side="right").astype(np.int64)

    def scores(self, outputs, labels) -> dict[str, float]:
        """MAE, RMSE and Pearson r (mean over targets) of outputs against the true values."""
        out, y = self._columns(outputs), self._columns(labels)
        err = out - y
        return {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err ** 2).mean())),
                "pearson_r": _pearson(out, y)}

    def weighted_scores(self, outputs, labels, weights: np.ndarray) -> dict[str, np.ndarray]:
        """The scores under ``(B, N)`` case weights (``(B,)`` each): the paired bootstrap's resamples."""
        out, y = self._columns(outputs), self._columns(labels)
        w = weights.astype(np.float64)
        total = w.sum(1)
        abs_err = np.abs(out - y).mean(1)
        sq_err = ((out - y) ** 2).mean(1)
        mae = (w @ abs_err) / total
        rmse = np.sqrt((w @ sq_err) / total)
        rs = []
        for k in range(out.shape[1]):
            a, b = out[:, k], y[:, k]
            ma, mb = (w @ a) / total, (w @ b) / total
            cov = (w @ (a * b)) / total - ma * mb
            va = (w @ (a * a)) / total - ma ** 2
            vb = (w @ (b * b)) / total - mb ** 2
            with np.errstate(invalid="ignore", divide="ignore"):
                rs.append(np.where((va > 0) & (vb > 0), cov / np.sqrt(np.maximum(va * vb, 1e-300)), np.nan))
        return {"mae": mae, "rmse": rmse, "pearson_r": M.nanmean_rows(np.stack(rs, 1))}

    def evaluate(self, logits, labels, label_names, thresholds=None, spacing=None) -> dict[str, Any]:
        out, y = self._columns(logits), self._columns(labels)
        per = [{"label": label_names[k] if k < len(label_names) else f"value_{k}", **self.scores(out[:, k], y[:, k])}
               for k in range(out.shape[1])]
        return {"accuracy": None, "macro_auc": None, "sensitivity": None, "specificity": None,
                **self.scores(out, y), "per_class": per}

    def label_deltas(self, reference_logits, test_logits, labels, thresholds, n_resamples, seed) -> dict:
        ref, test = self._columns(reference_logits), self._columns(test_logits)

        def score(weights):
            mr = self.weighted_scores(ref, labels, weights)
            return mr, (mr if test is ref else self.weighted_scores(test, labels, weights))

        return M.paired_bootstrap(score, len(ref), n_resamples, seed)

    def report_columns(self, volumes):
        return [("MAE [95% CI]", "metric_ci", "mae", ".4g"), ("RMSE", "metric", "rmse", ".4g"),
                ("Pearson r", "metric", "pearson_r", ".4f"), ("ΔMAE vs ref [95% CI]", "delta", "mae", ""),
                ("MAE vs ref outputs", "parity", "mae", ".4g"), ("Pearson r vs ref", "parity", "pearson_r", ".5f"),
                ("max-abs", "parity", "max_abs", ".3g"), ("SQNR dB", "parity", "sqnr_db", ".1f")]

    def score_columns(self, metrics):
        return [("MAE", "mae", ".4g"), ("RMSE", "rmse", ".4g"), ("Pearson r", "pearson_r", ".4f")]

    def per_class_table(self, volumes):
        return "Per-target MAE / Pearson r", (("mae", ".4g"), ("pearson_r", ".3f"))

    def retention_words(self, retention):
        return f"{100 * retention:.1f}% of the teacher's MAE"

    def predict_writer(self, csv_file, json_file, out, labels) -> PredictWriter:
        return _ValueWriter(csv_file, json_file, out, labels)


class _ValueWriter(PredictWriter):
    """One column per target (its name), the model's output in the target's units."""

    def columns(self) -> list[str]:
        return label_columns(self.labels)

    def add_batch(self, names, logits, sizes) -> None:
        values = np.asarray(logits, dtype=np.float32).reshape(len(names), -1)
        for name, row in zip(names, values, strict=True):
            vals = [number(v) for v in row]
            self.row(name, vals)
            self.record({"file": name, "values": dict(zip(self.labels, vals, strict=True))})
        self.predicted += len(names)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over columns of the Pearson correlation (NaN where a column is constant)."""
    rs = []
    for k in range(a.shape[1]):
        x, y = a[:, k] - a[:, k].mean(), b[:, k] - b[:, k].mean()
        den = np.sqrt((x * x).sum() * (y * y).sum())
        rs.append(float((x * y).sum() / den) if den > 0 else float("nan"))
    valid = [r for r in rs if not np.isnan(r)]
    return float(np.mean(valid)) if valid else float("nan")
