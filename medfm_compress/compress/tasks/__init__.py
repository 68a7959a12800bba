"""Tasks as plug-ins of distillation: one object per task says what differs (see :mod:`.base`).

The built-in ones are registered here, explicitly; a new task is one module beside these and one line below.
"""

from .base import (
    THRESHOLDS,
    DistillRun,
    DistillTask,
    ResolvedTeacher,
    TrainedStudent,
    adaptable_task_names,
    distill_task,
    distill_task_names,
    register_distill_task,
    weak_teacher_warnings,
)
from .classification import ClassifierDistill
from .embedding import EmbeddingDistill
from .regression import ValueDistill
from .segmentation import SegmentationDistill

__all__ = ["DistillTask", "DistillRun", "ResolvedTeacher", "TrainedStudent", "THRESHOLDS", "distill_task",
           "distill_task_names", "adaptable_task_names", "register_distill_task",
           "weak_teacher_warnings"]

for _task in (ClassifierDistill("multiclass"), ClassifierDistill("binary"), ClassifierDistill("multilabel"),
              SegmentationDistill("segmentation"), EmbeddingDistill("embedding"), ValueDistill("regression")):
    register_distill_task(_task)
del _task
