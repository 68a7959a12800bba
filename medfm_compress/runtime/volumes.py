"""Volumes in: NIfTI files, DICOM series and InVesalius ``.inv3`` projects read into one array convention, and
resampled between voxel grids (NumPy only, so an edge install segments volumes without torch).

A :class:`Volume` holds its intensities (Hounsfield units for CT) as float32 ``(X, Y, Z)`` in **LPS voxel order**,
the order a standard axial DICOM series has: X runs toward the patient's left, Y posterior, Z superior. Every
reader puts its file's axes into that order (NIfTI files of any orientation are reoriented by their affine), so a
scan gives the same array however it was stored, and a model trained on one format reads the others.
``affine`` maps voxel indices of that array to NIfTI (RAS+) world coordinates in mm; ``source_affine`` and
``source_ornt`` (NIfTI only) say how to put a label map back into the file's own voxel order
(:meth:`Volume.to_source_order`), so that a mask written beside its scan has the scan's exact grid and affine.
"""

from __future__ import annotations

import hashlib
import json
import plistlib
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendMissingError, DataError

__all__ = ["Volume", "VOLUME_KINDS", "read_nifti", "read_dicom_series", "read_inv3", "read_inv3_masks", "read_volume",
           "resample_volume", "resample_labels", "resample_to_spacing", "grid_shape", "LPS"]

VOLUME_KINDS = ("nifti", "dicom-series", "inv3")
LPS = ("L", "P", "S")
_INV3_DTYPES = {"int16", "uint16", "int8", "uint8", "int32", "float32", "float64"}
# DICOM patient coordinates (LPS) to NIfTI world coordinates (RAS): x and y change sign.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class Volume:
    """A volume, ``(X, Y, Z)`` float32 in LPS voxel order, with voxel spacing in mm and its voxel-to-RAS affine."""

    hu: np.ndarray
    spacing: tuple[float, float, float]
    source: str
    info: dict[str, Any] = field(default_factory=dict)
    _sha: str | None = None
    affine: np.ndarray | None = None
    source_affine: np.ndarray | None = None
    source_ornt: np.ndarray | None = None

    def __post_init__(self):
        if self.affine is None:  # no geometry in the file (inv3): the spacing on LPS axes, origin at voxel 0
            self.affine = _LPS_TO_RAS @ np.diag([*self.spacing, 1.0])

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.hu.shape)  # type: ignore[return-value]

    @property
    def sha256(self) -> str:
        """Hash of the HU array and spacing: the identity of the volume for caches, whatever file it came from."""
        if self._sha is None:
            h = hashlib.sha256()
            h.update(
                json.dumps(
                    {"shape": list(self.shape), "spacing": [round(s, 6) for s in self.spacing]}
                ).encode()
            )
            h.update(np.ascontiguousarray(self.hu, dtype=np.float32).tobytes())
            self._sha = h.hexdigest()
        return self._sha

    def to_source_order(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(array, affine)``: a label map on this volume's grid in the voxel order and affine of the file it was
        read from (a NIfTI file's own orientation), or as it is with :attr:`affine` for the other formats."""
        mask = np.asarray(mask)
        if mask.shape != self.shape:
            raise DataError(f"a mask of shape {mask.shape} is not on the grid of {self.source} ({self.shape})")
        if self.source_ornt is None:
            return mask, np.asarray(self.affine)
        from nibabel.orientations import apply_orientation, axcodes2ornt, ornt_transform

        back = ornt_transform(axcodes2ornt(LPS), self.source_ornt)
        return np.ascontiguousarray(apply_orientation(mask, back)), np.asarray(self.source_affine)


def _check_volume(hu: np.ndarray, source: str) -> np.ndarray:
    if hu.ndim != 3 or min(hu.shape) < 1:
        raise DataError(f"{source}: expected a 3-D volume, got shape {hu.shape}")
    hu = np.ascontiguousarray(hu, dtype=np.float32)
    if not np.isfinite(hu).all():
        raise DataError(f"{source}: the volume has {int((~np.isfinite(hu)).sum())} NaN or infinite voxels; clean "
                        "it first")
    return hu


def _nibabel():
    try:
        import nibabel as nib
    except ImportError:
        raise BackendMissingError("nibabel (NIfTI volumes)", "nifti") from None
    return nib


def read_nifti(path: str | Path, *, labels: bool = False) -> Volume:
    """A NIfTI file, reoriented to LPS voxel order by its affine; scale slope/intercept applied. ``labels``: a label
    map (integer values kept exact; ``hu`` then holds them as float32)."""
    nib = _nibabel()
    from nibabel.orientations import (
        apply_orientation,
        axcodes2ornt,
        inv_ornt_aff,
        io_orientation,
        ornt_transform,
    )

    p = Path(path)
    if not p.is_file():
        raise DataError(f"NIfTI file {p} does not exist")
    try:
        img = nib.load(str(p))
        data = np.asarray(img.dataobj if labels else img.get_fdata(dtype=np.float32))
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as e:  # noqa: BLE001 - nibabel raises many types for broken files
        raise DataError(f"{p} is not a readable NIfTI file ({type(e).__name__}: {e})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"{p}: expected a 3-D volume, got shape {data.shape} (one channel, one time point)")
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise DataError(f"{p}: its affine is not a finite invertible matrix; fix the header (qform/sform)")
    ornt = io_orientation(affine)
    to_lps = ornt_transform(ornt, axcodes2ornt(LPS))
    shape = data.shape
    data = apply_orientation(data, to_lps)
    lps_affine = affine @ inv_ornt_aff(to_lps, shape)
    spacing = tuple(float(v) for v in np.sqrt((lps_affine[:3, :3] ** 2).sum(axis=0)))
    if labels:
        arr = np.asarray(data)
        if np.issubdtype(arr.dtype, np.floating) and (not np.isfinite(arr).all() or (arr != np.round(arr)).any()):
            raise DataError(f"{p}: a label map holds whole numbers, this one has fractional or NaN values")
        hu = np.ascontiguousarray(arr, dtype=np.float32)
    else:
        hu = _check_volume(data, str(p))
    return Volume(hu, spacing, f"nifti:{p}", {"format": "nifti"}, affine=lps_affine, source_affine=affine,
                  source_ornt=ornt)


def read_dicom_series(directory: str | Path) -> Volume:
    """One DICOM series from a folder: slices sorted by ImagePositionPatient along the slice normal,
    RescaleSlope/RescaleIntercept applied (HU). Files that are not image slices (no pixel data or no
    position) are skipped; mixed orientations or sizes are an error."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    d = Path(directory)
    if not d.is_dir():
        raise DataError(f"DICOM series folder {d} does not exist")
    slices = []
    for f in sorted(x for x in d.rglob("*") if x.is_file()):
        try:
            ds = pydicom.dcmread(str(f))
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue
        if "PixelData" not in ds or "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
            continue
        slices.append((f, ds))
    if len(slices) < 2:
        raise DataError(
            f"{d} holds {len(slices)} DICOM image slice(s) with a position; a series needs at least 2"
        )
    iop = np.array([float(v) for v in slices[0][1].ImageOrientationPatient])
    size = (int(slices[0][1].Rows), int(slices[0][1].Columns))
    for f, ds in slices:
        if not np.allclose([float(v) for v in ds.ImageOrientationPatient], iop, atol=1e-3):
            raise DataError(
                f"{f}: orientation differs from the rest of the series; keep one series per folder"
            )
        if (int(ds.Rows), int(ds.Columns)) != size:
            raise DataError(f"{f}: slice size {ds.Rows}x{ds.Columns} differs from {size[0]}x{size[1]}")
    normal = np.cross(iop[:3], iop[3:])
    pos = np.array([np.dot([float(v) for v in ds.ImagePositionPatient], normal) for _, ds in slices])
    order = np.argsort(pos, kind="stable")
    pos = pos[order]
    if np.any(np.diff(pos) < 1e-4):
        raise DataError(f"{d}: two slices share a position; the folder mixes series or holds duplicates")
    hu = np.empty((len(slices), *size), dtype=np.float32)  # (Z, rows, cols)
    for z, i in enumerate(order):
        ds = slices[i][1]
        try:
            arr = ds.pixel_array.astype(np.float32)
        except Exception as e:  # noqa: BLE001 - pixel decoding raises many types
            raise DataError(
                f"{slices[i][0]}: pixel data cannot be decoded ({type(e).__name__}: {e})"
            ) from None
        hu[z] = arr * float(getattr(ds, "RescaleSlope", 1) or 1) + float(
            getattr(ds, "RescaleIntercept", 0) or 0
        )
    ps = getattr(slices[0][1], "PixelSpacing", None) or [1.0, 1.0]
    dz = float(np.median(np.diff(pos)))
    # Voxel (column, row, slice) -> patient LPS mm, then to RAS for NIfTI.
    lps = np.eye(4)
    lps[:3, 0] = iop[:3] * float(ps[1])
    lps[:3, 1] = iop[3:] * float(ps[0])
    lps[:3, 2] = normal * dz
    lps[:3, 3] = [float(v) for v in slices[order[0]][1].ImagePositionPatient]
    # (Z, rows, cols) -> (X = columns, Y = rows, Z)
    vol = np.transpose(hu, (2, 1, 0))
    return Volume(
        _check_volume(vol, str(d)),
        (float(ps[1]), float(ps[0]), dz),
        f"dicom-series:{d}",
        {"format": "dicom", "slices": len(slices)},
        affine=_LPS_TO_RAS @ lps,
    )


def read_inv3(path: str | Path) -> Volume:
    """An InVesalius 3 project (``.inv3``: a gzip tar holding ``main.plist`` and the raw ``matrix.dat``).

    The plist's ``matrix`` entry gives dtype and shape ``(Z, Y, X)``; ``spacing`` is ``(x, y, z)`` in mm.
    Members are read from the archive in memory; nothing is extracted to disk.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"InVesalius project {p} does not exist")
    try:
        with tarfile.open(str(p), "r:gz") as tar:
            members = {m.name: m for m in tar.getmembers() if m.isfile()}
            mains = [n for n in members if Path(n).name == "main.plist"]
            if len(mains) != 1:
                raise DataError(f"{p}: expected one main.plist in the archive, found {len(mains)}")
            main = plistlib.loads(tar.extractfile(members[mains[0]]).read())
            matrix = main.get("matrix") or {}
            shape = tuple(int(v) for v in matrix.get("shape", ()))
            dtype = str(matrix.get("dtype", ""))
            fname = str(matrix.get("filename", ""))
            spacing = tuple(float(v) for v in main.get("spacing", ()))
            if len(shape) != 3 or dtype not in _INV3_DTYPES or len(spacing) != 3 or not fname:
                raise DataError(f"{p}: main.plist lacks a usable matrix shape/dtype/filename or spacing")
            name = str(Path(mains[0]).parent / fname) if Path(mains[0]).parent != Path(".") else fname
            if name not in members:
                raise DataError(f"{p}: the archive has no {fname} next to main.plist")
            want = int(np.prod(shape)) * np.dtype(dtype).itemsize
            if members[name].size != want:
                raise DataError(
                    f"{p}: {fname} holds {members[name].size} bytes, the plist's shape needs {want}"
                )
            raw = tar.extractfile(members[name]).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{p} is not a readable .inv3 archive ({type(e).__name__}: {e})") from None
    except plistlib.InvalidFileException as e:
        raise DataError(f"{p}: main.plist is not a valid plist ({e})") from None
    arr = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)  # (Z, Y, X)
    vol = np.transpose(arr, (2, 1, 0)).astype(np.float32)
    info = {"format": "inv3", "name": main.get("name"), "modality": main.get("modality")}
    return Volume(_check_volume(vol, str(p)), spacing, f"inv3:{p}", info)  # type: ignore[arg-type]


def read_inv3_masks(path: str | Path, shape: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """The masks an InVesalius 3 project holds (``mask_N.plist`` + ``mask_N.dat``), by name, as bool ``(X, Y, Z)``
    arrays on the grid of its volume (``shape``, as :func:`read_inv3` returns it).

    InVesalius stores a mask as uint8 with one extra leading voxel on every axis (its edit bookkeeping), 255 inside;
    that border is dropped. A mask whose plist names no name is ``mask_N``.
    """
    p = Path(path)
    x, y, z = shape
    out: dict[str, np.ndarray] = {}
    try:
        with tarfile.open(str(p), "r:gz") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            for name in sorted(n for n in members if n.startswith("mask_") and n.endswith(".dat")):
                raw = tar.extractfile(members[name]).read()
                if len(raw) != (z + 1) * (y + 1) * (x + 1):
                    raise DataError(f"{p}: {name} holds {len(raw)} bytes, not a mask of the volume's {x}x{y}x{z} "
                                    "grid plus InVesalius' border")
                arr = np.frombuffer(raw, dtype=np.uint8).reshape(z + 1, y + 1, x + 1)[1:, 1:, 1:]
                stem = name[: -len(".dat")]
                label = stem
                if f"{stem}.plist" in members:
                    meta = plistlib.loads(tar.extractfile(members[f"{stem}.plist"]).read())
                    label = str(meta.get("name") or stem)
                out[label if label not in out else stem] = np.transpose(arr > 127, (2, 1, 0))
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{p} is not a readable .inv3 archive ({type(e).__name__}: {e})") from None
    except plistlib.InvalidFileException as e:
        raise DataError(f"{p}: a mask's plist is not a valid plist ({e})") from None
    return out


def read_volume(kind: str, path: str | Path) -> Volume:
    """Read a volume of ``kind`` (one of :data:`VOLUME_KINDS`)."""
    if kind == "nifti":
        return read_nifti(path)
    if kind == "dicom-series":
        return read_dicom_series(path)
    if kind == "inv3":
        return read_inv3(path)
    raise DataError(f"unknown volume kind {kind!r}; use one of {', '.join(VOLUME_KINDS)}")


# --------------------------------------------------------------------------------------------------------------
# Resampling between voxel grids


def grid_shape(shape, spacing, target) -> tuple[int, int, int]:
    """The shape of ``shape`` voxels of ``spacing`` mm resampled to ``target`` mm (the same extent, rounded)."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target, strict=True))  # type: ignore[return-value]


def _check_spacing(spacing, what: str) -> tuple[float, float, float]:
    vals = tuple(float(v) for v in spacing)
    if len(vals) != 3 or not all(np.isfinite(v) and v > 0 for v in vals):
        raise DataError(f"{what} must be three positive sizes in mm, got {spacing}")
    return vals  # type: ignore[return-value]


def resample_volume(hu: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Linear resampling of an ``(X, Y, Z)`` volume to ``shape`` (voxel centres to voxel centres, edges clamped: the
    ``align_corners=False`` convention), one axis at a time with two taps per output voxel."""
    out = np.asarray(hu, dtype=np.float32)
    for axis, m in enumerate(shape):
        n = out.shape[axis]
        if n == m:
            continue
        pos = np.clip((np.arange(m, dtype=np.float64) + 0.5) * (n / m) - 0.5, 0.0, n - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, n - 1)
        w = (pos - lo).astype(np.float32)
        bshape = [1, 1, 1]
        bshape[axis] = m
        w = w.reshape(bshape)
        out = np.take(out, lo, axis=axis) * (1.0 - w) + np.take(out, hi, axis=axis) * w
    return np.ascontiguousarray(out, dtype=np.float32)


def resample_labels(labels: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Nearest-neighbour resampling of an ``(X, Y, Z)`` label map to ``shape`` (the voxel whose centre is nearest)."""
    out = np.asarray(labels)
    for axis, m in enumerate(shape):
        n = out.shape[axis]
        if n != m:
            idx = np.minimum(np.floor((np.arange(m) + 0.5) * (n / m)).astype(np.int64), n - 1)
            out = np.take(out, idx, axis=axis)
    return np.ascontiguousarray(out)


def resample_to_spacing(volume: Volume, spacing) -> Volume:
    """``volume`` on a grid of ``spacing`` mm covering the same extent (linear); the affine follows the grid."""
    target = _check_spacing(spacing, "spacing")
    shape = grid_shape(volume.shape, volume.spacing, target)
    if shape == volume.shape:
        return volume
    hu = resample_volume(volume.hu, shape)
    # Voxel i of the new grid sits at old-voxel coordinate (i + 0.5) * n/m - 0.5 along each axis.
    scale = np.array([n / m for n, m in zip(volume.shape, shape, strict=True)])
    step = np.diag([*scale, 1.0])
    step[:3, 3] = 0.5 * scale - 0.5
    info = {**volume.info, "resampled_from": {"shape": list(volume.shape), "spacing_mm": list(volume.spacing)}}
    actual = tuple(float(s * k) for s, k in zip(volume.spacing, scale, strict=True))  # target, to the rounding
    return Volume(hu, actual, volume.source, info, affine=np.asarray(volume.affine) @ step)
