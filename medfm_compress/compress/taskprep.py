"""What the training stages share (distill, adapt): the device, the labelled subset, the data's preprocessing,
re-expressing a batch for another model's preprocessing, scoring a model, and a frozen teacher."""

from __future__ import annotations

import os

import numpy as np

from ..errors import ConfigError, ModelError
from ..runtime.tasks import get_task

__all__ = [
    "select_device",
    "labeled_subset",
    "data_preprocess",
    "adapt_batch",
    "evaluate_model",
    "FrozenTeacher",
    "autocast",
    "classifier_present",
    "accepted_keywords",
    "bootstrap_vs",
]


def select_device(pref: str):
    import torch

    if pref == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was requested but no CUDA GPU is available; use --device cpu")
    if pref == "cuda" or (pref == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def labeled_subset(labels: np.ndarray, task: str, fraction: float, seed: int, groups=None) -> np.ndarray:
    """A seeded subset of ``fraction`` of the training indices, stratified by class (label maps: by the rarest class
    a case shows), >= 1 per class. ``groups`` (volume patches: each one's case): whole cases are picked, so a case's
    patches are labelled together or not at all."""
    from ..data.dataset import case_strata, class_presence

    n = len(labels)
    if fraction >= 1.0:
        return np.arange(n)
    rng = np.random.default_rng([seed, 31337])
    labels = np.asarray(labels)
    if groups is not None:
        groups = np.asarray(groups)
        cases, inverse = np.unique(groups, return_inverse=True)
        k = int(labels.max()) + 1 if labels.size else 1
        patch_presence = class_presence(labels, k)
        presence = np.stack([patch_presence[inverse == c].any(axis=0) for c in range(len(cases))])
        rarity = presence.sum(axis=0)
        strat = np.array([int(np.flatnonzero(r)[np.argmin(rarity[r])]) if r.any() else 0 for r in presence])
        picked_cases = np.concatenate([rng.choice(np.flatnonzero(strat == c), size=max(1, int(round(
            fraction * int((strat == c).sum())))), replace=False) for c in np.unique(strat)])
        return np.flatnonzero(np.isin(inverse, picked_cases))
    strat = case_strata(labels, int(labels.max()) + 1 if labels.size else 1) if labels.ndim >= 3 else \
        get_task(task).strata(labels)
    picked = []
    for c in np.unique(strat):
        idx = np.flatnonzero(strat == c)
        k = max(1, int(round(fraction * len(idx))))
        picked.append(rng.choice(idx, size=k, replace=False))
    return np.sort(np.concatenate(picked))


def data_preprocess(task, train_images: np.ndarray, input_size=None):
    from ..runtime.preprocess import PreprocessSpec, raw_to_unit, to_nchw

    if task.volumes:
        # Volumes: one channel; its mean and std over the voxels of (up to 256) training patches; the voxel spacing
        # the volumes were resampled to, so that predict puts a new scan on the same grid.
        unit = raw_to_unit(np.asarray(train_images[:256]), task.window)
        spacing = task.spacing_mm
        return PreprocessSpec(input_size=tuple(input_size) if input_size else task.image_size, channels=1,
                              mean=(float(unit.mean()),), std=(max(float(unit.std()), 1e-3),), window=task.window,
                              spacing=tuple(spacing) if spacing else None)

    unit = to_nchw(raw_to_unit(train_images[:2048], task.window), task.channels)
    mean = tuple(float(v) for v in unit.mean(axis=(0, 2, 3)))
    std = tuple(max(float(v), 1e-3) for v in unit.std(axis=(0, 2, 3)))
    size = tuple(input_size) if input_size else task.image_size
    # 2-D segmentation on patches (?patch=H,W): whole images are run by sliding windows of the patch's size.
    return PreprocessSpec(input_size=size, channels=task.channels, mean=mean, std=std, window=task.window,
                          tiles=task.whole_cases)


def adapt_batch(x, src, dst):
    """Re-express a batch preprocessed with ``src`` as if preprocessed with ``dst`` (size, mean/std)."""
    import torch
    import torch.nn.functional as F

    if src == dst:
        return x
    if src.channels != dst.channels:
        if src.channels == 1 and dst.channels == 3:
            x = x.repeat(1, 3, 1, 1)
        else:
            raise ModelError(f"the teacher expects {dst.channels} channel(s) but the data has {src.channels}")
    smean = torch.tensor(src.mean if len(src.mean) == x.shape[1] else src.mean * x.shape[1], device=x.device).view(1, -1, 1, 1)
    sstd = torch.tensor(src.std if len(src.std) == x.shape[1] else src.std * x.shape[1], device=x.device).view(1, -1, 1, 1)
    unit = x * sstd + smean
    if tuple(dst.input_size) != tuple(x.shape[-2:]):
        unit = F.interpolate(unit, size=tuple(dst.input_size), mode="bilinear", align_corners=False)
    dmean = torch.tensor(dst.mean, device=x.device).view(1, -1, 1, 1)
    dstd = torch.tensor(dst.std, device=x.device).view(1, -1, 1, 1)
    return (unit - dmean) / dstd


def evaluate_model(model, x, labels, task, batch_size=256) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    from .train import predict

    logits, emb = predict(model, x, batch_size, embeddings=True)
    return get_task(task).task_metrics(logits, labels), logits, emb


class FrozenTeacher:
    """A frozen teacher with its own preprocessing."""

    def __init__(self, model, card, source: str):
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.card = card
        self.source = source

    def outputs(self, x, student_pre, batch_size=128, precision: str = "fp32", patch: bool = False):
        """``(logits or None, embeddings)`` of the images ``x`` (preprocessed as ``student_pre``), in float32;
        ``precision="bf16"`` runs the teacher under bf16 autocast (where the hardware has it natively). ``patch``:
        also its last feature map (a ViT's patch tokens as a grid), average-pooled to
        :data:`~medfm_compress.models.features.PATCH_GRID`, as a third element."""
        import contextlib

        import torch
        import torch.nn.functional as F

        from ..models.features import PATCH_GRID, FeatureTap, MapTap, tokens_to_map

        device = x.device.type
        cast = (torch.autocast(device, dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())
        engine = getattr(self.model, "is_engine", False)
        mtap = MapTap(self.model) if patch and not engine else contextlib.nullcontext()
        if patch and not engine and mtap.module is None:
            raise ModelError(f"teacher {self.card.arch} has no last feature map to distil ('patch'): a timm CNN's "
                             "global pooling or a ViT's final norm")
        logits, embs, maps = [], [], []
        with torch.no_grad(), FeatureTap(self.model) as tap, mtap, cast:
            for i in range(0, len(x), batch_size):
                lo, em = tap.run(adapt_batch(x[i : i + batch_size], student_pre, self.card.preprocess))
                if lo is not None:
                    logits.append(lo.float())
                embs.append(em.float())
                if patch:
                    m = tokens_to_map(self.model.last_embedding_tensor()) if engine else mtap.map
                    maps.append(F.adaptive_avg_pool2d(m.float(), PATCH_GRID))
        out = (torch.cat(logits) if logits else None), torch.cat(embs)
        return (*out, torch.cat(maps)) if patch else out


def autocast(device):
    import contextlib

    import torch

    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def classifier_present(model) -> bool:
    from ..models.features import classifier_of

    return classifier_of(model) is not None


def accepted_keywords(model) -> set[str]:
    """Keywords the architecture was built with (timm keeps them in pretrained_cfg / default_cfg)."""
    return {"img_size"} if hasattr(model, "patch_embed") else set()


def bootstrap_vs(reference_logits, test_logits, labels, task: str, seed: int = 0) -> dict:
    """The task's paired bootstrap at the reference's operating point (Youden's J for binary and multi-label tasks,
    the argmax for multi-class)."""
    t = get_task(task)
    labels = np.asarray(labels)
    thresholds = t.operating_point(np.asarray(reference_logits), labels)
    return t.paired_bootstrap(reference_logits, test_logits, labels, thresholds=thresholds, seed=seed)
