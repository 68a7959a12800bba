"""Model cards: the JSON that travels beside a weight file and says how to rebuild and feed the model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._io import atomic_write_json, read_json
from ..errors import ModelError
from ..layout import RunLayout
from ..runtime.preprocess import PreprocessSpec

__all__ = ["ModelCard", "load_model", "resolve_model_files", "CARD_FORMAT", "CARD_VERSION", "MODEL_ROLES"]

CARD_FORMAT = "medfm-compress/model"
CARD_VERSION = 1
# The models a run directory can hold (``<role>.json`` + ``<role>.safetensors``).
MODEL_ROLES = ("student", "teacher", "baseline")


@dataclass
class ModelCard:
    """Architecture, input spec, labels and provenance of a trained model."""

    arch: str
    num_classes: int
    in_chans: int
    task: str
    label_names: list[str]
    preprocess: PreprocessSpec
    img_size: int | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    num_params: int | None = None
    embedding_dim: int | None = None
    role: str = "student"
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": CARD_FORMAT,
            "version": CARD_VERSION,
            "arch": self.arch,
            "num_classes": self.num_classes,
            "in_chans": self.in_chans,
            "img_size": self.img_size,
            "model_kwargs": self.model_kwargs,
            "task": self.task,
            "label_names": list(self.label_names),
            "preprocess": self.preprocess.to_dict(),
            "num_params": self.num_params,
            "embedding_dim": self.embedding_dim,
            "role": self.role,
            "provenance": self.provenance,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "model card") -> ModelCard:
        if d.get("format") != CARD_FORMAT:
            raise ModelError(f"{source} is not a medfm-compress model card (format {d.get('format')!r})")
        if d.get("version") != CARD_VERSION:
            raise ModelError(f"{source} has card version {d.get('version')!r}; this tool reads version {CARD_VERSION}")
        try:
            return cls(
                arch=str(d["arch"]),
                num_classes=int(d["num_classes"]),
                in_chans=int(d["in_chans"]),
                img_size=int(d["img_size"]) if d.get("img_size") is not None else None,
                model_kwargs=dict(d.get("model_kwargs") or {}),
                task=str(d["task"]),
                label_names=[str(x) for x in d["label_names"]],
                preprocess=PreprocessSpec.from_dict(d["preprocess"]),
                num_params=d.get("num_params"),
                embedding_dim=d.get("embedding_dim"),
                role=str(d.get("role", "student")),
                provenance=dict(d.get("provenance") or {}),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"{source} is missing or has an invalid field ({e})") from None

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> ModelCard:
        return cls.from_dict(read_json(path, "model card", ModelError), str(path))

    def build(self):
        """Instantiate the architecture (random weights)."""
        from .factory import create_model

        return create_model(self.arch, self.num_classes, self.in_chans, self.img_size, **self.model_kwargs)


def resolve_model_files(path: str | Path, name: str = "student") -> tuple[Path, Path]:
    """Find ``(card.json, weights.safetensors)`` from a run directory, a card or a weight file."""
    p = Path(path)
    if p.is_dir():
        card, weights = RunLayout(p).card(name), RunLayout(p).weights(name)
    elif p.suffix == ".json":
        card, weights = p, p.with_suffix(".safetensors")
    elif p.suffix == ".safetensors":
        card, weights = p.with_suffix(".json"), p
    elif not p.exists() and (p.parent / f"{p.name}.json").is_file():
        # A stem such as runs/p/teacher names teacher.json + teacher.safetensors in a run directory.
        card, weights = p.parent / f"{p.name}.json", p.parent / f"{p.name}.safetensors"
    elif not p.exists():
        raise ModelError(f"{p} does not exist; give a run directory, a model .json card or a .safetensors file")
    else:
        raise ModelError(f"{p} is not a run directory, model card (.json) or .safetensors file")
    for f in (card, weights):
        if not f.is_file():
            raise ModelError(f"{f} not found; point at a run directory written by 'medfm-compress distill'")
    return card, weights


def load_model(path: str | Path, name: str = "student"):
    """Load ``(model, card)`` in eval mode from a run directory, a card or a weight file."""
    from .weights import load_weights

    card_path, weights = resolve_model_files(path, name)
    card = ModelCard.load(card_path)
    model = card.build()
    load_weights(model, weights, what=card.arch)
    model.eval()
    return model, card
