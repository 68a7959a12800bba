"""What a stage read, made visible and checkable: the splits as a table, and a digest of the data per split.

:func:`data_digest` hashes, per split and in order, what was actually read: for a folder (``folder:``,
``dicom:``) each file's relative path, its label and the SHA-256 of its bytes; for arrays (MedMNIST archives,
the synthetic default, volume crops) the image and label arrays themselves. A stage stores the result in its
manifest record beside the full data spec (options included) and writes :func:`write_splits_csv`
(``splits.csv``: file, group, split, label and, for folders, each file's SHA-256). :func:`verify_run_data`
reads the data again from the recorded spec and names what changed: which split, and for folders which files
were added, removed, changed or relabelled (``medfm-compress verify RUN_DIR --data``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_text, sha256_file
from ..errors import DataError, MedfmError
from ..layout import RunLayout
from ..runtime.tasks import get_task
from .dataset import SPLITS, Split, TaskData, class_presence
from .lazy import iter_batches

__all__ = [
    "DIGEST_VERSION",
    "SPLITS_CSV",
    "data_digest",
    "split_labels",
    "split_summary",
    "write_splits_csv",
    "read_splits_csv",
    "compare_data",
    "verify_run_data",
]

DIGEST_VERSION = 1
SPLITS_CSV = RunLayout(".").splits.name
# Names listed per kind of change before "... (N more)".
_SHOWN = 5
_CONTENT_KEY = "_content_digest"


def _ordered_splits(task: TaskData) -> list[str]:
    return [s for s in SPLITS if s in task.splits] + [s for s in task.splits if s not in SPLITS]


def split_labels(task: TaskData, name: str) -> list[str]:
    """Each image's label as text: its class name, ``a|b`` for multi-label, empty for label-free tasks, and for
    segmentation ``mask:`` + the first 16 hex digits of the SHA-256 of its label map as read (after any resize)."""
    labels = np.asarray(task.splits[name].labels)
    names = task.label_names
    if get_task(task.task).continuous:
        return [",".join(f"{v:.7g}" for v in np.atleast_1d(row)) for row in labels]
    if labels.ndim >= 3:  # label maps
        return [f"mask:{hashlib.sha256(np.ascontiguousarray(m).tobytes()).hexdigest()[:16]}" for m in labels]
    if not names:
        return [""] * len(labels)
    if labels.ndim == 2:
        return ["|".join(names[k] for k in np.flatnonzero(row)) for row in labels]
    return [names[int(k)] if 0 <= int(k) < len(names) else str(int(k)) for k in labels]


def _file_hashes(task: TaskData, split: Split) -> list[str]:
    """The SHA-256 of each image's file; a training patch (``FILE@Y,X``, segmentation on patches) is its file's."""
    root = Path(task.info["root"])
    out: list[str] = []
    seen: dict[str, str] = {}
    for rel in split.files:
        name = str(rel).rsplit("@", 1)[0] if task.whole_cases else str(rel)
        try:
            if name not in seen:
                seen[name] = sha256_file(root / name)
        except OSError as e:
            raise DataError(f"{root / name} cannot be read to hash it ({e.strerror or e}); check the folder") from None
        out.append(seen[name])
    return out


def _array_hash(h, arr: np.ndarray) -> None:
    arr = np.ascontiguousarray(arr)
    h.update(json.dumps({"dtype": arr.dtype.str, "shape": list(arr.shape)}).encode())
    h.update(arr.tobytes())


def _content(task: TaskData) -> dict[str, Any]:
    """The digest of what was read, computed once per task (files are hashed on the first call)."""
    cached = task.info.get(_CONTENT_KEY)
    if cached is not None:
        return cached
    from_files = "root" in task.info and all(s.files is not None for s in task.splits.values())
    splits: dict[str, Any] = {}
    for name in _ordered_splits(task):
        split = task.splits[name]
        h = hashlib.sha256()
        entry: dict[str, Any] = {"n": len(split), "groups": int(len(set(split.group_ids(name).tolist())))}
        if from_files:
            hashes = _file_hashes(task, split)
            for rel, label, sha in zip(split.files, split_labels(task, name), hashes, strict=True):
                h.update(f"{rel}\0{label}\0{sha}\n".encode())
            entry["file_sha256"] = hashes
        else:
            ih = hashlib.sha256()
            ih.update(json.dumps({"dtype": split.images.dtype.str, "shape": list(split.images.shape)}).encode())
            for batch in iter_batches(split.images, 256):
                ih.update(np.ascontiguousarray(batch).tobytes())
            h.update(ih.digest())
            _array_hash(h, np.asarray(split.labels))
        entry["sha256"] = h.hexdigest()
        splits[name] = entry
    overall = hashlib.sha256(
        json.dumps({k: v["sha256"] for k, v in splits.items()}, sort_keys=True).encode()
    ).hexdigest()
    content = {"content": "files" if from_files else "arrays", "sha256": overall, "splits": splits}
    task.info[_CONTENT_KEY] = content
    return content


def data_digest(task: TaskData, spec: str | None = None, seed: int = 0, require_labels: bool = True) -> dict[str, Any]:
    """The record of what was read, for a manifest: spec (options included), how it was loaded, and per split
    the image and group counts and a SHA-256 (see the module docstring). Files are hashed once per task.

    Args:
        task: the loaded task.
        spec: the data spec it was loaded from (default: ``task.source``).
        seed, require_labels: what it was loaded with (:func:`~medfm_compress.data.spec.load_data`), so that
            :func:`verify_run_data` can load it the same way.
    """
    from .spec import absolute_spec

    spec = spec or task.source
    content = _content(task)
    return {
        "version": DIGEST_VERSION,
        "spec": spec,
        "spec_absolute": absolute_spec(spec),
        "seed": int(seed),
        "require_labels": bool(require_labels),
        "content": content["content"],
        "sha256": content["sha256"],
        "splits": {
            k: {key: v for key, v in entry.items() if key != "file_sha256"} for k, entry in content["splits"].items()
        },
    }


def write_splits_csv(task: TaskData, path: str | os.PathLike) -> Path:
    """``splits.csv`` (atomically): one row per image read, with columns file (a path relative to the folder,
    or the image's place in its array), group, split, label and, for folders, the file's sha256."""
    content = _content(task)
    with_sha = content["content"] == "files"
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["file", "group", "split", "label"] + (["sha256"] if with_sha else []))
    for name in _ordered_splits(task):
        split = task.splits[name]
        files, groups, labels = split.file_names(name), split.group_ids(name), split_labels(task, name)
        shas = content["splits"][name].get("file_sha256") if with_sha else None
        for i in range(len(split)):
            writer.writerow([files[i], groups[i], name, labels[i]] + ([shas[i]] if with_sha else []))
    return atomic_write_text(path, buf.getvalue())


def read_splits_csv(path: str | os.PathLike) -> dict[str, dict[str, dict[str, str]]]:
    """``splits.csv`` back: ``{split: {file: row}}``."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path} cannot be read as CSV ({e})") from None
    out: dict[str, dict[str, dict[str, str]]] = {}
    for row in rows:
        out.setdefault(row.get("split", ""), {})[row.get("file", "")] = row
    return out


def split_summary(task: TaskData) -> list[str]:
    """One compact line per split: images and groups, and per class images (groups); then a warning line if a
    group is in more than one split (splits given by labels.csv while DICOM headers name one patient twice)."""
    lines = []
    where: dict[str, set[str]] = {}
    labeled = bool(task.label_names) and task.label_names != ["unlabeled"]
    for name in _ordered_splits(task):
        split = task.splits[name]
        groups = split.group_ids(name)
        n_groups = len(set(groups.tolist()))
        if split.groups is not None:
            for g in set(split.groups.tolist()):
                where.setdefault(g, set()).add(name)
        line = f"split {name}: {len(split)} images in {n_groups} groups"
        if get_task(task.task).continuous and len(split):
            values = np.asarray(split.labels, dtype=np.float64)
            line += f" | values {values.min():.4g}..{values.max():.4g}, mean {values.mean():.4g}"
        elif labeled and len(split):
            members = class_presence(split.labels, task.num_classes)
            parts = []
            for k, cls in enumerate(task.label_names):
                mask = members[:, k]
                parts.append(f"{cls} {int(mask.sum())} ({len(set(groups[mask].tolist()))})")
            line += " | per class, images (groups): " + ", ".join(parts)
        lines.append(line)
    leaks = sorted((g, s) for g, s in where.items() if len(s) > 1)
    if leaks:
        shown = ", ".join(f"{g}: {'+'.join(x for x in SPLITS if x in s)}" for g, s in leaks[:3])
        lines.append(
            f"warning: {len(leaks)} group(s) are in more than one split ({shown}); their images leak between "
            "training and evaluation: give labels.csv a group column, or drop its split column to draw splits by group"
        )
    return lines


def _names(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    return shown + (f", ... ({len(items) - _SHOWN} more)" if len(items) > _SHOWN else "")


def _file_changes(name: str, task: TaskData, content: dict[str, Any], old: dict[str, dict[str, dict[str, str]]]
                  ) -> str:
    """``added 1: x.png; removed 2: ...`` for split ``name`` of a folder, against the rows of ``splits.csv``."""
    split = task.splits.get(name)
    before = old.get(name, {})
    now: dict[str, tuple[str, str]] = {}
    if split is not None:
        for f, lab, sha in zip(split.files, split_labels(task, name), content["splits"][name]["file_sha256"],
                               strict=True):
            now[str(f)] = (lab, sha)
    elsewhere = {f: s for s, rows in old.items() if s != name for f in rows}
    added = [f + (f" (was in {elsewhere[f]})" if f in elsewhere else "") for f in now if f not in before]
    removed = [f for f in before if f not in now]
    changed = [f for f in now if f in before and before[f].get("sha256") and before[f]["sha256"] != now[f][1]]
    relabelled = [f"{f} ({before[f].get('label')} -> {now[f][0]})" for f in now
                  if f in before and before[f].get("label") != now[f][0]]
    parts = [f"{what} {len(items)}: {_names(items)}" for what, items in
             (("changed", changed), ("added", added), ("removed", removed), ("relabelled", relabelled)) if items]
    return "; ".join(parts)


def compare_data(record: dict[str, Any], splits_csv: str | os.PathLike | None = None) -> list[str]:
    """Load the data of a :func:`data_digest` record again and compare: one line per split that differs (for
    folders with the recorded ``splits_csv``: the files added, removed, changed or relabelled); [] when equal."""
    from .spec import load_data

    spec = record.get("spec_absolute") or record["spec"]
    try:
        task = load_data(spec, require_labels=bool(record.get("require_labels", True)), seed=int(record.get("seed", 0)))
        now = data_digest(task, record["spec"], int(record.get("seed", 0)), bool(record.get("require_labels", True)))
    except MedfmError as e:
        return [f"{record['spec']} cannot be read as it was: {e}"]
    if now["sha256"] == record.get("sha256"):
        return []
    content = _content(task)
    old_rows = read_splits_csv(splits_csv) if splits_csv and Path(splits_csv).is_file() else None
    lines = []
    was, is_ = record.get("splits", {}), now["splits"]
    for name in list(was) + [s for s in is_ if s not in was]:
        a, b = was.get(name), is_.get(name)
        if a is not None and b is not None and a.get("sha256") == b["sha256"]:
            continue
        sizes = f"{a['n'] if a else 0} -> {b['n'] if b else 0} images"
        what = "is new" if a is None else "is gone" if b is None else "changed"
        line = f"{record['spec']}: the {name} split {what} ({sizes})"
        if old_rows is not None and content["content"] == "files":
            detail = _file_changes(name, task, content, old_rows)
            line += f": {detail}" if detail else ": same files, other order"
        lines.append(line)
    return lines


def verify_run_data(run_dir: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Re-read the data of every stage of ``run_dir`` that recorded a data digest: ``(checked, problems)``, one
    line each; a run directory in which no stage recorded one is an error."""
    from ..manifest import Manifest

    run_dir = Path(run_dir)
    manifest = Manifest(run_dir)
    checked, problems = [], []
    for stage in manifest.data["stages"]:
        splits_csv = None
        for name, entry in stage.get("outputs", {}).items():
            if name == "splits" or Path(entry["path"]).name == SPLITS_CSV:
                p = Path(entry["path"])
                splits_csv = p if p.is_absolute() else run_dir / p
        for name, entry in stage.get("inputs", {}).items():
            record = entry.get("digest")
            if not isinstance(record, dict):
                continue
            lines = compare_data(record, splits_csv)
            problems += [f"{stage['stage']}/{name}: {line}" for line in lines]
            if not lines:
                splits = record.get("splits", {})
                sizes = f"{'/'.join(splits)} {'/'.join(str(v['n']) for v in splits.values())} images"
                checked.append(f"{stage['stage']}/{name}: {record['spec']} unchanged ({sizes})")
    if not checked and not problems:
        raise MedfmError(
            f"no stage in {run_dir} recorded a digest of its data (runs written before data digests existed); "
            "re-run the stage to record one"
        )
    return checked, problems
