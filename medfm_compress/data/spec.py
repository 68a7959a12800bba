"""Data spec strings: ``KIND:PATH?key=value&key=value``.

Kinds: ``medmnist:FILE.npz`` (``*_masks`` label maps instead of ``*_labels``: segmentation), ``folder:DIR``
(``images/`` + ``masks/``: segmentation), ``dicom:DIR`` and ``synthetic`` (the embedded default;
``synthetic?seed=1&n_train=500`` changes its size and seed, ``synthetic?task=segmentation`` draws label maps,
``synthetic?task=regression`` the lesion's area in percent of the image as a continuous target); image folders take
``?size=N`` (resize) and ``?channels=1|3`` (colour images to their luminance, or grey ones repeated into three
channels, where a folder mixes them);
volumetric segmentation from ``synthetic3d`` (CT-like phantoms, the embedded 3-D default) and ``nifti:DIR`` (the MSD /
nnU-Net layout), see :mod:`medfm_compress.data.volume_seg`; volume crops from ``nifti:FILE``, ``dicom-series:DIR``
and ``inv3:FILE.inv3`` (see :func:`medfm_compress.data.volume.volume_task`).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl

from .._cache import cache_dir
from ..errors import DataError
from .dataset import TaskData
from .volume_seg import MSD_OPTIONS, SYNTHETIC3D_OPTIONS, is_msd_folder

__all__ = ["DATA_KINDS", "DEFAULT_DATA_SPEC", "parse_data_spec", "load_data", "absolute_spec"]

DATA_KINDS = ("medmnist", "folder", "dicom", "synthetic", "synthetic3d", "nifti", "dicom-series", "inv3")
_CROP_OPTIONS = {"crop", "n", "sampling", "z", "min_fg", "seed", "spacing"}
DEFAULT_DATA_SPEC = "synthetic"
# 2-D patches (?patch=H,W on a segmentation folder): per image, a third of them centred on a foreground class.
FOLDER_PATCHES_PER_IMAGE = 16
FOLDER_PATCH_FG = 0.33

_OPTIONS = {
    "medmnist": {"stream"},
    "folder": {"size", "seed", "stream", "channels", "patch", "per_case", "fg"},
    "dicom": {"size", "seed", "window", "stream", "channels"},
    "synthetic": {"seed", "size", "n_train", "n_val", "n_test", "task"},
    "synthetic3d": SYNTHETIC3D_OPTIONS,
    # nifti:FILE takes the crop options, nifti:DIR (a segmentation data set) MSD_OPTIONS: checked when read.
    "nifti": _CROP_OPTIONS | MSD_OPTIONS,
    **{k: _CROP_OPTIONS for k in ("dicom-series", "inv3")},
}


def parse_data_spec(spec: str) -> tuple[str, str, dict[str, str]]:
    """Split ``KIND:PATH?opts`` into (kind, path, options); unknown kinds and options are errors."""
    if not spec or not isinstance(spec, str):
        raise DataError("empty data spec; use e.g. medmnist:FILE.npz, folder:DIR, dicom:DIR or synthetic")
    head, _, query = spec.partition("?")
    kind, sep, path = head.partition(":")
    if not sep and kind not in ("synthetic", "synthetic3d"):
        if head.endswith(".npz"):
            kind, path = "medmnist", head
        else:
            raise DataError(f"data spec {spec!r} has no kind; write KIND:PATH with KIND one of {', '.join(DATA_KINDS)}")
    if kind not in DATA_KINDS:
        raise DataError(f"unknown data kind {kind!r} in {spec!r}; use one of {', '.join(DATA_KINDS)}")
    opts = dict(parse_qsl(query, keep_blank_values=True))
    unknown = set(opts) - _OPTIONS[kind]
    if unknown:
        allowed = ", ".join(sorted(_OPTIONS[kind])) or "none"
        raise DataError(f"unknown option(s) {', '.join(sorted(unknown))} for {kind}: data (allowed: {allowed})")
    if kind not in ("synthetic", "synthetic3d") and not path:
        raise DataError(f"data spec {spec!r} has no path; write {kind}:PATH")
    return kind, path, opts


def _only(opts: dict[str, str], allowed: set[str], spec: str, what: str) -> None:
    unknown = set(opts) - allowed
    if unknown:
        raise DataError(f"unknown option(s) {', '.join(sorted(unknown))} for {what} in {spec!r} (allowed: "
                        f"{', '.join(sorted(allowed))})")


def _int_opt(opts: dict[str, str], key: str, spec: str) -> int | None:
    if key not in opts:
        return None
    try:
        v = int(opts[key])
    except ValueError:
        raise DataError(f"option {key}={opts[key]!r} in {spec!r} must be an integer") from None
    if v < 0 or (key != "seed" and v == 0):
        raise DataError(f"option {key}={v} in {spec!r} must be positive")
    return v


def _stream_opt(opts: dict[str, str], spec: str) -> bool | None:
    raw = opts.get("stream", "auto").lower()
    values = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False, "auto": None}
    if raw not in values:
        raise DataError(f"option stream={opts['stream']!r} in {spec!r} must be 1, 0 or auto")
    return values[raw]


def absolute_spec(spec: str) -> str:
    """``spec`` with its path made absolute (options kept), so it names the same data from any directory."""
    kind, path, _ = parse_data_spec(spec)
    if kind in ("synthetic", "synthetic3d") or not path:
        return spec
    query = spec.partition("?")[2]
    return f"{kind}:{Path(path).resolve()}" + (f"?{query}" if query else "")


def load_data(spec: str, *, require_labels: bool = True, seed: int = 0) -> TaskData:
    """Load the task named by ``spec``: in memory, or streamed from disk when it is too large (see above).

    The task's ``source`` is ``spec`` itself, options included (``folder:DIR?size=128``), so what a stage records
    as its data names exactly what was read.

    Args:
        spec: a data spec string (see module docstring).
        require_labels: when False, image folders without ``labels.csv`` are accepted (calibration).
        seed: seed of the split drawn for folders without a split column.
    """
    task = _load(spec, require_labels, seed)
    task.source = spec
    return task


def _patch_sampling(opts: dict[str, str], spec: str, seed: int) -> dict | None:
    """A segmentation folder's ``?patch=H,W`` (with ``per_case``, ``fg``): training patches at the images' own
    resolution (:mod:`.patches`); None without ``patch``."""
    from .patches import parse_sampling

    if "patch" not in opts:
        extra = sorted(set(opts) & {"per_case", "fg"})
        if extra:
            raise DataError(f"option {extra[0]} in {spec!r} applies to patches: add ?patch=H,W (e.g. patch=128,128)")
        return None
    return parse_sampling(opts, spec, seed, 2, FOLDER_PATCHES_PER_IMAGE, FOLDER_PATCH_FG)


def _load(spec: str, require_labels: bool, seed: int) -> TaskData:
    kind, path, opts = parse_data_spec(spec)
    stream = _stream_opt(opts, spec)
    if kind == "medmnist":
        from .medmnist import read_medmnist

        return read_medmnist(Path(path), stream=stream)
    if kind == "synthetic":
        from .medmnist import read_medmnist
        from .synthetic import SyntheticConfig, synthetic_npz

        kw: dict = {k: _int_opt(opts, k, spec) for k in opts if k != "task"}
        if "task" in opts:
            kw["task"] = opts["task"]
        cfg = SyntheticConfig(**{k: v for k, v in kw.items() if v is not None})
        return read_medmnist(synthetic_npz(cfg, cache_dir()))
    if kind == "synthetic3d":
        from .volume_seg import synthetic3d_task

        return synthetic3d_task(opts, spec, cache_dir(), seed=seed)
    if kind == "nifti" and is_msd_folder(path):
        from .volume_seg import msd_task

        _only(opts, MSD_OPTIONS, spec, "nifti:DIR (a segmentation data set)")
        return msd_task(path, opts, spec, seed=seed)
    if kind == "nifti" and Path(path).is_dir():
        raise DataError(f"{path} is a folder without dataset.json; nifti:DIR reads a segmentation data set "
                        "(dataset.json + imagesTr/ + labelsTr/), nifti:FILE one volume")
    if kind in ("nifti", "dicom-series", "inv3"):
        from .volume import volume_task

        _only(opts, _CROP_OPTIONS, spec, f"{kind}:FILE (volume crops)")
        return volume_task(kind, path, opts, spec, seed=seed)
    size = _int_opt(opts, "size", spec)
    channels = _int_opt(opts, "channels", spec)
    if channels not in (None, 1, 3):
        raise DataError(f"option channels={channels} in {spec!r} must be 1 (colour images to their luminance) or 3 "
                        "(grey images repeated into three channels)")
    split_seed = _int_opt(opts, "seed", spec)
    split_seed = seed if split_seed is None else split_seed
    if kind == "folder":
        from .folder import read_folder
        from .masks import is_mask_folder, read_mask_folder

        if is_mask_folder(path):
            if "stream" in opts:
                raise DataError(f"option stream in {spec!r}: a segmentation folder (images/ + masks/) is read into "
                                "memory; drop the option")
            return read_mask_folder(Path(path), size=size, seed=split_seed, channels=channels,
                                    sampling=_patch_sampling(opts, spec, split_seed))
        tiled = sorted(set(opts) & {"patch", "per_case", "fg"})
        if tiled:
            raise DataError(f"option {tiled[0]} in {spec!r} cuts segmentation patches; {path} is not a segmentation "
                            "folder (images/ + masks/): drop the option")

        return read_folder(Path(path), size=size, seed=split_seed, require_labels=require_labels, stream=stream,
                           channels=channels)
    from .folder import read_dicom_folder

    window = None
    if "window" in opts:
        try:
            lo, hi = (float(v) for v in opts["window"].split(","))
        except ValueError:
            raise DataError(f"window={opts['window']!r} in {spec!r} must be LOW,HIGH (e.g. -1000,400)") from None
        window = (lo, hi)
    return read_dicom_folder(
        Path(path), size=size or 224, seed=split_seed, require_labels=require_labels, window=window, stream=stream,
        channels=channels,
    )
