"""The embedded default task: synthetic chest-radiograph-like images with lesions of several classes.

Generated deterministically from a seed, written once in the MedMNIST layout to the cache directory and
read back through the same reader as real data. Each image has a body outline, two lung fields, heart,
spine and ribs, low-frequency shading, a random acquisition (gain, offset, gamma), blur and noise. Lesion
contrast varies from obvious to faint, and distractor dots appear in every class, so no single pixel
statistic separates the classes and a model has to learn shapes.

Classes: ``normal``, ``nodule`` (small round opacity), ``consolidation`` (diffuse patchy opacity) and
``effusion`` (basal opacity with a meniscus).

``task="segmentation"`` (``synthetic?task=segmentation``) draws the same images and, from the very shapes the
generator drew, a label map per image: ``background``, ``lung``, ``heart`` and the lesion classes (the heart over
the lungs, a lesion over both). The classification archive is unchanged by it (same images, same digest).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .._io import atomic_path
from ..errors import DataError

__all__ = ["SyntheticConfig", "LABEL_NAMES", "SEGMENTATION_NAMES", "SYNTHETIC_TASKS", "generate", "synthetic_npz"]

LABEL_NAMES = ["normal", "nodule", "consolidation", "effusion"]
SEGMENTATION_NAMES = ["background", "lung", "heart", "nodule", "consolidation", "effusion"]
_FIRST_LESION = 3  # label maps: 1 lung, 2 heart, 3.. the lesions
# What each variant keeps of a drawn scene: its archive key, its label names, and from the image's class and the
# scene's label map, what the archive stores (the classes as a column; the label maps themselves).
_VARIANTS = {
    "classification": ("labels", LABEL_NAMES, lambda classes, masks: classes[:, None]),
    "segmentation": ("masks", SEGMENTATION_NAMES, lambda classes, masks: masks),
    # A continuous target measured on the scene: the lesion's area in percent of the image (0 without a lesion).
    "regression": ("values", ["lesion_area_pct"],
                   lambda classes, masks: (masks >= _FIRST_LESION).reshape(len(masks), -1).mean(1).astype(np.float32)
                   * np.float32(100.0)),
}
SYNTHETIC_TASKS = tuple(_VARIANTS)
# The archives made before the segmentation variant existed keep their digest: the first variant is not hashed.
_FIRST_VARIANT = SYNTHETIC_TASKS[0]
_LUNG, _HEART = 1, 2
_LESION_CLASS = {1: 3, 2: 4, 3: 5}  # image class -> its lesion's label in the map
_CLASS_PROBS = (0.4, 0.2, 0.2, 0.2)
_GENERATOR_VERSION = 3


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and seed of the embedded default task."""

    seed: int = 0
    size: int = 64
    n_train: int = 2400
    n_val: int = 400
    n_test: int = 1000
    task: str = "classification"

    def __post_init__(self):
        if self.task not in SYNTHETIC_TASKS:
            raise DataError(f"synthetic task must be one of {', '.join(SYNTHETIC_TASKS)}, got {self.task!r}")
        if self.size < 16:
            raise DataError(f"synthetic size must be >= 16 pixels, got {self.size}")
        for name in ("n_train", "n_val", "n_test"):
            if getattr(self, name) < 1:
                raise DataError(f"synthetic {name} must be >= 1, got {getattr(self, name)}")

    def digest(self) -> str:
        fields = asdict(self)
        if self.task == _FIRST_VARIANT:
            del fields["task"]
        blob = json.dumps({**fields, "v": _GENERATOR_VERSION}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    radius = max(1, int(round(3 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float32)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    k /= k.sum()
    pad = np.pad(img, radius, mode="edge")
    tmp = np.apply_along_axis(lambda r: np.convolve(r, k, mode="valid"), 1, pad)
    return np.apply_along_axis(lambda c: np.convolve(c, k, mode="valid"), 0, tmp).astype(np.float32)


def _soft_ellipse(xx, yy, cx, cy, ax, ay, edge):
    r = np.sqrt(((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2)
    return 1.0 / (1.0 + np.exp(np.clip((r - 1.0) / edge, -60, 60)))


def _gauss(xx, yy, cx, cy, s):
    return np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s)))


def _one_image(rng: np.random.Generator, label: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One image of class ``label`` and its label map (see ``SEGMENTATION_NAMES``), drawn from the same shapes.

    The label map takes no random numbers of its own: the images are those of the classification task."""
    lin = np.linspace(-1, 1, size, dtype=np.float32)
    xx, yy = np.meshgrid(lin, lin)
    body = _soft_ellipse(xx, yy, rng.normal(0, 0.03), 0.05 + rng.normal(0, 0.03), rng.uniform(0.78, 0.92), rng.uniform(0.9, 1.05), 0.04)
    img = 0.05 + 0.4 * body
    lung_params = []
    lungs = np.zeros_like(img)
    for side in (-1, 1):
        cx = side * rng.uniform(0.33, 0.42)
        cy = rng.uniform(-0.12, 0.0)
        ax, ay = rng.uniform(0.22, 0.3), rng.uniform(0.48, 0.6)
        lung_params.append((cx, cy, ax, ay))
        lungs = np.maximum(lungs, _soft_ellipse(xx, yy, cx, cy, ax, ay, 0.06))
    img = img - 0.25 * lungs * body
    heart = _soft_ellipse(xx, yy, 0.1 + rng.normal(0, 0.03), 0.22 + rng.normal(0, 0.03), rng.uniform(0.2, 0.28), rng.uniform(0.18, 0.25), 0.08)
    spine = np.exp(-(xx / rng.uniform(0.06, 0.09)) ** 2) * body
    img = img + 0.22 * heart + 0.2 * spine
    # Ribs: curved bright bands over the lung fields.
    curv = rng.uniform(0.15, 0.3)
    ribs = np.zeros_like(img)
    for y0 in np.linspace(-0.7, 0.5, rng.integers(5, 8)) + rng.normal(0, 0.02):
        ribs += np.exp(-(((yy - (y0 + curv * xx**2)) / 0.035) ** 2))
    img = img + 0.08 * np.clip(ribs, 0, 1) * lungs
    # Low-frequency shading, as from positioning and scatter.
    for _ in range(3):
        fx, fy, ph = rng.uniform(0.5, 2.0), rng.uniform(0.5, 2.0), rng.uniform(0, 2 * np.pi)
        img = img + rng.uniform(0.01, 0.04) * np.cos(np.pi * (fx * xx + fy * yy) + ph)

    mask = np.zeros(img.shape, dtype=np.uint8)
    mask[(lungs > 0.5) & (body > 0.5)] = _LUNG
    mask[heart > 0.5] = _HEART
    lesion_region = np.zeros(img.shape, dtype=bool)
    lesion = np.zeros_like(img)
    side = int(rng.integers(0, 2))
    cx, cy, ax, ay = lung_params[side]
    if label == 1:  # nodule(s): small round opacities
        for _ in range(int(rng.integers(1, 3))):
            px, py = cx + rng.uniform(-0.6, 0.6) * ax, cy + rng.uniform(-0.6, 0.6) * ay
            amplitude = rng.uniform(0.25, 0.5)  # drawn before the width, as it always was
            blob = _gauss(xx, yy, px, py, rng.uniform(0.045, 0.075))
            lesion += amplitude * blob
            lesion_region |= blob > 0.5
    elif label == 2:  # consolidation: patchy cluster of broad opacities
        px, py = cx + rng.uniform(-0.4, 0.4) * ax, cy + rng.uniform(-0.4, 0.4) * ay
        patch = np.zeros_like(img)
        for _ in range(int(rng.integers(4, 8))):
            patch += _gauss(xx, yy, px + rng.normal(0, 0.08), py + rng.normal(0, 0.1), rng.uniform(0.06, 0.12))
        patch = patch / max(float(patch.max()), 1e-6)
        lesion += rng.uniform(0.2, 0.35) * patch * lungs
        lesion_region |= patch * lungs > 0.4
    elif label == 3:  # effusion: basal opacity under a meniscus
        base = cy + ay
        level = base - rng.uniform(0.2, 0.45) * ay * 2
        meniscus = level - rng.uniform(0.1, 0.3) * ((xx - cx) / ax) ** 2 * np.sign(cx - xx) * np.sign(cx)
        fill = 1.0 / (1.0 + np.exp(np.clip(-(yy - meniscus) / 0.04, -60, 60)))
        lung_side = _soft_ellipse(xx, yy, cx, cy, ax * 1.05, ay * 1.05, 0.06)
        lesion += rng.uniform(0.2, 0.35) * fill * lung_side
        lesion_region |= fill * lung_side > 0.5
    img = img + lesion
    if label in _LESION_CLASS:
        mask[lesion_region] = _LESION_CLASS[label]
    # Distractors in every class: small dense dots (leads, calcifications) anywhere in the body.
    for _ in range(int(rng.poisson(0.8))):
        img = img + rng.uniform(0.15, 0.35) * _gauss(xx, yy, rng.uniform(-0.7, 0.7), rng.uniform(-0.8, 0.8), rng.uniform(0.015, 0.03))
    # Acquisition: gain, offset, gamma, blur and noise.
    img = np.clip(img, 0, None)
    img = img ** rng.uniform(0.8, 1.25)
    img = img * rng.uniform(0.8, 1.2) + rng.uniform(-0.06, 0.06)
    img = _blur(img.astype(np.float32), rng.uniform(0.4, 0.9) * size / 64)
    img = img + rng.normal(0, rng.uniform(0.015, 0.04), img.shape) + rng.normal(0, 0.02) * np.sqrt(np.clip(img, 0, None))
    return np.clip(img * 255.0, 0, 255).astype(np.uint8), mask


def generate(config: SyntheticConfig) -> dict[str, np.ndarray]:
    """Generate the arrays of the MedMNIST layout for ``config``."""
    out: dict[str, np.ndarray] = {}
    for i, (split, n) in enumerate((("train", config.n_train), ("val", config.n_val), ("test", config.n_test))):
        rng = np.random.default_rng([config.seed, i])
        labels = rng.choice(len(LABEL_NAMES), size=n, p=_CLASS_PROBS).astype(np.int64)
        drawn = [_one_image(rng, int(lab), config.size) for lab in labels]
        out[f"{split}_images"] = np.stack([im for im, _ in drawn])
        key, _, stored = _VARIANTS[config.task]
        out[f"{split}_{key}"] = stored(labels, np.stack([m for _, m in drawn]))
    names = _VARIANTS[config.task][1]
    out["label_names"] = np.array(json.dumps(names))
    return out


def synthetic_npz(config: SyntheticConfig, cache_dir: Path) -> Path:
    """Return the path of the cached archive for ``config``, generating it on first use."""
    return cached_archive(Path(cache_dir) / "synthetic" / f"synthetic-{config.digest()}.npz", lambda: generate(config))


def cached_archive(path: Path, make) -> Path:
    """``path``, an ``.npz`` of the arrays ``make()`` returns, written atomically the first time it is asked for."""
    if path.exists():
        return path
    arrays = make()
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    return path
