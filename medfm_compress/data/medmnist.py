"""Reader for the MedMNIST ``.npz`` layout (``train_images``, ``train_labels``, ``val_*``, ``test_*``)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from ..errors import DataError
from .dataset import SPLITS, TaskData, infer_task, validate_split

__all__ = ["read_medmnist"]


def read_medmnist(path: str | Path, label_names: list[str] | None = None) -> TaskData:
    """Read a MedMNIST-layout archive.

    Label names come from ``label_names`` if given, else from an optional ``label_names`` array in the file
    (JSON string or array of strings), else ``class_0 ... class_{K-1}``.
    """
    p = Path(path)
    source = f"medmnist:{p}"
    if not p.exists():
        raise DataError(f"{p} does not exist; check the path in --data medmnist:PATH.npz")
    if p.is_dir():
        raise DataError(f"{p} is a directory; medmnist: expects an .npz file (use folder:DIR for image folders)")
    try:
        npz = np.load(p, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{p} is not a readable .npz archive ({type(e).__name__}: {e}); re-download or regenerate it") from None
    with npz:
        keys = set(npz.files)
        splits = {}
        for name in SPLITS:
            ik, lk = f"{name}_images", f"{name}_labels"
            if ik not in keys and lk not in keys:
                continue
            if ik not in keys or lk not in keys:
                missing = ik if ik not in keys else lk
                raise DataError(f"{p} has no '{missing}' array; a MedMNIST archive needs both {ik} and {lk}")
            try:
                splits[name] = validate_split(name, npz[ik], npz[lk], source)
            except (ValueError, zipfile.BadZipFile, EOFError, OSError) as e:
                raise DataError(f"{p}: cannot read '{ik}'/'{lk}' ({e}); the archive is corrupt") from None
        if "train" not in splits or "test" not in splits:
            raise DataError(
                f"{p} lacks the train/test arrays of the MedMNIST layout (found: {', '.join(sorted(keys)) or 'nothing'}); "
                "expected train_images, train_labels, test_images, test_labels (val_* optional)"
            )
        stored_names = None
        if "label_names" in keys:
            raw = npz["label_names"]
            stored_names = json.loads(str(raw)) if raw.ndim == 0 else [str(x) for x in raw.tolist()]
        window = tuple(float(v) for v in npz["window"].tolist()) if "window" in keys else None
    shapes = {tuple(s.images.shape[1:]) for s in splits.values()}
    if len(shapes) > 1:
        raise DataError(f"{p}: splits have different image shapes {sorted(shapes)}; all splits must match")
    names = label_names or stored_names
    task, k = infer_task(splits, source, len(names) if names else None)
    if names is None:
        names = [f"class_{i}" for i in range(k)]
    if len(names) != k:
        raise DataError(f"{p}: {len(names)} label names given for {k} classes")
    if "val" not in splits:
        splits = _carve_val(splits)
    return TaskData(source=source, task=task, label_names=list(names), splits=splits, window=window)


def _carve_val(splits: dict) -> dict:
    """Take a deterministic 10% of train as validation when the archive has no val split."""
    train = splits["train"]
    n = len(train)
    rng = np.random.default_rng(0)
    idx = rng.permutation(n)
    n_val = max(1, n // 10) if n >= 10 else 0
    out = dict(splits)
    out["train"] = train.subset(np.sort(idx[n_val:]))
    out["val"] = train.subset(np.sort(idx[:n_val]))
    return out
