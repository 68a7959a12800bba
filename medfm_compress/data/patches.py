"""Segmentation at the images' own resolution: training patches cut from whole cases, whole cases held out.

Shared by 3-D volumes (:mod:`.volume_seg`) and 2-D segmentation folders given ``?patch=H,W`` (:mod:`.masks`):

- ``train``: **patches** ``(N, *patch)`` (2-D colour images keep their channel axis last) with their label maps,
  drawn per case from a seed: ``per_case`` patches, a fraction ``fg`` of them centred on a pixel (voxel) of a
  foreground class (the class drawn uniformly from those the case shows, so a small lesion gets as many patches as
  the liver), the rest anywhere (nnU-Net's oversampling). A case smaller than a patch is padded (``fill``: air for
  volumes, 0 for images; background for labels). ``groups`` names each patch's case (or the group the case belongs
  to), so that calibration and held-out checks keep a case's patches together.
- ``val`` and ``test``: whole **cases**, scored by sliding-window inference of windows of the patch's size. Cases
  of different sizes are padded to the largest; :attr:`~.dataset.WholeCases.case_shapes` keeps each one's true size,
  and scores are taken on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DataError

__all__ = ["LabelledCase", "PATCH_OPTIONS", "parse_sampling", "sample_patches", "stack_cases", "case_shapes",
           "holdout_patches", "pad_stack", "patch_fill", "patch_task", "ints_option", "floats_option"]

AIR_HU = -1024.0
PATCH_OPTIONS = {"patch", "per_case", "fg", "seed"}


@dataclass
class LabelledCase:
    """One image or volume and its label map on one grid: ``(X, Y, Z)`` in LPS order, or ``(H, W[, C])``;
    ``spacing`` in mm for volumes (None for 2-D images)."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, ...] | None = None
    group: str | None = None


# ----------------------------------------------------------------------------------------------------------------
# Options


def ints_option(text: str, key: str, spec: str, n: int) -> tuple[int, ...]:
    """``key=text`` of ``spec`` as ``n`` positive integers, or a one-line error."""
    try:
        vals = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise DataError(f"{key}={text!r} in {spec!r} must be {n} integers separated by commas") from None
    if len(vals) != n or min(vals) < 1:
        raise DataError(f"{key}={text!r} in {spec!r} must be {n} positive integers separated by commas")
    return vals


def floats_option(text: str, key: str, spec: str, n: int) -> tuple[float, ...]:
    """``key=text`` of ``spec`` as ``n`` finite numbers, or a one-line error."""
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise DataError(f"{key}={text!r} in {spec!r} must be {n} numbers separated by commas") from None
    if len(vals) != n or not all(np.isfinite(vals)):
        raise DataError(f"{key}={text!r} in {spec!r} must be {n} numbers separated by commas")
    return vals


def parse_sampling(opts: dict[str, str], spec: str, seed: int, dims: int, default_per_case: int, default_fg: float,
                   default_patch: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Patch size (``dims`` axes; ``default_patch`` where the spec gives none, else ``patch`` is required), patches
    per case, foreground fraction and seed from the spec's options."""
    if "patch" not in opts and default_patch is None:
        raise DataError(f"{spec!r} needs ?patch= ({dims} sizes separated by commas)")
    patch = ints_option(opts["patch"], "patch", spec, dims) if "patch" in opts else tuple(default_patch)
    per_case = ints_option(opts["per_case"], "per_case", spec, 1)[0] if "per_case" in opts else default_per_case
    fg = floats_option(opts["fg"], "fg", spec, 1)[0] if "fg" in opts else default_fg
    if not 0.0 <= fg <= 1.0:
        raise DataError(f"fg={opts['fg']!r} in {spec!r} is the fraction of foreground-centred patches, in [0, 1]")
    try:
        patch_seed = int(opts.get("seed", seed))
    except ValueError:
        raise DataError(f"seed={opts['seed']!r} in {spec!r} must be an integer") from None
    return {"patch": patch, "per_case": per_case, "fg": fg, "seed": patch_seed}


# ----------------------------------------------------------------------------------------------------------------
# Patches and stacking


def patch_fill(volumes: bool) -> float:
    """What a case is padded with: air for volumes (HU, or -1024 in an integer volume), 0 (black) for images."""
    return AIR_HU if volumes else 0.0


def _pad_to(arr: np.ndarray, shape, value) -> np.ndarray:
    """``arr`` padded at the end of its leading ``len(shape)`` axes to ``shape`` (trailing axes, a colour image's
    channels, untouched)."""
    pad = [(0, max(0, s - n)) for n, s in zip(arr.shape, shape, strict=False)]
    pad += [(0, 0)] * (arr.ndim - len(pad))
    return np.pad(arr, pad, constant_values=value) if any(p[1] for p in pad) else arr


def sample_patches(cases: list[LabelledCase], patch, per_case: int, fg: float, seed: int, num_classes: int,
                   fill: float = AIR_HU) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(images, labels, files, groups)`` of ``per_case`` patches per case (see the module docstring)."""
    patch = tuple(int(p) for p in patch)
    images, labels, files, groups = [], [], [], []
    for c, case in enumerate(cases):
        rng = np.random.default_rng([seed, 5, c])
        shape = tuple(max(n, p) for n, p in zip(case.labels.shape, patch, strict=True))
        img = _pad_to(case.image, shape, fill)
        lab = _pad_to(case.labels, shape, 0)
        present = [k for k in range(1, num_classes) if (lab == k).any()]
        n_fg = int(round(per_case * fg)) if present else 0
        for i in range(per_case):
            if i < n_fg:
                k = present[int(rng.integers(len(present)))]
                where = np.flatnonzero(lab.reshape(-1) == k)
                centre = np.unravel_index(int(where[int(rng.integers(len(where)))]), shape)
                start = [int(np.clip(ci - p // 2, 0, n - p)) for ci, p, n in zip(centre, patch, shape, strict=True)]
            else:
                start = [int(rng.integers(0, n - p + 1)) for p, n in zip(patch, shape, strict=True)]
            box = tuple(slice(s, s + p) for s, p in zip(start, patch, strict=True))
            images.append(img[box])
            labels.append(lab[box])
            files.append(f"{case.name}@{','.join(map(str, start))}")
            groups.append(case.group or case.name)
    return (np.stack(images), np.stack(labels).astype(np.uint8), np.array(files, dtype=object),
            np.array(groups, dtype=object))


def pad_stack(arrays: list[np.ndarray], fill: float, dims: int = 2) -> np.ndarray:
    """``arrays`` stacked, each padded with ``fill`` at the end of its leading ``dims`` axes to the largest."""
    shape = tuple(max(a.shape[k] for a in arrays) for k in range(dims))
    return np.stack([_pad_to(a, shape, fill) for a in arrays])


def stack_cases(cases: list[LabelledCase], fill: float) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    """Whole cases padded to the largest (``fill``; background labels), with each one's true spatial size."""
    dims = cases[0].labels.ndim
    images = pad_stack([c.image for c in cases], fill, dims)
    labels = pad_stack([c.labels for c in cases], 0, dims).astype(np.uint8)
    return images, labels, [list(c.labels.shape) for c in cases]


def case_shapes(task, split: str) -> list[tuple[int, ...]]:
    """The true spatial size of each case of a whole-case split (before padding to the largest)."""
    shapes = task.cases.case_shapes.get(split) if task.cases is not None else None
    s = task.split(split)
    if shapes is None:
        dims = np.asarray(s.labels).ndim - 1
        return [tuple(int(v) for v in np.asarray(s.labels).shape[1:1 + dims])] * len(s)
    return [tuple(int(v) for v in shape) for shape in shapes]


def holdout_patches(task, split: str, n: int, seed: int) -> np.ndarray:
    """``n`` patches (training size, foreground-oversampled as training is) cut from the whole cases of ``split``:
    held-out model inputs for checks that run the model window by window (quantization's calibration gate)."""
    s = task.split(split)
    shapes = case_shapes(task, split)
    cases = [LabelledCase(str(name), s.images[i][tuple(slice(0, k) for k in shapes[i])],
                          s.labels[i][tuple(slice(0, k) for k in shapes[i])])
             for i, name in enumerate(s.file_names(split))]
    per_case = max(1, -(-int(n) // len(cases)))
    images, _, _, _ = sample_patches(cases, task.cases.patch, per_case, task.cases.fg_fraction, seed,
                                     task.num_classes, fill=patch_fill(task.volumes))
    return images[np.random.default_rng([seed, 11]).permutation(len(images))[:n]]


def patch_task(source: str, label_names: list[str], splits_cases: dict[str, list[LabelledCase]], spacing,
               sampling: dict[str, Any], extra: dict[str, Any], window=None):
    """A segmentation :class:`~.dataset.TaskData` of training patches and whole held-out cases (module docstring);
    ``spacing`` the volumes' voxel spacing (None for 2-D images)."""
    from .dataset import Split, TaskData, WholeCases, validate_masks

    volumes = len(sampling["patch"]) == 3
    splits: dict[str, Split] = {}
    shapes: dict[str, list[list[int]]] = {}
    num_classes = len(label_names)
    for name in ("train", "val", "test"):  # train first: the task's image size is its patch
        cases = splits_cases.get(name)
        if not cases:
            continue
        fill = patch_fill(volumes)
        if name == "train":
            imgs, labs, files, groups = sample_patches(cases, sampling["patch"], sampling["per_case"],
                                                       sampling["fg"], sampling["seed"], num_classes, fill=fill)
        else:
            imgs, labs, shapes[name] = stack_cases(cases, fill)
            files = np.array([c.name for c in cases], dtype=object)
            groups = np.array([c.group or c.name for c in cases], dtype=object)
        split = validate_masks(name, imgs, labs, label_names, source, files, volume=volumes)
        splits[name] = Split(split.images, split.labels, files, groups)
    cases_info = WholeCases(
        spacing_mm=tuple(float(s) for s in spacing) if spacing is not None else None,
        patch=tuple(sampling["patch"]), patches_per_case=sampling["per_case"], fg_fraction=float(sampling["fg"]),
        case_shapes={k: tuple(tuple(int(v) for v in shape) for shape in v) for k, v in shapes.items()},
    )
    return TaskData(source=source, task="segmentation", label_names=list(label_names), splits=splits,
                    window=tuple(window) if window is not None else None, info=dict(extra), cases=cases_info)
