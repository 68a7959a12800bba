"""The ONNX export stage behind ``medfm-compress export``: a checked ONNX file from a run directory or a card.

``export_onnx(ExportConfig(...))`` loads a model from a run directory or a card + safetensors pair, builds the
ONNX (:mod:`medfm_compress.export.onnx_build`), compares ONNX Runtime against torch on real task images and
random tensors, and only then writes the file (and the run's manifest record).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from .._io import sha256_file
from ..config import DictConfig
from ..errors import ConfigError, DataError, ExportError
from ..layout import RunLayout
from ..models.card import MODEL_ROLES
from ..runtime.metadata import ModelMeta
from .formats import ExportOutcome, ExportRequest, register_format
from .onnx_build import build_onnx, parity_check, save_onnx

__all__ = ["ExportConfig", "ExportResult", "export_onnx", "check_images"]

CONFIG_VERSION = 1


# --------------------------------------------------------------------------------------------------------------
# The export stage


@dataclass(frozen=True)
class ExportConfig(DictConfig):
    """``medfm-compress export``. ``None`` means "use the default"."""

    source: str
    out: str | None = None
    model: str = "student"
    format: str = "onnx"
    opset: int = 17
    atol: float = 1e-4
    data: str | None = None
    num_check: int = 64
    dynamo: bool = False
    simplify: bool = True
    force: bool = False
    seed: int = 0
    version: int = CONFIG_VERSION

    def __post_init__(self):
        if self.version != CONFIG_VERSION:
            raise ConfigError(
                f"export config version {self.version} is not supported (expected {CONFIG_VERSION})"
            )
        if self.format != "onnx":
            raise ConfigError(f"ExportConfig writes ONNX; format {self.format!r} goes through export_artifact")
        if self.model not in MODEL_ROLES:
            raise ConfigError(f"--model must be student, teacher or baseline, got {self.model!r}")
        if self.atol <= 0:
            raise ConfigError(f"--atol must be > 0, got {self.atol}")
        if self.num_check < 1:
            raise ConfigError(f"num-check must be >= 1, got {self.num_check}")


@dataclass
class ExportResult:
    path: Path
    meta: ModelMeta
    check: dict[str, float]
    seconds: float
    size_bytes: int


def check_images(data_spec: str, pre, n: int, seed: int = 0) -> np.ndarray:
    """Up to ``n`` preprocessed real images from ``data_spec`` (test split first), drawn with ``seed``."""
    from ..data import load_data

    task = load_data(data_spec, require_labels=False, seed=seed)
    split = next(
        (task.splits[s] for s in ("test", "val", "train") if s in task.splits and len(task.splits[s])), None
    )
    if split is None:
        raise DataError(f"{data_spec} holds no images to check the export with")
    idx = np.random.default_rng(seed).permutation(len(split))[:n]
    x = pre(split.images[np.sort(idx)])
    if not np.isfinite(x).all():
        raise DataError(f"{data_spec}: preprocessed images contain NaN/Inf")
    return x


def _training_data(card, run_dir: Path | None) -> str | None:
    """The data spec a model was trained on: its card, else (teacher of a run) the run's student card."""
    from ..data.spec import parse_data_spec

    prov = card.provenance
    if not (prov.get("data") or prov.get("trained_on")) and run_dir is not None and RunLayout(run_dir).card("student").is_file():
        from ..models.card import ModelCard

        prov = ModelCard.load(RunLayout(run_dir).card("student")).provenance
    spec = prov.get("data") or prov.get("trained_on")
    # A relative folder path names the data from the directory distill ran in; from elsewhere, the absolute one.
    if spec and prov.get("data_absolute"):
        _, path, _ = parse_data_spec(spec)
        if path and not Path(path).exists():
            spec = prov["data_absolute"]
    return spec


def export_onnx(cfg: ExportConfig) -> ExportResult:
    """Export a trained model to ONNX, check it against torch on real data, then write it atomically."""
    import torch

    from ..manifest import Manifest
    from ..models.card import load_model, resolve_model_files

    t0 = time.time()
    src = Path(cfg.source)
    card_path, weights_path = resolve_model_files(src, cfg.model)
    run_dir = src if src.is_dir() else None
    manifest = Manifest(run_dir) if run_dir is not None and RunLayout(run_dir).manifest.exists() else None
    if manifest is not None:
        manifest.check_input(weights_path, cfg.force)
    model, card = load_model(src, cfg.model)
    out = (
        Path(cfg.out)
        if cfg.out
        else (run_dir or weights_path.parent) / f"{cfg.model if run_dir else weights_path.stem}.onnx"
    )

    data_spec = cfg.data or _training_data(card, run_dir)
    if not data_spec:
        raise ConfigError(
            f"{card_path} names no training data; pass --data SPEC so the export is checked on real images"
        )
    real = check_images(data_spec, card.preprocess, cfg.num_check, cfg.seed)

    provenance = {
        "tool": f"medfm-compress {__version__}",
        "source_weights": weights_path.name,
        "source_weights_sha256": sha256_file(weights_path),
        "role": card.role,
        "opset": cfg.opset,
        "exporter": "dynamo" if cfg.dynamo else "torchscript",
        "check_data": data_spec,
    }
    meta = ModelMeta.from_card(card, "fp32", provenance)
    example = torch.from_numpy(real[:1].copy())
    rec = (
        manifest.start("export", cfg.to_dict(), {"weights": weights_path, "card": card_path})
        if manifest
        else None
    )
    proto = build_onnx(model, meta, example, opset=cfg.opset, dynamo=cfg.dynamo, simplify=cfg.simplify)
    check = parity_check(model, proto, real, seed=cfg.seed)
    if not check["max_abs"] <= cfg.atol:
        raise ExportError(
            f"ONNX Runtime differs from torch by max-abs {check['max_abs']:.3g} (cosine {check['cosine']:.6f}) "
            f"> --atol {cfg.atol:g}; nothing written (raise --atol if this is expected)"
        )
    save_onnx(proto, out)
    if manifest is not None and rec is not None:
        manifest.finish(rec, {"onnx": out}, {"check": check})
    return ExportResult(out, meta, check, round(time.time() - t0, 2), out.stat().st_size)


@register_format("onnx", options=("opset", "atol", "data", "num_check", "dynamo", "simplify"),
                 description="checked ONNX with metadata (default)")
def _onnx_format(req: ExportRequest) -> ExportOutcome:
    cfg = ExportConfig(source=req.source, out=req.out, model=req.model, force=req.force,
                       **req.options("opset", "atol", "data", "num_check", "dynamo", "simplify"))
    res = export_onnx(cfg)
    c = res.check
    return ExportOutcome(
        res.path,
        [res.path],
        [
            f"wrote {res.path} ({res.size_bytes / 1e6:.2f} MB, {res.seconds:.1f} s)",
            f"self-check vs torch: {c.get('real_n', 0)} real + {c.get('random_n', 0)} random inputs, "
            f"max-abs {c['max_abs']:.3g}, cosine {c['cosine']:.7f}"
            + (f", mask agreement on the real images {c['real_mask_agreement']:.6f}" if "real_mask_agreement" in c
               else ""),
        ],
        {"path": str(res.path), "size_bytes": res.size_bytes, "seconds": res.seconds, "check": res.check},
    )
