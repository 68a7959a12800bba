"""Preprocessing spec: how raw images become model input tensors.

The spec travels with every artifact (``student.json``, ONNX ``metadata_props``) so that a runtime needs
nothing else to feed a model correctly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import DataError

__all__ = [
    "PreprocessSpec",
    "raw_to_unit",
    "resize_batch",
    "resize_volume_batch",
    "aa_bilinear_taps",
    "linear_weights",
]


@dataclass(frozen=True)
class PreprocessSpec:
    """Raw image -> normalised NCHW float32 (or NCXYZ float32 for volumes).

    Attributes:
        input_size: (height, width) the model expects, or (x, y, z) for a volume model (5-D input).
        channels: channels the model expects (1 grayscale, 3 RGB).
        mean: per-channel mean subtracted after scaling to [0, 1].
        std: per-channel standard deviation divided after subtracting the mean.
        window: optional (low, high) intensity window applied to raw values (e.g. HU); values are clipped
            to it and mapped to [0, 1]. When None, integer images are divided by their dtype's maximum and
            float images are taken as already in [0, 1].
        spacing: for a volume model, the voxel spacing (mm, x/y/z) it was trained at: a volume on another grid is
            resampled to it before inference and its mask back to the volume's grid (None: taken as given).
        tiles: for a 2-D segmentation model, True when it was trained on patches of ``input_size`` cut at the
            images' own resolution: a whole image is segmented by sliding windows of that size, never resized
            (3-D segmentation models always work so).
    """

    input_size: tuple[int, int]
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    window: tuple[float, float] | None = None
    spacing: tuple[float, float, float] | None = None
    tiles: bool = False

    def __post_init__(self):
        if self.channels not in (1, 3):
            raise DataError(f"channels must be 1 or 3, got {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise DataError(
                f"mean/std need {self.channels} values (one per channel), got {len(self.mean)} and {len(self.std)}"
            )
        if any(s <= 0 for s in self.std):
            raise DataError(f"std values must be positive, got {self.std}")
        if len(self.input_size) not in (2, 3) or min(self.input_size) <= 0:
            raise DataError(
                f"input_size must be (height, width) or (x, y, z), all > 0, got {self.input_size}"
            )
        if self.window is not None and not self.window[1] > self.window[0]:
            raise DataError(f"intensity window must be (low, high) with high > low, got {self.window}")
        if self.spacing is not None and (len(self.input_size) != 3 or len(self.spacing) != 3
                                         or not all(np.isfinite(v) and v > 0 for v in self.spacing)):
            raise DataError(f"spacing is three positive sizes in mm for a volume model, got {self.spacing}")
        if self.tiles and len(self.input_size) != 2:
            raise DataError(f"tiles marks a 2-D model trained on patches; input_size {self.input_size} is 3-D (volume "
                            "models are always run by sliding windows)")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        d["window"] = list(self.window) if self.window is not None else None
        d["spacing"] = list(self.spacing) if self.spacing is not None else None
        if not self.tiles:  # written only where set: models trained on whole images keep their cards as they were
            del d["tiles"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessSpec:
        try:
            return cls(
                input_size=tuple(int(v) for v in d["input_size"]),
                channels=int(d["channels"]),
                mean=tuple(float(v) for v in d["mean"]),
                std=tuple(float(v) for v in d["std"]),
                window=tuple(float(v) for v in d["window"]) if d.get("window") is not None else None,
                spacing=tuple(float(v) for v in d["spacing"]) if d.get("spacing") is not None else None,
                tiles=bool(d.get("tiles", False)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"invalid preprocessing spec {d!r}: {e}") from None

    @property
    def is_volume(self) -> bool:
        """True for a 3-D model whose input is ``(N, C, X, Y, Z)``."""
        return len(self.input_size) == 3

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Preprocess raw images ``(N,H,W)``, ``(N,H,W,C)`` or ``(N,C,H,W)`` into ``(N,C,H,W)`` float32.

        For a volume spec, raw crops ``(N,X,Y,Z)`` (or ``(N,X,Y,Z,1)``) become ``(N,1,X,Y,Z)``.
        """
        if self.is_volume:
            return self._volume(images)
        x = raw_to_unit(images, self.window)
        x = to_nchw(x, self.channels)
        return self._normalize(resize_batch(x, self.input_size))

    def _normalize(self, x: np.ndarray) -> np.ndarray:
        """``(x - mean) / std`` per channel of an ``(N, C, ...)`` batch in [0, 1], as float32."""
        shape = (1, -1) + (1,) * (x.ndim - 2)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(shape)
        std = np.asarray(self.std, dtype=np.float32).reshape(shape)
        return ((x - mean) / std).astype(np.float32, copy=False)

    @property
    def windowed(self) -> bool:
        """True when a dense model of this spec segments whole images or volumes by sliding windows of
        :attr:`input_size` (3-D models, and 2-D models trained on patches: :attr:`tiles`)."""
        return self.is_volume or self.tiles

    def whole(self, images: np.ndarray) -> np.ndarray:
        """Raw volumes ``(N, X, Y, Z)`` or images ``(N, H, W[, C])`` of any size to ``(N, C, ...)`` float32, windowed and
        normalised but not resized: the input of a sliding window whose windows have :attr:`input_size`."""
        if self.is_volume:
            return self._volume(images, resize=False)
        if not self.tiles:
            raise DataError(f"whole images go to a model trained on patches (tiles); this one takes images resized "
                            f"to {self.input_size[0]}x{self.input_size[1]}")
        return self._normalize(to_nchw(raw_to_unit(images, self.window), self.channels))

    def _volume(self, volumes: np.ndarray, resize: bool = True) -> np.ndarray:
        x = np.asarray(volumes)
        if x.ndim == 5 and x.shape[-1] == 1:
            x = x[..., 0]
        if x.ndim != 4:
            raise DataError(f"volume crops must be (N,X,Y,Z), got shape {x.shape}")
        if self.channels != 1:
            raise DataError(f"volume models take 1 channel, the spec says {self.channels}")
        x = raw_to_unit(x, self.window)[:, None]
        if resize and tuple(x.shape[2:]) != tuple(self.input_size):
            x = resize_volume_batch(x, tuple(self.input_size))
        return self._normalize(x)


def raw_to_unit(images: np.ndarray, window: tuple[float, float] | None = None) -> np.ndarray:
    """Scale raw pixel values to float32 in [0, 1] (window, or dtype range for integer images)."""
    x = np.asarray(images)
    if x.size == 0:
        raise DataError("no images to preprocess (empty array)")
    if window is not None:
        lo, hi = window
        xf = x.astype(np.float32)
        if not np.isfinite(xf).all():
            raise DataError("images contain NaN or Inf values; clean the data or drop those images")
        return (np.clip(xf, lo, hi) - lo) / (hi - lo)
    if np.issubdtype(x.dtype, np.integer):
        if x.dtype == np.uint8:
            return x.astype(np.float32) / 255.0
        info = np.iinfo(x.dtype)
        lo, hi = float(x.min()), float(x.max())
        if lo >= 0 and hi <= 255 and x.dtype != np.uint16:
            return x.astype(np.float32) / 255.0
        if x.dtype == np.uint16:
            return x.astype(np.float32) / float(info.max)
        raise DataError(
            f"integer images of dtype {x.dtype} with range [{lo}, {hi}] need an intensity window; "
            "set window=(low, high) (e.g. HU for CT)"
        )
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"unsupported image dtype {x.dtype}; use uint8, uint16 or float")
    xf = x.astype(np.float32)
    if not np.isfinite(xf).all():
        raise DataError("images contain NaN or Inf values; clean the data or drop those images")
    lo, hi = float(xf.min()), float(xf.max())
    if lo < -1e-3 or hi > 1.0 + 1e-3:
        raise DataError(
            f"float images must lie in [0, 1] (found [{lo:.3g}, {hi:.3g}]); rescale them or set an intensity window"
        )
    return np.clip(xf, 0.0, 1.0)


def to_nchw(x: np.ndarray, channels: int) -> np.ndarray:
    """Arrange ``(N,H,W)``, ``(N,H,W,C)`` or ``(N,C,H,W)`` as ``(N,channels,H,W)``."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        if x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
            x = np.transpose(x, (0, 3, 1, 2))
        elif x.shape[1] not in (1, 3):
            raise DataError(
                f"cannot tell the channel axis of images with shape {x.shape}; use (N,H,W,C) with C=1 or 3"
            )
    else:
        raise DataError(f"images must have 3 or 4 dimensions (N,H,W[,C]), got shape {x.shape}")
    c = x.shape[1]
    if c == channels:
        return np.ascontiguousarray(x)
    if c == 1 and channels == 3:
        return np.ascontiguousarray(np.repeat(x, 3, axis=1))
    raise DataError(
        f"images have {c} channel(s) but the model expects {channels}; convert the images or the model"
    )


def resize_batch(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear (antialiased) resize of an NCHW float batch; a no-op when the size already matches.

    torch's ``F.interpolate(mode="bilinear", antialias=True, align_corners=False)`` where torch is installed; on
    the edge install (no torch) the same filter in NumPy (:func:`aa_bilinear_taps`; within ~1e-6 of torch).
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        out = _resample_axis(
            np.asarray(x, dtype=np.float32), -1, *aa_bilinear_taps(x.shape[-1], int(size[1]))
        )
        out = _resample_axis(out, -2, *aa_bilinear_taps(x.shape[-2], int(size[0])))
        return np.ascontiguousarray(out, dtype=np.float32)
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    out = F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    return out.numpy()


def resize_volume_batch(x: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
    """Trilinear resize (``align_corners=False``) of an NCXYZ float batch: torch's ``F.interpolate`` where torch is
    installed, else the same separable interpolation in NumPy."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        out = np.asarray(x, dtype=np.float32)
        for axis, n in zip((2, 3, 4), size, strict=True):
            w = linear_weights(out.shape[axis], int(n))
            out = np.moveaxis(np.tensordot(out, w, axes=([axis], [1])), -1, axis)
        return np.ascontiguousarray(out, dtype=np.float32)
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return F.interpolate(t, size=tuple(size), mode="trilinear", align_corners=False).numpy()


def aa_bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Torch's antialiased bilinear filter (``align_corners=False``) as taps: ``(index, weight)``, both
    ``(out_size, K)`` (int64, float32; unused taps have weight 0). A triangle filter widened by the scale when
    downsampling (every input pixel contributes), plain bilinear when upsampling: the arithmetic of torch's CPU
    ``upsample_bilinear2d_aa`` and csrc/src/preprocess.cpp, in float32."""
    f32 = np.float32
    scale = f32(in_size / out_size)
    support = scale if scale >= 1.0 else f32(1.0)
    invscale = f32(1.0) / scale if scale >= 1.0 else f32(1.0)
    centers = (scale * (np.arange(out_size, dtype=np.float64) + 0.5)).astype(np.float32)
    # int() truncates toward zero, as the C++ casts do.
    xmin = np.maximum(np.trunc(centers - support + f32(0.5)).astype(np.int64), 0)
    xmax = np.minimum(np.trunc(centers + support + f32(0.5)).astype(np.int64), in_size)
    k = max(int((xmax - xmin).max()), 1)
    index = xmin[:, None] + np.arange(k)[None, :]
    valid = index < xmax[:, None]
    d = np.abs((index.astype(np.float32) - centers[:, None] + f32(0.5)) * invscale)
    w = np.where(valid & (d < 1.0), f32(1.0) - d, f32(0.0)).astype(np.float32)
    total = w.sum(axis=1, keepdims=True, dtype=np.float32)
    w = np.where(total != 0, w / np.where(total != 0, total, f32(1.0)), w).astype(np.float32)
    return np.minimum(index, in_size - 1), w


def _resample_axis(x: np.ndarray, axis: int, index: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Apply ``(out, K)`` taps along ``axis`` of ``x``: ``y[..., i, ...] = sum_k weight[i, k] * x[..., index[i, k], ...]``."""
    x = np.moveaxis(x, axis, -1)
    y = np.einsum("...ok,ok->...o", x[..., index], weight, dtype=np.float32)
    return np.moveaxis(y, -1, axis)


def linear_weights(in_size: int, out_size: int) -> np.ndarray:
    """``(out_size, in_size)`` float32 weights of (non-antialiased) linear interpolation, ``align_corners=False``,
    as torch's ``upsample_linear1d`` / ``upsample_trilinear3d`` per axis."""
    scale = in_size / out_size
    w = np.zeros((out_size, in_size), dtype=np.float32)
    for i in range(out_size):
        src = max(scale * (i + 0.5) - 0.5, 0.0)
        i0 = min(int(src), in_size - 1)
        i1 = i0 + (1 if i0 < in_size - 1 else 0)
        lam = src - i0
        w[i, i0] += 1.0 - lam
        w[i, i1] += lam
    return w
