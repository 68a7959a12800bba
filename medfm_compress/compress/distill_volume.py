"""Label-free embedding distillation of a volume foundation teacher into a small 3-D student.

``distill_volume(VolumeDistillConfig(...))`` reads crops from a volume data spec (``inv3:``/``nifti:``/
``dicom-series:``), gets the teacher's embedding of every crop through the on-disk
:class:`~medfm_compress.data.volume.EmbeddingCache` (the teacher runs once per crop, ever), and trains the
student on ``1 - cosine`` with the shared loop (:func:`medfm_compress.compress.train.run_loop`) and loss
(:func:`medfm_compress.compress.losses.feature_kd_loss`). It writes ``student.safetensors`` + ``student.json``
(a model card whose preprocessing is the teacher's HU window, so ``export``/``quantize``/``bench`` work
unchanged), ``metrics.json``, ``manifest.json`` and ``train.log`` into ``out``.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from .._cache import cache_dir
from .._io import atomic_write_json, ensure_dir
from ..config import config_to_dict
from ..errors import ConfigError, DataError
from ..manifest import Manifest
from .distill import DistillResult

__all__ = [
    "VolumeDistillConfig",
    "distill_volume",
    "teacher_embeddings",
    "CONFIG_VERSION",
]

CONFIG_VERSION = 1


@dataclass(frozen=True)
class VolumeDistillConfig:
    """A volume distillation run. ``None`` means "use the default".

    Attributes:
        data: volume crop spec of the training crops (e.g. ``inv3:FILE?crop=96,96,32&n=96&z=0,48``).
        eval_data: crop spec of held-out crops scored after every epoch (student-teacher cosine).
        teacher: a volume teacher spec (``astra-ct``, ``astra-ct-tiny``).
        widths: channel widths of the student's stem and stages.
        head_hidden: hidden width of the student's embedding head.
        cache: embedding cache folder (default ``<cache>/embeddings``).
    """

    data: str
    out: str = "runs/ct-distill"
    teacher: str = "astra-ct"
    eval_data: str | None = None
    widths: tuple[int, ...] = (16, 32, 64, 128)
    head_hidden: int = 512
    epochs: int = 30
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 0.02
    cache: str | None = None
    teacher_batch_size: int = 1
    seed: int = 0
    resume: bool = False
    progress: bool = True
    version: int = CONFIG_VERSION

    def __post_init__(self):
        from ..data.spec import parse_data_spec
        from ..data.volume import VOLUME_KINDS
        from ..models.foundation import TEACHER_SPECS

        for spec in (self.data, self.eval_data):
            if spec is not None and parse_data_spec(spec)[0] not in VOLUME_KINDS:
                raise ConfigError(f"{spec!r} is not a volume spec; use one of {', '.join(VOLUME_KINDS)}")
        if self.version != CONFIG_VERSION:
            raise ConfigError(
                f"volume distill config version {self.version} is not supported (expected {CONFIG_VERSION})"
            )
        if self.teacher not in TEACHER_SPECS:
            raise ConfigError(
                f"unknown volume teacher {self.teacher!r}; use one of {', '.join(TEACHER_SPECS)}"
            )
        for name in ("epochs", "batch_size", "head_hidden", "teacher_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if len(self.widths) < 2 or min(self.widths) < 1:
            raise ConfigError(f"widths needs at least two positive channel counts, got {self.widths}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)


def teacher_embeddings(task, teacher, cache, batch_size: int = 1, progress: bool = True) -> np.ndarray:
    """Teacher embeddings of the crops of a volume ``task`` (from :func:`load_data`), through ``cache``."""
    from ..data.volume import CropBox

    if not task.volumes:
        raise DataError(f"{task.source} is not a volume crop spec")
    boxes = [CropBox(*b) for b in task.info["boxes"]]
    return cache.embeddings(task.info["_volume"], boxes, teacher, batch_size=batch_size, progress=progress)


def distill_volume(cfg: VolumeDistillConfig) -> DistillResult:
    """Run the distillation as configured; see the module docstring for what is written."""
    import torch

    from ..data import PreprocessSpec, load_data
    from ..data.volume import CROP_SPLIT, EmbeddingCache
    from ..metrics import cosine_similarity
    from ..models.card import ModelCard
    from ..models.factory import count_params, create_model
    from ..models.features import macs_of
    from ..models.foundation import load_teacher
    from ..models.volume import STUDENT3D_ARCH
    from .artifacts import TrainLog, write_model
    from .losses import feature_kd_loss
    from .train import LoopConfig, run_loop

    t_start = time.time()
    torch.manual_seed(cfg.seed)
    out = ensure_dir(cfg.out)
    log = TrainLog(out / "train.log", echo=cfg.progress)
    if not cfg.resume:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    ckpt_dir = ensure_dir(out / "checkpoints")
    manifest = Manifest(out)

    train_task = load_data(cfg.data, seed=cfg.seed)
    eval_task = load_data(cfg.eval_data, seed=cfg.seed) if cfg.eval_data else None
    crops = train_task.split(CROP_SPLIT).images
    if len(crops) < cfg.batch_size:
        raise ConfigError(
            f"{cfg.data} gives {len(crops)} crops, fewer than one batch ({cfg.batch_size}); raise n"
        )
    teacher = load_teacher(cfg.teacher, seed=cfg.seed)
    cache = EmbeddingCache(cfg.cache or cache_dir() / "embeddings")
    log(
        f"teacher {cfg.teacher} ({teacher.params / 1e6:.1f} M params, id {teacher.teacher_id}); "
        f"train crops {len(crops)} x {tuple(crops.shape[1:])} from z {train_task.info['z_range']}"
    )
    t_train = torch.from_numpy(
        teacher_embeddings(train_task, teacher, cache, cfg.teacher_batch_size, cfg.progress)
    )
    t_eval = (
        teacher_embeddings(eval_task, teacher, cache, cfg.teacher_batch_size, cfg.progress)
        if eval_task
        else None
    )
    log(f"embedding cache {cache.directory}: {cache.hits} hits, {cache.misses} computed")

    # The student sees exactly what the teacher saw: the teacher's HU window mapped to 0..1.
    pre = PreprocessSpec(
        input_size=tuple(crops.shape[1:4]), channels=1, mean=(0.0,), std=(1.0,), window=teacher.window
    )
    x_train = torch.from_numpy(pre(crops))
    x_eval = torch.from_numpy(pre(eval_task.split(CROP_SPLIT).images)) if eval_task else None
    model_kwargs = {
        "widths": list(cfg.widths),
        "embed_dim": teacher.embedding_dim,
        "head_hidden": cfg.head_hidden,
    }
    student = create_model(STUDENT3D_ARCH, 0, 1, None, **model_kwargs)

    def predict(x: torch.Tensor) -> np.ndarray:
        was = student.training
        student.eval()
        with torch.no_grad():
            outs = [student(x[i : i + cfg.batch_size]).float() for i in range(0, len(x), cfg.batch_size)]
        student.train(was)
        return torch.cat(outs).numpy()

    def step(batch_idx, _epoch):
        bi = torch.as_tensor(batch_idx)
        loss = feature_kd_loss(student(x_train[bi]), t_train[bi], "cosine")
        return loss, {"cos": 1.0 - float(loss.detach())}

    def epoch_end(_epoch):
        return (
            {"eval_cos": round(cosine_similarity(predict(x_eval), t_eval), 4)} if x_eval is not None else {}
        )

    spe = len(x_train) // cfg.batch_size
    loop = LoopConfig("student3d", spe, cfg.epochs, cfg.lr, cfg.weight_decay, cfg.batch_size, cfg.seed, False)
    log(
        f"student {STUDENT3D_ARCH} widths={list(cfg.widths)}: {count_params(student) / 1e6:.2f} M params, "
        f"{cfg.epochs} epochs x {spe} steps"
    )
    history = run_loop(
        loop,
        {"student": student},
        step,
        np.arange(len(x_train)),
        ckpt_dir / "student.pt",
        cfg.resume,
        log,
        epoch_end,
        cfg.progress,
    )
    student.eval()

    n_student, n_teacher = count_params(student), teacher.params
    metrics: dict[str, Any] = {
        "task": "embedding",
        "teacher": {"spec": cfg.teacher, "id": teacher.teacher_id, "params": n_teacher, **teacher.info},
        "student": {
            "arch": STUDENT3D_ARCH,
            "params": n_student,
            "macs": macs_of(student, x_train[:1]),
            **model_kwargs,
        },
        "param_ratio": n_teacher / n_student,
        "train": {
            "spec": cfg.data,
            "n": len(x_train),
            "z_range": train_task.info["z_range"],
            "cosine": cosine_similarity(predict(x_train), t_train.numpy()),
        },
        "volume_sha256": train_task.info["volume_sha256"],
        "cache": {"dir": str(cache.directory), "hits": cache.hits, "computed": cache.misses},
    }
    if eval_task is not None:
        from ..metrics import centered_cosine_similarity

        s_eval = predict(x_eval)
        center = t_train.numpy().mean(0)
        metrics["eval"] = {
            "spec": cfg.eval_data,
            "n": len(x_eval),
            "z_range": eval_task.info["z_range"],
            "cosine": cosine_similarity(s_eval, t_eval),
            "centered_cosine": centered_cosine_similarity(s_eval, t_eval, t_train.numpy()),
            # What predicting the mean training embedding for every crop would score: the floor to beat.
            "mean_embedding_cosine": cosine_similarity(np.broadcast_to(center, t_eval.shape), t_eval),
        }
    metrics["seconds"] = round(time.time() - t_start, 1)
    metrics["history"] = history

    provenance = {
        "tool": f"medfm-compress {__version__}",
        "data": cfg.data,
        "teacher": cfg.teacher,
        "teacher_id": teacher.teacher_id,
        "losses": ["feat"],
        "feat_loss": "cosine",
        "seed": cfg.seed,
    }
    card = ModelCard(
        arch=STUDENT3D_ARCH,
        num_classes=0,
        in_chans=1,
        task="embedding",
        label_names=[],
        preprocess=pre,
        model_kwargs=model_kwargs,
        num_params=n_student,
        embedding_dim=teacher.embedding_dim,
        role="student",
        provenance=provenance,
    )
    artifacts: dict[str, Path] = {}
    artifacts["student_weights"], artifacts["student_card"] = write_model(student, card, out, "student")
    artifacts["metrics"] = atomic_write_json(out / "metrics.json", metrics)
    rec = manifest.start(
        "distill", cfg.to_dict(), {"data": cfg.data} | ({"eval_data": cfg.eval_data} if cfg.eval_data else {})
    )
    manifest.finish(rec, artifacts, {k: v for k, v in metrics.items() if k != "history"})
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return DistillResult(out=out, metrics=metrics, artifacts=artifacts)
