"""Segmentation folders: ``folder:DIR`` with ``images/`` and ``masks/``.

Layout::

    DIR/images/case001.png     any image Pillow reads (8/16-bit grey or RGB), subfolders allowed
    DIR/masks/case001.png      its label map, same relative path and stem: single-channel PNG or integer .npy,
                               one class index per pixel, 0 = background
    DIR/labels.json            optional: the class names from the background up, ["background", "liver", ...]
                               (or {"classes": [...]}); default background, class_1 .. class_K
    DIR/labels.csv             optional: columns file (images/case001.png, or case001.png) and split and/or group

Every mask is checked against its image before anything is resized: same height and width, integer values within
the named classes; a missing mask, a float or colour mask, a size mismatch or an unnamed label is a one-line error
naming the file. ``?size=N`` resizes images bilinearly and masks with nearest-neighbour (labels never blend).
Without a split column a seeded 70/10/20 split is drawn by group (each image its own group unless labels.csv names
groups), stratified by the rarest class each image shows.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..runtime.images import (
    IMAGE_SUFFIXES,
    MASK_SUFFIXES,
    read_image_file,
    read_mask_file,
    resize_image,
    resize_mask,
    to_channels,
)
from .dataset import SPLITS, TaskData, case_strata, validate_masks
from .folder import draw_group_splits, refuse_straddling, stack_images
from .patches import LabelledCase, pad_stack, patch_task

__all__ = ["read_mask_folder", "is_mask_folder"]


def is_mask_folder(root: str | Path) -> bool:
    """True when ``root`` is laid out for segmentation (``images/`` and ``masks/`` subfolders)."""
    root = Path(root)
    return (root / "images").is_dir() and (root / "masks").is_dir()


def _class_names(root: Path) -> list[str] | None:
    p = root / "labels.json"
    if not p.is_file():
        return None
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{p} is not readable JSON ({e}); write a list of class names, background first") from None
    names = raw.get("classes") if isinstance(raw, dict) else raw
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) and n.strip() for n in names):
        raise DataError(f"{p} must list at least two class names, background first (e.g. [\"background\", \"liver\"])")
    if len(set(names)) != len(names):
        raise DataError(f"{p} names a class twice; class names must be unique")
    return [n.strip() for n in names]


def _pairs(root: Path) -> list[tuple[str, Path, Path]]:
    """``(relative image path, image, mask)`` for every image under images/, in sorted order."""
    images_dir, masks_dir = root / "images", root / "masks"
    found = sorted(p for p in images_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise DataError(f"{images_dir} contains no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    out = []
    for img in found:
        rel = img.relative_to(images_dir)
        cands = [masks_dir / rel.with_suffix(s) for s in sorted(MASK_SUFFIXES)]
        masks = [c for c in cands if c.is_file()]
        if not masks:
            raise DataError(f"{img} has no mask: expected {masks_dir / rel.with_suffix('.png')} (or .npy); add it or "
                            "remove the image")
        if len(masks) > 1:
            raise DataError(f"{img} has two masks ({', '.join(m.name for m in masks)}); keep one")
        out.append((rel.as_posix(), img, masks[0]))
    image_stems = {rel.rsplit(".", 1)[0] for rel, _, _ in out}
    out = [(f"images/{rel}", img, mask) for rel, img, mask in out]  # relative to the folder, as Split.files are
    orphans = sorted(p for p in masks_dir.rglob("*") if p.is_file() and p.suffix.lower() in MASK_SUFFIXES
                     and p.relative_to(masks_dir).with_suffix("").as_posix() not in image_stems)
    if orphans:
        raise DataError(f"{orphans[0]} has no image under {images_dir} ({len(orphans)} mask(s) without an image); "
                        "add the image or remove the mask")
    return out


def _read_pair(img_path: Path, mask_path: Path, size: int | None,
               channels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    mask = read_mask_file(mask_path)
    image = read_image_file(img_path, None)
    if channels is not None:
        image = to_channels(image, channels)
    if image.shape[:2] != mask.shape:
        raise DataError(f"{mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image {img_path.name} is "
                        f"{image.shape[1]}x{image.shape[0]}; a mask must have its image's size")
    if size is not None:
        image, mask = resize_image(image, size), resize_mask(mask, size)
    return image, mask


def _split_rows(root: Path, rels: list[str]) -> tuple[list[str] | None, list[str] | None]:
    """Per image, its split and group from an optional labels.csv (``file``: the path under the folder or under
    images/)."""
    p = root / "labels.csv"
    if not p.is_file():
        return None, None
    try:
        with open(p, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{p} cannot be read as CSV ({e})") from None
    if not rows or "file" not in rows[0] or not ({"split", "group"} & set(rows[0])):
        raise DataError(f"{p} needs columns file and split and/or group for a segmentation folder (the classes come "
                        "from the masks and labels.json)")
    by_file = {}
    for r in rows:
        f = (r.get("file") or "").strip()
        by_file[f if f.startswith("images/") else f"images/{f}"] = r
    missing = [r for r in rels if r not in by_file]
    if missing:
        raise DataError(f"{p} has no row for {missing[0]} ({len(missing)} image(s) missing); list every image")
    splits = [(by_file[r].get("split") or "").strip().lower() for r in rels] if "split" in rows[0] else None
    groups = [(by_file[r].get("group") or "").strip() or r for r in rels] if "group" in rows[0] else None
    return splits, groups


def read_mask_folder(root: str | Path, size: int | None = None, seed: int = 0, channels: int | None = None,
                     sampling: dict | None = None, source: str | None = None) -> TaskData:
    """Read a segmentation folder (see the module docstring) into a ``segmentation`` task; ``channels`` 1 or 3
    converts every image to that many (:func:`~medfm_compress.runtime.images.to_channels`). ``sampling``
    (:func:`~medfm_compress.data.patches.parse_sampling`, from ``?patch=H,W``): training patches and whole held-out
    images at the images' own resolution, whose sizes may then differ."""
    root = Path(root)
    source = source or f"folder:{root}"
    names = _class_names(root)
    pairs = _pairs(root)
    images, masks = [], []
    for _, img, mask in pairs:
        im, m = _read_pair(img, mask, size, channels)
        images.append(im)
        masks.append(m)
    # Names the file unlike the rest; on patches sizes may differ (padded here to check and stratify, not to train).
    stacked = stack_images(images, source, [str(img) for _, img, _ in pairs], sizes_may_differ=sampling is not None)
    rels = np.array([rel for rel, _, _ in pairs], dtype=object)
    mask_files = [m.relative_to(root).as_posix() for _, _, m in pairs]
    stack = pad_stack(masks, 0) if sampling is not None else np.stack(masks)
    if names is None:
        if stack.dtype.kind not in "ui" and stack.dtype != bool:
            names = ["background", "class_1"]  # validate_masks refuses the float masks below
        else:
            top = int(stack.max())
            names = ["background"] + [f"class_{k}" for k in range(1, max(top, 1) + 1)]
    imgs = stacked
    # Checked whole first, so that a bad mask is named by its file whatever split it would land in.
    checked = validate_masks("all", imgs, stack, names, source, files=np.array(mask_files, dtype=object))
    split_col, group_col = _split_rows(root, list(rels))
    groups = np.array(group_col if group_col else list(rels), dtype=object)
    if split_col is not None and any(split_col):
        bad = sorted({s for s in split_col if s not in SPLITS})
        if bad:
            raise DataError(f"{root / 'labels.csv'} split column has unknown values {bad}; use train, val or test")
        split_arr = np.array(split_col)
        if group_col:
            refuse_straddling(groups, split_arr, root / "labels.csv")
        idx = {s: np.flatnonzero(split_arr == s) for s in SPLITS}
    else:
        # Stratum: the rarest class an image shows (lesions are rarer than organs), so each split gets its share.
        idx = draw_group_splits(case_strata(checked.labels, len(names)), groups, seed)
    info = {"root": os.path.realpath(root), "masks": "masks/"}
    if sampling is not None:
        cases = {s: [LabelledCase(str(rels[k]), images[k], masks[k].astype(np.uint8), None, str(groups[k]))
                     for k in i] for s, i in idx.items()}
        return patch_task(source, list(names), cases, None, sampling, info)
    splits = {}
    for s, i in idx.items():
        split = checked.subset(i)
        split.files, split.groups = rels[i], groups[i]
        splits[s] = split
    return TaskData(source=source, task="segmentation", label_names=list(names), splits=splits, info=info)
