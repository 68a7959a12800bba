"""In-memory task datasets in the MedMNIST layout, shared by every reader."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import DataError
from ..runtime.tasks import get_task, task_names
from .lazy import LazyImages, is_lazy, iter_batches, take

__all__ = ["Split", "TaskData", "VolumeCrops", "WholeCases", "TASKS", "SPLITS", "class_presence", "validate_masks", "require_task",
           "case_strata", "label_strata", "validate_values"]

# The tasks a data set can be: the runtime's registered ones ("embedding": unlabeled volume crops for label-free
# embedding distillation, data/volume.py; "segmentation": an integer label map per image, data/masks.py;
# "regression": a continuous value per image).
TASKS = task_names()
SPLITS = ("train", "val", "test")


@dataclass
class Split:
    """Raw images and labels of one split.

    ``images`` is ``(N,H,W)`` or ``(N,H,W,C)`` in its raw dtype, either an array or, for a split too large
    for memory, a :class:`~medfm_compress.data.lazy.LazyImages` read batch by batch; ``labels`` is ``(N,)``
    int64 class indices (multi-class, binary), ``(N,K)`` float32 0/1 (multi-label) or ``(N,H,W)`` uint8 label
    maps (segmentation, one class index per pixel), always in memory.

    What was read, when the reader knows it: ``files`` names each image (a path relative to the folder, or
    ``train_images[17]`` for an array in an archive) and ``groups`` its group (patient, study, volume): images
    of one group are always in one split. ``None``: not recorded (each image is its own group).
    """

    images: np.ndarray | LazyImages
    labels: np.ndarray
    files: np.ndarray | None = None
    groups: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def streamed(self) -> bool:
        """True when the images are read on demand rather than held in memory."""
        return is_lazy(self.images)

    def subset(self, index: np.ndarray) -> Split:
        return Split(
            take(self.images, index),
            self.labels[index],
            None if self.files is None else self.files[index],
            None if self.groups is None else self.groups[index],
        )

    def file_names(self, split: str) -> np.ndarray:
        """``files``, or ``split[i]`` (the position in this split) where no names were recorded."""
        if self.files is not None:
            return self.files
        return np.array([f"{split}[{i}]" for i in range(len(self))], dtype=object)

    def group_ids(self, split: str) -> np.ndarray:
        """``groups``, or each image's own name (:meth:`file_names`) where no groups were recorded."""
        return self.groups if self.groups is not None else self.file_names(split)


@dataclass(frozen=True)
class VolumeCrops:
    """Crops of one volume, embedded by a foundation encoder (:mod:`medfm_compress.data.volume`): the volume they
    were cut from, each crop's box (``x, y, z, sx, sy, sz`` in voxels), the z range sampled and the crop size."""

    volume: Any  # medfm_compress.runtime.volumes.Volume
    boxes: tuple[tuple[int, int, int, int, int, int], ...]
    z_range: tuple[int, int]
    size: tuple[int, int, int]

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in self.volume.spacing)

    @property
    def volume_sha256(self) -> str:
        return self.volume.sha256


@dataclass(frozen=True)
class WholeCases:
    """Segmentation at the images' own resolution (:mod:`medfm_compress.data.patches`): train holds patches sampled
    from whole cases (``patches_per_case`` of ``patch`` pixels or voxels, ``fg_fraction`` of them centred on
    foreground), val and test whole cases padded to the largest, each one's true size in ``case_shapes[split]``.
    Volumes (a 3-D ``patch``) are resampled to ``spacing_mm``; 2-D images (``?patch=H,W`` on a segmentation folder)
    have none."""

    spacing_mm: tuple[float, float, float] | None
    patch: tuple[int, ...]
    patches_per_case: int
    fg_fraction: float
    case_shapes: dict[str, tuple[tuple[int, int, int], ...]]


@dataclass
class TaskData:
    """A task's data: its splits, label names and what the images look like. ``info`` says where the data came from
    (a folder's root, a generator's settings); 3-D data says what it is in ``crops`` or ``cases``."""

    source: str
    task: str
    label_names: list[str]
    splits: dict[str, Split]
    window: tuple[float, float] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    crops: VolumeCrops | None = None
    cases: WholeCases | None = None

    def __post_init__(self):
        if self.task not in TASKS:
            raise DataError(f"unknown task type {self.task!r}; expected one of {', '.join(TASKS)}")
        if self.crops is not None and self.cases is not None:
            raise ValueError("a data set holds volume crops or whole cases, not both")

    @property
    def volumes(self) -> bool:
        """3-D images: volume crops, or the patches and whole cases of 3-D segmentation."""
        return self.crops is not None or (self.cases is not None and len(self.cases.patch) == 3)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    @property
    def whole_cases(self) -> bool:
        """True when val and test hold whole cases (segmentation on training patches, scored case by case by sliding
        windows), each padded to the largest with its true size in ``cases.case_shapes``."""
        return self.cases is not None

    @property
    def spacing_mm(self) -> tuple[float, float, float] | None:
        """The voxel spacing volumes were resampled to (None for 2-D data)."""
        volume = self.cases or self.crops
        return volume.spacing_mm if volume is not None else None

    @property
    def channels(self) -> int:
        if self.volumes:
            return 1
        imgs = self.any_split().images
        return 1 if imgs.ndim == 3 else int(imgs.shape[-1])

    @property
    def image_size(self) -> tuple[int, ...]:
        """(H, W), or (X, Y, Z) for volume crops; the training patch's size for segmentation on patches."""
        if self.cases is not None:
            return tuple(int(v) for v in self.cases.patch)
        if self.volumes:
            return tuple(int(v) for v in self.any_split().images.shape[1:4])
        imgs = self.any_split().images
        return int(imgs.shape[1]), int(imgs.shape[2])

    def any_split(self) -> Split:
        for s in self.splits.values():
            return s
        raise DataError(f"{self.source} has no splits")

    def split(self, name: str) -> Split:
        """Return split ``name``; a missing or empty split is a user error."""
        if name not in self.splits:
            raise DataError(f"{self.source} has no '{name}' split (has: {', '.join(self.splits) or 'none'})")
        s = self.splits[name]
        if len(s) == 0:
            raise DataError(f"the '{name}' split of {self.source} is empty; provide at least one image")
        return s

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "task": self.task,
            "label_names": list(self.label_names),
            "channels": self.channels,
            "image_size": list(self.image_size),
            "sizes": {k: len(v) for k, v in self.splits.items()},
            "window": list(self.window) if self.window else None,
        }

    def class_counts(self, split: str) -> np.ndarray:
        """Images per class (segmentation: images in which the class has at least one pixel)."""
        labels = self.split(split).labels
        if get_task(self.task).continuous:
            raise DataError(f"{self.source} holds continuous values, not classes to count")
        if np.asarray(labels).ndim > 1:  # label vectors or label maps
            return class_presence(labels, self.num_classes).sum(axis=0)
        return np.bincount(labels, minlength=self.num_classes)


def require_task(task: TaskData, accepted: tuple[str, ...], what: str) -> None:
    """Refuse, in one line, a task of a type ``what`` (a command or stage) does not handle: a segmentation data set
    given to a classification stage, or the reverse."""
    if task.task in accepted:
        return
    if get_task(task.task).dense:
        raise DataError(f"{task.source} is a {task.task} task (a label map per image); {what} handles "
                        f"{', '.join(accepted)} tasks in this version, not {task.task}: give it a data set with "
                        "image-level labels (labels.csv, *_labels)")
    raise DataError(f"{task.source} is a {task.task} task; {what} handles {', '.join(accepted)} tasks: give it a "
                    "data set with masks (images/ + masks/, *_masks, synthetic?task=segmentation)"
                    if accepted and all(get_task(a).dense for a in accepted) else
                    f"{task.source} is a {task.task} task; {what} handles {', '.join(accepted)} tasks")


def class_presence(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``(N, K)`` bool: which classes each case has (its class; its positive labels; the classes its label map
    has at least one pixel of)."""
    labels = np.asarray(labels)
    if labels.ndim == 1:
        return labels[:, None] == np.arange(num_classes)
    if labels.ndim == 2:
        return labels.astype(bool)
    flat = labels.reshape(len(labels), -1)
    return np.stack([(flat == k).any(axis=1) for k in range(num_classes)], axis=1) if len(labels) else \
        np.zeros((0, num_classes), dtype=bool)


def case_strata(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """One stratum per case for stratified sampling: its class (multi-label: its first positive label); for label
    maps, the rarest class the case shows (lesions are rarer than organs), so each subset gets its share of them."""
    labels = np.asarray(labels)
    if labels.ndim == 1:
        return labels
    if labels.ndim == 2:
        return labels.argmax(1)
    presence = class_presence(labels, num_classes)
    rarity = presence.sum(axis=0)
    return np.array([int(np.flatnonzero(row)[np.argmin(rarity[row])]) if row.any() else 0 for row in presence],
                    dtype=np.int64)


def validate_masks(name: str, images: Any, masks: Any, label_names: list[str], source: str,
                   files: np.ndarray | None = None, volume: bool = False) -> Split:
    """Check the label maps of one segmentation split against its images and class names; return the split.

    A mask must be an integer array (a float mask, as from an interpolating resize or a probability map, is refused),
    ``(N,H,W)`` with its image's height and width (``volume``: ``(N,X,Y,Z)`` with its volume's size), and hold only
    the indices of ``label_names`` (0 = background). Errors name the offending file when ``files`` names them.
    """
    if not is_lazy(images):
        images = np.asarray(images)
    masks = np.asarray(masks)

    def which(i: int) -> str:
        return str(files[i]) if files is not None else f"{name}[{i}]"

    if volume:
        if images.ndim != 4 or masks.shape != tuple(images.shape):
            raise DataError(f"{source}: {name} volumes {tuple(images.shape)} and label maps {masks.shape} must both "
                            "be (N,X,Y,Z), of one size")
    elif images.ndim == 4 and images.shape[-1] == 1:
        images = images.map(lambda b: b[..., 0], images.item_shape[:-1], images.dtype) if is_lazy(images) \
            else images[..., 0]
    if images.ndim not in (3, 4):
        raise DataError(f"{source}: {name}_images must be (N,H,W) or (N,H,W,C), got shape {images.shape}")
    if masks.ndim == 4 and masks.shape[-1] == 1 and not volume:
        masks = masks[..., 0]
    if masks.ndim != 3 and not volume:
        raise DataError(f"{source}: {name}_masks must be (N,H,W) integer label maps, got shape {masks.shape}")
    if masks.shape[0] != images.shape[0]:
        raise DataError(f"{source}: {name} has {images.shape[0]} images but {masks.shape[0]} masks")
    if masks.shape[1:3] != tuple(images.shape[1:3]):
        raise DataError(f"{source}: {name} masks are {masks.shape[1]}x{masks.shape[2]} but the images are "
                        f"{images.shape[1]}x{images.shape[2]}; a mask must have its image's size")
    if not (np.issubdtype(masks.dtype, np.integer) or masks.dtype == bool):
        raise DataError(f"{source}: the {name} masks are {masks.dtype}, not integer label maps (first: {which(0)}); "
                        "save masks as integers (0 = background, 1.. = the classes), resized with nearest-neighbour")
    k = len(label_names)
    if masks.size:
        per = masks.reshape(len(masks), -1)
        lo, hi = per.min(axis=1), per.max(axis=1)
        out = np.flatnonzero((lo < 0) | (hi >= k))
        if len(out):
            i = int(out[0])
            v = int(hi[i]) if hi[i] >= k else int(lo[i])
            raise DataError(f"{source}: mask of {which(i)} has label value {v}, outside the {k} named classes "
                            f"(0..{k - 1}: {', '.join(label_names)}); name every class in labels.json or fix the mask")
    return Split(images, masks.astype(np.uint8 if k <= 256 else np.int64))


def label_strata(labels: np.ndarray, continuous: bool = False) -> np.ndarray:
    """One stratum per case for a stratified draw: its class, its first positive label (multi-label), or for
    continuous values the quintile of the (first) value."""
    labels = np.asarray(labels)
    if continuous:
        values = labels.reshape(len(labels), -1)[:, 0].astype(np.float64)
        if len(values) < 5:
            return np.zeros(len(values), dtype=np.int64)
        return np.searchsorted(np.quantile(values, [0.2, 0.4, 0.6, 0.8]), values, side="right").astype(np.int64)
    return labels if labels.ndim == 1 else labels.argmax(1)


def validate_values(name: str, images: Any, values: Any, source: str) -> Split:
    """Check one split of a regression set: images as :func:`validate_split` does, and ``(N,)`` or ``(N, K)`` finite
    numbers, one row per image; returns the split with float32 values."""
    values = np.asarray(values)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim not in (1, 2) or not (np.issubdtype(values.dtype, np.number) or values.dtype == bool):
        raise DataError(f"{source}: {name}_values must be (N,) or (N,K) numbers, got {values.dtype} {values.shape}")
    if values.size and not np.isfinite(values.astype(np.float64)).all():
        bad = int((~np.isfinite(values.astype(np.float64).reshape(len(values), -1))).any(axis=1).argmax())
        raise DataError(f"{source}: {name}_values has NaN/Inf (first at row {bad}); every image needs a finite value")
    n = int(images.shape[0]) if hasattr(images, "shape") else len(images)
    if n != len(values):
        raise DataError(f"{source}: {name}_images has {n} images but {name}_values has {len(values)} values")
    split = validate_split(name, images, np.zeros(len(values), np.int64), source)
    return Split(split.images, values.astype(np.float32))


def validate_split(name: str, images: Any, labels: Any, source: str) -> Split:
    """Check shapes, dtypes and values of one split and return it in canonical form.

    Lazy images are checked from their shape and dtype; their values are scanned batch by batch (never
    loaded whole) unless their reader already refuses NaN/Inf.
    """
    if not is_lazy(images):
        images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim not in (3, 4):
        raise DataError(
            f"{source}: {name}_images must be (N,H,W) or (N,H,W,C), got shape {images.shape}; "
            "check the array layout"
        )
    if images.ndim == 4 and images.shape[-1] not in (1, 3):
        raise DataError(f"{source}: {name}_images has {images.shape[-1]} channels; expected 1 or 3 (N,H,W,C)")
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images.map(lambda b: b[..., 0], images.item_shape[:-1], images.dtype) if is_lazy(images) \
            else images[..., 0]
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim not in (1, 2):
        raise DataError(f"{source}: {name}_labels must be (N,), (N,1) or (N,K), got shape {labels.shape}")
    if labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{source}: {name}_images has {images.shape[0]} images but {name}_labels has {labels.shape[0]} labels"
        )
    if np.issubdtype(images.dtype, np.floating) and images.size:
        bad = _count_nonfinite(images)
        if bad:
            raise DataError(f"{source}: {name}_images contains NaN/Inf in {bad} image(s); clean or drop them")
    if labels.size and np.issubdtype(labels.dtype, np.floating) and not np.isfinite(labels).all():
        raise DataError(f"{source}: {name}_labels contains NaN/Inf")
    if labels.size and labels.min() < 0:
        raise DataError(f"{source}: {name}_labels has negative values; labels must be class indices >= 0")
    return Split(images, labels)


def _count_nonfinite(images: np.ndarray | LazyImages) -> int:
    if is_lazy(images):
        if images.finite_checked:
            return 0
        return sum(_count_nonfinite(b) for b in iter_batches(images, 256))
    if np.isfinite(images).all():
        return 0
    return int((~np.isfinite(images.reshape(images.shape[0], -1))).any(axis=1).sum())


def infer_task(splits: dict[str, Split], source: str, num_classes: int | None = None) -> tuple[str, int]:
    """Infer the task type and class count from label arrays."""
    lab = [s.labels for s in splits.values() if len(s)]
    if not lab:
        raise DataError(f"{source}: every split is empty")
    if lab[0].ndim == 2:
        k = lab[0].shape[1]
        for x in lab:
            if x.ndim != 2 or x.shape[1] != k:
                raise DataError(f"{source}: multi-label splits disagree on the label count")
            if not np.isin(x, (0, 1)).all():
                raise DataError(f"{source}: multi-label labels must be 0/1")
        return "multilabel", k
    for x in lab:
        if x.ndim != 1:
            raise DataError(f"{source}: splits mix single-label and multi-label arrays")
        if np.issubdtype(x.dtype, np.floating) and not np.all(x == np.round(x)):
            raise DataError(f"{source}: class labels must be integers")
    k = int(max(int(x.max()) for x in lab)) + 1
    if num_classes is not None:
        if k > num_classes:
            raise DataError(f"{source}: labels go up to {k - 1} but only {num_classes} label names were given")
        k = num_classes
    return ("binary" if k == 2 else "multiclass"), max(k, 2)
