"""The training loop shared by teacher training, distillation, the label-only baseline and head fitting.

Determinism: the shuffle of each epoch and every augmentation draw are derived from ``(seed, epoch)`` and
``(seed, epoch, sample index)``, never from a running RNG, so a run resumed from a checkpoint at any step
sees exactly the batches the uninterrupted run would have seen. Dropout-style randomness uses torch's
global generator, whose state is saved in every checkpoint.
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._io import atomic_path
from ..errors import MedfmError

__all__ = [
    "LoopConfig",
    "Interrupted",
    "batches",
    "augment_batch",
    "augment_masks",
    "run_loop",
    "predict",
    "dist_info",
    "cosine_lr",
]


class Interrupted(MedfmError):
    """Training was stopped by SIGINT/SIGTERM after a checkpoint was written."""

    exit_code = 130


@dataclass(frozen=True)
class LoopConfig:
    """How one training phase runs."""

    name: str
    steps_per_epoch: int
    epochs: int
    lr: float
    weight_decay: float
    batch_size: int
    seed: int
    augment: bool
    warmup_frac: float = 0.05

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs


def dist_info() -> tuple[int, int]:
    """(rank, world size) under torchrun, (0, 1) otherwise."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def cosine_lr(step: int, total: int, base: float, warmup_frac: float) -> float:
    """Linear warm-up, then cosine decay to zero."""
    warm = max(1, int(total * warmup_frac))
    if step < warm:
        return base * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def batches(
    indices: np.ndarray, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1, n_batches: int | None = None
) -> list[np.ndarray]:
    """The batches of one epoch: seeded permutations of ``indices``, then this rank's share of each batch.

    ``n_batches`` fixes the number of batches (the budget); when the indices are too few to fill them, further
    seeded permutations are appended, so a small labeled subset gets as many steps as the full set. Every rank
    draws the same permutations.
    """
    global_bs = batch_size * world
    n_batches = n_batches or max(1, len(indices) // global_bs)
    need = n_batches * global_bs
    parts, have, k = [], 0, 0
    while have < need:
        rng = np.random.default_rng([seed, epoch, 7919, k])
        parts.append(indices[rng.permutation(len(indices))])
        have += len(indices)
        k += 1
    perm = np.concatenate(parts)[:need]
    return [perm[b * global_bs : (b + 1) * global_bs][rank::world] for b in range(n_batches)]


def _affine_params(index: np.ndarray, seed: int, epoch: int, dims: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, the affine matrix and the (gain, offset) drawn from ``(seed, epoch, sample index)`` alone.
    ``dims=3`` (volumes ``(N, C, X, Y, Z)``): the same rotation and shift in the X-Y (axial) plane, the scale on all
    three axes."""
    n = len(index)
    params = np.empty((n, 6), dtype=np.float32)
    for i, idx in enumerate(index):
        r = np.random.default_rng([seed, epoch, int(idx), 104729])
        params[i] = (
            r.uniform(-8, 8),
            r.uniform(-0.04, 0.04),
            r.uniform(-0.04, 0.04),
            r.uniform(0.92, 1.08),
            r.uniform(0.9, 1.1),
            r.uniform(-0.1, 0.1),
        )
    p = torch.from_numpy(params)
    ang = p[:, 0] * math.pi / 180
    s = p[:, 3]
    cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
    if dims == 2:
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
        theta[:, 0, 2] = p[:, 1] * 2
        theta[:, 1, 2] = p[:, 2] * 2
        return theta, p[:, 4:6]
    # affine_grid's coordinates are (last axis, middle, first) = (Z, Y, X) of our volumes.
    theta = torch.zeros(n, 3, 4)
    theta[:, 0, 0] = 1 / s
    theta[:, 1, 1], theta[:, 1, 2], theta[:, 2, 1], theta[:, 2, 2] = cos, -sin, sin, cos
    theta[:, 1, 3] = p[:, 1] * 2
    theta[:, 2, 3] = p[:, 2] * 2
    return theta, p[:, 4:6]


def augment_batch(x: torch.Tensor, index: np.ndarray, seed: int, epoch: int) -> torch.Tensor:
    """Small affine (rotation +-8 deg, shift +-4%, scale 0.92-1.08) and mild intensity gain/offset; on volumes
    (5-D batches) the rotation and shift are in the axial plane.

    No flips (anatomy is lateralised) and no colour jitter (grayscale modalities). Parameters for each sample
    come from ``(seed, epoch, sample index)`` alone.
    """
    dims = x.dim() - 2
    theta, gain_offset = _affine_params(index, seed, epoch, dims)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    shape = (-1,) + (1,) * (dims + 1)
    g, o = gain_offset[:, 0].view(shape).to(x.dtype), gain_offset[:, 1].view(shape).to(x.dtype)
    return out * g + o


def augment_masks(y: torch.Tensor, index: np.ndarray, seed: int, epoch: int) -> torch.Tensor:
    """The label maps ``(N, H, W)`` (or ``(N, X, Y, Z)``) of the images :func:`augment_batch` transformed with the
    same ``index``, ``seed`` and ``epoch``: the same affine, nearest-neighbour (labels never blend), edges as for the
    images."""
    theta, _ = _affine_params(index, seed, epoch, y.dim() - 1)
    ym = y.unsqueeze(1).float()
    grid = F.affine_grid(theta, list(ym.shape), align_corners=False)
    return F.grid_sample(ym, grid, mode="nearest", padding_mode="border", align_corners=False)[:, 0].to(y.dtype)


class _StopFlag:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step."""

    def __init__(self):
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, _frame):
        if self.signum is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _save_checkpoint(path: Path, modules: dict[str, nn.Module], optimizer, epoch: int, step: int, extra: dict) -> None:
    state = {
        "modules": {k: m.state_dict() for k, m in modules.items()},
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "step": step,
        "torch_rng": torch.get_rng_state(),
        "extra": extra,
    }
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict:
    """Read a training checkpoint (tensors and plain containers only)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means the checkpoint is unusable
        raise MedfmError(f"checkpoint {path} cannot be read ({type(e).__name__}); delete it and start without --resume") from None


def run_loop(
    cfg: LoopConfig,
    modules: dict[str, nn.Module],
    step_fn: Callable[[np.ndarray, int], tuple[torch.Tensor, dict[str, float]]],
    train_indices: np.ndarray,
    checkpoint: Path,
    resume: bool,
    log: Callable[[str], None],
    epoch_end: Callable[[int], dict[str, float]] | None = None,
    progress: bool = True,
    lr_scales: dict[str, float] | None = None,
    stop_after: Callable[[list[dict[str, float]]], bool] | None = None,
) -> dict[str, Any]:
    """Train ``modules`` with AdamW + cosine schedule for ``cfg.epochs`` epochs.

    ``step_fn(batch_indices, epoch)`` returns the loss and values to show. A checkpoint is written at the end
    of every epoch and when SIGINT/SIGTERM arrives (then :class:`Interrupted` is raised). With ``resume``,
    training continues from ``checkpoint`` and ends bitwise equal to an uninterrupted run on CPU.

    ``lr_scales`` gives a module its own learning rate as a fraction of ``cfg.lr`` (a pretrained encoder
    fine-tuned more gently than a new head). ``stop_after(history)`` is asked after each epoch's record; True
    ends training there (early stopping; the history says where it stopped).
    """
    from tqdm.auto import tqdm

    rank, world = dist_info()
    groups = []
    for name, m in modules.items():
        params = [p for p in m.parameters() if p.requires_grad]
        if params:
            groups.append({"params": params, "lr_scale": (lr_scales or {}).get(name, 1.0)})
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    start_epoch, start_step = 0, 0
    if resume and checkpoint.exists():
        state = load_checkpoint(checkpoint)
        for k, m in modules.items():
            m.load_state_dict(state["modules"][k])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch, start_step = int(state["epoch"]), int(state["step"])
        if start_step >= cfg.steps_per_epoch:
            start_epoch, start_step = start_epoch + 1, 0
        log(f"[{cfg.name}] resumed from {checkpoint} at epoch {start_epoch + 1} step {start_step}")
    history: list[dict[str, float]] = []
    t0 = time.time()
    with _StopFlag() as stop:
        for epoch in range(start_epoch, cfg.epochs):
            for m in modules.values():
                m.train()
            epoch_batches = batches(train_indices, cfg.batch_size, cfg.seed, epoch, rank, world, cfg.steps_per_epoch)
            first = start_step if epoch == start_epoch else 0
            bar = tqdm(
                total=len(epoch_batches),
                initial=first,
                desc=f"{cfg.name} {epoch + 1}/{cfg.epochs}",
                disable=not progress or rank != 0,
                leave=False,
                dynamic_ncols=True,
            )
            running: dict[str, float] = {}
            for step in range(first, len(epoch_batches)):
                global_step = epoch * cfg.steps_per_epoch + step
                lr = cosine_lr(global_step, cfg.total_steps, cfg.lr, cfg.warmup_frac)
                for g in optimizer.param_groups:
                    g["lr"] = lr * g.get("lr_scale", 1.0)
                loss, shown = step_fn(epoch_batches[step], epoch)
                if not torch.isfinite(loss):
                    raise MedfmError(
                        f"[{cfg.name}] loss became {loss.item()} at epoch {epoch + 1} step {step}; lower --lr "
                        "or check the data for extreme values"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                for k, v in shown.items():
                    running[k] = 0.9 * running.get(k, v) + 0.1 * v if k in running else v
                bar.set_postfix({k: f"{v:.3f}" for k, v in running.items()}, refresh=False)
                bar.update(1)
                if stop.signum is not None:
                    bar.close()
                    if rank == 0:
                        _save_checkpoint(checkpoint, modules, optimizer, epoch, step + 1, {"phase": cfg.name})
                    raise Interrupted(
                        f"[{cfg.name}] interrupted by signal {stop.signum} at epoch {epoch + 1} step {step + 1}; "
                        f"checkpoint saved to {checkpoint}; run the same command with --resume to continue"
                    )
            bar.close()
            record = {"epoch": epoch + 1, **{k: round(v, 5) for k, v in running.items()}}
            if epoch_end is not None:
                record.update(epoch_end(epoch))
            record["elapsed_s"] = round(time.time() - t0, 1)
            history.append(record)
            log(f"[{cfg.name}] " + " ".join(f"{k}={v}" for k, v in record.items()))
            if rank == 0:
                _save_checkpoint(checkpoint, modules, optimizer, epoch, cfg.steps_per_epoch, {"phase": cfg.name})
            if stop_after is not None and stop_after(history):
                log(f"[{cfg.name}] early stop after epoch {epoch + 1}")
                break
    return {"history": history, "seconds": round(time.time() - t0, 2)}


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 256, embeddings: bool = False) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Logits (and embeddings) of ``model`` on ``x`` in eval mode, batched."""
    from ..models.features import FeatureTap

    was = model.training
    model.eval()
    logits, embs = [], []
    with FeatureTap(model) as tap:
        for i in range(0, len(x), batch_size):
            lo, em = tap.run(x[i : i + batch_size])
            if lo is not None:
                logits.append(lo.float().cpu())
            if embeddings:
                embs.append(em.float().cpu())
    model.train(was)
    return (torch.cat(logits).numpy() if logits else None), (torch.cat(embs).numpy() if embs else None)


def batch_iter(n: int, batch_size: int) -> Iterator[slice]:
    for i in range(0, n, batch_size):
        yield slice(i, min(n, i + batch_size))


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))
