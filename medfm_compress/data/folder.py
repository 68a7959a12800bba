"""Readers for image folders and DICOM folders with a ``labels.csv``.

``labels.csv`` columns: ``file`` (path relative to the folder) and either ``label`` (a class name or index),
``labels`` (``|``-separated class names, multi-label) or ``value`` (a number: a regression target, e.g. bone age). An optional ``split`` column (train/val/test)
assigns splits; otherwise a seeded 70/10/20 split is drawn, stratified by label, BY GROUP: an optional
``group`` column (patient or study id) names each image's group, and all images of a group land in one split.
Without a ``group`` column DICOM files are grouped by their PatientID (else StudyInstanceUID) header and other
images each form their own group. With both ``split`` and ``group`` columns, a group in two splits is an
error. For calibration a folder needs no labels file: every image is read, labels are set to 0.

Each split records what was read: ``Split.files`` (paths relative to the folder) and ``Split.groups``;
``TaskData.info["root"]`` is the folder (see :mod:`medfm_compress.data.digest`).

Decoding one file (Pillow, pydicom) lives in :mod:`medfm_compress.runtime.images`, shared with ``predict`` on
the edge install; this module adds labels, splits and streaming.

A folder whose decoded images exceed :func:`~medfm_compress.data.lazy.memory_budget_bytes` (estimated from
the first image), or read with ``stream=True``, is not loaded: its splits hold
:class:`~medfm_compress.data.lazy.LazyImages` that decode each file when its batch is used.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..runtime.images import DICOM_SUFFIXES, IMAGE_SUFFIXES, read_dicom_file, read_image_file, to_channels
from ..runtime.tasks import get_task
from .dataset import SPLITS, Split, TaskData, infer_task, label_strata, validate_split, validate_values
from .lazy import LazyImages, memory_budget_bytes, take

__all__ = ["read_folder", "read_dicom_folder", "read_image_file", "read_dicom_file", "dicom_group", "draw_group_splits",
           "refuse_straddling"]

# The shares of a drawn split, per label stratum (test and val; train takes the rest).
TEST_FRACTION, VAL_FRACTION = 0.2, 0.1


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
    if not require and {"file", "group"} <= cols and not ({"label", "labels", "value"} & cols):
        return rows  # unlabelled images that say which share a source (calibration): groups only
    if "file" not in cols or not ({"label", "labels", "value"} & cols):
        raise DataError(
            f"{csv_path} needs columns 'file' and 'label' (or 'labels' for multi-label, 'value' for a continuous "
            f"target); has {sorted(cols)}"
        )
    return rows


@dataclass
class _Collected:
    """What ``labels.csv`` (or the folder listing) says: images, labels, and per image its file and group."""

    images: np.ndarray | LazyImages
    labels: np.ndarray
    names: list[str]
    task: str | None
    files: np.ndarray  # relative to the folder
    split_col: list[str] | None = None
    groups: np.ndarray | None = None
    group_col: bool = False  # groups come from labels.csv's group column (not from file headers)


def _collect(
    root: Path,
    source: str,
    rows,
    reader,
    suffixes,
    stream: bool | None,
    finite_checked: bool,
    group_of=None,
) -> _Collected:
    """Read the images listed in ``rows`` (or every image under ``root`` when there is no labels.csv).

    ``group_of(path)`` gives an image's group when labels.csv has no ``group`` column (DICOM: the patient), or
    None; an image without a group is a group of its own.
    """
    if rows is None or not ({"label", "labels", "value"} & set(rows[0])):
        # Unlabelled: every image under the folder; its group from labels.csv's group column (file,group), else
        # group_of (a DICOM's patient), else its own.
        found = sorted(
            p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes and p.name != "labels.csv"
        )
        if not found:
            raise DataError(
                f"{root} contains no images ({', '.join(sorted(s or '(no suffix)' for s in suffixes))})"
            )
        files = np.array([p.relative_to(root).as_posix() for p in found], dtype=object)
        listed = {(r.get("file") or "").strip(): (r.get("group") or "").strip() for r in rows or []}
        groups = np.array([listed.get(f) or (group_of(p) if group_of and not rows else None) or f
                           for f, p in zip(files, found, strict=True)], dtype=object)
        images = _load_images([str(p) for p in found], reader, source, stream, finite_checked)
        return _Collected(images, np.zeros(len(found), dtype=np.int64), ["unlabeled"], "multiclass", files,
                          groups=groups, group_col=rows is not None)
    multilabel = "labels" in rows[0] and "label" not in rows[0]
    continuous = "value" in rows[0] and not ({"label", "labels"} & set(rows[0]))
    group_col = "group" in rows[0]
    raw_labels, paths, rels, splits, groups = [], [], [], [], []
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
        rels.append(rel)
        raw_labels.append(row.get("labels" if multilabel else "value" if continuous else "label") or "")
        splits.append((row.get("split") or "").strip().lower())
        group = (row.get("group") or "").strip() if group_col else (group_of(path) if group_of else None)
        groups.append(group or rel)
    if continuous:
        labels = np.empty(len(raw_labels), dtype=np.float32)
        for i, text in enumerate(raw_labels):
            try:
                labels[i] = float(text)
            except ValueError:
                raise DataError(f"{root / 'labels.csv'} line {i + 2}: value {text!r} of {rels[i]} is not a number; "
                                "every image needs a numeric value") from None
        if not np.isfinite(labels).all():
            i = int(np.flatnonzero(~np.isfinite(labels))[0])
            raise DataError(f"{root / 'labels.csv'} line {i + 2}: value of {rels[i]} is not finite")
        names, task = ["value"], "regression"
    elif multilabel:
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
    images = _load_images(paths, reader, source, stream, finite_checked)
    return _Collected(
        images, labels, names, task, np.array(rels, dtype=object), splits, np.array(groups, dtype=object), group_col
    )


def dicom_group(path: str | Path) -> str | None:
    """The group of a DICOM image for splitting: its PatientID, else ``study:`` + its StudyInstanceUID, else None.

    Reads the header only (no pixel data); a file pydicom cannot parse has no group (its decode reports it).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["PatientID", "StudyInstanceUID"])
    except (InvalidDicomError, OSError, ValueError, EOFError, TypeError, AttributeError):
        return None
    patient = str(ds.get("PatientID", "") or "").strip()
    if patient:
        return patient
    study = str(ds.get("StudyInstanceUID", "") or "").strip()
    return f"study:{study}" if study else None


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
        return stack_images([first] + [reader(p) for p in paths[1:]], source, [str(p) for p in paths])

    def read(idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx), *first.shape), dtype=first.dtype)
        for j, i in enumerate(idx):
            im = reader(paths[i])
            if im.shape != first.shape or im.dtype != first.dtype:
                raise DataError(_mismatch(source, str(paths[i]), im, str(paths[0]), first, 1))
            out[j] = im
        return out

    return LazyImages(len(paths), first.shape, first.dtype, read, source, finite_checked=finite_checked)


def _describe(im: np.ndarray) -> str:
    kind = "colour" if im.ndim == 3 else "grey"
    return f"a {im.shape[1]}x{im.shape[0]} {kind} {im.dtype} image"


def _mismatch(source: str, odd: str, odd_im: np.ndarray, usual: str, usual_im: np.ndarray, n_odd: int) -> str:
    """The one line that names the file breaking a set (the first of ``n_odd`` unlike the rest) and the fix that
    applies: converting channels (``?channels=``), resizing (``?size=``), or removing it."""
    others = f" ({n_odd - 1} more like it)" if n_odd > 1 else ""
    head = f"{source}: {odd} is {_describe(odd_im)}{others}, but {Path(usual).name} (and the rest) is {_describe(usual_im)}"
    if odd_im.ndim != usual_im.ndim:
        fix = ("add ?channels=1 to convert colour images to their luminance (0.299 R + 0.587 G + 0.114 B)"
               if usual_im.ndim == 2 else "add ?channels=3 to repeat grey images into three channels")
        return f"{head}; {fix}, or remove the file"
    if odd_im.shape[:2] != usual_im.shape[:2]:
        return f"{head}; add ?size=N to the spec to resize every image, or remove the file"
    return f"{head}; convert the images to one bit depth, or remove the file"


def stack_images(images: list[np.ndarray], source: str, paths: list[str], sizes_may_differ: bool = False) -> np.ndarray:
    """``images`` as one array; a set that mixes shapes or bit depths is refused naming the first file unlike the
    most common kind, with the fix that applies. ``sizes_may_differ``: only channels and bit depths must agree, and
    smaller images are padded with 0 at their bottom and right to the largest."""
    kinds = [((im.ndim, *im.shape[2:]) if sizes_may_differ else im.shape, str(im.dtype)) for im in images]
    counts: dict[tuple, int] = {}
    for k in kinds:
        counts[k] = counts.get(k, 0) + 1
    if len(counts) > 1:
        usual = max(counts, key=lambda k: counts[k])
        odd = [i for i, k in enumerate(kinds) if k != usual]
        ref = kinds.index(usual)
        raise DataError(_mismatch(source, paths[odd[0]], images[odd[0]], paths[ref], images[ref], len(odd)))
    if sizes_may_differ:
        from .patches import pad_stack

        return pad_stack(images, 0)
    return np.stack(images)


def _assign_splits(col: _Collected, seed: int, csv_path: Path) -> dict[str, np.ndarray]:
    """Indices of each split: from the ``split`` column, else drawn by group (:func:`draw_group_splits`)."""
    split_col = col.split_col
    if split_col is not None and any(split_col):
        bad = sorted({s for s in split_col if s not in SPLITS})
        if bad:
            raise DataError(f"labels.csv split column has unknown values {bad}; use train, val or test")
        split_arr = np.array(split_col)
        if col.group_col:
            refuse_straddling(col.groups, split_arr, csv_path)
        return {s: np.flatnonzero(split_arr == s) for s in SPLITS}
    return draw_group_splits(label_strata(col.labels, _continuous(col)), col.groups, seed)


def refuse_straddling(groups: np.ndarray, split_arr: np.ndarray, csv_path: Path) -> None:
    """A group (patient) in two splits leaks it from training into evaluation: refuse it."""
    seen: dict[str, set[str]] = {}
    for g, s in zip(groups, split_arr, strict=True):
        if s:
            seen.setdefault(g, set()).add(s)
    bad = [(g, ss) for g, ss in seen.items() if len(ss) > 1]
    if bad:
        g, ss = bad[0]
        more = f" (and {len(bad) - 1} more group(s))" if len(bad) > 1 else ""
        raise DataError(
            f"{csv_path}: group {g!r} is in splits {' and '.join(s for s in SPLITS if s in ss)}{more}; put all "
            "images of a group in one split, or drop the split column to have splits drawn by group"
        )


def draw_group_splits(labels: np.ndarray, groups: np.ndarray | None, seed: int) -> dict[str, np.ndarray]:
    """A seeded 70/10/20 split in which no group straddles two splits, stratified by label as groups allow.

    A group's stratum is its most common label (multi-label: of each image's first positive label). Within a
    stratum the groups are shuffled and dealt out: a group goes to test while that brings test closer to its
    share of the stratum's images, else to val likewise, else to train. With one image per group this is the
    plain per-image stratified split. Should test (or val) end up empty while train holds enough groups, the
    train group closest to that split's share moves there.
    """
    n = len(labels)
    strat = label_strata(labels)
    if groups is None:
        group_of = np.arange(n)
    else:
        # Groups numbered in order of first appearance, so per-image groups keep the rows' order.
        ids: dict[str, int] = {}
        group_of = np.array([ids.setdefault(g, len(ids)) for g in groups], dtype=np.int64)
    sizes = np.bincount(group_of, minlength=int(group_of.max()) + 1 if n else 0)
    per_label = np.zeros((len(sizes), int(strat.max()) + 1 if n else 1), dtype=np.int64)
    np.add.at(per_label, (group_of, strat), 1)
    group_strat = per_label.argmax(1)
    rng = np.random.default_rng(seed)
    where = np.full(len(sizes), "train", dtype=object)
    for c in np.unique(group_strat):
        members = np.flatnonzero(group_strat == c)
        total = int(sizes[members].sum())
        want = {"test": int(round(TEST_FRACTION * total)), "val": int(round(VAL_FRACTION * total))}
        have = {"test": 0, "val": 0}
        for g in members[rng.permutation(len(members))]:
            for s in ("test", "val"):
                if have[s] + sizes[g] / 2 <= want[s]:
                    where[g] = s
                    have[s] += int(sizes[g])
                    break
    for s, fraction, min_groups in (("test", TEST_FRACTION, 2), ("val", VAL_FRACTION, 3)):
        train = np.flatnonzero(where == "train")
        if not (where == s).any() and len(train) >= 2 and len(sizes) >= min_groups:
            order = train[rng.permutation(len(train))]
            where[order[np.argmin(np.abs(sizes[order] - fraction * n))]] = s
    image_split = where[group_of]
    return {s: np.flatnonzero(image_split == s).astype(np.int64) for s in SPLITS}


def _continuous(col: _Collected) -> bool:
    """Whether the labels read are continuous values (a regression target) rather than classes."""
    return col.task is not None and get_task(col.task).continuous


def _with_channels(reader, channels: int | None):
    """``reader`` whose images are converted to ``channels`` channels (None: as read)."""
    if channels is None:
        return reader
    return lambda p: to_channels(reader(p), channels)


def _task_from(col: _Collected, source: str, seed: int, labeled: bool, root: Path) -> TaskData:
    info = {"root": os.path.realpath(root)}
    if not labeled:
        split = Split(col.images, col.labels, col.files)
        split.groups = col.groups
        return TaskData(
            source=source, task="multiclass", label_names=col.names, splits={"train": split}, info=info
        )
    idx = _assign_splits(col, seed, root / "labels.csv")
    splits = {}
    validate = validate_values if _continuous(col) else validate_split
    for s, i in idx.items():
        split = validate(s, take(col.images, i), col.labels[i], source)
        split.files, split.groups = col.files[i], col.groups[i]
        splits[s] = split
    task = col.task
    if task is None:
        task, _ = infer_task(splits, source, len(col.names))
    return TaskData(source=source, task=task, label_names=col.names, splits=splits, info=info)


def read_folder(
    root: str | Path,
    size: int | None = None,
    seed: int = 0,
    require_labels: bool = True,
    stream: bool | None = None,
    channels: int | None = None,
) -> TaskData:
    """Read ``folder:DIR`` (images + labels.csv); ``stream`` True/False forces lazy/in-memory (None: by size);
    ``channels`` 1 or 3 converts every image to that many (:func:`~medfm_compress.runtime.images.to_channels`)."""
    root = Path(root)
    source = f"folder:{root}"
    if not root.is_dir():
        raise DataError(f"{root} is not a directory; folder: expects a directory of images with labels.csv")
    rows = _read_labels_csv(root, source, require_labels)
    col = _collect(root, source, rows, _with_channels(lambda p: read_image_file(p, size), channels), IMAGE_SUFFIXES,
                   stream, True)
    return _task_from(col, source, seed, _labelled(rows), root)


def _labelled(rows) -> bool:
    return rows is not None and bool({"label", "labels", "value"} & set(rows[0]))


def read_dicom_folder(
    root: str | Path,
    size: int | None = 224,
    seed: int = 0,
    require_labels: bool = True,
    window: tuple[float, float] | None = None,
    stream: bool | None = None,
    channels: int | None = None,
) -> TaskData:
    """Read ``dicom:DIR`` (DICOM files + labels.csv) with modality LUT and windowing applied; ``channels`` as for
    :func:`read_folder`.

    ``stream`` True/False forces lazy/in-memory reading (None: by decoded size).
    """
    root = Path(root)
    source = f"dicom:{root}"
    if not root.is_dir():
        raise DataError(
            f"{root} is not a directory; dicom: expects a directory of DICOM files with labels.csv"
        )
    rows = _read_labels_csv(root, source, require_labels)
    col = _collect(
        root,
        source,
        rows,
        _with_channels(lambda p: read_dicom_file(p, size, window), channels),
        DICOM_SUFFIXES | {".dcm"},
        stream,
        True,
        group_of=dicom_group,
    )
    return _task_from(col, source, seed, _labelled(rows), root)
