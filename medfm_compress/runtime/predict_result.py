"""What a ``predict`` run did (:class:`PredictResult`) and the names of the files it writes, shared by the image and
the volume paths (:mod:`.predict`, :mod:`.predict_volume`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["PredictResult", "CSV_NAME", "JSON_NAME", "EMBEDDINGS_NAME", "MASKS_DIR"]

CSV_NAME = "predictions.csv"
JSON_NAME = "predictions.json"
EMBEDDINGS_NAME = "embeddings.npy"
MASKS_DIR = "masks"


@dataclass
class PredictResult:
    """What a predict run did: counts, timings and the files it wrote."""

    model: str
    backend: str
    task: str
    label_names: list[str]
    cases: int
    predicted: int
    skipped: int
    seconds: float
    images_per_s: float
    batch_size: int
    csv_path: Path
    json_path: Path
    embeddings_path: Path | None = None
    masks_path: Path | None = None
    notes: list[str] = field(default_factory=list)
    volumes: bool = False  # a 3-D model's run: cases are volumes, batch_size its windows per engine call

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("csv_path", "json_path", "embeddings_path", "masks_path"):
            d[k] = str(d[k]) if d[k] is not None else None
        return d
