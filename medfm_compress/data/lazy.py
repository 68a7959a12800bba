"""Images read on demand, so a split larger than memory is streamed in batches instead of loaded whole.

A :class:`LazyImages` looks like the ``(N, H, W[, C])`` array it stands for (``len``, ``shape``, ``dtype``,
``ndim``; indexing with an int, a slice or an index array returns a NumPy array of just those images), so code
that slices batches works unchanged. Readers return one when a split's decoded size is above
:func:`memory_budget_bytes` (or when the data spec says ``stream=1``); smaller splits stay plain arrays.

``np.asarray(lazy)`` still works (it reads everything): stages that need the whole split at once, such as
distillation, keep working on sets that fit in memory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError

__all__ = [
    "LazyImages",
    "MEMORY_BUDGET_ENV",
    "memory_budget_bytes",
    "is_lazy",
    "take",
    "iter_batches",
    "BatchIterable",
]

MEMORY_BUDGET_ENV = "MEDFM_MAX_IN_MEMORY_MB"
# Images decoded per read when a lazy set is materialised or scanned; bounds the memory of those passes.
READ_CHUNK = 64


def memory_budget_bytes() -> int:
    """Largest decoded split (bytes) that is loaded into memory whole; larger ones are streamed.

    ``$MEDFM_MAX_IN_MEMORY_MB`` sets it; the default is a quarter of physical memory (2 GiB if unknown), so
    that the raw split, its preprocessed copy and the model fit together.
    """
    raw = os.environ.get(MEMORY_BUDGET_ENV)
    if raw:
        try:
            mb = float(raw)
        except ValueError:
            raise ConfigError(f"${MEMORY_BUDGET_ENV}={raw!r} must be a number of megabytes") from None
        if mb < 0:
            raise ConfigError(f"${MEMORY_BUDGET_ENV}={raw!r} must be >= 0")
        return int(mb * 2**20)
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")) // 4
    except (ValueError, OSError, AttributeError):
        return 2 * 2**30


class LazyImages:
    """``N`` images of one shape and dtype, read by ``read(indices) -> array`` only when indexed.

    Args:
        n: number of images.
        item_shape: shape of one image.
        dtype: dtype every read returns (a read returning another shape or dtype is an error).
        read: reads the images at an int64 index array (base indices), returns ``(len(idx), *item_shape)``.
        source: where the images come from (for messages).
        index: base indices this view selects (None: all ``n``).
        finite_checked: ``read`` itself refuses NaN/Inf, so validation need not scan the images.
    """

    def __init__(
        self,
        n: int,
        item_shape: tuple[int, ...],
        dtype: Any,
        read: Callable[[np.ndarray], np.ndarray],
        source: str,
        index: np.ndarray | None = None,
        finite_checked: bool = False,
    ):
        self._n = int(n)
        self.item_shape = tuple(int(s) for s in item_shape)
        self.dtype = np.dtype(dtype)
        self._read = read
        self.source = source
        self._index = None if index is None else np.asarray(index, dtype=np.int64)
        self.finite_checked = finite_checked

    # --- the array-like surface -------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._n if self._index is None else len(self._index)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.item_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.item_shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __repr__(self) -> str:
        return f"LazyImages(shape={self.shape}, dtype={self.dtype}, source={self.source!r})"

    def _positions(self, key: Any) -> np.ndarray:
        n = len(self)
        if isinstance(key, slice):
            return np.arange(n, dtype=np.int64)[key]
        arr = np.asarray(key)
        if arr.dtype == bool:
            if arr.shape != (n,):
                raise IndexError(f"boolean index of shape {arr.shape} for {n} images")
            return np.flatnonzero(arr).astype(np.int64)
        if not np.issubdtype(arr.dtype, np.integer):
            raise IndexError(f"images can be indexed by int, slice or index array, not {arr.dtype}")
        arr = arr.astype(np.int64).reshape(-1)
        if arr.size and (arr.min() < -n or arr.max() >= n):
            raise IndexError(f"image index out of range for {n} images")
        return np.where(arr < 0, arr + n, arr)

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):
            # images[a:b, ..., 0] and the like: read the images, then apply the rest to the batch.
            return self[key[0]][(slice(None), *key[1:])]
        if isinstance(key, int | np.integer):
            return self._take(self._positions(np.array([key])))[0]
        return self._take(self._positions(key))

    def _take(self, positions: np.ndarray) -> np.ndarray:
        if positions.size == 0:
            return np.empty((0, *self.item_shape), dtype=self.dtype)
        base = positions if self._index is None else self._index[positions]
        out = self._read(base)
        if out.shape != (len(positions), *self.item_shape) or out.dtype != self.dtype:
            raise DataError(
                f"{self.source}: images read as {out.shape} {out.dtype}, expected "
                f"{(len(positions), *self.item_shape)} {self.dtype}; all images must share one size and bit depth"
            )
        return out

    def __array__(self, dtype=None, copy=None):
        # Whole-split consumers (distillation) still work; the streaming paths never come here.
        out = np.empty(self.shape, dtype=self.dtype)
        for start in range(0, len(self), READ_CHUNK):
            out[start : start + READ_CHUNK] = self[start : start + READ_CHUNK]
        return out if dtype is None else out.astype(dtype, copy=False)

    def __iter__(self) -> Iterator[np.ndarray]:
        for batch in iter_batches(self, READ_CHUNK):
            yield from batch

    # --- views ------------------------------------------------------------------------------------------
    def subset(self, positions: Any) -> LazyImages:
        """A lazy view of the images at ``positions`` (nothing is read)."""
        pos = self._positions(positions)
        base = pos if self._index is None else self._index[pos]
        return LazyImages(
            self._n, self.item_shape, self.dtype, self._read, self.source, base, self.finite_checked
        )

    def map(
        self,
        fn: Callable[[np.ndarray], np.ndarray],
        item_shape: tuple[int, ...],
        dtype: Any,
        finite_checked: bool | None = None,
    ) -> LazyImages:
        """A lazy view whose batches are ``fn(batch)``, e.g. preprocessing (``fn`` must keep the batch length)."""
        return LazyImages(
            len(self),
            item_shape,
            dtype,
            lambda idx: fn(self._take(idx)),
            self.source,
            finite_checked=self.finite_checked if finite_checked is None else finite_checked,
        )


def is_lazy(images: Any) -> bool:
    return isinstance(images, LazyImages)


def take(images: np.ndarray | LazyImages, positions: Any) -> np.ndarray | LazyImages:
    """``images[positions]``, but a lazy view (nothing read) for lazy images."""
    return images.subset(positions) if is_lazy(images) else images[positions]


def iter_batches(images: np.ndarray | LazyImages, batch_size: int) -> Iterator[np.ndarray]:
    """Consecutive batches of at most ``batch_size`` images, each read only when reached."""
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    for start in range(0, len(images), batch_size):
        yield images[start : start + batch_size]


class BatchIterable:
    """A re-iterable of batches (frameworks such as NNCF iterate a calibration dataset more than once)."""

    def __init__(
        self,
        images: np.ndarray | LazyImages,
        batch_size: int = 1,
        transform: Callable[[int, np.ndarray], Any] | None = None,
    ):
        self.images, self.batch_size, self.transform = images, batch_size, transform

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def __iter__(self) -> Iterator[Any]:
        for i, batch in enumerate(iter_batches(self.images, self.batch_size)):
            yield batch if self.transform is None else self.transform(i * self.batch_size, batch)
