"""Segmentation: a class map per image or volume, ``(N, K, *spatial)`` scores over K classes (0: background), read
as a label map by argmax over K. Two and three spatial dimensions alike: the dimensions are the data's and the
model's, not the task's.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ... import metrics as M
from ... import segmetrics as S
from ..predict_result import MASKS_DIR
from .base import PredictWriter, Shown, Task, label_columns

__all__ = ["Segmentation"]


class Segmentation(Task):
    name: ClassVar[str] = "segmentation"
    postprocess: ClassVar[str] = "softmax-argmax"
    dense: ClassVar[bool] = True
    gate_metrics: ClassVar[tuple[str, ...]] = ("mean_dice", "top1_agreement")
    agreement_words: ClassVar[str] = "pixel agreement"
    headline_metric: ClassVar[str | None] = "mean_dice"
    drop_gate: ClassVar[str | None] = "max_dice_drop"
    drop_detail: ClassVar[str] = ("upper 95% CI bound of the mean Dice drop vs the reference (Dice points, paired "
                                  "bootstrap over cases)")
    models_text: ClassVar[str] = "segmentation models"
    agreement_text: ClassVar[str] = "pixel agreement of the masks with the reference's"
    label_rank: ClassVar[int | None] = None
    shown: ClassVar[Shown] = Shown("mean Dice", "dice", 100.0, "+.2f", " points", "masks", "label map at the image's size")

    def report_columns(self, volumes):
        return [("mean Dice [95% CI]", "metric_ci", "mean_dice", ".4f"),
                ("pixel accuracy", "metric", "pixel_accuracy", ".4f"),
                (f"HD95 {'mm' if volumes else 'px'}", "metric", "hd95", ".2f"),
                ("ΔDice vs ref [95% CI]", "delta", "mean_dice", ""), ("Dice vs ref masks", "parity", "mean_dice", ".4f"),
                ("pixel agreement", "parity", "top1_agreement", ".4f"), ("cosine", "parity", "cosine", ".6f"),
                ("SQNR dB", "parity", "sqnr_db", ".1f")]

    def score_columns(self, metrics):
        unit = metrics.get("hd95_unit") or "px"
        return [("mean Dice", "mean_dice", ".4f"), (f"HD95 {unit}", "hd95", ".2f"),
                ("pixel accuracy", "pixel_accuracy", ".4f")]

    def per_class_table(self, volumes):
        return f"Per-class Dice / HD95 ({'mm' if volumes else 'pixels'})", (("dice", ".3f"), ("hd95", ".2f"))

    def retention_words(self, retention):
        return f"{100 * retention:.1f}% of the teacher's"

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return M.softmax(np.asarray(logits, dtype=np.float64))

    def parity_metrics(self, reference, test):
        """Pixel agreement of the label maps (as ``top1_agreement``), cosine, max-abs, SQNR, and ``mean_dice``: the
        mean over classes of the Dice of the test model's label maps against the reference's over all the cases'
        pixels (:func:`medfm_compress.segmetrics.pooled_dice`: per case, a few-pixel speck that one model draws and
        the other does not would score that case 0)."""
        out = super().parity_metrics(reference, test)
        ref, got = np.asarray(reference), np.asarray(test)
        out["mean_dice"] = S.pooled_dice(got.argmax(1), ref.argmax(1), ref.shape[1])
        return out

    def evaluate(self, logits, labels, label_names, thresholds=None, spacing=None) -> dict[str, Any]:
        """Mean Dice, Dice and HD95 per foreground class (in mm given the voxel ``spacing``, else in pixels), pixel
        accuracy. HD95 comes from MONAI (it needs torch); on an install without it the distances are left out."""
        pred = np.asarray(logits).argmax(1)
        per = S.dice_per_case(pred, labels, len(label_names))
        dice = S.class_dice(per)
        try:
            hd = S.hd95_per_case(pred, labels, len(label_names), spacing=spacing)
        except ImportError:
            hd = None
        hd_cls = [None] * len(dice) if hd is None else [
            _finite_or_none(np.nanmean(c)) if np.isfinite(c).any() else None for c in hd.T]
        return {
            "accuracy": None, "macro_auc": None, "sensitivity": None, "specificity": None,
            "mean_dice": _finite_or_none(S.mean_dice(per)),
            "pixel_accuracy": S.pixel_agreement(pred, labels),
            "hd95": None if hd is None or not np.isfinite(hd).any() else float(np.nanmean(hd)),
            **({"hd95_unit": "mm"} if spacing is not None else {}),
            "per_class": [{"label": name, "dice": _finite_or_none(d), "hd95": h}
                          for name, d, h in zip(label_names[1:], dice, hd_cls, strict=True)],
        }

    def label_deltas(self, reference_logits, test_logits, labels, thresholds, n_resamples, seed) -> dict:
        k = np.asarray(reference_logits).shape[1]
        ref_dice = S.dice_per_case(np.asarray(reference_logits).argmax(1), labels, k)
        test_dice = S.dice_per_case(np.asarray(test_logits).argmax(1), labels, k)
        return {"mean_dice": S.paired_dice_bootstrap(ref_dice, test_dice, n_resamples, seed)}

    def case_result(self, logits, raw_hw):
        """The label map, back at the image's own size (what ``predict`` writes)."""
        from ..images import resize_mask

        probs = self.probabilities(logits)
        return probs, resize_mask(probs.argmax(1)[0].astype(np.uint8), raw_hw)

    def predict_writer(self, csv_file, json_file, out, labels) -> PredictWriter:
        return _MaskWriter(csv_file, json_file, out, labels)


class _MaskWriter(PredictWriter):
    """One PNG label map per case under ``masks/`` (8-bit, pixel value = class index) at the input image's own size
    (the model's map resized with nearest-neighbour); the CSV has ``mask`` (its path under the output folder) and per
    class its area in pixels (``area_<label>``)."""

    def columns(self) -> list[str]:
        return ["mask", *(f"area_{c}" for c in label_columns(self.labels))]

    def open(self, stack, total, width) -> None:
        self.masks_path = self.out / MASKS_DIR
        # Masks go to a hidden folder beside the final one, which replaces an older one only on success.
        self._tmp = Path(tempfile.mkdtemp(prefix=".masks.tmp-", dir=self.out))
        stack.callback(shutil.rmtree, self._tmp, True)
        self._names: set[str] = set()

    def paths(self) -> dict[str, Path]:
        return {"masks_path": self.masks_path}

    def _mask_file(self, name: str) -> str:
        """A unique PNG name for a case's mask: its file stem (``_2``, ``_3``... when two cases share one)."""
        stem = Path(str(name).split("#")[0]).stem or "case"
        if "#" in str(name):  # a data spec's case: spec#index
            stem = f"{stem}_{str(name).rsplit('#', 1)[1]}"
        cand, k = f"{stem}.png", 1
        while cand in self._names:
            k += 1
            cand = f"{stem}_{k}.png"
        self._names.add(cand)
        return cand

    def add_batch(self, names, logits, sizes) -> None:
        from PIL import Image

        from ..images import resize_mask

        maps = np.asarray(logits).argmax(1).astype(np.uint8)
        for name, m, hw in zip(names, maps, sizes, strict=True):
            mask = resize_mask(m, hw)
            fname = self._mask_file(name)
            Image.fromarray(mask.astype(np.uint8), mode="L").save(self._tmp / fname, format="PNG")
            areas = [int(a) for a in np.bincount(mask.ravel(), minlength=len(self.labels))[: len(self.labels)]]
            rel = f"{MASKS_DIR}/{fname}"
            self.row(name, [rel, *areas])
            self.record({"file": name, "mask": rel, "areas": dict(zip(self.labels, areas, strict=True))})
        self.predicted += len(names)

    def finish(self) -> None:
        import os

        old = self.masks_path.with_name(f".{MASKS_DIR}.old-{os.getpid()}")
        if self.masks_path.exists():
            self.masks_path.rename(old)
        self._tmp.rename(self.masks_path)
        shutil.rmtree(old, ignore_errors=True)


def _finite_or_none(v) -> float | None:
    return None if v is None or not np.isfinite(v) else float(v)
