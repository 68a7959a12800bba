"""Readers for image folders and DICOM folders with a ``labels.csv``.

``labels.csv`` columns: ``file`` (path relative to the folder) and either ``label`` (a class name or index)
or ``labels`` (``|``-separated class names, multi-label). An optional ``split`` column (train/val/test)
assigns splits; otherwise a seeded, stratified 70/10/20 split is drawn. For calibration a folder needs no
labels file: every image is read, labels are set to 0.

Decoding one file (Pillow, pydicom) lives in :mod:`medfm_compress.runtime.images`, shared with ``predict`` on
the edge install; this module adds labels, splits and streaming.

A folder whose decoded images exceed :func:`~medfm_compress.data.lazy.memory_budget_bytes` (estimated from
the first image), or read with ``stream=True``, is not loaded: its splits hold
:class:`~medfm_compress.data.lazy.LazyImages` that decode each file when its batch is used.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..runtime.images import DICOM_SUFFIXES, IMAGE_SUFFIXES, read_dicom_file, read_image_file
from .dataset import SPLITS, Split, TaskData, infer_task, validate_split
from .lazy import LazyImages, memory_budget_bytes, take

__all__ = ["read_folder", "read_dicom_folder", "read_image_file", "read_dicom_file"]


def _read_labels_csv(root: Path, source: str, require: bool):
    csv_path = root / "labels.csv"
    if not csv_path.exists():
        if require:
            raise DataError(f"{root} has no labels.csv; add one with columns file,label[,split]")
        return None
    try:
        with open(csv_path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{csv_path} cannot be read as CSV ({e})") from None
    if not rows:
        raise DataError(f"{csv_path} has no rows; add one row per image")
    cols = set(rows[0])
    if "file" not in cols or not ({"label", "labels"} & cols):
        raise DataError(
            f"{csv_path} needs columns 'file' and 'label' (or 'labels' for multi-label); has {sorted(cols)}"
        )
    return rows


def _collect(
    root: Path,
    source: str,
    rows,
    reader,
    suffixes,
    require_labels: bool,
    seed: int,
    stream: bool | None,
    finite_checked: bool,
):
    if rows is None:
        files = [
            str(p)
            for p in sorted(
                p
                for p in root.rglob("*")
                if p.is_file() and p.suffix.lower() in suffixes and p.name != "labels.csv"
            )
        ]
        if not files:
            raise DataError(
                f"{root} contains no images ({', '.join(sorted(s or '(no suffix)' for s in suffixes))})"
            )
        images = _load_images(files, reader, source, stream, finite_checked)
        return images, np.zeros(len(files), dtype=np.int64), None, ["unlabeled"], "multiclass"
    multilabel = "labels" in rows[0] and "label" not in rows[0]
    raw_labels, paths, splits = [], [], []
    # os.path, not pathlib, per row: a resolved Path costs ~10x a str and pathlib interns every path part,
    # which for a large folder grows Python's interned-string table for good.
    real_root = os.path.realpath(root)
    for i, row in enumerate(rows, start=2):
        rel = (row.get("file") or "").strip()
        path = os.path.realpath(os.path.join(real_root, rel))
        if not rel or not os.path.isfile(path):
            raise DataError(f"{root / 'labels.csv'} line {i}: file '{rel}' does not exist under {root}")
        if os.path.commonpath([real_root, path]) != real_root or path == real_root:
            raise DataError(f"{root / 'labels.csv'} line {i}: '{rel}' points outside {root}")
        paths.append(path)
        raw_labels.append((row.get("labels") if multilabel else row.get("label")) or "")
        splits.append((row.get("split") or "").strip().lower())
    if multilabel:
        names = sorted({n for lab in raw_labels for n in lab.split("|") if n})
        labels = np.zeros((len(raw_labels), len(names)), dtype=np.float32)
        for i, lab in enumerate(raw_labels):
            for n in lab.split("|"):
                if n:
                    labels[i, names.index(n)] = 1.0
        task = "multilabel"
    else:
        stripped = [lab.strip() for lab in raw_labels]
        if any(not s for s in stripped):
            raise DataError(f"{root / 'labels.csv'}: some rows have an empty label")
        if all(s.lstrip("-").isdigit() for s in stripped):
            labels = np.array([int(s) for s in stripped], dtype=np.int64)
            names = [f"class_{k}" for k in range(int(labels.max()) + 1)]
        else:
            names = sorted(set(stripped))
            labels = np.array([names.index(s) for s in stripped], dtype=np.int64)
        task = None
    return _load_images(paths, reader, source, stream, finite_checked), labels, splits, names, task


def _load_images(
    paths: list[str] | list[Path], reader, source: str, stream: bool | None, finite_checked: bool
):
    """All images stacked in memory, or, above the memory budget (or with ``stream``), read lazily.

    The first image is always decoded: it gives the shape and dtype every other image must match.
    """
    first = reader(paths[0])
    if stream is None:
        stream = first.nbytes * len(paths) > memory_budget_bytes()
    if not stream:
        return _stack([first] + [reader(p) for p in paths[1:]], source)

    def read(idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx), *first.shape), dtype=first.dtype)
        for j, i in enumerate(idx):
            im = reader(paths[i])
            if im.shape != first.shape or im.dtype != first.dtype:
                raise DataError(
                    f"{paths[i]} is {'x'.join(map(str, im.shape))} {im.dtype} but {Path(paths[0]).name} is "
                    f"{'x'.join(map(str, first.shape))} {first.dtype}; add ?size=N to the spec to resize, "
                    "or convert the images to one bit depth"
                )
            out[j] = im
        return out

    return LazyImages(len(paths), first.shape, first.dtype, read, source, finite_checked=finite_checked)


def _stack(images: list[np.ndarray], source: str) -> np.ndarray:
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise DataError(
            f"{source}: images have different sizes {sorted(shapes)[:3]}...; add ?size=N to the spec to resize them"
        )
    dtypes = {im.dtype for im in images}
    if len(dtypes) > 1:
        raise DataError(
            f"{source}: images mix bit depths {sorted(str(d) for d in dtypes)}; convert them to one"
        )
    return np.stack(images)


def _assign_splits(labels: np.ndarray, split_col, seed: int) -> dict[str, np.ndarray]:
    n = len(labels)
    if split_col is not None and any(split_col):
        bad = sorted({s for s in split_col if s not in SPLITS})
        if bad:
            raise DataError(f"labels.csv split column has unknown values {bad}; use train, val or test")
        return {s: np.flatnonzero(np.array(split_col) == s) for s in SPLITS}
    rng = np.random.default_rng(seed)
    strat = labels if labels.ndim == 1 else labels.argmax(1)
    out = {s: [] for s in SPLITS}
    for c in np.unique(strat):
        idx = rng.permutation(np.flatnonzero(strat == c))
        n_test, n_val = int(round(0.2 * len(idx))), int(round(0.1 * len(idx)))
        out["test"] += idx[:n_test].tolist()
        out["val"] += idx[n_test : n_test + n_val].tolist()
        out["train"] += idx[n_test + n_val :].tolist()
    del n
    return {s: np.sort(np.array(v, dtype=np.int64)) for s, v in out.items()}


def _task_from(images, labels, splits_col, names, task, source, seed, labeled: bool) -> TaskData:
    if not labeled:
        return TaskData(
            source=source, task="multiclass", label_names=names, splits={"train": Split(images, labels)}
        )
    idx = _assign_splits(labels, splits_col, seed)
    splits = {s: validate_split(s, take(images, i), labels[i], source) for s, i in idx.items()}
    if task is None:
        task, _ = infer_task(splits, source, len(names))
    return TaskData(source=source, task=task, label_names=names, splits=splits)


def read_folder(
    root: str | Path,
    size: int | None = None,
    seed: int = 0,
    require_labels: bool = True,
    stream: bool | None = None,
) -> TaskData:
    """Read ``folder:DIR`` (images + labels.csv); ``stream`` True/False forces lazy/in-memory (None: by size)."""
    root = Path(root)
    source = f"folder:{root}"
    if not root.is_dir():
        raise DataError(f"{root} is not a directory; folder: expects a directory of images with labels.csv")
    rows = _read_labels_csv(root, source, require_labels)
    images, labels, split_col, names, task = _collect(
        root,
        source,
        rows,
        lambda p: read_image_file(p, size),
        IMAGE_SUFFIXES,
        require_labels,
        seed,
        stream,
        True,
    )
    return _task_from(images, labels, split_col, names, task, source, seed, rows is not None)


def read_dicom_folder(
    root: str | Path,
    size: int | None = 224,
    seed: int = 0,
    require_labels: bool = True,
    window: tuple[float, float] | None = None,
    stream: bool | None = None,
) -> TaskData:
    """Read ``dicom:DIR`` (DICOM files + labels.csv) with modality LUT and windowing applied.

    ``stream`` True/False forces lazy/in-memory reading (None: by decoded size).
    """
    root = Path(root)
    source = f"dicom:{root}"
    if not root.is_dir():
        raise DataError(
            f"{root} is not a directory; dicom: expects a directory of DICOM files with labels.csv"
        )
    rows = _read_labels_csv(root, source, require_labels)
    images, labels, split_col, names, task = _collect(
        root,
        source,
        rows,
        lambda p: read_dicom_file(p, size, window),
        DICOM_SUFFIXES | {".dcm"},
        require_labels,
        seed,
        stream,
        True,
    )
    return _task_from(images, labels, split_col, names, task, source, seed, rows is not None)
