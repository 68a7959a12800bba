"""CT volumes: readers (NIfTI, DICOM series, InVesalius ``.inv3``), HU windowing and seeded crops (a teacher's
embeddings of them are cached by :mod:`medfm_compress.compress.embedding_cache`).

A :class:`Volume` holds Hounsfield units as float32 in ``(X, Y, Z)`` order (Z = slice axis), the order the
CT encoders in :mod:`medfm_compress.models.foundation` take (``[B, 1, X, Y, Z]``). Crops are
:class:`CropBox` es in voxel indices; sampling is seeded, so the same spec gives the same crops on every run.

Data specs (``load_data``): ``nifti:FILE.nii[.gz]``, ``dicom-series:DIR``, ``inv3:FILE.inv3``, each with
``?crop=X,Y,Z&n=N&sampling=random|grid&z=LO,HI&min_fg=F&seed=S`` (see :func:`volume_task`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..runtime.volumes import (
    VOLUME_KINDS,
    Volume,
    read_dicom_series,
    read_inv3,
    read_nifti,
    read_volume,
    resample_to_spacing,
)

__all__ = [
    "Volume",
    "CropBox",
    "VOLUME_KINDS",
    "CROP_SPLIT",
    "read_nifti",
    "read_dicom_series",
    "read_inv3",
    "read_volume",
    "hu_window",
    "random_crops",
    "grid_crops",
    "z_split",
    "extract_crops",
    "volume_task",
    "fetch_invesalius_example",
]

# A crop spec is one set of unlabeled crops. It is exposed as the "test" split, the split that export checks,
# quantization (calibration + its held-out rest) and bench read by default, so their commands need no --split.
CROP_SPLIT = "test"
# Voxels above this HU count as tissue for the foreground filter (air is about -1000).
FOREGROUND_HU = -500.0


def fetch_invesalius_example(cache: str | Path, name: str = "Cranium.inv3") -> Path:
    """Debian's ``invesalius-examples`` (GPL-2, a real head CT) fetched at run time: returns ``cache/name``.

    Uses ``apt-get download`` + ``dpkg -x`` into a temporary folder (no root needed) and keeps only ``name``;
    the file is never part of this repository.
    """
    import shutil
    import subprocess
    import tempfile

    from .._io import atomic_path, ensure_dir

    dest = ensure_dir(cache) / name
    if dest.is_file():
        return dest
    if not shutil.which("apt-get") or not shutil.which("dpkg"):
        raise DataError(
            "apt-get/dpkg are not available to fetch invesalius-examples; pass a volume spec instead"
        )
    with tempfile.TemporaryDirectory(prefix="medfm-invesalius-") as tmp:
        try:
            subprocess.run(
                ["apt-get", "download", "invesalius-examples"],
                cwd=tmp,
                check=True,
                capture_output=True,
                timeout=600,
            )
            debs = sorted(Path(tmp).glob("invesalius-examples*.deb"))
            if not debs:
                raise DataError("apt-get download produced no invesalius-examples .deb")
            subprocess.run(
                ["dpkg", "-x", str(debs[-1]), str(Path(tmp) / "x")],
                check=True,
                capture_output=True,
                timeout=300,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            detail = (getattr(e, "stderr", b"") or b"").decode(errors="replace").strip().splitlines()
            raise DataError(
                f"could not fetch invesalius-examples ({detail[-1] if detail else type(e).__name__}); "
                "is the Debian mirror reachable?"
            ) from None
        found = sorted((Path(tmp) / "x").rglob(name))
        if not found:
            raise DataError(f"invesalius-examples holds no {name}")
        with atomic_path(dest, suffix=Path(name).suffix) as out:
            shutil.copyfile(found[0], out)
    return dest


# --------------------------------------------------------------------------------------------------------------
# Windowing and crops


def hu_window(hu: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """HU -> [0, 1]: clip to ``window`` and scale (the same mapping the export metadata records)."""
    from ..runtime.preprocess import raw_to_unit

    return raw_to_unit(hu, window)


@dataclass(frozen=True, order=True)
class CropBox:
    """A crop in voxel indices: start ``(x, y, z)`` and size ``(sx, sy, sz)``."""

    x: int
    y: int
    z: int
    sx: int
    sy: int
    sz: int

    def as_list(self) -> list[int]:
        return [self.x, self.y, self.z, self.sx, self.sy, self.sz]

    def slices(self) -> tuple[slice, slice, slice]:
        return (
            slice(self.x, self.x + self.sx),
            slice(self.y, self.y + self.sy),
            slice(self.z, self.z + self.sz),
        )


def _z_bounds(shape, size, z_range) -> tuple[int, int]:
    lo, hi = (0, shape[2]) if z_range is None else (int(z_range[0]), int(z_range[1]))
    if not 0 <= lo < hi <= shape[2]:
        raise DataError(f"z range {lo}..{hi} is outside the volume's {shape[2]} slices")
    if hi - lo < size[2]:
        raise DataError(f"z range {lo}..{hi} ({hi - lo} slices) is thinner than the crop depth {size[2]}")
    return lo, hi


def _check_size(shape, size) -> tuple[int, int, int]:
    size = tuple(int(v) for v in size)
    if len(size) != 3 or min(size) < 1:
        raise DataError(f"crop size must be three positive integers X,Y,Z, got {size}")
    if any(s > d for s, d in zip(size, shape, strict=True)):
        raise DataError(f"crop {size} does not fit in the volume {tuple(shape)}")
    return size  # type: ignore[return-value]


def _foreground(hu: np.ndarray, box: CropBox) -> float:
    return float((hu[box.slices()] > FOREGROUND_HU).mean())


def random_crops(
    volume: Volume,
    size,
    n: int,
    seed: int = 0,
    z_range: tuple[int, int] | None = None,
    min_foreground: float = 0.0,
) -> list[CropBox]:
    """``n`` crops at seeded random positions inside ``z_range`` (slice indices, half-open), each with at least
    ``min_foreground`` of its voxels above -500 HU. The same arguments give the same crops."""
    size = _check_size(volume.shape, size)
    zlo, zhi = _z_bounds(volume.shape, size, z_range)
    rng = np.random.default_rng([seed, 1299709])
    boxes: list[CropBox] = []
    tries = 0
    while len(boxes) < n:
        tries += 1
        if tries > 200 * max(n, 1):
            raise DataError(
                f"found only {len(boxes)} of {n} crops with >= {min_foreground:.0%} foreground in z {zlo}..{zhi}; "
                "lower min_fg or the crop count"
            )
        x = int(rng.integers(0, volume.shape[0] - size[0] + 1))
        y = int(rng.integers(0, volume.shape[1] - size[1] + 1))
        z = int(rng.integers(zlo, zhi - size[2] + 1))
        box = CropBox(x, y, z, *size)
        if min_foreground > 0 and _foreground(volume.hu, box) < min_foreground:
            continue
        boxes.append(box)
    return boxes


def grid_crops(
    volume: Volume,
    size,
    stride=None,
    z_range: tuple[int, int] | None = None,
    min_foreground: float = 0.0,
) -> list[CropBox]:
    """Crops on a regular grid (``stride`` defaults to the crop size: no overlap) inside ``z_range``."""
    size = _check_size(volume.shape, size)
    stride = tuple(int(v) for v in (stride or size))
    if len(stride) != 3 or min(stride) < 1:
        raise DataError(f"grid stride must be three positive integers, got {stride}")
    zlo, zhi = _z_bounds(volume.shape, size, z_range)
    boxes = []
    for x in range(0, volume.shape[0] - size[0] + 1, stride[0]):
        for y in range(0, volume.shape[1] - size[1] + 1, stride[1]):
            for z in range(zlo, zhi - size[2] + 1, stride[2]):
                box = CropBox(x, y, z, *size)
                if min_foreground <= 0 or _foreground(volume.hu, box) >= min_foreground:
                    boxes.append(box)
    return boxes


def z_split(
    depth: int, crop_depth: int, margin: int, first_fraction: float = 0.5
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Two z regions ``[0, a)`` and ``[a + margin, depth)`` that no crop of ``crop_depth`` can share.

    ``first_fraction`` of the slices not taken by the margin go to the first region.
    """
    usable = depth - margin
    a = int(round(usable * first_fraction))
    first, second = (0, a), (a + margin, depth)
    for name, (lo, hi) in (("first", first), ("second", second)):
        if hi - lo < crop_depth:
            raise DataError(
                f"the {name} z region {lo}..{hi} is thinner than the crop depth {crop_depth} "
                f"(volume depth {depth}, margin {margin}); use thinner crops or a smaller margin"
            )
    return first, second


def extract_crops(volume: Volume, boxes: list[CropBox]) -> np.ndarray:
    """Raw HU crops ``(N, X, Y, Z)`` float32."""
    if not boxes:
        raise DataError("no crops to extract")
    return np.stack([volume.hu[b.slices()] for b in boxes]).astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------------------------
# Data spec -> TaskData of crops


def _triple(text: str, what: str, spec: str) -> tuple[int, int, int]:
    try:
        vals = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise DataError(f"{what}={text!r} in {spec!r} must be three integers X,Y,Z") from None
    if len(vals) != 3 or min(vals) < 1:
        raise DataError(f"{what}={text!r} in {spec!r} must be three positive integers X,Y,Z")
    return vals  # type: ignore[return-value]


def volume_task(kind: str, path: str, opts: dict[str, str], spec: str, seed: int = 0):
    """A :class:`~medfm_compress.data.dataset.TaskData` of raw HU crops (one split, :data:`CROP_SPLIT`, no labels).

    Options: ``crop=X,Y,Z`` (default 96,96,64), ``n`` (random crops, default 16), ``sampling`` (``random`` or
    ``grid``), ``z=LO,HI`` (slice range, half-open, after resampling), ``min_fg`` (minimum tissue fraction,
    default 0.3), ``spacing=SX,SY,SZ`` (resample to this voxel spacing in mm first), ``seed``. ``info`` records the volume hash and the crop boxes, so embeddings can be cached per crop.
    """
    from .dataset import Split, TaskData, VolumeCrops

    vol = read_volume(kind, path)
    if "spacing" in opts:
        try:
            target = tuple(float(v) for v in opts["spacing"].split(","))
        except ValueError:
            raise DataError(
                f"spacing={opts['spacing']!r} in {spec!r} must be three numbers SX,SY,SZ (mm)"
            ) from None
        if len(target) != 3:
            raise DataError(f"spacing={opts['spacing']!r} in {spec!r} must be three numbers SX,SY,SZ (mm)")
        # The one resampler (the runtime's, which predict and the C++ runtime use too): linear, voxel centres to voxel
        # centres, the affine following the grid.
        vol = resample_to_spacing(vol, target)
    size = _triple(opts.get("crop", "96,96,64"), "crop", spec)
    try:
        n = int(opts.get("n", "16"))
        min_fg = float(opts.get("min_fg", "0.3"))
        crop_seed = int(opts.get("seed", seed))
        z_range = tuple(int(v) for v in opts["z"].split(",")) if "z" in opts else None
    except ValueError:
        raise DataError(
            f"{spec!r}: n and seed must be integers, min_fg a number, z two integers LO,HI"
        ) from None
    if z_range is not None and len(z_range) != 2:
        raise DataError(f"z={opts['z']!r} in {spec!r} must be LO,HI slice indices")
    sampling = opts.get("sampling", "random")
    if sampling == "random":
        if n < 1:
            raise DataError(f"n={n} in {spec!r} must be >= 1")
        boxes = random_crops(vol, size, n, crop_seed, z_range, min_fg)
    elif sampling == "grid":
        boxes = grid_crops(vol, size, None, z_range, min_fg)
        if not boxes:
            raise DataError(f"{spec!r}: no grid crop has >= {min_fg:.0%} foreground; lower min_fg")
    else:
        raise DataError(f"sampling={sampling!r} in {spec!r} must be random or grid")
    crops = extract_crops(vol, boxes)
    crop_info = VolumeCrops(vol, tuple(tuple(b.as_list()) for b in boxes),
                            tuple(z_range) if z_range else (0, vol.shape[2]), tuple(size))
    # One volume is one case: every crop of it is in the one split, its group the volume.
    groups = np.full(len(crops), str(path), dtype=object)
    files = np.array([f"{path}@{','.join(map(str, b.as_list()))}" for b in boxes], dtype=object)
    return TaskData(
        source=spec,
        task="embedding",
        label_names=[],
        splits={CROP_SPLIT: Split(crops, np.zeros(len(crops), np.int64), files, groups)},
        window=None,
        info={"volume_shape": list(vol.shape)},
        crops=crop_info,
    )
