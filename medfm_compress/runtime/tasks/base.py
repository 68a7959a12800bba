"""The task interface and its registry: what a model's outputs mean, everywhere they are read.

A task is one object (one module per family: :mod:`.classification`, :mod:`.segmentation`, :mod:`.embedding`) that
every layer asks instead of testing a task's name: how outputs become probabilities, whether they are maps over the
input's spatial axes, how two models' outputs are compared (parity metrics and the one a gate judges), how they are
scored against labels, and what ``predict`` writes for them. A model's metadata names its task (``medfm.task``);
:func:`get_task` turns the name into the object.

Task modules import this module, never each other; the package's ``__init__`` registers the built-in ones.
"""

from __future__ import annotations

import contextlib
import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ... import metrics as M
from ..._registry import Registry
from ...errors import ConfigError, ModelError

__all__ = ["Task", "Shown", "PredictWriter", "register_task", "get_task", "task_names", "tasks_where", "models_where", "drop_gates",
           "loss_upper_bound",
           "FIXED_COLUMNS", "label_columns"]

_TASKS: Registry[Task] = Registry("task")

# Column names of predict's own fields; a label with one of these names gets a "prob_" prefix in the CSV.
FIXED_COLUMNS = ("file", "row", "label", "labels", "error")


@dataclass(frozen=True)
class Shown:
    """How reports and summaries show a task.

    Attributes:
        headline: the headline metric in words (``macro AUC``).
        gain_key: the suffix of a distill run's gain and retention figures (``distill_gain_auc``, ``auc_retention``).
        points: the scale a difference of the headline metric is shown at (100: in points), with ``points_fmt`` and
            ``points_unit``.
        labels: what the labels are called (``labels``, ``masks``).
        result: what ``predict`` makes of a case's outputs.
    """

    headline: str = ""
    gain_key: str = ""
    points: float = 1.0
    points_fmt: str = "+.4f"
    points_unit: str = ""
    labels: str = "labels"
    result: str = "probabilities"


class Task:
    """What one kind of model output means. Subclasses set the class attributes and override the methods that
    differ; one instance per task is registered with :func:`register_task`.

    Attributes:
        name: the task's name (``medfm.task`` in a model's metadata, ``task`` in reports).
        postprocess: how outputs become a result (``medfm.postprocess``, read by the C++ runtime).
        dense: outputs are class maps over the input's spatial axes, ``(N, K, *spatial)``; otherwise ``(N, K)``.
        has_labels: outputs are scored against labels named by the model's label names (an embedding: no).
        gate_metrics: the parity metrics (keys of :meth:`parity_metrics`) an output-agreement gate judges, the most
            telling first.
        agreement_words: what :meth:`agreement` is called in a gate's description.
        agreement_per_case: the top-1 agreement is a share of whole cases (a single-label classifier), so a gate
            judges it by its Wilson lower bound; pixels and labels are not independent cases.
        headline_metric: the task metric (a key of :meth:`evaluate`) a report leads with and a drop gate judges.
        higher_is_better: whether a higher headline metric is better (AUC, Dice) or worse (an error).
        drop_gate: bench's non-inferiority gate on that metric (a ``BenchConfig`` field), None where there is none:
            the upper 95% CI bound of the loss against the reference, times ``gate_scale`` (100: in points).
        drop_detail: what that gate's value is, in words.
        models_text: the models of this task, in words (``classifiers``).
        agreement_text: what :meth:`agreement` measures, in words.
        label_rank: the rank of a split's label array (None: checked by the data layer).
        continuous: labels are continuous values (a regression target), not class indices or 0/1 vectors.

        shown: how reports and summaries show the task (:class:`Shown`).
    """

    name: ClassVar[str] = ""
    postprocess: ClassVar[str] = "none"
    dense: ClassVar[bool] = False
    has_labels: ClassVar[bool] = True
    gate_metrics: ClassVar[tuple[str, ...]] = ("top1_agreement",)
    agreement_words: ClassVar[str] = "top-1 agreement"
    agreement_per_case: ClassVar[bool] = False
    headline_metric: ClassVar[str | None] = None
    higher_is_better: ClassVar[bool] = True
    drop_gate: ClassVar[str | None] = None
    gate_scale: ClassVar[float] = 100.0
    drop_detail: ClassVar[str] = ""
    models_text: ClassVar[str] = "models"
    agreement_text: ClassVar[str] = "top-1 agreement with the reference"
    label_rank: ClassVar[int | None] = 1
    continuous: ClassVar[bool] = False
    shown: ClassVar[Shown] = Shown()

    # ----- outputs -----
    def output_rank(self, spatial_dims: int) -> int:
        """The rank of a batch of outputs for an input with ``spatial_dims`` spatial axes."""
        return 2 + (spatial_dims if self.dense else 0)

    def output_shape_text(self) -> str:
        return "(N, K, *spatial)" if self.dense else "(N, K)"

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Class probabilities (float64) of raw outputs; the result a user reads."""
        return np.asarray(logits, dtype=np.float64)

    def strata(self, labels: np.ndarray) -> np.ndarray:
        """One stratum per case (an integer) for a stratified subset of image-level labels: the label itself."""
        return np.asarray(labels)

    def output_labels(self, label_names: list[str], width: int) -> list[str]:
        """The names of the output's ``width`` columns a result is reported under."""
        return list(label_names) or [f"class_{k}" for k in range(width)]

    # ----- parity between two models' outputs -----
    def agreement(self, reference: np.ndarray, test: np.ndarray) -> float | None:
        """Fraction of cases (or pixels) where both models decide the same."""
        return M.top1_agreement(reference, test)

    def parity_metrics(self, reference: np.ndarray, test: np.ndarray) -> dict[str, float | None]:
        """Output agreement of ``test`` with ``reference``: the task's agreement, cosine, max-abs, SQNR (dB)."""
        return {
            "top1_agreement": self.agreement(reference, test),
            "cosine": M.cosine_similarity(reference, test),
            "max_abs": M.max_abs_error(reference, test),
            "sqnr_db": M.sqnr_db(reference, test),
        }

    # ----- scores against labels -----
    def operating_point(self, reference_logits: np.ndarray, labels: np.ndarray) -> np.ndarray | None:
        """The reference model's decision thresholds that every compared model is scored at (None: argmax)."""
        return None

    def evaluate(self, logits: np.ndarray, labels: np.ndarray, label_names: list[str],
                 thresholds: np.ndarray | None = None, spacing=None) -> dict[str, Any]:
        """Task metrics of one model's outputs against ``labels``, with a per-class breakdown."""
        raise NotImplementedError

    def label_deltas(self, reference_logits: np.ndarray, test_logits: np.ndarray, labels: np.ndarray,
                     thresholds: np.ndarray | None, n_resamples: int, seed: int) -> dict[str, dict]:
        """Per task metric, the test model's score minus the reference's with a paired bootstrap 95% CI."""
        return {}

    # ----- how reports show it -----
    def report_columns(self, volumes: bool) -> list[tuple[str, str, str, str]]:
        """The accuracy-and-parity table's columns after artifact, backend and precision: ``(header, source, key,
        format)``, ``source`` one of ``metric`` (the artifact's score), ``metric_ci`` (with its 95% CI), ``delta``
        (its paired difference to the reference with CI) and ``parity`` (agreement with the reference's outputs)."""
        return [("cosine", "parity", "cosine", ".6f"), ("max-abs", "parity", "max_abs", ".3g"),
                ("SQNR dB", "parity", "sqnr_db", ".1f")]

    def score_columns(self, metrics: dict[str, Any]) -> list[tuple[str, str, str]]:
        """The training table's score columns (teacher, student, baseline on the test split): ``(header, key,
        format)``; ``metrics`` is the student's entry of ``metrics.json``."""
        return []

    def per_class_table(self, volumes: bool) -> tuple[str, tuple[tuple[str, str], ...]]:
        """The per-class table's title and the ``(key, format)`` of each cell's figures."""
        return "Per-class scores", ()

    def retention_words(self, retention: float) -> str:
        """A student's headline metric as a share of its teacher's, in words."""
        return f"{100 * retention:.1f}%"

    # ----- what predict writes -----
    def predict_writer(self, csv_file, json_file, out: Path, labels: list[str]) -> PredictWriter:
        """The writer of ``predict``'s per-case rows for this task (see :class:`PredictWriter`)."""
        raise NotImplementedError

    def case_result(self, logits: np.ndarray, raw_hw: tuple[int, ...]) -> Any:
        """What ``predict`` makes of one case's outputs (bench's end-to-end timing measures this path): here the
        outputs as float32, as written."""
        return np.asarray(self.probabilities(logits), dtype=np.float32)

    def __repr__(self) -> str:
        return f"<task {self.name}>"


class PredictWriter:
    """Writes ``predict``'s rows: the CSV's header and one row per case, and a JSON record per case.

    ``csv_file`` and ``json_file`` are open text files owned by the caller; subclasses say what a row holds and may
    write files of their own under ``out`` (:meth:`finish` commits them, :meth:`discard` drops them).
    """

    def __init__(self, csv_file, json_file, out: Path, labels: list[str]):
        self.labels, self.out = labels, out
        self._csv = csv.writer(csv_file)
        self._json = json_file
        self.rows = self.predicted = self.skipped = 0
        self._csv.writerow(["file", *self.columns(), "error"])

    def columns(self) -> list[str]:
        raise NotImplementedError

    def record(self, rec: dict[str, Any]) -> None:
        self._json.write(("\n    " if self.rows == 0 else ",\n    ") + json.dumps(rec, ensure_ascii=False))
        self.rows += 1

    def row(self, name: str, values: list, error: str = "") -> None:
        self._csv.writerow([name, *values, error])

    def add_bad(self, name: str, reason: str) -> None:
        self.skipped += 1
        self.row(name, [""] * len(self.columns()), reason)
        self.record({"file": name, "error": reason})

    def add_batch(self, names: list[str], logits: np.ndarray, sizes: list[tuple[int, ...]]) -> None:
        """One engine call's outputs for the cases ``names`` (raw image sizes ``sizes``)."""
        raise NotImplementedError

    def paths(self) -> dict[str, Path]:
        """The files beside the CSV and JSON this writer makes (``PredictResult`` field -> path)."""
        return {}

    def open(self, stack: contextlib.ExitStack, total: int, width: int) -> None:
        """Set up the writer's own files (called once, before the first row)."""

    def finish(self) -> None:
        """Commit the writer's own files (the run succeeded)."""


def label_columns(labels: list[str]) -> list[str]:
    """CSV column names for per-label values: a label's own name, unless it collides with a fixed column or an
    earlier one."""
    cols, seen = [], set(FIXED_COLUMNS)
    for name in labels:
        col = f"prob_{name}" if name in FIXED_COLUMNS else name
        while col in seen:
            col = f"{col}_"
        seen.add(col)
        cols.append(col)
    return cols


def number(p) -> float:
    """A float32 value as the shortest decimal that reads back as the same float32 (the CSV's and JSON's)."""
    return float(str(np.float32(p)))


def register_task(task: Task) -> Task:
    """Register one task object under its name; a second task of the same name is an error (a bug)."""
    return _TASKS.register(task.name, task)


def task_names() -> tuple[str, ...]:
    """The registered tasks' names, in registration order."""
    return _TASKS.names()


def get_task(name: str | Task, source: str | None = None) -> Task:
    """The task object of ``name`` (a task object is returned as is). An unknown name is a one-line error naming
    ``source`` (the model or data it came from) and the known tasks."""
    if isinstance(name, Task):
        return name
    task = _TASKS.get(str(name))
    if task is None:
        where = f"{source} names " if source else ""
        raise (ModelError if source else ConfigError)(
            f"{where}unknown task {name!r}; known tasks: {', '.join(_TASKS.names())}"
        )
    return task


def tasks_where(predicate: Callable[[Task], bool]) -> tuple[str, ...]:
    """Names of the registered tasks for which ``predicate`` holds (e.g. the tasks with labels)."""
    return tuple(t.name for t in _TASKS if predicate(t))


def models_where(predicate: Callable[[Task], bool]) -> str:
    """The models of the tasks for which ``predicate`` holds, in words (``classifiers and segmentation models``)."""
    return " and ".join(dict.fromkeys(t.models_text for t in _TASKS if predicate(t)))


def loss_upper_bound(task: Task, delta: dict[str, Any]) -> float | None:
    """The upper 95% CI bound of how much worse a model is than the reference on the task's headline metric, in the
    drop gate's scale, from the paired bootstrap of ``test - reference`` (None where the CI is undefined)."""
    bound = delta.get("ci_low") if task.higher_is_better else delta.get("ci_high")
    if bound is None or not np.isfinite(bound):
        return None
    return (-bound if task.higher_is_better else bound) * task.gate_scale


def drop_gates() -> tuple[str, ...]:
    """The drop gates of the registered tasks (bench's non-inferiority margins), each once."""
    return tuple(dict.fromkeys(t.drop_gate for t in _TASKS if t.drop_gate))
