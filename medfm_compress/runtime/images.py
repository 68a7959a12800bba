"""Image files -> raw arrays, for the runtime (``predict``) and the data readers above it.

PNG/JPEG/BMP/TIFF through Pillow, DICOM through pydicom (modality LUT and windowing applied), ``.npy`` through
NumPy: all part of the edge install. Every reader turns a file it cannot decode into a one-line
:class:`~medfm_compress.errors.DataError` that names the file and says why. Nothing here imports torch.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from tokenize import TokenError

import numpy as np

from ..errors import DataError, first_line

__all__ = [
    "IMAGE_SUFFIXES",
    "DICOM_SUFFIXES",
    "NPY_SUFFIXES",
    "read_image_file",
    "read_dicom_file",
    "read_dicom_values",
    "read_npy_file",
    "is_dicom_file",
    "read_any",
    "find_image_files",
    "MASK_SUFFIXES",
    "read_mask_file",
    "resize_image",
    "resize_mask",
    "to_channels",
    "LUMA_WEIGHTS",
]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
# "" : DICOM files often have no suffix (a folder reader checks the DICM preamble before taking them).
DICOM_SUFFIXES = {".dcm", ".dicom", ""}
NPY_SUFFIXES = {".npy"}
# Label maps: lossless single-channel PNG (8 or 16 bit, palette indices kept) or integer .npy.
MASK_SUFFIXES = {".png", ".npy"}


def read_image_file(path: Path, size: int | None) -> np.ndarray:
    """Read an 8/16-bit image as ``(H,W)`` or ``(H,W,3)``, resized to ``size`` when given."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.int64)
                mode = "16"
            elif im.mode in ("L", "1", "P", "LA"):
                arr, mode = np.asarray(im if im.mode == "L" else im.convert("L")), "L"
            else:
                arr, mode = np.asarray(im if im.mode == "RGB" else im.convert("RGB")), "RGB"
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        # SyntaxError: some of Pillow's decoders report a malformed file so; a decompression bomb is refused.
        raise DataError(
            f"{path} is not a readable image ({first_line(e)}); remove it or fix the file"
        ) from None
    if arr.size == 0:
        raise DataError(f"{path} is an empty image")
    if mode == "16":
        arr = np.clip(arr, 0, 65535).astype(np.uint16)
    if size is not None and arr.shape[:2] != (size, size):
        arr = _resize_raw(arr, size)
    return arr


# ITU-R BT.601 luma: how a colour image becomes one grey channel (what Pillow's convert("L") uses).
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def to_channels(arr: np.ndarray, channels: int) -> np.ndarray:
    """An ``(H,W)`` or ``(H,W,3)`` image with ``channels`` channels: colour to grey by its luminance
    (:data:`LUMA_WEIGHTS`), grey to colour by repeating it; the dtype is kept (integers rounded)."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if channels == 1 and arr.ndim == 3:
        grey = arr[..., :3].astype(np.float64) @ np.asarray(LUMA_WEIGHTS)
        return (np.rint(grey) if arr.dtype.kind in "ui" else grey).astype(arr.dtype)
    if channels == 3 and arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=2)
    return arr


def _resize_raw(arr: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    if arr.dtype == np.uint16:
        im = Image.fromarray(arr.astype(np.float32), mode="F").resize((size, size), Image.BILINEAR)
        return np.clip(np.asarray(im), 0, 65535).astype(np.uint16)
    if arr.dtype == np.float32:
        im = Image.fromarray(arr, mode="F").resize((size, size), Image.BILINEAR)
        return np.asarray(im).astype(np.float32)
    return np.asarray(Image.fromarray(arr).resize((size, size), Image.BILINEAR))


def resize_image(arr: np.ndarray, size: int) -> np.ndarray:
    """A raw ``(H,W)`` or ``(H,W,3)`` image resized (bilinear) to ``size`` x ``size`` in its own dtype."""
    if arr.shape[:2] == (size, size):
        return arr
    if arr.ndim == 3:
        return np.clip(_resize_rgb(arr, size), 0, np.iinfo(arr.dtype).max if arr.dtype.kind in "ui" else None
                       ).astype(arr.dtype)
    return _resize_raw(arr, size)


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """An integer label map resized with nearest-neighbour to ``size`` (``S`` or ``(H, W)``): labels never blend."""
    h, w = (size, size) if isinstance(size, int) else size
    if mask.shape == (h, w):
        return mask
    rows = np.minimum(((np.arange(h) + 0.5) * mask.shape[0] / h).astype(np.int64), mask.shape[0] - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * mask.shape[1] / w).astype(np.int64), mask.shape[1] - 1)
    return mask[rows[:, None], cols[None, :]]


def read_mask_file(path: Path) -> np.ndarray:
    """An integer label map ``(H,W)`` from a single-channel PNG (palette images keep their indices) or an integer
    ``.npy``; a colour, float or multi-channel mask is a one-line error naming the file."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        arr = read_npy_file(path)
        if arr.dtype.kind == "f":
            raise DataError(f"{path} is a float mask ({arr.dtype}); save label maps as integers (0 = background)")
    else:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                im.load()
                if im.mode not in ("L", "P", "1", "I", "I;16", "I;16B", "I;16L"):
                    raise DataError(f"{path} is a {im.mode} image; a mask must be a single-channel label map "
                                    "(8/16-bit grey or palette PNG, one class index per pixel)")
                arr = np.asarray(im, dtype=np.int64 if im.mode.startswith("I") else np.uint8)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise DataError(f"{path} is not a readable mask ({first_line(e)}); remove it or fix the file") from None
    if arr.ndim == 3 and 1 in (arr.shape[0], arr.shape[-1]):
        arr = arr.reshape(arr.shape[1:] if arr.shape[0] == 1 else arr.shape[:-1])
    if arr.ndim != 2:
        raise DataError(f"{path} has shape {arr.shape}; a mask is one (H,W) label map")
    return arr.astype(np.uint8) if arr.dtype == bool else arr


def _resize_rgb(x: np.ndarray, size: int) -> np.ndarray:
    return np.stack([_resize_raw(x[..., c].astype(np.float32), size) for c in range(x.shape[-1])], -1)


def _dicom_errors() -> tuple[type[BaseException], ...]:
    from pydicom.errors import BytesLengthException, InvalidDicomError

    # pydicom parses elements lazily: a corrupt file can raise any of these at the first access of an element.
    return (
        InvalidDicomError,
        BytesLengthException,
        AttributeError,
        OSError,
        ValueError,
        KeyError,
        TypeError,
        IndexError,
        RuntimeError,
        NotImplementedError,
    )


def dicom_decoder_for(syntax) -> str:
    """The pylibjpeg plugin that decodes a compressed transfer syntax (the ``dicom`` extra installs them all)."""
    name = str(getattr(syntax, "name", syntax))
    if "2000" in name:
        return "pylibjpeg-openjpeg"
    if "RLE" in name:
        return "pylibjpeg-rle"
    return "pylibjpeg-libjpeg"  # JPEG baseline, extended, lossless and JPEG-LS


def _dicom_error(path: Path, ds, e: BaseException) -> DataError:
    try:
        syntax = ds.file_meta.TransferSyntaxUID
        compressed = bool(syntax.is_compressed)
    except Exception:  # no file meta, or a transfer syntax UID that is not one
        syntax, compressed = None, False
    if compressed and isinstance(e, RuntimeError | NotImplementedError):
        return DataError(
            f"{path} is not a readable DICOM image: its pixel data is compressed ({syntax.name}) and no installed "
            f"decoder reads it; install the {dicom_decoder_for(syntax)} plugin with pip install "
            "'medfm-compress[dicom]' (or python-gdcm), or decompress the file (gdcmconv --raw) "
            f"({' '.join(str(e).split())[:300]})"
        )
    return DataError(f"{path} is not a readable DICOM image ({type(e).__name__}: {first_line(e)})")


def _read_dicom(path: Path, window: tuple[float, float] | None, voi: bool) -> np.ndarray:
    """Pixels after the modality LUT (float32); with ``voi``, windowed to [0, 1] (see :func:`read_dicom_file`).
    The middle frame of a multi-frame image."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = None
    try:
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array
        if arr.ndim == 3 and getattr(ds, "SamplesPerPixel", 1) == 1:
            arr = arr[arr.shape[0] // 2]  # multi-frame: the middle frame
        x = apply_modality_lut(arr, ds).astype(np.float32)
        if not np.isfinite(x).all():
            raise DataError(f"{path} has NaN/Inf pixel values")
        if not voi:
            return x
        if window is not None:
            lo, hi = window
        elif "WindowCenter" in ds or "VOILUTSequence" in ds:
            x = apply_voi_lut(x, ds, prefer_lut=True).astype(np.float32)
            lo, hi = float(x.min()), float(x.max())
        else:
            lo, hi = float(np.percentile(x, 0.5)), float(np.percentile(x, 99.5))
        monochrome1 = getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1"
    except _dicom_errors() as e:
        raise _dicom_error(path, ds, e) from None
    if not np.isfinite(x).all():
        raise DataError(f"{path} has NaN/Inf pixel values")
    if hi <= lo:
        hi = lo + 1.0
    x = (np.clip(x, lo, hi) - lo) / (hi - lo)
    if monochrome1:
        x = 1.0 - x
    return x


def read_dicom_values(path: Path) -> np.ndarray:
    """One DICOM image's values after its modality LUT (e.g. Hounsfield units for CT), float32, unwindowed:
    for a model whose preprocessing applies its own intensity window."""
    return _read_dicom(path, None, voi=False)


def read_dicom_file(path: Path, size: int | None, window: tuple[float, float] | None = None) -> np.ndarray:
    """Read one DICOM image with its modality LUT and VOI windowing applied, as float32 in [0, 1].

    The window comes from ``window`` (e.g. HU for CT) when given, else from the file's VOI LUT or
    WindowCenter/WindowWidth, else the image's own min/max. MONOCHROME1 images are inverted.
    """
    x = _read_dicom(path, window, voi=True)
    if x.ndim == 3:
        x = x[..., :3]
    if size is not None and x.shape[:2] != (size, size):
        x = np.clip(_resize_raw(x.astype(np.float32), size) if x.ndim == 2 else _resize_rgb(x, size), 0, 1)
    return x.astype(np.float32)


def read_npy_file(path: Path) -> np.ndarray:
    """A ``.npy`` array (an image ``(H,W)``, ``(H,W,C)`` or ``(C,H,W)``, or a volume crop ``(X,Y,Z)``)."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(6)
    except OSError as e:
        raise DataError(f"{path} is not a readable .npy array ({e.strerror or e})") from None
    if magic != b"\x93NUMPY":
        raise DataError(f"{path} is not a .npy array (no NumPy header); save one image with numpy.save")
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, SyntaxError, TokenError) as e:  # the last two: a garbled header
        raise DataError(
            f"{path} is not a readable .npy array ({first_line(e)}); remove it or fix the file"
        ) from None
    if not isinstance(arr, np.ndarray):
        raise DataError(f"{path} is not a .npy array (an .npz archive?); save one image per .npy file")
    if arr.size == 0:
        raise DataError(f"{path} is an empty array")
    if arr.ndim not in (2, 3):
        raise DataError(
            f"{path} has shape {arr.shape}; a .npy case must be (H,W), (H,W,C), (C,H,W) or (X,Y,Z)"
        )
    if not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating) or arr.dtype == bool
    ):
        raise DataError(f"{path} has dtype {arr.dtype}; use uint8, uint16 or float")
    return arr.astype(np.float32) if arr.dtype == bool else arr


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True when the file starts with the DICOM preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def read_any(path: str | os.PathLike, window: tuple[float, float] | None = None) -> np.ndarray:
    """One case from an image, DICOM or ``.npy`` file, chosen by suffix (an unknown suffix: DICOM by its preamble,
    else an image).

    DICOM: with ``window`` (the model's intensity window) the values after the modality LUT, for the model's
    preprocessing to window; without, the file's own VOI window mapped to [0, 1].
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in NPY_SUFFIXES:
        return read_npy_file(p)
    if suffix in IMAGE_SUFFIXES:
        return read_image_file(p, None)
    if suffix in DICOM_SUFFIXES or is_dicom_file(p):
        return read_dicom_values(p) if window is not None else read_dicom_file(p, None)
    return read_image_file(p, None)


def _case_file(p: Path) -> bool:
    suffix = p.suffix.lower()
    if suffix in IMAGE_SUFFIXES or suffix in NPY_SUFFIXES or suffix in (".dcm", ".dicom"):
        return True
    return suffix == "" and is_dicom_file(p)


def _walk(root: Path, exclude: Path | None) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Hidden folders (.git, .ipynb_checkpoints) and the output folder of a previous run are not cases.
        dirnames[:] = [
            d
            for d in dirnames
            if not d.startswith(".")
            and (exclude is None or os.path.realpath(os.path.join(dirpath, d)) != str(exclude))
        ]
        for name in filenames:
            f = Path(dirpath, name)
            if not name.startswith(".") and f.is_file() and _case_file(f):
                found.append(str(f))
    return sorted(found)


def find_image_files(
    inputs: Iterable[str | os.PathLike], exclude: str | os.PathLike | None = None
) -> list[str]:
    """Files named by ``inputs``: a file as is, a folder's image/DICOM/``.npy`` files recursively in sorted order
    (hidden files and folders, and the folder ``exclude``, skipped; a file without a suffix only if it is DICOM).
    A missing path or a folder without cases is an error."""
    skip = Path(os.path.realpath(exclude)) if exclude is not None else None
    files: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_file():
            files.append(str(p))
        elif p.is_dir():
            found = _walk(p, skip)
            if not found:
                kinds = ", ".join(sorted(IMAGE_SUFFIXES | NPY_SUFFIXES | {".dcm", ".dicom"}))
                raise DataError(f"{p} contains no images ({kinds}, or DICOM files without a suffix)")
            files.extend(found)
        else:
            raise DataError(
                f"{p} does not exist; give image files (PNG, JPEG, NPY, DICOM), folders of them or a "
                "data spec"
            )
    return files
