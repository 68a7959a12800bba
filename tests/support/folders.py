"""Small labelled image and DICOM folders with patient groups, in the layouts ``folder:`` and ``dicom:`` read."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def patient_folder(root: Path, patients: int = 40, size: int = 8, seed: int = 0, max_images: int = 5,
                   group_column: bool = True, split_of=None) -> dict[str, str]:
    """PNG images of ``patients`` patients (1..``max_images`` each, one label per patient: every third one
    'lesion'), with a labels.csv (file,label[,group][,split]); returns {file: patient}. ``split_of(patient_index,
    image_index)`` fills a split column."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    header = ["file", "label"] + (["group"] if group_column else []) + (["split"] if split_of else [])
    rows, owner = [",".join(header)], {}
    for p in range(patients):
        label = "lesion" if p % 3 == 0 else "normal"
        for j in range(int(rng.integers(1, max_images + 1))):
            name = f"p{p:03d}_{j}.png"
            Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(root / name)
            row = [name, label] + ([f"P{p}"] if group_column else []) + ([split_of(p, j)] if split_of else [])
            rows.append(",".join(row))
            owner[name] = f"P{p}"
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return owner


def write_dicom_image(path: Path, pixels: np.ndarray, patient_id: str | None = None, study_uid: str | None = None
                      ) -> Path:
    """One small MONOCHROME2 CT image; PatientID / StudyInstanceUID only when given."""
    from .volume_fixtures import ct_dataset

    ds = ct_dataset(*pixels.shape, pixels)
    if patient_id is not None:
        ds.PatientID = patient_id
    if study_uid is not None:
        ds.StudyInstanceUID = study_uid
    ds.save_as(path, enforce_file_format=True)
    return path
