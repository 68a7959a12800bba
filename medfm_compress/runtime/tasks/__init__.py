"""Tasks as plug-ins: one object per task says what a model's outputs mean (see :mod:`.base`).

The built-in tasks are registered here, explicitly; a new task is one module beside these and one line below.
"""

from .base import (
    PredictWriter,
    Task,
    drop_gates,
    get_task,
    models_where,
    register_task,
    task_names,
    tasks_where,
)
from .classification import Binary, MultiClass, MultiLabel
from .embedding import Embedding
from .segmentation import Segmentation

__all__ = ["Task", "PredictWriter", "get_task", "register_task", "task_names", "tasks_where", "models_where",
           "drop_gates"]

for _task in (MultiClass(), Binary(), MultiLabel(), Embedding(), Segmentation()):
    register_task(_task)
del _task
