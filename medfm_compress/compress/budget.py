"""Training budgets in optimizer steps, and keeping a model's best state by its validation score.

A budget is asked for in epochs (``--epochs``) or in optimizer steps (``--steps``); left unset, a task's default
gives any data set at least the steps its default epochs give the embedded default of that task, so a folder of
72 images is not trained with 30 times fewer steps than the 2,400 images the defaults were tuned on (the rule the
nnU-Net convention follows: a fixed number of iterations, whatever the data set's size). Epochs stay the unit the
loop runs in (each is one shuffled pass, one augmented view); a step budget is rounded up to whole epochs and the
plan line says what was run: ``72 training images, batch 16: 38 epochs of 4 steps = 152 steps``.

:class:`BestOnVal` scores a model on the validation split after every epoch, keeps its best state on disk and asks
the loop to stop once ``patience`` steps have passed without a better score.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._io import atomic_path, atomic_write_json
from ..errors import ConfigError

__all__ = ["Budget", "plan_budget", "BestOnVal"]


@dataclass(frozen=True)
class Budget:
    """How many epochs of how many optimizer steps a phase runs, and why (``reason``)."""

    epochs: int
    steps_per_epoch: int
    reason: str

    @property
    def steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def plan(self, images: int, batch: int, what: str = "training images") -> str:
        """``"72 training images, batch 16: 38 epochs of 4 steps = 152 steps (--steps 150)"``; ``what`` names the
        training set's items (``"training patches"`` where they are cut from whole cases)."""
        return (f"{images} {what}, batch {batch}: {self.epochs} epochs of {self.steps_per_epoch} steps = "
                f"{self.steps} steps ({self.reason})")

    def to_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "steps_per_epoch": self.steps_per_epoch, "steps": self.steps,
                "reason": self.reason}


def plan_budget(steps_per_epoch: int, *, epochs: int | None, steps: int | None, default_epochs: int,
                default_steps: int | None, flags: tuple[str, str] = ("--epochs", "--steps")) -> Budget:
    """The budget of a phase whose epochs have ``steps_per_epoch`` steps: ``epochs`` or ``steps`` as asked (not
    both), else ``default_epochs``, raised to at least ``default_steps`` (the embedded default's steps) when given.
    ``flags`` names the two options in messages."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    if epochs is not None and steps is not None:
        raise ConfigError(f"{flags[0]} and {flags[1]} both set the budget; give one")
    if steps is not None:
        return Budget(math.ceil(steps / steps_per_epoch), steps_per_epoch, f"{flags[1]} {steps}")
    if epochs is not None:
        return Budget(epochs, steps_per_epoch, f"{flags[0]} {epochs}")
    if default_steps is not None and default_epochs * steps_per_epoch < default_steps:
        return Budget(math.ceil(default_steps / steps_per_epoch), steps_per_epoch,
                      f"default: at least the {default_steps} steps the embedded default gets; "
                      f"{flags[0]} or {flags[1]} to change")
    return Budget(default_epochs, steps_per_epoch, f"default: {default_epochs} epochs; {flags[0]} or {flags[1]} to change")


class BestOnVal:
    """Early stopping with the best state kept: ``score(model)`` (the task's validation figures) after each epoch,
    ``key`` the figure judged (higher is better unless ``higher_is_better`` is False).

    Pass :meth:`epoch_end` and :meth:`stop_after` to :func:`~medfm_compress.compress.train.run_loop`, then call
    :meth:`restore`. The best state is written to ``path`` (atomically), so it is not held twice in memory.
    """

    def __init__(self, model, score: Callable[[Any], dict[str, float]], key: str, higher_is_better: bool,
                 patience_steps: int, steps_per_epoch: int, path: Path, resume: bool = False):
        self.model, self.score, self.key, self.higher = model, score, key, higher_is_better
        self.patience_steps, self.steps_per_epoch, self.path = patience_steps, steps_per_epoch, Path(path)
        self.best: float | None = None
        self.best_epoch: int | None = None
        self._record = self.path.with_name(self.path.name + ".json")
        if resume and self.path.is_file() and self._record.is_file():  # a resumed run keeps the best so far
            kept = json.loads(self._record.read_text())
            self.best, self.best_epoch = kept["best"], kept["best_epoch"]
        else:
            self.path.unlink(missing_ok=True)
            self._record.unlink(missing_ok=True)

    def epoch_end(self, epoch: int) -> dict[str, float]:
        import torch

        figures = self.score(self.model)
        value = figures[self.key]
        better = self.best is None or (value > self.best if self.higher else value < self.best)
        if better and math.isfinite(value):
            self.best, self.best_epoch = value, epoch + 1
            with atomic_path(self.path, suffix=".pt") as tmp:
                torch.save(self.model.state_dict(), tmp)
            atomic_write_json(self._record, {"best": value, "best_epoch": self.best_epoch})
        return figures

    def stop_after(self, history: list[dict[str, float]]) -> bool:
        if self.best_epoch is None:
            return False
        return (history[-1]["epoch"] - self.best_epoch) * self.steps_per_epoch >= self.patience_steps

    def restore(self) -> dict[str, Any]:
        """Load the best state into the model (when one was kept) and say which it was."""
        import torch

        if self.best_epoch is None or not self.path.is_file():
            return {}
        self.model.load_state_dict(torch.load(self.path, map_location="cpu", weights_only=True))
        self.path.unlink(missing_ok=True)
        self._record.unlink(missing_ok=True)
        return {"best_epoch": self.best_epoch, self.key: self.best}
