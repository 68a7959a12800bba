"""Example tasks from real pixels, made at run time (never part of this repository).

``head_ct_slices(DIR)``: the axial slices of a real head CT (Debian's ``invesalius-examples``, GPL-2, fetched
with ``apt-get download`` and cached) as 8-bit PNGs with a ``labels.csv``: the anatomical level of each slice
(skull base, middle, vertex: thirds of the head from the skull base up) and, since every slice is written with
flipped and shifted copies, a ``group`` per slice so that no copy of one slice straddles two splits.

    python -m medfm_compress.data.examples head-ct-slices DIR [--copies 4]

``head_ct_masks(DIR)``: the same CT's axial slices at their own 256x256 with the two masks its author drew in
InVesalius (bone; head) as a segmentation folder: ``images/``, ``masks/`` (0 background, 1 soft tissue = head minus
bone, 2 bone), ``labels.json`` and a ``labels.csv`` grouping every four adjacent slices (neighbours look alike, so a
group never straddles two splits).

    python -m medfm_compress.data.examples head-ct-masks DIR
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

import numpy as np

from .._io import atomic_write_bytes, atomic_write_text, ensure_dir
from ..errors import MedfmError

__all__ = ["head_ct_slices", "head_ct_masks", "LEVELS", "WINDOW", "MASK_CLASSES"]

LEVELS = ("skull-base", "middle", "vertex")
# Wide enough for scalp, brain and bone alike (HU).
WINDOW = (-1000.0, 2000.0)
# The classes of head_ct_masks' label maps, from the background up.
MASK_CLASSES = ("background", "soft-tissue", "bone")


def _png(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def head_ct_slices(out: str | Path, copies: int = 4, seed: int = 0, volume: str | Path | None = None) -> Path:
    """Write the head CT's axial slices (and ``copies - 1`` flipped/shifted copies of each) to ``out``.

    ``volume`` is an ``.inv3`` file to use instead of fetching ``Cranium.inv3``. Returns ``out``.
    """
    from .._cache import cache_dir
    from .volume import fetch_invesalius_example, read_inv3

    if not 1 <= copies <= 4:
        raise MedfmError(f"copies must be 1..4 (the slice, its mirror, and two shifted versions), got {copies}")
    src = Path(volume) if volume else fetch_invesalius_example(cache_dir() / "invesalius")
    vol = read_inv3(src)
    hu = vol.hu  # (X, Y, Z), slice 0 at the skull base
    z_n = hu.shape[2]
    root = ensure_dir(out)
    rng = np.random.default_rng(seed)
    rows = []
    for z in range(z_n):
        img = _window(np.ascontiguousarray(hu[:, :, z].T))  # (Y, X): rows top to bottom
        level = LEVELS[min(len(LEVELS) - 1, z * len(LEVELS) // z_n)]
        variants = [("orig", img), ("flip", img[:, ::-1])]
        for k in range(2):
            dy, dx = (int(v) for v in rng.integers(-12, 13, size=2))
            base = img if k == 0 else img[:, ::-1]
            variants.append((f"shift{k}", np.roll(base, (dy, dx), axis=(0, 1))))
        for name, v in variants[:copies]:
            fname = f"slice{z:03d}_{name}.png"
            atomic_write_bytes(root / fname, _png(np.ascontiguousarray(v)))
            rows.append({"file": fname, "label": level, "group": f"slice{z:03d}"})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["file", "label", "group"], lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(root / "labels.csv", buf.getvalue())
    return root


def _window(axial_hu: np.ndarray) -> np.ndarray:
    lo, hi = WINDOW
    return np.round((np.clip(axial_hu, lo, hi) - lo) / (hi - lo) * 255).astype(np.uint8)


def head_ct_masks(out: str | Path, volume: str | Path | None = None, group: int = 4) -> Path:
    """Write the head CT's axial slices with its author's masks as a segmentation folder to ``out`` (see the module
    docstring); ``group`` adjacent slices share a group. Returns ``out``."""
    import json

    from .._cache import cache_dir
    from ..runtime.volumes import read_inv3_masks
    from .volume import fetch_invesalius_example, read_inv3

    src = Path(volume) if volume else fetch_invesalius_example(cache_dir() / "invesalius")
    vol = read_inv3(src)
    masks = read_inv3_masks(src, vol.hu.shape)
    if len(masks) != 2:
        raise MedfmError(f"{src} holds {len(masks)} masks ({', '.join(masks) or 'none'}); head-ct-masks needs the "
                         "two of Cranium.inv3 (bone, head)")
    # The bone mask is the smaller: inside the head.
    bone, head = sorted(masks.values(), key=lambda m: int(m.sum()))
    label = np.where(bone, 2, np.where(head, 1, 0)).astype(np.uint8)
    root = ensure_dir(out)
    ensure_dir(root / "images")
    ensure_dir(root / "masks")
    rows = []
    for z in range(vol.hu.shape[2]):
        fname = f"slice{z:03d}.png"
        atomic_write_bytes(root / "images" / fname, _png(_window(np.ascontiguousarray(vol.hu[:, :, z].T))))
        atomic_write_bytes(root / "masks" / fname, _png(np.ascontiguousarray(label[:, :, z].T)))
        rows.append(f"images/{fname},slices{z // group * group:03d}-{z // group * group + group - 1:03d}")
    atomic_write_text(root / "labels.json", json.dumps(list(MASK_CLASSES)) + "\n")
    atomic_write_text(root / "labels.csv", "file,group\n" + "\n".join(rows) + "\n")
    return root


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m medfm_compress.data.examples",
                                 description="Example tasks from real pixels (fetched at run time).")
    sub = ap.add_subparsers(dest="what", required=True)
    h = sub.add_parser("head-ct-slices", help="a real head CT's axial slices, labelled by anatomical level")
    h.add_argument("out")
    h.add_argument("--copies", type=int, default=4, help="versions of each slice: original, mirror, 2 shifted")
    h.add_argument("--volume", default=None, help="an .inv3 file instead of fetching Cranium.inv3")
    h.add_argument("--seed", type=int, default=0)
    m = sub.add_parser("head-ct-masks", help="the same CT's slices with its author's bone and head masks "
                       "(segmentation: background, soft tissue, bone)")
    m.add_argument("out")
    m.add_argument("--volume", default=None, help="an .inv3 file instead of fetching Cranium.inv3")
    args = ap.parse_args(argv)
    try:
        if args.what == "head-ct-masks":
            root = head_ct_masks(args.out, args.volume)
        else:
            root = head_ct_slices(args.out, args.copies, args.seed, args.volume)
    except MedfmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    n = sum(1 for _ in open(root / "labels.csv")) - 1
    if args.what == "head-ct-masks":
        print(f"wrote {n} slices with their masks ({', '.join(MASK_CLASSES)}) and labels.csv (file,group) to {root}")
    else:
        print(f"wrote {n} slices with labels.csv (file,label,group) to {root}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
