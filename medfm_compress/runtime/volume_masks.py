"""Volume label maps out, where clinicians and research tools read them (issue 20):

- :func:`write_nifti_mask`: a NIfTI-1 label image (uint8, ``intent = label``) with the source volume's affine
  (nibabel), so that it overlays its scan in any viewer;
- :func:`write_dicom_seg`: a DICOM Segmentation object (highdicom; binary, one segment per foreground class) that
  references the source series, for PACS and DICOM viewers.

Masks are ``(X, Y, Z)`` integer label maps, 0 = background, in the order of
:class:`~medfm_compress.data.volume.Volume` (``read_dicom_series`` puts the columns on X, the rows on Y and the
slices, sorted along the slice normal, on Z: the writer undoes exactly that). Both files are written atomically;
nibabel and highdicom are imported when called (``[nifti]``, ``[dicom]`` extras).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .._io import atomic_path
from ..errors import BackendMissingError, DataError

__all__ = ["write_nifti_mask", "write_dicom_seg", "series_in_volume_order"]


def _check_mask(mask: np.ndarray, num_classes: int | None, what: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise DataError(f"{what}: a volume mask is (X, Y, Z), got shape {mask.shape}")
    if not np.issubdtype(mask.dtype, np.integer):
        raise DataError(f"{what}: a mask holds integer labels, got {mask.dtype}")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise DataError(f"{what}: labels must be in 0..255, got {mask.min()}..{mask.max()}")
    if num_classes is not None and mask.size and mask.max() >= num_classes:
        raise DataError(f"{what}: label {int(mask.max())} is outside the {num_classes} named classes")
    return mask.astype(np.uint8)


def write_nifti_mask(mask: np.ndarray, affine: np.ndarray, path: str | Path,
                     label_names: Sequence[str] | None = None) -> Path:
    """Write ``mask`` as a NIfTI label image with ``affine`` (the source volume's voxel-to-world matrix, 4x4)."""
    try:
        import nibabel as nib
    except ImportError:
        raise BackendMissingError("nibabel (NIfTI masks)", "nifti") from None
    path = Path(path)
    mask = _check_mask(mask, len(label_names) if label_names else None, str(path))
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise DataError(f"{path}: the affine must be a finite, invertible 4x4 matrix (the source volume's), got "
                        f"shape {affine.shape}")
    img = nib.Nifti1Image(mask, affine)
    img.header.set_data_dtype(np.uint8)
    img.header.set_intent("label")
    img.header.set_xyzt_units("mm")
    if label_names:
        img.header["descrip"] = ";".join(label_names)[:79].encode()
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix or ".nii"
    with atomic_path(path, suffix=suffix) as tmp:
        nib.save(img, str(tmp))
    return path


def series_in_volume_order(series_dir: str | Path) -> list:
    """The image slices of a DICOM series folder (headers only) in the Z order ``read_dicom_series`` gives them."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    slices = []
    for f in sorted(x for x in Path(series_dir).rglob("*") if x.is_file()):
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue
        if "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds and "Rows" in ds:
            slices.append(ds)
    if len(slices) < 2:
        raise DataError(f"{series_dir} holds {len(slices)} DICOM image slice(s) with a position; a series needs "
                        "at least 2")
    iop = np.array([float(v) for v in slices[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    pos = [float(np.dot([float(v) for v in ds.ImagePositionPatient], normal)) for ds in slices]
    return [slices[i] for i in np.argsort(pos, kind="stable")]


# Class names whose SNOMED CT concept is an abnormality rather than an anatomical structure.
_ABNORMAL = {"lesion", "nodule", "mass", "tumor", "neoplasm", "effusion", "consolidation", "metastasis", "cyst"}


def _property_codes(codes, name: str):
    """``(category, type)`` codes of a segment named ``name``: the SNOMED CT concept of that name where pydicom's
    dictionary has one (Liver, Kidney, Lesion, ...), else Tissue."""
    kind = getattr(codes.SCT, "".join(w.capitalize() for w in name.replace("-", " ").replace("_", " ").split()),
                   None)
    if name.lower() in _ABNORMAL:
        return codes.SCT.MorphologicallyAbnormalStructure, kind or codes.SCT.Lesion
    if kind is not None:
        return codes.SCT.AnatomicalStructure, kind
    return codes.SCT.Tissue, codes.SCT.Tissue


def write_dicom_seg(mask: np.ndarray, series_dir: str | Path, label_names: Sequence[str], path: str | Path, *,
                    algorithm: str = "medfm-compress", version: str = "0", series_number: int = 300) -> Path:
    """Write ``mask`` (labels of the series in ``series_dir``) as a DICOM Segmentation that references it: one
    segment per foreground class present in ``label_names[1:]`` (segment number = label), binary frames."""
    try:
        import highdicom as hd
        from pydicom.sr.codedict import codes
    except ImportError:
        raise BackendMissingError("highdicom (DICOM SEG output)", "dicom") from None
    path = Path(path)
    if len(label_names) < 2:
        raise DataError(f"{path}: a segmentation needs the background and at least one class, got {list(label_names)}")
    mask = _check_mask(mask, len(label_names), str(path))
    sources = series_in_volume_order(series_dir)
    rows, cols = int(sources[0].Rows), int(sources[0].Columns)
    if mask.shape != (cols, rows, len(sources)):
        raise DataError(f"{path}: the mask {mask.shape} does not match the series in {series_dir} "
                        f"(X={cols} columns, Y={rows} rows, Z={len(sources)} slices)")
    frames = np.ascontiguousarray(np.transpose(mask, (2, 1, 0)))  # (Z, rows, cols), as the slices
    algo = hd.AlgorithmIdentificationSequence(name=algorithm, version=version,
                                              family=codes.cid7162.ArtificialIntelligence)
    descriptions = []
    for label, name in enumerate(label_names[1:], start=1):
        category, kind = _property_codes(codes, str(name))
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=label, segment_label=str(name)[:64], segmented_property_category=category,
            segmented_property_type=kind, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algo))
    try:
        seg = hd.seg.Segmentation(
            source_images=sources, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=series_number,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="medfm-compress",
            manufacturer_model_name=algorithm, software_versions=version, device_serial_number="0",
            omit_empty_frames=True)
    except (AttributeError, ValueError, TypeError, KeyError) as e:  # a source series lacking what a SEG copies
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{series_dir}: cannot reference this series from a DICOM SEG ({first})") from None
    with atomic_path(path, suffix=".dcm") as tmp:
        seg.save_as(str(tmp))
    return path
