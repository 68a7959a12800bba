"""Volumetric segmentation data: the ``synthetic3d`` phantoms and ``nifti:DIR`` folders in the Medical Segmentation
Decathlon / nnU-Net layout, as :class:`~medfm_compress.data.dataset.TaskData` of task ``segmentation``.

The task's splits hold training patches ``(N, X, Y, Z)`` (``?patch=X,Y,Z``, ``?per_case=N``, ``?fg=F``: foreground
oversampling, seeded) and whole held-out cases, as :mod:`medfm_compress.data.patches` draws and stacks them (air and
background pad a case smaller than a patch).

Every volume is in LPS voxel order (:mod:`medfm_compress.runtime.volumes`) on one voxel spacing
(``cases.spacing_mm``, recorded in the model card so that predict resamples a new scan to it), in Hounsfield units
with an intensity window (``?window=LO,HI``, default the abdominal soft-tissue window -160..240 HU).

``nifti:DIR`` reads ``DIR/dataset.json`` (its ``labels``: MSD's ``{"0": "background", ...}`` or nnU-Net v2's
``{"background": 0, ...}``), the labelled cases it lists under ``training`` (or, without that list, every
``imagesTr/CASE[_0000].nii[.gz]`` with ``labelsTr/CASE.nii[.gz]``), resamples each to ``?spacing=SX,SY,SZ`` (default:
the median spacing of the cases; images linearly, label maps by nearest neighbour) and splits the cases (seeded) into
train / val / test (``?val=N&test=N``, default a tenth and a fifth). ``imagesTs/`` is for ``predict``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..runtime.volumes import Volume, grid_shape, read_nifti, resample_labels, resample_volume
from .patches import (
    PATCH_OPTIONS,
    LabelledCase,
    case_shapes,
    holdout_patches,
    parse_sampling,
    patch_task,
    sample_patches,
)
from .patches import floats_option as _floats
from .patches import ints_option as _ints

__all__ = ["VOLUME_SEG_WINDOW", "DEFAULT_PATCH", "LabelledCase", "sample_patches", "synthetic3d_task",
           "msd_task", "is_msd_folder", "case_shapes", "holdout_patches", "SYNTHETIC3D_OPTIONS", "MSD_OPTIONS"]

# Abdominal soft-tissue window (W 400, L 40): organs, lesions and contrast; bone and air saturate.
VOLUME_SEG_WINDOW = (-160.0, 240.0)
DEFAULT_PATCH = (48, 48, 32)
DEFAULT_PER_CASE = 8
DEFAULT_FG = 0.33
SEG3D_OPTIONS = PATCH_OPTIONS | {"window"}
SYNTHETIC3D_OPTIONS = SEG3D_OPTIONS | {"n_train", "n_val", "n_test", "shape"}
MSD_OPTIONS = SEG3D_OPTIONS | {"spacing", "val", "test"}


def _sampling(opts: dict[str, str], spec: str, seed: int) -> dict[str, Any]:
    """Patch size, patches per case, foreground fraction, window and seed from the spec's options."""
    sampling = parse_sampling(opts, spec, seed, 3, DEFAULT_PER_CASE, DEFAULT_FG, DEFAULT_PATCH)
    window = _floats(opts["window"], "window", spec, 2) if "window" in opts else VOLUME_SEG_WINDOW
    if not window[1] > window[0]:
        raise DataError(f"window={opts['window']!r} in {spec!r} must be LOW,HIGH with HIGH > LOW (HU)")
    return {**sampling, "window": window}


# ----------------------------------------------------------------------------------------------------------------
# synthetic3d


def synthetic3d_task(opts: dict[str, str], spec: str, cache: Path, seed: int = 0):
    """The ``synthetic3d`` phantoms (:mod:`.synthetic3d`) as a segmentation task; options ``n_train``, ``n_val``,
    ``n_test``, ``shape=X,Y,Z`` and the sampling options of the module docstring."""
    from .synthetic3d import Synthetic3DConfig, synthetic3d_npz

    kw: dict[str, Any] = {}
    for key in ("n_train", "n_val", "n_test"):
        if key in opts:
            kw[key] = _ints(opts[key], key, spec, 1)[0]
    if "shape" in opts:
        kw["shape"] = _ints(opts["shape"], "shape", spec, 3)
    sampling = _sampling(opts, spec, seed)
    if "seed" in opts:  # draws other phantoms, and other patches of them
        kw["seed"] = sampling["seed"]
    cfg = Synthetic3DConfig(**kw)
    with np.load(synthetic3d_npz(cfg, cache)) as z:
        arrays = {k: z[k] for k in z.files}
    spacing = tuple(float(v) for v in arrays["spacing"])
    names = list(json.loads(str(arrays["label_names"])))
    splits_cases = {
        split: [LabelledCase(f"{split}_{i:03d}", img, lab, spacing)  # type: ignore[arg-type]
                for i, (img, lab) in enumerate(zip(arrays[f"{split}_images"], arrays[f"{split}_masks"], strict=True))]
        for split in ("train", "val", "test")
    }
    return patch_task(spec, names, splits_cases, spacing, sampling,
                      {"generator": "synthetic3d", "shape": list(cfg.shape)}, window=sampling["window"])


# ----------------------------------------------------------------------------------------------------------------
# nifti:DIR (MSD / nnU-Net)


def is_msd_folder(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / "dataset.json").is_file()


def _msd_labels(root: Path, meta: dict) -> list[str]:
    raw = meta.get("labels")
    if not isinstance(raw, dict) or not raw:
        raise DataError(f"{root / 'dataset.json'} has no 'labels' mapping; write e.g. "
                        '"labels": {"0": "background", "1": "liver"}')
    pairs: list[tuple[int, str]] = []
    for k, v in raw.items():
        idx, name = (k, v) if str(k).lstrip("-").isdigit() else (v, k)  # MSD: {"0": "bg"}; nnU-Net v2: {"bg": 0}
        if isinstance(idx, list | tuple):
            raise DataError(f"{root / 'dataset.json'}: label {name!r} is a region (a list of labels); name one "
                            "integer label per class")
        try:
            pairs.append((int(idx), str(name)))
        except (TypeError, ValueError):
            raise DataError(f"{root / 'dataset.json'}: label {k!r}: {v!r} is not an integer label and a name") from None
    pairs.sort()
    if [i for i, _ in pairs] != list(range(len(pairs))) or len(pairs) < 2:
        raise DataError(f"{root / 'dataset.json'}: labels must number 0 (background), 1, 2, ... without gaps; got "
                        f"{[i for i, _ in pairs]}")
    return [n for _, n in pairs]


def _msd_pairs(root: Path, meta: dict) -> list[tuple[str, Path, Path]]:
    def case_name(p: Path) -> str:
        name = p.name.removesuffix(".gz").removesuffix(".nii")
        return name[:-5] if len(name) > 5 and name[-5] == "_" and name[-4:].isdigit() else name

    pairs = []
    if isinstance(meta.get("training"), list) and meta["training"]:
        for entry in meta["training"]:
            if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
                raise DataError(f"{root / 'dataset.json'}: each 'training' entry needs an 'image' and a 'label'")
            img, lab = root / entry["image"], root / entry["label"]
            pairs.append((case_name(img), img, lab))
    else:
        images = sorted((root / "imagesTr").glob("*.nii*"))
        if not images:
            raise DataError(f"{root}/imagesTr holds no .nii/.nii.gz images; a nifti:DIR data set is imagesTr/ + "
                            "labelsTr/ + dataset.json")
        for img in images:
            name = case_name(img)
            if img.name.removesuffix(".gz").removesuffix(".nii").endswith(("_0001", "_0002", "_0003")):
                raise DataError(f"{img}: a second channel (_0001...); volume students take one channel (CT)")
            cand = [root / "labelsTr" / f"{name}{ext}" for ext in (".nii.gz", ".nii")]
            lab = next((c for c in cand if c.exists()), cand[0])
            pairs.append((name, img, lab))
    for name, img, lab in pairs:
        if not img.is_file():
            raise DataError(f"case {name}: image {img} does not exist")
        if not lab.is_file():
            raise DataError(f"case {name}: label file {lab} does not exist; every imagesTr case needs its labelsTr "
                            "label map")
    return pairs


def _read_case(name: str, img_path: Path, lab_path: Path, label_names: list[str]) -> tuple[Volume, Volume]:
    img = read_nifti(img_path)
    lab = read_nifti(lab_path, labels=True)
    if img.shape != lab.shape:
        raise DataError(f"case {name}: image {img.shape} and label map {lab.shape} differ in shape")
    if not np.allclose(img.affine, lab.affine, atol=1e-3 * max(1.0, float(np.abs(img.affine).max()))):
        raise DataError(f"case {name}: image and label map have different affines (geometry); resample the label "
                        "map onto its image")
    values = np.unique(lab.hu)
    bad = values[(values < 0) | (values >= len(label_names))]
    if bad.size:
        raise DataError(f"case {name}: label(s) {', '.join(str(int(v)) for v in bad[:5])} in {lab_path} are not in "
                        f"dataset.json's labels (0..{len(label_names) - 1})")
    return img, lab


def msd_task(root: str | Path, opts: dict[str, str], spec: str, seed: int = 0):
    """A ``nifti:DIR`` data set as a segmentation task (see the module docstring); ``?val=N&test=N`` set the number
    of held-out cases, ``?spacing=SX,SY,SZ`` the voxel spacing."""
    root = Path(root)
    try:
        meta = json.loads((root / "dataset.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{root / 'dataset.json'} is not readable JSON ({e})") from None
    if not isinstance(meta, dict):
        raise DataError(f"{root / 'dataset.json'} must be a JSON object with 'labels'")
    label_names = _msd_labels(root, meta)
    pairs = _msd_pairs(root, meta)
    sampling = _sampling(opts, spec, seed)
    read = [(name, *_read_case(name, i, lab, label_names)) for name, i, lab in pairs]
    if "spacing" in opts:
        spacing = _floats(opts["spacing"], "spacing", spec, 3)
        if min(spacing) <= 0:
            raise DataError(f"spacing={opts['spacing']!r} in {spec!r} must be three positive sizes in mm")
    else:
        spacing = tuple(float(v) for v in np.median([img.spacing for _, img, _ in read], axis=0))
    cases = []
    for name, img, lab in read:
        shape = grid_shape(img.shape, img.spacing, spacing)
        cases.append(LabelledCase(name, resample_volume(img.hu, shape),
                                  resample_labels(lab.hu.astype(np.uint8), shape), spacing))  # type: ignore[arg-type]
    n = len(cases)
    n_val = _ints(opts["val"], "val", spec, 1)[0] if "val" in opts else max(1, round(0.1 * n))
    n_test = _ints(opts["test"], "test", spec, 1)[0] if "test" in opts else max(1, round(0.2 * n))
    if n - n_val - n_test < 1:
        raise DataError(f"{root} has {n} labelled case(s); {n_val} for val and {n_test} for test leave none to "
                        "train on: add cases or lower ?val= / ?test=")
    order = np.random.default_rng([sampling["seed"], 7]).permutation(n)
    parts = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
    splits_cases = {s: [cases[i] for i in sorted(idx)] for s, idx in (("train", parts["train"]),
                                                                        ("val", parts["val"]),
                                                                        ("test", parts["test"]))}
    return patch_task(spec, label_names, splits_cases, spacing, sampling, {"cases": n, "dataset": meta.get("name")},
                      window=sampling["window"])
