"""Embedding: a vector per image (a foundation encoder, or a student distilled from one), compared by cosine; there
are no classes to score, so no labels and no argmax."""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..._io import atomic_path
from ..predict_result import EMBEDDINGS_NAME
from .base import PredictWriter, Shown, Task

__all__ = ["Embedding"]


class Embedding(Task):
    name: ClassVar[str] = "embedding"
    postprocess: ClassVar[str] = "none"
    has_labels: ClassVar[bool] = False
    gate_metrics: ClassVar[tuple[str, ...]] = ("cosine",)
    shown: ClassVar[Shown] = Shown(result="embedding")

    def agreement(self, reference, test):
        """Embeddings have no classes: their agreement is their cosine (``parity_metrics``), not a top-1."""
        return None

    def output_labels(self, label_names, width):
        return []

    def evaluate(self, logits, labels, label_names, thresholds=None, spacing=None):
        """No labels to score: the metrics are empty and the parity (cosine) says everything."""
        return {"accuracy": None, "macro_auc": None, "sensitivity": None, "specificity": None, "per_class": []}

    def predict_writer(self, csv_file, json_file, out, labels) -> PredictWriter:
        return _EmbeddingWriter(csv_file, json_file, out, labels)


class _EmbeddingWriter(PredictWriter):
    """``embeddings.npy`` (float32, one row per predicted case); the CSV has ``row``, the case's row in it."""

    def columns(self) -> list[str]:
        return ["row"]

    def open(self, stack, total, width) -> None:
        self.path = self.out / EMBEDDINGS_NAME
        self.total, self.width = total, width
        tmp = stack.enter_context(atomic_path(self.path))
        # Rows are appended as they come (plain writes: no memory map, whose pages a full disk would fault on); the
        # header says `total` rows and is rewritten, same length, if some cases were skipped.
        self._fh = open(tmp, "wb")
        stack.callback(_close_quietly, self._fh)
        self._header = npy_header(total, width)
        self._fh.write(self._header)

    def paths(self) -> dict[str, Path]:
        return {"embeddings_path": self.path}

    def add_batch(self, names, logits, sizes) -> None:
        start = self.predicted
        self._fh.write(np.ascontiguousarray(logits, dtype="<f4").tobytes())
        for j, name in enumerate(names):
            self.row(name, [start + j])
            self.record({"file": name, "row": start + j})
        self.predicted += len(names)

    def finish(self) -> None:
        if self.predicted < self.total:
            self._fh.seek(0)
            self._fh.write(npy_header(self.predicted, self.width, len(self._header)))
            self._fh.truncate(len(self._header) + self.predicted * self.width * 4)
        self._fh.close()


def _close_quietly(fh) -> None:
    import contextlib

    with contextlib.suppress(OSError):
        fh.close()


def npy_header(rows: int, width: int, length: int | None = None) -> bytes:
    """The ``.npy`` (format 1.0) header of a ``(rows, width)`` little-endian float32 array, padded with spaces to
    ``length`` bytes when given (the format allows any padding that keeps the data 64-byte aligned)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (rows, width)})
    head = buf.getvalue()
    if length is None or len(head) == length:
        return head
    if len(head) > length:
        raise AssertionError(f"npy header for {rows} rows is longer than the one reserved ({len(head)} > {length})")
    pad = length - len(head)
    return head[:8] + struct.pack("<H", length - 10) + head[10:-1] + b" " * pad + b"\n"
