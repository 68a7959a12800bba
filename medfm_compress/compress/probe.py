"""A linear probe on frozen features: a classifier head fitted with the task's loss, early-stopped on validation.

``adapt --method linear`` fits one on a pretrained encoder's features, and a distillation run scores a head-less
teacher (an encoder held as an engine) with one on its embeddings of the labelled training images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..runtime.tasks import get_task

__all__ = ["BestState", "fit_linear_head"]


class BestState:
    """Keeps the state with the best validation score and says when to stop.

    The score is (macro AUC, -cross-entropy): AUC first, and where it saturates (a small val split reaches 1.0
    early, long before the head is calibrated) the lower validation loss decides; ties keep the earlier epoch.
    """

    def __init__(self, module, patience: int):
        self.module, self.patience = module, patience
        self.best: tuple[float, float] = (-np.inf, -np.inf)
        self.best_epoch = 0
        self.state = None

    def update(self, epoch: int, auc: float, loss: float) -> None:
        auc = round(float(auc), 6)
        better = auc > self.best[0] or (auc == self.best[0] and -loss > self.best[1] + 1e-6)
        if better:
            self.best, self.best_epoch = (auc, -float(loss)), epoch
            self.state = {k: v.detach().clone() for k, v in self.module.state_dict().items()}

    def stop(self, history) -> bool:
        return len(history) - self.best_epoch >= self.patience

    def restore(self) -> None:
        if self.state is not None:
            self.module.load_state_dict(self.state)


def fit_linear_head(head, f_train: np.ndarray, y_train: np.ndarray, f_val: np.ndarray | None, y_val: np.ndarray | None,
                    dtask, task: str, device, ckpt: Path, log, progress: bool, epochs: int = 100,
                    lr: float = 1e-2, patience: int = 10, batch_size: int = 64,
                    seed: int = 0) -> dict[str, Any]:
    """A linear probe: ``head`` trained on frozen features with the task's loss, early stopping on validation (macro
    AUC, then loss) where there is a validation split; the best state is kept. Returns the loop's history, with the
    kept state's epoch as ``best_epoch``."""
    import torch

    from .train import LoopConfig, run_loop

    label_dtype = getattr(torch, dtask.label_dtype)
    ft = torch.from_numpy(np.asarray(f_train, np.float32)).to(device)
    yt = torch.from_numpy(np.asarray(y_train)).to(device=device, dtype=label_dtype)
    fv = torch.from_numpy(np.asarray(f_val, np.float32)).to(device) if f_val is not None else None
    yv = torch.from_numpy(np.asarray(y_val)).to(device=device, dtype=label_dtype) if f_val is not None else None
    head = head.to(device)
    for p in head.parameters():
        p.requires_grad_(True)
    best = BestState(head, patience)

    def step(batch_idx, _epoch):
        bi = torch.as_tensor(batch_idx, device=device)
        loss = dtask.hard_loss(head(ft[bi]).float(), yt[bi])
        return loss, {"ce": float(loss.detach())}

    def epoch_end(epoch):
        if fv is None:
            return {}
        with torch.no_grad():
            logits = head(fv).float()
            loss = float(dtask.hard_loss(logits, yv))
        auc = get_task(task).macro_auc(logits.cpu().numpy(), y_val)
        best.update(epoch, auc, loss)
        return {"val_auc": round(float(auc), 4), "val_loss": round(loss, 4)}

    bs = min(batch_size, len(ft))
    loop = LoopConfig("head", max(1, len(ft) // bs), epochs, lr, 1e-4, bs, seed, False)
    result = run_loop(loop, {"head": head}, step, np.arange(len(ft)), ckpt, False, log, epoch_end, progress,
                      stop_after=best.stop if fv is not None else None)
    best.restore()
    for p in head.parameters():
        p.requires_grad_(False)
    result["best_epoch"] = int(best.best_epoch + 1) if best.state is not None else None
    return result
