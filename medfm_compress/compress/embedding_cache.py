"""Teacher embeddings cached on disk, per crop: a foundation teacher is paid once per crop and augmented view, ever.

:class:`EmbeddingCache` stores one ``.npy`` per (volume sha256, crop box, intensity window, teacher id); the distiller's
foundation teacher source fills it through its teacher and reads it back (:mod:`medfm_compress.compress.teachers`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from .._io import atomic_path, ensure_dir
from ..data.volume import CropBox, extract_crops, hu_window
from ..runtime.volumes import Volume

__all__ = ["EmbeddingCache", "crop_embeddings"]



class EmbeddingCache:
    """Teacher embeddings per crop in ``directory``, one ``.npy`` per (volume sha256, crop box, window,
    teacher id), written atomically. The teacher is the slow part; a rerun reads every embedding back."""

    def __init__(self, directory: str | Path):

        self.directory = ensure_dir(directory)
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(volume_sha256: str, box: CropBox, teacher_id: str, window: tuple[float, float]) -> str:
        blob = json.dumps(
            {
                "volume": volume_sha256,
                "box": box.as_list(),
                "teacher": teacher_id,
                "window": list(window),
                "v": 1,
            },
            sort_keys=True,
        ).encode()
        return hashlib.sha256(blob).hexdigest()

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.npy"

    def embeddings(
        self, volume: Volume, boxes: list[CropBox], teacher, batch_size: int = 1, progress: bool = True
    ) -> np.ndarray:
        """``(N, D)`` float32 teacher embeddings of ``boxes``; computed (and stored) only where missing."""
        import torch
        from tqdm.auto import tqdm

        keys = [self.key(volume.sha256, b, teacher.teacher_id, teacher.window) for b in boxes]
        out: list[np.ndarray | None] = [None] * len(boxes)
        todo = []
        for i, k in enumerate(keys):
            p = self.path(k)
            if p.is_file():
                try:
                    out[i] = np.load(p, allow_pickle=False)
                    self.hits += 1
                    continue
                except (OSError, ValueError):
                    pass  # a damaged entry is recomputed and overwritten
            todo.append(i)
        self.misses += len(todo)
        bar = tqdm(
            total=len(todo),
            desc=f"teacher {teacher.spec}",
            unit="crop",
            disable=not progress or not todo,
            leave=False,
        )
        for s in range(0, len(todo), batch_size):
            idx = todo[s : s + batch_size]
            x = hu_window(extract_crops(volume, [boxes[i] for i in idx]), teacher.window)[:, None]
            emb = teacher.embed(torch.from_numpy(np.ascontiguousarray(x))).cpu().numpy().astype(np.float32)
            for j, i in enumerate(idx):
                p = self.path(keys[i])
                ensure_dir(p.parent)
                with atomic_path(p, suffix=".npy") as tmp:
                    with open(tmp, "wb") as fh:
                        np.save(fh, emb[j], allow_pickle=False)
                out[i] = emb[j]
            bar.update(len(idx))
        bar.close()
        return np.stack(out).astype(np.float32)  # type: ignore[arg-type]


def crop_embeddings(data, teacher, cache: EmbeddingCache, batch_size: int = 1, progress: bool = True) -> np.ndarray:
    """Teacher embeddings ``(N, D)`` of the crops of volume-crop ``data`` (a data spec's
    :class:`~medfm_compress.data.dataset.TaskData`), through ``cache``."""
    from ..errors import DataError

    if data.crops is None:
        raise DataError(f"{data.source} is not a volume crop spec (inv3:, nifti:, dicom-series: with ?crop=)")
    return cache.embeddings(data.crops.volume, [CropBox(*b) for b in data.crops.boxes], teacher,
                            batch_size=batch_size, progress=progress)
