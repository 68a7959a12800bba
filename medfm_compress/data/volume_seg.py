"""Volumetric segmentation data: the ``synthetic3d`` phantoms and ``nifti:DIR`` folders in the Medical Segmentation
Decathlon / nnU-Net layout, as :class:`~medfm_compress.data.dataset.TaskData` of task ``segmentation``.

The task's splits hold different things, as a volume network is trained and run:

- ``train``: **patches** ``(N, X, Y, Z)`` with their label maps, drawn per case from a seed: ``per_case`` patches of
  ``patch`` voxels, a fraction ``fg`` of them centred on a voxel of a foreground class (the class drawn uniformly
  from those the case shows, so a small lesion gets as many patches as the liver), the rest anywhere (nnU-Net's
  oversampling). A case smaller than a patch is padded (air, background). ``groups`` names each patch's case.
- ``val`` and ``test``: whole **cases** ``(N, X, Y, Z)``, scored by sliding-window inference. Cases of different sizes
  are padded (air, background) to the largest; ``cases.case_shapes[split]`` keeps each one's true size, and
  scores are taken on it.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..runtime.volumes import Volume, grid_shape, read_nifti, resample_labels, resample_volume

__all__ = ["VOLUME_SEG_WINDOW", "DEFAULT_PATCH", "LabelledCase", "sample_patches", "synthetic3d_task",
           "msd_task", "is_msd_folder", "case_shapes", "holdout_patches", "SYNTHETIC3D_OPTIONS", "MSD_OPTIONS"]

# Abdominal soft-tissue window (W 400, L 40): organs, lesions and contrast; bone and air saturate.
VOLUME_SEG_WINDOW = (-160.0, 240.0)
DEFAULT_PATCH = (48, 48, 32)
DEFAULT_PER_CASE = 8
DEFAULT_FG = 0.33
AIR_HU = -1024.0
SEG3D_OPTIONS = {"patch", "per_case", "fg", "window", "seed"}
SYNTHETIC3D_OPTIONS = SEG3D_OPTIONS | {"n_train", "n_val", "n_test", "shape"}
MSD_OPTIONS = SEG3D_OPTIONS | {"spacing", "val", "test"}


@dataclass
class LabelledCase:
    """One volume and its label map on one grid, ``(X, Y, Z)`` in LPS order."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]


# ----------------------------------------------------------------------------------------------------------------
# Options


def _ints(text: str, key: str, spec: str, n: int) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise DataError(f"{key}={text!r} in {spec!r} must be {n} integers separated by commas") from None
    if len(vals) != n or min(vals) < 1:
        raise DataError(f"{key}={text!r} in {spec!r} must be {n} positive integers separated by commas")
    return vals


def _floats(text: str, key: str, spec: str, n: int) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise DataError(f"{key}={text!r} in {spec!r} must be {n} numbers separated by commas") from None
    if len(vals) != n or not all(np.isfinite(vals)):
        raise DataError(f"{key}={text!r} in {spec!r} must be {n} numbers separated by commas")
    return vals


def _sampling(opts: dict[str, str], spec: str, seed: int) -> dict[str, Any]:
    """Patch size, patches per case, foreground fraction, window and seed from the spec's options."""
    patch = _ints(opts["patch"], "patch", spec, 3) if "patch" in opts else DEFAULT_PATCH
    per_case = _ints(opts["per_case"], "per_case", spec, 1)[0] if "per_case" in opts else DEFAULT_PER_CASE
    fg = _floats(opts["fg"], "fg", spec, 1)[0] if "fg" in opts else DEFAULT_FG
    if not 0.0 <= fg <= 1.0:
        raise DataError(f"fg={opts['fg']!r} in {spec!r} is the fraction of foreground-centred patches, in [0, 1]")
    window = _floats(opts["window"], "window", spec, 2) if "window" in opts else VOLUME_SEG_WINDOW
    if not window[1] > window[0]:
        raise DataError(f"window={opts['window']!r} in {spec!r} must be LOW,HIGH with HIGH > LOW (HU)")
    try:
        patch_seed = int(opts.get("seed", seed))
    except ValueError:
        raise DataError(f"seed={opts['seed']!r} in {spec!r} must be an integer") from None
    return {"patch": patch, "per_case": per_case, "fg": fg, "window": window, "seed": patch_seed}


# ----------------------------------------------------------------------------------------------------------------
# Patches and stacking


def _pad_to(arr: np.ndarray, shape, value) -> np.ndarray:
    pad = [(0, max(0, s - n)) for n, s in zip(arr.shape, shape, strict=True)]
    return np.pad(arr, pad, constant_values=value) if any(p[1] for p in pad) else arr


def sample_patches(cases: list[LabelledCase], patch, per_case: int, fg: float, seed: int,
                   num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(images, labels, files, groups)`` of ``per_case`` patches per case (see the module docstring)."""
    patch = tuple(int(p) for p in patch)
    images, labels, files, groups = [], [], [], []
    for c, case in enumerate(cases):
        rng = np.random.default_rng([seed, 5, c])
        shape = tuple(max(n, p) for n, p in zip(case.image.shape, patch, strict=True))
        img = _pad_to(case.image, shape, AIR_HU if np.issubdtype(case.image.dtype, np.floating) else -1024)
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
            groups.append(case.name)
    return (np.stack(images), np.stack(labels).astype(np.uint8), np.array(files, dtype=object),
            np.array(groups, dtype=object))


def _stack_cases(cases: list[LabelledCase]) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    shape = tuple(max(c.image.shape[a] for c in cases) for a in range(3))
    fill = AIR_HU if np.issubdtype(cases[0].image.dtype, np.floating) else -1024
    images = np.stack([_pad_to(c.image, shape, fill) for c in cases])
    labels = np.stack([_pad_to(c.labels, shape, 0) for c in cases]).astype(np.uint8)
    return images, labels, [list(c.image.shape) for c in cases]


def case_shapes(task, split: str) -> list[tuple[int, int, int]]:
    """The true ``(X, Y, Z)`` of each case of a whole-case split (before padding to the largest)."""
    shapes = task.cases.case_shapes.get(split) if task.cases is not None else None
    n = len(task.split(split))
    if shapes is None:
        return [tuple(int(v) for v in task.split(split).images.shape[1:4])] * n
    return [tuple(int(v) for v in s) for s in shapes]


def holdout_patches(task, split: str, n: int, seed: int) -> np.ndarray:
    """``n`` patches (training size, foreground-oversampled as training is) cut from the whole cases of ``split``:
    held-out model inputs for checks that run the model window by window (quantization's calibration gate)."""
    s = task.split(split)
    shapes = case_shapes(task, split)
    cases = [LabelledCase(str(name), s.images[i][tuple(slice(0, k) for k in shapes[i])],
                          s.labels[i][tuple(slice(0, k) for k in shapes[i])], task.cases.spacing_mm)
             for i, name in enumerate(s.file_names(split))]
    per_case = max(1, -(-int(n) // len(cases)))
    images, _, _, _ = sample_patches(cases, task.cases.patch, per_case, task.cases.fg_fraction, seed, task.num_classes)
    return images[np.random.default_rng([seed, 11]).permutation(len(images))[:n]]


def _task(source: str, label_names: list[str], splits_cases: dict[str, list[LabelledCase]], spacing,
          sampling: dict[str, Any], extra: dict[str, Any]):
    from .dataset import Split, TaskData, VolumeCases, validate_masks

    splits: dict[str, Split] = {}
    shapes: dict[str, list[list[int]]] = {}
    num_classes = len(label_names)
    for name, cases in splits_cases.items():
        if not cases:
            continue
        if name == "train":
            imgs, labs, files, groups = sample_patches(cases, sampling["patch"], sampling["per_case"],
                                                       sampling["fg"], sampling["seed"], num_classes)
        else:
            imgs, labs, shapes[name] = _stack_cases(cases)
            files = groups = np.array([c.name for c in cases], dtype=object)
        split = validate_masks(name, imgs, labs, label_names, source, files, volume=True)
        splits[name] = Split(split.images, split.labels, files, groups)
    cases_info = VolumeCases(
        spacing_mm=tuple(float(s) for s in spacing), patch=tuple(sampling["patch"]),
        patches_per_case=sampling["per_case"], fg_fraction=float(sampling["fg"]),
        case_shapes={k: tuple(tuple(int(v) for v in shape) for shape in v) for k, v in shapes.items()},
    )
    return TaskData(source=source, task="segmentation", label_names=list(label_names), splits=splits,
                    window=tuple(sampling["window"]), info=dict(extra), cases=cases_info)


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
    return _task(spec, names, splits_cases, spacing, sampling, {"generator": "synthetic3d", "shape": list(cfg.shape)})


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
    return _task(spec, label_names, splits_cases, spacing, sampling, {"cases": n, "dataset": meta.get("name")})
