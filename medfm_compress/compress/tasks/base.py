"""What distillation needs to know of a task, as one object per task, and the run types the distiller and the task
modules share.

The distiller (:mod:`medfm_compress.compress.distill`) prepares a run, resolves the teacher, trains the student,
evaluates and writes, the same way for every task; a :class:`DistillTask` says what differs: the default teacher and
student, which networks suit the data, the loss against labels and against the teacher, how targets move under
augmentation, how the student is trained and scored, and which warnings its summary carries (thresholds from one
table, :data:`THRESHOLDS`). The runtime's task object (:mod:`medfm_compress.runtime.tasks`) says what outputs mean.

Task modules import this module, never each other; the package's ``__init__`` registers them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ...errors import ConfigError
from ...runtime.tasks import Task, get_task

__all__ = [
    "DistillTask",
    "DistillRun",
    "ResolvedTeacher",
    "TrainedStudent",
    "THRESHOLDS",
    "register_distill_task",
    "distill_task",
    "distill_task_names",
    "adaptable_task_names",
    "small_test_warning",
]

# The thresholds of the warnings a distill or adapt summary prints (and report.md repeats), in one place.
THRESHOLDS = {
    # A teacher whose validation macro AUC is below this is near chance: retention against it means little.
    "near_chance_auc": 0.6,
    # A classifier student agreeing with its teacher on fewer cases than this behaves unlike it.
    "min_agreement": 0.9,
    # A segmentation student agreeing with its teacher on fewer pixels than this draws other masks.
    "min_pixel_agreement": 0.95,
    # A test split below this many cases has wide CIs.
    "min_test_cases": 100,
    # A class shown by fewer test cases than this has a noisy score.
    "min_class_cases": 10,
}


@dataclass
class DistillRun:
    """What every step of a distillation run shares: device, ranks, output folder, log, and the data as tensors."""

    cfg: Any
    device: Any
    distributed: bool
    rank: int
    world: int
    out: Path
    log: Callable[[str], None]
    ckpt_dir: Path
    manifest: Any
    task: Any
    dtask: DistillTask
    train: Any
    val: Any
    test: Any
    student_pre: Any
    x_train: Any
    x_val: Any
    x_test: Any
    y_train: Any
    labeled: np.ndarray
    steps_per_epoch: int
    eval_task: Any = None  # held-out data from --eval-data (data without a test split of its own)

    def wrap(self, module):
        """``module`` on the run's device, wrapped in DDP when the run is distributed."""
        module.to(self.device)
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            return DDP(module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        return module


@dataclass
class ResolvedTeacher:
    """The teacher of a run: frozen model, card, where its weights came from, and its test metrics."""

    teacher: Any  # taskprep.FrozenTeacher
    arch: str
    preprocess: Any
    weights_path: Path | None
    test_metrics: dict[str, float]
    test_logits: np.ndarray | None


@dataclass
class TrainedStudent:
    model: Any
    arch: str
    losses: tuple[str, ...]
    embedding_dim: int
    history: dict[str, Any]
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # what the student was built with (its card keeps it)


class DistillTask:
    """How distillation treats one task. Subclasses override what differs; one instance per runtime task name.

    Attributes:
        runtime: the runtime task (what outputs mean: probabilities, parity, scores, what predict writes).
        teacher_tool: tag of how a default teacher is trained (part of its cache key).
        label_dtype: the torch dtype of a training batch's labels.
        label_free_embeddings: label-free distillation (``--labels none``) distills embeddings, so a teacher from a
            weight file keeps its own head and input channels (only its features are used).
        adaptable: ``adapt`` can fit a pretrained encoder to this task (a linear probe or fine-tuned head).
    """

    teacher_tool: ClassVar[str] = ""
    label_dtype: ClassVar[str] = "int64"
    label_free_embeddings: ClassVar[bool] = False
    adaptable: ClassVar[bool] = False

    def __init__(self, runtime: Task | str):
        self.runtime = get_task(runtime)

    @property
    def name(self) -> str:
        return self.runtime.name

    # ----- defaults -----
    def defaults(self, volumes: bool) -> dict[str, Any]:
        """Settings left unset (None) in a ``DistillConfig`` that depend on the task: epochs, learning rate,
        augmentation, batch size, KD temperature."""
        return {"epochs": 6, "lr": 3e-3, "augment": True}

    def default_teacher(self, volumes: bool) -> str:
        raise NotImplementedError

    def default_student(self, volumes: bool) -> str:
        raise NotImplementedError

    # ----- the run's data -----
    def check_config(self, cfg, data) -> None:
        """Refuse, in one line, settings that do not apply to this task's data (once it is read)."""
        for field_, flag in (("eval_data", "--eval-data"), ("widths", "--widths"), ("head_hidden", "--head-hidden")):
            if getattr(cfg, field_) is not None:
                raise ConfigError(f"{flag} applies to volume crops distilled from a foundation teacher (astra-ct); "
                                  f"{data.source} is a {data.task} task: it is scored on its own test split")

    def load_splits(self, cfg, data) -> tuple[Any, Any, Any, Any]:
        """``(train, val or None, test, eval data or None)`` of the run."""
        val = data.split("val") if "val" in data.splits and len(data.splits["val"]) else None
        return data.split("train"), val, data.split("test"), None

    def student_preprocess(self, cfg, data, train):
        """The student's preprocessing, from the training images (mean/std, size, window, voxel spacing)."""
        from ..taskprep import data_preprocess

        return data_preprocess(data, train.images)

    def student_kwargs(self, cfg, resolved: ResolvedTeacher) -> dict[str, Any]:
        """Keyword arguments the student's factory is called with (recorded in its card)."""
        return {}

    # ----- checks -----
    def check_model_kind(self, role: str, spec: str, kind: str, data, volumes: bool) -> None:
        """Refuse, in one line, a network of a ``kind`` (``timm``, ``smp``, ``monai``...) unfit for the data."""

    def check_network(self, model, x, num_classes: int, what: str) -> None:
        """Refuse, in one line, a built network whose output on ``x`` this task cannot use."""

    def check_teacher_card(self, card, data) -> None:
        """Refuse a teacher card whose outputs do not match the data's labels."""

    # ----- losses and targets -----
    def hard_loss(self, logits, labels):
        """The loss against labels (a teacher trained from scratch, the baseline, the ``ce`` term)."""
        raise NotImplementedError

    def kd_loss(self, student_logits, teacher_logits, temperature: float):
        """The loss against the teacher's outputs (the ``kd`` term)."""
        raise NotImplementedError

    def augment_targets(self, labels, index: np.ndarray, seed: int, epoch: int):
        """A batch's labels after the augmentation its images got (image-level labels: unchanged)."""
        return labels

    # ----- training and scoring -----
    def teacher_metrics(self, run: DistillRun, teacher, teacher_pre) -> tuple[dict[str, float], np.ndarray | None]:
        """The teacher's test metrics and outputs, where the task scores them before training (else ``({}, None)``)."""
        return {}, None

    def train_student(self, run: DistillRun, resolved: ResolvedTeacher, student, arch: str) -> TrainedStudent:
        raise NotImplementedError

    def run_metrics(self, run: DistillRun, resolved: ResolvedTeacher, student: TrainedStudent, baseline,
                    seconds: float) -> dict[str, Any]:
        """``metrics.json`` of a run: student, teacher and baseline on the test split, agreement, sizes, warnings."""
        raise NotImplementedError

    def warnings(self, metrics: dict[str, Any], data, test) -> list[str]:
        """What a reader of the run's summary must not miss."""
        return small_test_warning(test)

    def summary(self, metrics: dict[str, Any]) -> str:
        """The run's summary as ``distill`` prints it."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<distill task {self.name}>"


def small_test_warning(test) -> list[str]:
    n = len(test)
    lim = THRESHOLDS["min_test_cases"]
    return [f"the test split has {n} cases (< {lim}): its CIs are wide"] if n < lim else []


_DISTILL_TASKS: dict[str, DistillTask] = {}


def register_distill_task(task: DistillTask) -> DistillTask:
    """Register how distillation treats one runtime task; a second registration of a name is an error (a bug)."""
    if task.name in _DISTILL_TASKS:
        raise ValueError(f"distill task {task.name!r} is already registered")
    _DISTILL_TASKS[task.name] = task
    return task


def distill_task_names() -> tuple[str, ...]:
    """The tasks distillation handles."""
    return tuple(_DISTILL_TASKS)


def adaptable_task_names() -> tuple[str, ...]:
    """The tasks ``adapt`` fits a pretrained encoder to."""
    return tuple(n for n, t in _DISTILL_TASKS.items() if t.adaptable)


def distill_task(task) -> DistillTask:
    """The distill task of a runtime task (its name, a task object, or data naming it: ``TaskData``). A task that
    distillation does not handle is a one-line error."""
    name = getattr(task, "task", None) or getattr(task, "name", None) or str(task)
    found = _DISTILL_TASKS.get(name)
    if found is None:
        raise ConfigError(f"distillation does not handle {name} tasks; it handles {', '.join(_DISTILL_TASKS)}")
    return found
