"""``predict`` for 3-D segmentation models: whole volumes in, label maps out, where clinicians and tools read them.

Per volume: read (:mod:`.volumes`: NIfTI, DICOM series, InVesalius ``.inv3``; LPS voxel order) -> resample to the
voxel spacing the model was trained at (``medfm.spacing``; linear) -> sliding-window inference
(:func:`~medfm_compress.runtime.sliding_window.segment_volume`: windows of the model's input size, overlap and batch of
windows from the config, Gaussian blending) -> the label map resampled back to the volume's own grid (nearest
neighbour) -> written, in ``cfg.out``:

- ``masks/NAME.nii.gz``: a NIfTI label image on the input's exact grid: for a NIfTI input, its voxel order and affine;
  for the other formats, the LPS array with its affine;
- ``masks/NAME.seg.dcm`` (DICOM series inputs, with the ``[dicom]`` extra): a DICOM Segmentation object referencing
  the source series;
- ``predictions.csv`` / ``predictions.json``: per volume its mask file(s), shape, spacing, and per class its voxel
  count and volume in millilitres, and the seconds it took end to end.

Inputs: ``nifti:FILE``, ``dicom-series:DIR``, ``inv3:FILE``, ``nifti:DIR`` (an MSD / nnU-Net data set: every
``imagesTs/`` volume), or plain paths (``.nii``/``.nii.gz`` and ``.inv3`` files, folders of NIfTI files, a folder of
one DICOM series). A volume that cannot be read or segmented stops the run with one line, and nothing of this run
is left behind (masks written before it are removed; the tables are written last, atomically).
"""

from __future__ import annotations

import csv
import io
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_json, atomic_write_text, ensure_dir
from ..errors import ConfigError, DataError

__all__ = ["volume_inputs", "predict_volumes", "segment_file", "VOLUME_INPUT_KINDS", "VOLUME_SUFFIXES"]

VOLUME_INPUT_KINDS = ("nifti", "dicom-series", "inv3")
# File names that are volumes whatever model is given them (a 2-D model refuses them in one line).
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".inv3")


def _name(path: Path) -> str:
    n = path.name
    for suffix in VOLUME_SUFFIXES:
        if n.endswith(suffix):
            return n[: -len(suffix)]
    return n


def volume_inputs(inputs) -> list[tuple[str, str, Path]]:
    """``(name, kind, path)`` of every volume the inputs name (see the module docstring); a path that names no
    volume is a one-line error."""
    found: list[tuple[str, str, Path]] = []
    for raw in inputs:
        text = str(raw)
        kind, sep, rest = text.partition(":")
        if sep and kind in VOLUME_INPUT_KINDS:
            path_text, _, query = rest.partition("?")
            if query:
                raise ConfigError(f"{text}: predict takes a volume as it is (its grid comes from the model); drop "
                                  f"?{query}")
            path = Path(path_text)
        elif sep and len(kind) > 1 and not Path(text).exists():
            raise ConfigError(f"{text}: a 3-D model reads volumes: nifti:FILE, nifti:DIR (dataset.json + imagesTs/), "
                              "dicom-series:DIR, inv3:FILE, or .nii/.nii.gz/.inv3 paths")
        else:
            kind, path = "", Path(text)
        if not path.exists():
            raise DataError(f"{path} does not exist")
        if kind == "nifti" and path.is_dir() or (not kind and path.is_dir() and (path / "dataset.json").is_file()):
            files = sorted(p for p in (path / "imagesTs").glob("*.nii*")) if (path / "dataset.json").is_file() \
                else sorted(path.glob("*.nii*"))
            if not files:
                raise DataError(f"{path} holds no NIfTI volumes to predict (a data set's are in imagesTs/)")
            found += [(_name(p), "nifti", p) for p in files]
        elif kind:
            found.append((_name(path), kind, path))
        elif path.is_file() and path.name.endswith((".nii", ".nii.gz")):
            found.append((_name(path), "nifti", path))
        elif path.is_file() and path.suffix == ".inv3":
            found.append((_name(path), "inv3", path))
        elif path.is_dir():
            nii = sorted(path.glob("*.nii*"))
            found += [(_name(p), "nifti", p) for p in nii] if nii else [(path.name, "dicom-series", path)]
        else:
            raise DataError(f"{path}: a 3-D model reads volumes (.nii, .nii.gz, .inv3, a DICOM series folder), not "
                            "this file")
    names = [n for n, _, _ in found]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"two inputs are both named {dup[0]!r}; their masks would overwrite each other: predict "
                          "them into separate --out folders")
    return found


def segment_file(engine, kind: str, path: str | Path, overlap: float = 0.25, sw_batch_size: int = 4,
                 progress=None) -> tuple[Any, np.ndarray]:
    """``(volume, mask)``: the volume at ``path`` (a :data:`VOLUME_INPUT_KINDS` kind) read, resampled to the model's
    spacing, segmented by sliding windows, and its label map put back on the volume's own grid (LPS order; see
    :meth:`~medfm_compress.runtime.volumes.Volume.to_source_order` for the file's). ``progress(done, total)`` is
    called over the windows once the volume is read."""
    from .sliding_window import segment_volume
    from .volumes import read_volume, resample_labels, resample_to_spacing

    volume = read_volume(kind, path)
    pre = engine.meta.preprocess
    grid = resample_to_spacing(volume, pre.spacing) if pre.spacing else volume
    mask = segment_volume(engine, grid.hu, overlap=overlap, sw_batch_size=sw_batch_size, progress=progress)
    if grid is not volume:
        mask = resample_labels(mask, volume.shape)
    return volume, mask


def _segment(engine, name: str, kind: str, path: Path, cfg) -> tuple[Any, np.ndarray, float]:
    """:func:`segment_file` with a progress bar over the windows, and when it started."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    with tqdm(total=1, disable=not cfg.progress, file=sys.stderr, unit="window", desc=f"predict {name}",
              dynamic_ncols=True) as bar:

        def progress(done, total):
            bar.total = total
            bar.n = done
            bar.refresh()

        volume, mask = segment_file(engine, kind, path, cfg.sw_overlap, cfg.sw_batch_size, progress)
    return volume, mask, t0


def predict_volumes(cfg, engine, out: Path):
    """Segment every volume of ``cfg.inputs`` with ``engine`` (a 3-D segmentation model) and write the outputs
    described in the module docstring; returns a :class:`~medfm_compress.runtime.predict.PredictResult`."""
    from .predict_result import CSV_NAME, JSON_NAME, MASKS_DIR, PredictResult
    from .volume_masks import write_dicom_seg, write_nifti_mask

    meta = engine.meta
    labels = list(meta.label_names)
    if len(labels) < 2:
        raise ConfigError(f"{cfg.model} names {len(labels)} class(es); a segmentation model names the background and "
                          "its classes (re-export it)")
    items = volume_inputs(cfg.inputs)
    written: list[Path] = []
    records: list[dict[str, Any]] = []
    t_loop = time.perf_counter()
    try:
        masks_dir = ensure_dir(out / MASKS_DIR)
        for name, kind, path in items:
            volume, mask, t0 = _segment(engine, name, kind, path, cfg)
            arr, affine = volume.to_source_order(mask)
            nii = write_nifti_mask(arr, affine, masks_dir / f"{name}.nii.gz", labels)
            written.append(nii)
            rec: dict[str, Any] = {"file": str(path), "kind": kind, "mask": f"{MASKS_DIR}/{nii.name}"}
            if kind == "dicom-series":
                seg = write_dicom_seg(mask, path, labels, masks_dir / f"{name}.seg.dcm")
                written.append(seg)
                rec["seg"] = f"{MASKS_DIR}/{seg.name}"
            voxel_ml = float(np.prod(volume.spacing)) / 1000.0
            counts = np.bincount(mask.reshape(-1), minlength=len(labels))
            rec.update({
                "shape": list(volume.shape),
                "spacing_mm": [round(float(s), 6) for s in volume.spacing],
                "voxels": {lab: int(c) for lab, c in zip(labels[1:], counts[1:], strict=True)},
                "volume_ml": {lab: round(float(c) * voxel_ml, 3) for lab, c in zip(labels[1:], counts[1:],
                                                                                  strict=True)},
                "seconds": round(time.perf_counter() - t0, 3),
            })
            records.append(rec)
        loop_s = time.perf_counter() - t_loop
        header = {"model": str(cfg.model), "backend": engine.backend_name, "task": "segmentation",
                  "label_names": labels, "inputs": [str(i) for i in cfg.inputs],
                  "sliding_window": {"roi": list(meta.preprocess.input_size), "overlap": cfg.sw_overlap,
                                     "sw_batch_size": cfg.sw_batch_size, "mode": "gaussian"},
                  "spacing_mm": list(meta.preprocess.spacing) if meta.preprocess.spacing else None}
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["file", "mask", "seg", "shape", "seconds"] + [f"ml_{lab}" for lab in labels[1:]])
        for r in records:
            w.writerow([r["file"], r["mask"], r.get("seg", ""), "x".join(map(str, r["shape"])), r["seconds"]]
                       + [r["volume_ml"][lab] for lab in labels[1:]])
        csv_path = atomic_write_text(out / CSV_NAME, buf.getvalue())
        json_path = atomic_write_json(out / JSON_NAME, {**header, "predictions": records,
                                                        "counts": {"cases": len(records)}})
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        if (out / MASKS_DIR).is_dir() and not any((out / MASKS_DIR).iterdir()):
            (out / MASKS_DIR).rmdir()
        raise
    return PredictResult(
        model=str(cfg.model), backend=engine.backend_name, task="segmentation", label_names=labels,
        cases=len(records), predicted=len(records), skipped=0, seconds=0.0,
        images_per_s=len(records) / loop_s if loop_s > 0 else float("inf"), batch_size=cfg.sw_batch_size,
        csv_path=csv_path, json_path=json_path, masks_path=out / MASKS_DIR, volumes=True,
        notes=[f"{r['file']}: {r['seconds']:.2f} s, " + ", ".join(f"{k} {v:.1f} mL" for k, v in r["volume_ml"].items())
               for r in records],
    )

