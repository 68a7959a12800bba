"""Reader for the MedMNIST ``.npz`` layout (``train_images``, ``train_labels``, ``val_*``, ``test_*``).

Segmentation archives hold ``*_masks`` (``(N,H,W)`` integer label maps, 0 = background) instead of ``*_labels``,
and ``label_names`` naming every class from the background up. Regression archives hold ``*_values`` (a number per
image, ``(N,)``, or ``(N,K)`` for K targets) and optionally ``label_names`` naming the targets.

An archive whose image arrays exceed :func:`~medfm_compress.data.lazy.memory_budget_bytes` (or read with
``stream=True``) is not loaded: ``np.load`` cannot memory-map a member of an ``.npz``, so each image array is
memory-mapped where it lies when the archive stores it uncompressed (``np.savez``), or first extracted once to
an ``.npy`` in the cache directory when it is compressed (``np.savez_compressed``), and read batch by batch.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np

from ..errors import DataError
from .dataset import SPLITS, TaskData, infer_task, validate_masks, validate_split, validate_values
from .lazy import LazyImages, memory_budget_bytes

__all__ = ["read_medmnist"]


def read_medmnist(path: str | Path, label_names: list[str] | None = None, stream: bool | None = None) -> TaskData:
    """Read a MedMNIST-layout archive.

    Label names come from ``label_names`` if given, else from an optional ``label_names`` array in the file
    (JSON string or array of strings), else ``class_0 ... class_{K-1}``. ``stream`` True/False forces lazy /
    in-memory images (None: lazy when the image arrays exceed the memory budget).
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
        if stream is None:
            stream = _images_nbytes(npz.zip, keys, p) > memory_budget_bytes()
        stored_names = None
        if "label_names" in keys:
            raw = npz["label_names"]
            stored_names = json.loads(str(raw)) if raw.ndim == 0 else [str(x) for x in raw.tolist()]
        if any(k.endswith("_masks") for k in keys):
            return _read_masks(p, npz, keys, label_names or stored_names, stream, source)
        if any(k.endswith("_values") for k in keys):
            return _read_values(p, npz, keys, label_names or stored_names, stream, source)
        arrays = _arrays(p, npz, keys, "labels", stream, source)
        try:
            splits = {name: _named(validate_split(name, images, labels, source), name)
                      for name, (images, labels) in arrays.items()}
        except (ValueError, zipfile.BadZipFile, EOFError, OSError) as e:  # a member read while it is checked
            raise DataError(f"{p}: cannot read its arrays ({e}); the archive is corrupt") from None
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


def _read_masks(p: Path, npz, keys: set[str], names: list[str] | None, stream: bool, source: str) -> TaskData:
    """A segmentation archive: ``*_images`` with ``*_masks`` label maps (not ``*_labels``)."""
    if any(k.endswith("_labels") for k in keys):
        raise DataError(f"{p} holds both *_labels and *_masks arrays; a MedMNIST archive is one task: keep the "
                        "label maps (segmentation) or the labels (classification)")
    arrays = _arrays(p, npz, keys, "masks", stream, source)
    if names is None:
        top = max(int(m.max()) if m.size else 0 for _, m in arrays.values())
        names = ["background"] + [f"class_{k}" for k in range(1, max(top, 1) + 1)]
    if len(names) < 2:
        raise DataError(f"{p}: label_names must name the background and at least one class, got {names}")
    splits = {name: _named(validate_masks(name, images, masks, list(names), source), name)
              for name, (images, masks) in arrays.items()}
    shapes = {tuple(s.images.shape[1:]) for s in splits.values()}
    if len(shapes) > 1:
        raise DataError(f"{p}: splits have different image shapes {sorted(shapes)}; all splits must match")
    if "val" not in splits:
        splits = _carve_val(splits)
    return TaskData(source=source, task="segmentation", label_names=list(names), splits=splits)


def _read_values(p: Path, npz, keys: set[str], names: list[str] | None, stream: bool, source: str) -> TaskData:
    """A regression archive: ``*_images`` with ``*_values`` (a number per image, or K per image), the targets named by
    ``label_names`` (default ``value``, or ``value_0..``)."""
    if any(k.endswith(("_labels", "_masks")) for k in keys):
        raise DataError(f"{p} holds *_values and *_labels or *_masks arrays; a MedMNIST archive is one task: keep the "
                        "values (regression) or the labels (classification)")
    splits = {name: _named(validate_values(name, images, values, source), name)
              for name, (images, values) in _arrays(p, npz, keys, "values", stream, source).items()}
    widths = {1 if s.labels.ndim == 1 else s.labels.shape[1] for s in splits.values()}
    if len(widths) > 1:
        raise DataError(f"{p}: the splits' values have different widths {sorted(widths)}; every image needs the same "
                        "targets")
    k = widths.pop()
    names = list(names) if names else (["value"] if k == 1 else [f"value_{i}" for i in range(k)])
    if len(names) != k:
        raise DataError(f"{p}: {len(names)} label names for {k} target(s) per image; name each target once")
    shapes = {tuple(s.images.shape[1:]) for s in splits.values()}
    if len(shapes) > 1:
        raise DataError(f"{p}: splits have different image shapes {sorted(shapes)}; all splits must match")
    if "val" not in splits:
        splits = _carve_val(splits)
    return TaskData(source=source, task="regression", label_names=names, splits=splits)


def _arrays(p: Path, npz, keys: set[str], targets: str, stream: bool, source: str) -> dict[str, tuple]:
    """Per split present, its ``(images, targets)`` arrays (``targets``: ``labels``, ``masks`` or ``values``); images
    memory-mapped or extracted when ``stream``. A split with one array and not the other, an archive without train and
    test, and an unreadable member are one-line errors."""
    arrays = {}
    for name in SPLITS:
        ik, tk = f"{name}_images", f"{name}_{targets}"
        if ik not in keys and tk not in keys:
            continue
        if ik not in keys or tk not in keys:
            missing = ik if ik not in keys else tk
            raise DataError(f"{p} has no '{missing}' array; a MedMNIST-layout archive needs both {ik} and {tk}")
        try:
            arrays[name] = (_lazy_member(p, npz.zip, ik, source) if stream else npz[ik], npz[tk])
        except (ValueError, zipfile.BadZipFile, EOFError, OSError) as e:
            raise DataError(f"{p}: cannot read '{ik}'/'{tk}' ({e}); the archive is corrupt") from None
    if "train" not in arrays or "test" not in arrays:
        raise DataError(f"{p} lacks the train/test arrays of the MedMNIST layout (found: "
                        f"{', '.join(sorted(keys)) or 'nothing'}); expected train_images, train_{targets}, test_images, "
                        f"test_{targets} (val_* optional)")
    return arrays


def _named(split, name: str):
    """``split`` with each image named by its place in the archive (kept when val is carved out of train)."""
    split.files = np.array([f"{name}_images[{i}]" for i in range(len(split))], dtype=object)
    return split


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


def _member_header(zf: zipfile.ZipFile, key: str, p: Path) -> tuple[zipfile.ZipInfo, tuple, bool, np.dtype, int]:
    """(zip entry, shape, fortran order, dtype, header length) of the ``.npy`` member ``key``."""
    info = zf.getinfo(f"{key}.npy")
    try:
        with zf.open(info) as fh:
            version = np.lib.format.read_magic(fh)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = reader(fh)
            header_len = fh.tell()
    except (ValueError, zipfile.BadZipFile, EOFError, OSError) as e:
        raise DataError(f"{p}: cannot read the header of '{key}' ({e}); the archive is corrupt") from None
    if dtype.hasobject:
        raise DataError(f"{p}: '{key}' holds Python objects, which are never loaded; store a numeric array")
    return info, shape, fortran, dtype, header_len


def _images_nbytes(zf: zipfile.ZipFile, keys: set[str], p: Path) -> int:
    total = 0
    for name in SPLITS:
        if f"{name}_images" in keys:
            _, shape, _, dtype, _ = _member_header(zf, f"{name}_images", p)
            total += int(np.prod(shape)) * dtype.itemsize
    return total


def _lazy_member(p: Path, zf: zipfile.ZipFile, key: str, source: str) -> LazyImages:
    """``key`` of the archive as lazily read images, memory-mapped in place or from a cached ``.npy``."""
    info, shape, fortran, dtype, header_len = _member_header(zf, key, p)
    order = "F" if fortran else "C"
    if len(shape) == 0 or shape[0] == 0:
        return LazyImages(0, shape[1:], dtype, lambda idx: np.empty((0, *shape[1:]), dtype), source)
    if info.compress_type == zipfile.ZIP_STORED:
        # The member's bytes lie uncompressed in the archive: map them where they are, after the local header.
        with open(p, "rb") as fh:
            fh.seek(info.header_offset)
            local = fh.read(30)
        if len(local) < 30 or local[:4] != b"PK\x03\x04":
            raise DataError(f"{p}: '{key}' has a damaged zip header; the archive is corrupt")
        start = info.header_offset + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")
        try:
            mm = np.memmap(p, dtype=dtype, mode="r", offset=start + header_len, shape=shape, order=order)
        except ValueError as e:
            raise DataError(f"{p}: '{key}' is truncated ({e}); the archive is corrupt") from None
    else:
        mm = np.load(_extracted(p, zf, info), mmap_mode="r", allow_pickle=False)
    return LazyImages(shape[0], shape[1:], dtype, lambda idx: np.asarray(mm[idx]), source)


def _extracted(p: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> Path:
    """A compressed member decompressed once (streamed, never whole in memory) into the cache directory."""
    from .._cache import cache_dir
    from .._io import atomic_path

    st = p.stat()
    key = hashlib.sha256(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}|{info.filename}".encode()).hexdigest()[:32]
    out = cache_dir() / "npz-members" / f"{key}.npy"
    if not out.is_file():
        with atomic_path(out) as tmp:
            try:
                with zf.open(info) as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 22)
            except (zipfile.BadZipFile, EOFError, ValueError) as e:
                raise DataError(f"{p}: cannot decompress '{info.filename}' ({e}); the archive is corrupt") from None
    return out
