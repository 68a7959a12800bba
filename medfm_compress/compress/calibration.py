"""Calibration and held-out sets for post-training quantization.

Images come from a data spec, drawn stratified by class with a seed and preprocessed exactly as the model's
metadata says. Held-out images (for the parity gate) never overlap the calibration images: they come from another
split or from the images calibration did not draw, and a held-out image whose pixels equal a calibration image's
(a data set that repeats an image across splits) is dropped. Random
calibration exists only behind an explicit flag, and the set says so, so that the output's metadata can too.

A set whose preprocessed size exceeds the memory budget (see :mod:`medfm_compress.data.lazy`), drawn from data
that is itself streamed, is never materialised: ``images`` and ``holdout`` are then lazy arrays that read,
preprocess and check one batch at a time, and every consumer (ORT's calibration reader, ModelOpt's forward
loop and ONNX calibration, NNCF's dataset, the parity gate) walks them in batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..data.lazy import LazyImages, is_lazy, iter_batches, memory_budget_bytes, take
from ..errors import ConfigError, DataError

__all__ = [
    "CalibrationSet",
    "CalibrationReader",
    "stratified_indices",
    "build_calibration",
    "validate_inputs",
    "random_calibration",
]


@dataclass
class CalibrationSet:
    """Preprocessed NCHW float32 calibration and held-out images plus where they came from.

    ``images`` and ``holdout`` are arrays, or :class:`~medfm_compress.data.LazyImages` for sets too large to
    hold; index them by slices (``x[i:i + b]``) or :func:`~medfm_compress.data.iter_batches`, never whole.
    """

    images: np.ndarray | LazyImages
    holdout: np.ndarray | LazyImages
    source: str
    random: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    def provenance(self) -> dict[str, Any]:
        return {
            "data": self.source,
            "random": self.random,
            "num_calibration": len(self.images),
            "num_holdout": len(self.holdout),
            "streamed": is_lazy(self.images),
            **self.info,
        }


class CalibrationReader:
    """An ONNX Runtime ``CalibrationDataReader`` (also taken by ModelOpt's ONNX PTQ) over preprocessed images.

    Each ``get_next`` reads one batch, so a lazy set is streamed; ``rewind`` starts over. ``stop`` ends the
    pass early (at an image index), which lets a caller feed a large set in bounded chunks.
    """

    def __init__(self, name: str, images: np.ndarray | LazyImages, batch: int = 16, start: int = 0,
                 stop: int | None = None, on_batch=None):
        self.name, self.images, self.batch = name, images, batch
        self.start, self.stop = start, len(images) if stop is None else min(stop, len(images))
        self.i = start
        self.on_batch = on_batch  # called with each batch's image count (a progress bar)

    def get_next(self):
        if self.i >= self.stop:
            return None
        b = self.images[self.i : min(self.i + self.batch, self.stop)]
        self.i += self.batch
        if self.on_batch is not None:
            self.on_batch(len(b))
        return {self.name: np.ascontiguousarray(b, dtype=np.float32)}

    def get_first(self):
        """The first batch, without advancing (ModelOpt test-runs its session with it)."""
        b = self.images[self.start : min(self.start + self.batch, self.stop)]
        return {self.name: np.ascontiguousarray(b, dtype=np.float32)}

    def rewind(self):
        self.i = self.start


def _strata(labels: np.ndarray, task: str) -> np.ndarray:
    """One group id per image: the class (multi-class, binary), the first positive label (multi-label), the quintile
    of a continuous value (regression), or for label maps the rarest class the image shows."""
    from ..data.dataset import label_strata
    from ..runtime.tasks import get_task

    labels = np.asarray(labels)
    if get_task(task).continuous:
        return label_strata(labels, continuous=True)
    if labels.ndim >= 3:  # label maps, 2-D or 3-D
        from ..data.dataset import case_strata

        return case_strata(labels, int(labels.max()) + 1 if labels.size else 1)
    if labels.ndim == 2:
        has = labels.any(axis=1)
        return np.where(has, labels.argmax(axis=1), -1)
    return labels.astype(np.int64)


def stratified_indices(labels: np.ndarray, n: int, seed: int = 0, task: str = "multiclass") -> np.ndarray:
    """``n`` indices (or all, if fewer) drawn so each class keeps its share, every present class at least once.

    Deterministic for a given ``seed``; the result is sorted.
    """
    groups = _strata(labels, task)
    total = len(groups)
    if n >= total:
        return np.arange(total)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(groups, return_counts=True)
    quota = np.maximum(1, np.floor(counts * n / total).astype(int))
    quota = np.minimum(quota, counts)
    # Hand out what rounding left over to the largest classes first (or take back from them).
    order = np.argsort(-counts, kind="stable")
    i = 0
    while quota.sum() < n:
        k = order[i % len(order)]
        if quota[k] < counts[k]:
            quota[k] += 1
        i += 1
    while quota.sum() > n:
        k = order[i % len(order)]
        if quota[k] > 1:
            quota[k] -= 1
        i += 1
    picked = [
        rng.choice(np.flatnonzero(groups == c), size=q, replace=False)
        for c, q in zip(classes, quota, strict=True)
    ]
    return np.sort(np.concatenate(picked))


def validate_inputs(x: np.ndarray, shape: tuple[int, int, int], source: str) -> np.ndarray:
    """Check preprocessed images against the model's ``(C, H, W)`` (or ``(C, X, Y, Z)``); NaN/Inf and
    mismatches are errors."""
    if x.ndim != 1 + len(shape):
        layout = "NCHW" if len(shape) == 3 else "NCXYZ"
        raise DataError(f"{source}: calibration images must be {layout}, got shape {x.shape}")
    c, spatial = shape[0], tuple(shape[1:])
    if x.shape[1] != c:
        raise DataError(
            f"{source}: calibration images have {x.shape[1]} channel(s) but the model expects {c}; "
            "check --channels or the data"
        )
    if tuple(x.shape[2:]) != spatial:
        raise DataError(
            f"{source}: calibration images are {'x'.join(map(str, x.shape[2:]))} but the model expects "
            f"{'x'.join(map(str, spatial))}; check --input-size"
        )
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x.reshape(len(x), -1))).any(axis=1).sum())
        raise DataError(
            f"{source}: {bad} calibration image(s) contain NaN/Inf after preprocessing; clean the data"
        )
    return x


def preprocess_checked(raw: np.ndarray | LazyImages, pre, shape: tuple[int, int, int], source: str,
                       batch_size: int = 16) -> np.ndarray | LazyImages:
    """``pre(raw)`` checked against the model's ``(C, H, W)``.

    In-memory ``raw`` is preprocessed at once, as always. Lazy ``raw`` is preprocessed batch by batch: into one
    array when the result fits the memory budget, else into a lazy array that preprocesses and checks each
    batch when it is read (the first image is checked now, so a wrong size or channel count fails early).
    """

    def run(batch: np.ndarray) -> np.ndarray:
        try:
            return validate_inputs(pre(batch), shape, source)
        except DataError as e:
            msg = str(e)
            raise DataError(msg if msg.startswith(source) else f"{source}: {msg}") from None

    if not is_lazy(raw):
        return run(raw)
    run(raw[:1])
    if len(raw) * int(np.prod(shape)) * 4 <= memory_budget_bytes():
        return np.concatenate([run(b) for b in iter_batches(raw, batch_size)])
    return raw.map(run, shape, np.float32, finite_checked=True)


def random_calibration(shape: tuple[int, int, int], n: int, n_holdout: int, seed: int = 0) -> CalibrationSet:
    """Standard-normal tensors in the model's normalised input space (only with --allow-random-calibration)."""
    rng = np.random.default_rng(seed)
    cal = rng.standard_normal((n, *shape)).astype(np.float32)
    hold = rng.standard_normal((n_holdout, *shape)).astype(np.float32)
    return CalibrationSet(cal, hold, "random", random=True)


def build_calibration(
    spec: str | None,
    pre,
    shape: tuple[int, int, int],
    n: int,
    n_holdout: int,
    seed: int = 0,
    allow_random: bool = False,
) -> CalibrationSet:
    """Load ``spec``, draw ``n`` stratified calibration images and up to ``n_holdout`` disjoint held-out images.

    Calibration comes from the ``train`` split (else ``val``, else ``test``); held-out images from ``test``
    (else ``val``), or, for a single-split source such as an unlabeled folder, from the images not drawn
    for calibration.

    Args:
        spec: data spec; None needs ``allow_random``.
        pre: the model's :class:`~medfm_compress.data.PreprocessSpec`.
        shape: the model's ``(C, H, W)``.
        n: calibration images.
        n_holdout: held-out images for the parity gate.
        seed: sampling seed.
        allow_random: with no ``spec``, use random tensors instead of failing.
    """
    if n < 1:
        raise ConfigError(f"--num-calib must be >= 1, got {n}")
    if not spec:
        if allow_random:
            return random_calibration(shape, n, n_holdout, seed)
        raise ConfigError(
            "no calibration data: pass --calib-data SPEC (e.g. folder:DIR or medmnist:FILE.npz); "
            "random calibration needs --allow-random-calibration"
        )
    from ..data import load_data

    task = load_data(spec, require_labels=False, seed=seed)
    nonempty = [s for s in ("train", "val", "test") if s in task.splits and len(task.splits[s])]
    if not nonempty:
        raise DataError(f"{spec} holds no images to calibrate with")
    cal_split = nonempty[0]
    pool = task.splits[cal_split]
    info: dict[str, Any] = {}
    cal_idx = stratified_indices(pool.labels, n, seed, task.task)
    # The gate is a selection step (auto-exclude, --precision auto pick by it): judge it on the validation split
    # when there is one, so the test split stays unseen for the figures reported on it.
    hold_split = next((s for s in ("val", "test") if s in nonempty and s != cal_split), None)
    if hold_split is not None:
        hs = task.splits[hold_split]
        if task.whole_cases:
            # Whole held-out cases: the model runs on windows of the training patch, so the gate does too.
            from ..data.patches import holdout_patches

            hold_raw = holdout_patches(task, hold_split, n_holdout, seed + 1)
        else:
            hold_idx = stratified_indices(hs.labels, n_holdout, seed + 1, task.task)
            hold_raw = take(hs.images, hold_idx)
    else:
        # One split: held-out images come from sources calibration did not use (a group, e.g. the crops of one
        # photograph, a DICOM's patient, counts as one source; an image without a group is its own).
        everything = np.arange(len(pool))
        groups = np.asarray(pool.groups if getattr(pool, "groups", None) is not None else everything, dtype=object)
        if len(set(groups.tolist())) < 2:  # one source (the crops of one volume): images are all there is to split
            info["holdout_shares_source"] = True
            groups = np.asarray(everything, dtype=object)
        rest = everything[~np.isin(groups, groups[cal_idx])]
        if not len(rest):
            # Calibration would touch every source of a single split: hold out whole sources, a quarter of the
            # images (at least one source) first, so the gate never judges a model on what it was calibrated on.
            if len(pool) < 2:
                raise DataError(f"{spec} holds {len(pool)} image: calibration and held-out images need at least 2")
            want = max(1, min(n_holdout, len(pool) // 4))
            if len(set(groups.tolist())) == len(groups):  # every image its own source: stratified by label
                held = np.isin(everything, stratified_indices(pool.labels, want, seed + 1, task.task))
            else:  # whole sources, in a seeded order, until they hold the images wanted (one stays for calibration)
                sources = sorted(set(groups.tolist()))
                order = np.random.default_rng(seed + 1).permutation(len(sources))[: len(sources) - 1]
                counts = np.array([np.count_nonzero(groups == sources[i]) for i in order])
                take_n = int(np.searchsorted(np.cumsum(counts), want)) + 1
                held = np.isin(groups, [sources[i] for i in order[:take_n]])
            rest, others = everything[held], everything[~held]
            cal_idx = others[stratified_indices(pool.labels[others], n, seed, task.task)]
            rest = rest[~np.isin(groups[rest], groups[cal_idx])]
        hold_idx = rest[stratified_indices(pool.labels[rest], n_holdout, seed + 1, task.task)]
        hold_raw = take(pool.images, hold_idx)
        if len(set(groups.tolist())) < len(groups):
            info["holdout_sources"] = int(len(set(groups[hold_idx].tolist())))
    cal_raw = take(pool.images, cal_idx)
    images = preprocess_checked(cal_raw, pre, shape, spec)
    info.update({"calibration_split": cal_split, "holdout_split": hold_split or f"{cal_split} (rest)"})
    hold_raw, repeated = _drop_repeats(cal_raw, hold_raw)
    if repeated:
        info["holdout_repeats_dropped"] = repeated
    if not len(hold_raw):
        raise DataError(
            f"{spec}: every held-out image ({info['holdout_split']}) repeats a calibration image; the parity gate "
            "needs images calibration did not see: give data whose splits differ"
        )
    holdout = preprocess_checked(hold_raw, pre, shape, spec)
    return CalibrationSet(images, holdout, spec, random=False, info=info)


def _drop_repeats(cal_raw, hold_raw):
    """``hold_raw`` without the images whose pixels equal a calibration image's, and how many were dropped.
    Streamed (lazy) sets are disjoint by index only: hashing them would read every image twice."""
    if is_lazy(cal_raw) or is_lazy(hold_raw) or not len(hold_raw):
        return hold_raw, 0
    import hashlib

    def digest(image) -> str:
        a = np.ascontiguousarray(image)
        return hashlib.sha1(a.tobytes() + str((a.shape, a.dtype)).encode()).hexdigest()

    seen = {digest(im) for im in cal_raw}
    keep = np.array([digest(im) not in seen for im in hold_raw], dtype=bool)
    if keep.all():
        return hold_raw, 0
    return hold_raw[keep], int((~keep).sum())
