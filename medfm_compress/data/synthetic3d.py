"""``synthetic3d``: CT-like abdominal phantoms with organ and lesion label maps, the embedded default for volumetric
segmentation (issue 20; this module draws and caches the volumes, the data-spec wiring is the next step).

Each case is a volume in Hounsfield units, ``(X, Y, Z)`` (the order of :class:`~medfm_compress.data.volume.Volume`;
DICOM's patient axes: x toward the patient's left, y posterior, z superior) on an anisotropic grid in millimetres,
drawn from a seed:

- air (-1000 HU) around an elliptic body with a subcutaneous fat ring (about -100 HU) and soft tissue (about 40 HU);
- a vertebral body (cancellous bone 150-400 HU in a 6 mm cortical shell of 1100-1300 HU) with the spinal canal, and a
  contrast-filled aorta (150-220 HU);
- the organs that are labelled: liver (right upper abdomen, 55-75 HU), spleen (left, posterior, 45-60 HU: the
  ranges overlap the liver's, so shape and place tell them apart), both kidneys (enhancing cortex 140-200 HU around
  a medulla 70-100 HU);
- hypodense liver lesions (20-50 HU below the liver, 8-20 mm radius) in about half of the cases;
- the acquisition: organ sizes, positions and contrast phase vary per case; partial volume at every edge (shapes
  are soft over about a voxel), a blur of 0.5-0.9 voxel and Gaussian noise of 8-20 HU.

Labels (:data:`SEGMENTATION3D_NAMES`): 0 background, 1 liver, 2 spleen, 3 kidney, 4 liver lesion; a voxel takes the
label of the shape covering more than half of it (a lesion over its liver, where shapes meet the one drawn last). Volumes are stored as int16 HU and the
label maps as uint8 in one ``.npz`` per configuration in the cache (atomically written, read back on every later
use), with the voxel spacing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from .synthetic import cached_archive

__all__ = ["Synthetic3DConfig", "SEGMENTATION3D_NAMES", "generate_volumes", "synthetic3d_npz"]

SEGMENTATION3D_NAMES = ["background", "liver", "spleen", "kidney", "lesion"]
_LIVER, _SPLEEN, _KIDNEY, _LESION = 1, 2, 3, 4
_GENERATOR_VERSION = 1


@dataclass(frozen=True)
class Synthetic3DConfig:
    """Grid, split sizes and seed of the phantoms."""

    seed: int = 0
    shape: tuple[int, int, int] = (72, 56, 40)
    spacing: tuple[float, float, float] = (5.5, 5.0, 5.0)  # mm: a 396 x 280 x 200 mm field of view
    n_train: int = 48
    n_val: int = 8
    n_test: int = 24

    def __post_init__(self):
        if len(self.shape) != 3 or any(int(s) < 16 for s in self.shape):
            raise DataError(f"synthetic3d shape must be three sizes >= 16 voxels, got {self.shape}")
        if len(self.spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in self.spacing):
            raise DataError(f"synthetic3d spacing must be three positive numbers (mm), got {self.spacing}")
        for name in ("n_train", "n_val", "n_test"):
            if getattr(self, name) < 1:
                raise DataError(f"synthetic3d {name} must be >= 1, got {getattr(self, name)}")

    def digest(self) -> str:
        fields = {**asdict(self), "shape": [int(s) for s in self.shape], "spacing": [float(s) for s in self.spacing]}
        blob = json.dumps({**fields, "v": _GENERATOR_VERSION}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _soft(r: np.ndarray, width: float) -> np.ndarray:
    """Share of a voxel inside a shape whose normalised radius is ``r`` (1 on the surface), ``width`` the edge's
    width in the same units: partial volume."""
    return (1.0 / (1.0 + np.exp(np.clip((r - 1.0) / width, -60, 60)))).astype(np.float32)


def _ellipsoid(grid, centre, axes, edge_mm: float) -> np.ndarray:
    x, y, z = grid
    r = np.sqrt(((x - centre[0]) / axes[0]) ** 2 + ((y - centre[1]) / axes[1]) ** 2
                + ((z - centre[2]) / axes[2]) ** 2)
    return _soft(r, edge_mm / min(axes))


def _cylinder(grid, centre_xy, radii_xy, edge_mm: float) -> np.ndarray:
    x, y, _ = grid
    r = np.sqrt(((x - centre_xy[0]) / radii_xy[0]) ** 2 + ((y - centre_xy[1]) / radii_xy[1]) ** 2)
    return _soft(r, edge_mm / min(radii_xy))


def _blur(vol: np.ndarray, sigma_vox: float) -> np.ndarray:
    radius = max(1, int(round(3 * sigma_vox)))
    x = np.arange(-radius, radius + 1, dtype=np.float32)
    k = np.exp(-0.5 * (x / sigma_vox) ** 2)
    k /= k.sum()
    for axis in range(vol.ndim):
        pad = [(0, 0)] * vol.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(vol, pad, mode="edge")
        vol = sum(k[i] * np.take(padded, range(i, i + vol.shape[axis]), axis=axis) for i in range(len(k)))
    return vol.astype(np.float32)


def _one_volume(rng: np.random.Generator, shape, spacing) -> tuple[np.ndarray, np.ndarray]:
    axes = [(np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * s for n, s in zip(shape, spacing, strict=True)]
    grid = np.meshgrid(*axes, indexing="ij")
    edge = float(min(spacing)) * 0.5
    half = [(n - 1) / 2.0 * s for n, s in zip(shape, spacing, strict=True)]

    body_r = (rng.uniform(0.80, 0.88) * half[0], rng.uniform(0.80, 0.88) * half[1])
    body_c = (rng.normal(0, 4), rng.normal(0, 4))
    body = _cylinder(grid, body_c, body_r, edge)
    fat_mm = rng.uniform(10, 25)
    inner = _cylinder(grid, body_c, (body_r[0] - fat_mm, body_r[1] - fat_mm), edge)
    hu = -1000.0 + body * (900.0 + rng.normal(0, 8)) + inner * (140.0 + rng.normal(0, 8))  # air, fat, soft tissue

    # Spine, spinal canal and aorta: posterior midline, the aorta anterior-left of the vertebral body.
    spine_xy = (body_c[0] + rng.normal(0, 3), body_c[1] + 0.55 * body_r[1])
    vert_r = rng.uniform(15, 20)
    cortex = _cylinder(grid, spine_xy, (vert_r, vert_r * 0.9), edge)
    cancellous = _cylinder(grid, spine_xy, (vert_r - 6.0, vert_r * 0.9 - 6.0), edge)
    cortex_hu, cancellous_hu = rng.uniform(1100, 1300), rng.uniform(150, 400)
    hu += cortex * (cortex_hu - 40.0) + cancellous * (cancellous_hu - cortex_hu)
    canal = _cylinder(grid, (spine_xy[0], spine_xy[1] + vert_r + 9.0), (7.0, 6.0), edge)
    hu += canal * (15.0 - hu) * (canal > 0.05)
    aorta = _cylinder(grid, (spine_xy[0] + rng.uniform(8, 16), spine_xy[1] - vert_r - 12.0), (11.0, 11.0), edge)
    hu += aorta * (rng.uniform(150, 220) - hu)

    def organ(shape_map, value):
        nonlocal hu
        hu = hu + shape_map * inner * (value - hu)

    z_top = half[2]
    liver_c = (body_c[0] - rng.uniform(0.30, 0.42) * body_r[0], body_c[1] - rng.uniform(0.0, 0.15) * body_r[1],
               z_top - rng.uniform(0.35, 0.5) * 2 * half[2])
    liver_ax = (rng.uniform(0.38, 0.48) * body_r[0], rng.uniform(0.45, 0.6) * body_r[1], rng.uniform(0.30, 0.42) * half[2] * 2)
    liver = _ellipsoid(grid, liver_c, liver_ax, edge)
    # A medial slope cuts the ellipsoid into the liver's wedge.
    slope = _soft(((grid[0] - liver_c[0]) - 0.5 * (grid[1] - liver_c[1])) / (0.6 * liver_ax[0]), 0.15)
    liver = liver * slope
    liver_hu = rng.uniform(55, 75)
    organ(liver, liver_hu)

    spleen_c = (body_c[0] + rng.uniform(0.50, 0.62) * body_r[0], body_c[1] + rng.uniform(0.15, 0.35) * body_r[1],
                liver_c[2] + rng.normal(0, 8))
    spleen = _ellipsoid(grid, spleen_c, (rng.uniform(20, 30), rng.uniform(35, 50), rng.uniform(35, 50)), edge)
    organ(spleen, rng.uniform(45, 60))

    kidneys = np.zeros(shape, np.float32)
    kidney_hu, medulla_hu = rng.uniform(140, 200), rng.uniform(70, 100)
    kidney_z = liver_c[2] - rng.uniform(0.25, 0.4) * liver_ax[2]
    for side in (-1, 1):
        kc = (spine_xy[0] + side * rng.uniform(55, 75), spine_xy[1] - rng.uniform(0, 12), kidney_z + rng.normal(0, 6))
        ka = (rng.uniform(20, 27), rng.uniform(25, 32), rng.uniform(40, 55))
        k = _ellipsoid(grid, kc, ka, edge)
        med = _ellipsoid(grid, kc, (ka[0] * 0.55, ka[1] * 0.55, ka[2] * 0.7), edge)
        organ(k, kidney_hu)
        organ(med, medulla_hu)
        kidneys = np.maximum(kidneys, k)

    lesions = np.zeros(shape, np.float32)
    if rng.random() < 0.5:
        for _ in range(int(rng.integers(1, 4))):
            # Inside the liver: a centre drawn within its inner part.
            c = [liver_c[i] + rng.uniform(-0.5, 0.5) * liver_ax[i] for i in range(3)]
            c[0] = min(c[0], liver_c[0] + 0.1 * liver_ax[0])
            radius = rng.uniform(8, 20)
            lesions = np.maximum(lesions, _ellipsoid(grid, c, (radius, radius * rng.uniform(0.8, 1.2), radius), edge)
                                 * (liver > 0.5))
        organ(lesions, liver_hu - rng.uniform(20, 50))

    hu = _blur(hu.astype(np.float32), rng.uniform(0.5, 0.9))
    hu = hu + rng.normal(0, rng.uniform(8, 20), shape).astype(np.float32)
    # Labelled in the order drawn, so that where two shapes meet the label is that of the one whose HU shows.
    mask = np.zeros(shape, np.uint8)
    inside = inner > 0.5
    for shape_map, label in ((liver, _LIVER), (spleen, _SPLEEN), (kidneys, _KIDNEY), (lesions, _LESION)):
        mask[(shape_map > 0.5) & inside] = label
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16), mask


def generate_volumes(config: Synthetic3DConfig) -> dict[str, np.ndarray]:
    """``{split}_images`` (N, X, Y, Z) int16 HU, ``{split}_masks`` uint8, ``spacing`` and ``label_names``."""
    out: dict[str, np.ndarray] = {}
    shape = tuple(int(s) for s in config.shape)
    for i, (split, n) in enumerate((("train", config.n_train), ("val", config.n_val), ("test", config.n_test))):
        rng = np.random.default_rng([config.seed, 3, i])
        drawn = [_one_volume(rng, shape, config.spacing) for _ in range(n)]
        out[f"{split}_images"] = np.stack([v for v, _ in drawn])
        out[f"{split}_masks"] = np.stack([m for _, m in drawn])
    out["spacing"] = np.asarray(config.spacing, np.float64)
    out["label_names"] = np.array(json.dumps(SEGMENTATION3D_NAMES))
    return out


def synthetic3d_npz(config: Synthetic3DConfig, cache_dir: Path) -> Path:
    """The cached archive for ``config``, generated on first use."""
    return cached_archive(Path(cache_dir) / "synthetic" / f"synthetic3d-{config.digest()}.npz",
                          lambda: generate_volumes(config))
