"""Tasks as plug-ins: one object per task says what a model's outputs mean (see :mod:`.base`).

The built-in tasks are registered here, explicitly; a new task is one module beside these and one line below.
"""

from .base import (
    PredictWriter,
    Shown,
    Task,
    drop_gates,
    get_task,
    loss_upper_bound,
    models_where,
    register_task,
    task_names,
    tasks_where,
)
from .classification import Binary, MultiClass, MultiLabel
from .embedding import Embedding
from .regression import Regression
from .segmentation import Segmentation

__all__ = ["Task", "Shown", "PredictWriter", "get_task", "register_task", "task_names", "tasks_where", "models_where",
           "drop_gates", "loss_upper_bound"]

for _task in (MultiClass(), Binary(), MultiLabel(), Embedding(), Segmentation(), Regression()):
    register_task(_task)
del _task
