"""Knowledge distillation: a large teacher into a small task-specific student.

``distill(DistillConfig(...))`` writes into ``config.out``: ``student.safetensors`` + ``student.json`` (model
card), ``teacher.json`` (+ weights), ``baseline.*`` with ``baseline=True``, ``metrics.json``,
``manifest.json`` and ``train.log``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .. import __version__
from .._cache import cache_dir
from .._io import atomic_write_json, ensure_dir, no_partial_output, sha256_file
from ..config import config_to_dict
from ..errors import ConfigError, ModelError
from ..manifest import Manifest, check_inputs
from ..runtime.tasks import get_task
from .artifacts import RunResult, TrainLog, link_or_copy, write_model
from .taskprep import (
    FrozenTeacher,
    accepted_keywords,
    adapt_batch,
    autocast,
    classifier_present,
    data_preprocess,
    evaluate_model,
    labeled_subset,
    select_device,
)

__all__ = [
    "DistillConfig",
    "DistillResult",
    "DistillRun",
    "distill",
    "prepare_run",
    "resolve_teacher",
    "train_student",
    "fit_head",
    "train_baseline",
    "evaluate_run",
    "write_run",
    "DEFAULT_TEACHER",
    "DEFAULT_STUDENT",
    "TEACHER_EPOCHS",
]

DEFAULT_TEACHER = "timm:resnet18"
DEFAULT_STUDENT = "timm:medfm_resnet10_w24"
TEACHER_EPOCHS = 4
# Settings left unset (None) that depend on the data's task; every other task takes TASK_DEFAULTS[None].
# batch_size: a dense label map carries a target per pixel, so segmentation learns from small batches and needs
# their steps: on the synthetic task at 10% of the masks the 0.78 M-parameter student (KD at T=1) reached validation
# mean Dice 0.43 in 6 epochs at batch 64, its lesions at Dice <= 0.17, and 0.78 at batch 16, its lesions at
# 0.61-0.75, for about the same time per epoch.
# temperature: per pixel, a high temperature flattens the teacher's confident few-pixel lesions into the organ around
# them: at batch 16, 6 epochs, the student reached validation mean Dice 0.78 at T=1 and 0.55 at T=4 (no nodule).
# Volumes ("segmentation-3d"): patches of 48x48x32 voxels, 4 to a batch (a step of the default teacher takes 0.8 s on
# two cores).
TASK_DEFAULTS: dict[str | None, dict[str, Any]] = {
    None: {"batch_size": 64, "temperature": 4.0},
    "segmentation": {"batch_size": 16, "temperature": 1.0},
    "segmentation-3d": {"batch_size": 4, "temperature": 1.0},
}
TEACHER_LR = 2e-3
CONFIG_VERSION = 1


@dataclass(frozen=True)
class DistillConfig:
    """Everything that defines a distillation run. ``None`` means "use the default"."""

    data: str = "synthetic"
    out: str = "runs/distill"
    teacher: str | None = None
    teacher_weights: str | None = None
    student: str | None = None
    student_weights: str | None = None
    losses: tuple[str, ...] | None = None
    temperature: float | None = None  # None: TASK_DEFAULTS for the data's task
    kd_weight: float = 1.0
    feat_weight: float = 1.0
    ce_weight: float = 1.0
    feat_loss: Literal["cosine", "mse"] = "cosine"
    labels: Literal["full", "none"] = "full"
    label_fraction: float = 1.0
    epochs: int = 6
    batch_size: int | None = None  # None: TASK_DEFAULTS for the data's task
    lr: float = 3e-3
    weight_decay: float = 0.02
    head_epochs: int = 30
    teacher_epochs: int | None = None
    teacher_adapt: Literal["linear", "finetune"] | None = None
    weights_key_map: Literal["name", "order"] = "name"
    augment: bool = True
    baseline: bool = False
    seed: int = 0
    resume: bool = False
    force: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    progress: bool = True
    version: int = CONFIG_VERSION

    def __post_init__(self):
        from ..compress.losses import LOSS_NAMES
        from ..data.spec import parse_data_spec

        parse_data_spec(self.data)  # a malformed spec is reported before anything else
        if self.version != CONFIG_VERSION:
            raise ConfigError(f"distill config version {self.version} is not supported (expected {CONFIG_VERSION})")
        for name in ("epochs", "batch_size", "head_epochs"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.teacher_epochs is not None and self.teacher_epochs < 1:
            raise ConfigError(f"teacher-epochs must be >= 1, got {self.teacher_epochs}")
        if not 0.0 < self.label_fraction <= 1.0:
            raise ConfigError(f"label-fraction must be in (0, 1], got {self.label_fraction}")
        if self.temperature is not None and self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.losses is not None:
            bad = [x for x in self.losses if x not in LOSS_NAMES]
            if bad or not self.losses:
                raise ConfigError(f"unknown loss(es) {bad or '(none)'}; choose from {', '.join(LOSS_NAMES)}")
            if self.labels == "none" and "ce" in self.losses:
                raise ConfigError("--labels none trains without labels; drop 'ce' from --loss")
        if self.teacher_weights and not self.teacher:
            raise ConfigError("--teacher-weights needs --teacher naming its architecture (e.g. timm:vit_small_patch16_224)")
        if self.teacher is None and not self.data.startswith("synthetic") and self.teacher_epochs is None:
            raise ConfigError(
                "no --teacher given for real data: pass --teacher ARCH --teacher-weights FILE (add --teacher-adapt "
                "linear|finetune when it predicts another label set), a run directory's teacher (adapt --out DIR: "
                "--teacher DIR/teacher), or --teacher-epochs N to train one from scratch on these labels"
            )
        if self.teacher_adapt is not None and self.teacher_adapt not in ("linear", "finetune"):
            raise ConfigError(f"unknown --teacher-adapt {self.teacher_adapt!r}; choose linear or finetune")
        if self.teacher_adapt and self.teacher_epochs is not None:
            raise ConfigError("--teacher-adapt adapts pretrained weights; --teacher-epochs trains from scratch: pick one")
        if self.teacher_adapt and (self.teacher is None or teacher_path(self.teacher) is not None):
            raise ConfigError("--teacher-adapt needs --teacher ARCH (with --teacher-weights for a pretrained model)")
        if self.weights_key_map != "name" and not self.teacher_weights:
            raise ConfigError("--weights-key-map applies to --teacher-weights; give the weight file")
        if self.student_weights and not self.student:
            raise ConfigError("--student-weights needs --student naming its architecture")

    def resolved_losses(self) -> tuple[str, ...]:
        if self.losses is not None:
            return tuple(self.losses)
        return ("feat",) if self.labels == "none" else ("kd", "ce")

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)


DistillResult = RunResult


def task_kind(task) -> str:
    """The task's name for defaults: its type, with ``segmentation-3d`` for volumes."""
    return "segmentation-3d" if task.task == "segmentation" and task.info.get("volume") else task.task


def default_teacher(task) -> str:
    """The teacher architecture used when --teacher is not given (a dense one for segmentation data)."""
    from .distill_seg import DEFAULT_SEG3D_TEACHER, DEFAULT_SEG_TEACHER

    return {"segmentation": DEFAULT_SEG_TEACHER, "segmentation-3d": DEFAULT_SEG3D_TEACHER}.get(task_kind(task),
                                                                                            DEFAULT_TEACHER)


def default_student(task) -> str:
    """The student architecture used when --student is not given (a dense one for segmentation data)."""
    from .distill_seg import DEFAULT_SEG3D_STUDENT, DEFAULT_SEG_STUDENT

    return {"segmentation": DEFAULT_SEG_STUDENT, "segmentation-3d": DEFAULT_SEG3D_STUDENT}.get(task_kind(task),
                                                                                            DEFAULT_STUDENT)


def _check_model_kinds(cfg: DistillConfig, task) -> None:
    """A classifier for segmentation data, or a segmentation network for image labels, is refused in one line."""
    from ..models.factory import check_model_spec, is_dense_kind, parse_model_spec

    for role, spec in (("teacher", cfg.teacher or default_teacher(task)), ("student", cfg.student or
                                                                              default_student(task))):
        if teacher_path(spec) is not None:
            continue
        check_model_spec(spec)
        kind = parse_model_spec(spec)[0]
        if task.task == "segmentation" and not is_dense_kind(kind) and kind != "python":
            example = ("monai:NET, e.g. monai:UNet?channels=8,16,32,64&strides=2,2,2" if task.info.get("volume") else
                       "smp:ARCH:ENCODER, e.g. smp:Unet:tu-resnet18")
            raise ModelError(f"--{role} {spec} is an image classifier, but {task.source} is a segmentation task: "
                             f"give a dense model ({example})")
        if task.task != "segmentation" and is_dense_kind(kind):
            raise ModelError(f"--{role} {spec} is a segmentation network, but {task.source} has image-level labels "
                             f"({task.task}): give a classifier (timm:NAME), or data with masks")
        volume = bool(task.info.get("volume"))
        if volume and kind in ("smp", "timm"):
            raise ModelError(f"--{role} {spec} is a 2-D network, but {task.source} holds volumes: give a 3-D one "
                             "(monai:NET, e.g. monai:UNet?channels=8,16,32,64&strides=2,2,2)")
        if not volume and kind == "monai" and "spatial_dims=2" not in spec:
            raise ModelError(f"--{role} {spec} is a 3-D network (MONAI's default here), but {task.source} holds 2-D "
                             "images: add spatial_dims=2 to the spec, or use smp:ARCH:ENCODER")


def _init_distributed(device) -> bool:
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return True


def _teacher_cache_key(cfg: DistillConfig, task, arch: str, epochs: int, data_digest: str) -> str:
    blob = json.dumps(
        {
            "data": data_digest,
            "arch": arch,
            "epochs": epochs,
            "seed": cfg.seed,
            "batch_size": cfg.batch_size,
            "augment": cfg.augment,
            "labels": task.label_names,
            "v": CONFIG_VERSION,
            # Segmentation teachers are trained with the batch Dice + CE loss (losses.hard_label_loss).
            "tool": "teacher-dicece-batch-1" if task.task == "segmentation" else "teacher-ce-1",
        },
        sort_keys=True,
    ).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def data_digest_of(cfg: DistillConfig, task) -> str:
    from ..data.spec import parse_data_spec

    kind, path, _ = parse_data_spec(cfg.data)
    if kind == "medmnist":
        return sha256_file(path)
    # Generated and folder data: hash the arrays themselves, so a change of generator or files shows.
    h = hashlib.sha256()
    for name in ("train", "val", "test"):
        if name in task.splits:
            h.update(np.ascontiguousarray(task.splits[name].images).tobytes())
            h.update(np.ascontiguousarray(task.splits[name].labels).tobytes())
    return h.hexdigest()


def _train_supervised(run: DistillRun, name: str, model, idx: np.ndarray, epochs: int, lr: float, ckpt: Path):
    """Label-only training on ``idx`` of the training set (the default teacher, the baseline)."""
    import torch

    from .losses import hard_label_loss
    from .train import LoopConfig, augment_batch, augment_masks, run_loop

    cfg, device, x, y = run.cfg, run.device, run.x_train, run.y_train
    net = run.wrap(model)
    dense = run.task.task == "segmentation"

    def step(batch_idx, epoch):
        xb = x[torch.as_tensor(batch_idx, device=x.device)]
        yb = y[torch.as_tensor(batch_idx, device=y.device)]
        if cfg.augment:
            xb = augment_batch(xb.cpu(), batch_idx, cfg.seed, epoch).to(device)
            if dense:  # the label maps move with their images
                yb = augment_masks(yb.cpu(), batch_idx, cfg.seed, epoch).to(device)
        with autocast(device):
            logits = net(xb)
            loss = hard_label_loss(logits.float(), yb, run.task.task)
        return loss, {"loss": float(loss.detach())}

    loop = LoopConfig(name, run.steps_per_epoch, epochs, lr, cfg.weight_decay, cfg.batch_size, cfg.seed, cfg.augment)
    return run_loop(loop, {"model": model}, step, idx, ckpt, cfg.resume, run.log, progress=cfg.progress)


@dataclass
class DistillRun:
    """What every step of a distillation run shares: device, ranks, output folder, log, and the data as tensors."""

    cfg: DistillConfig
    device: Any
    distributed: bool
    rank: int
    world: int
    out: Path
    log: Callable[[str], None]
    ckpt_dir: Path
    manifest: Manifest
    task: Any
    train: Any
    val: Any
    test: Any
    student_pre: Any
    x_train: Any
    x_val: Any
    x_test: Any
    y_train: Any
    labeled: np.ndarray
    steps_per_epoch: int

    def wrap(self, module):
        """``module`` on the run's device, wrapped in DDP when the run is distributed."""
        module.to(self.device)
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            return DDP(module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        return module


@dataclass
class ResolvedTeacher:
    """The teacher of a run: frozen model, card, where its weights came from, and its test metrics."""

    teacher: FrozenTeacher
    arch: str
    preprocess: Any
    weights_path: Path | None
    test_metrics: dict[str, float]
    test_logits: np.ndarray | None


@dataclass
class TrainedStudent:
    model: Any
    arch: str
    losses: tuple[str, ...]
    embedding_dim: int
    history: dict[str, Any]


def prepare_run(cfg: DistillConfig) -> DistillRun:
    """Device and process group, output folder and log, input checks, and the data as preprocessed tensors."""
    import torch

    from ..data import load_data
    from ..data.dataset import require_task
    from ..data.digest import data_digest, split_summary
    from ..models.factory import check_model_spec
    from .train import dist_info

    # A mistyped architecture is refused before anything is trained (the default teacher takes minutes); whether
    # it suits the task is checked once the data is read.
    for spec in (cfg.teacher, cfg.student):
        if spec and teacher_path(spec) is None:
            check_model_spec(spec)
    device = select_device(cfg.device)
    distributed = _init_distributed(device)
    rank, world = dist_info()
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)

    out = ensure_dir(cfg.out)
    log = TrainLog(out / "train.log", echo=cfg.progress and rank == 0)
    if rank == 0 and not cfg.resume:
        # A fresh run must not mix with an older one's checkpoints or outputs.
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    ckpt_dir = ensure_dir(out / "checkpoints")
    manifest = Manifest(out)
    if cfg.resume:
        for name in ("student.safetensors", "student.json"):
            if (out / name).exists():
                manifest.check_input(out / name, cfg.force)
    # Weights taken from another run directory must still be what its manifest recorded.
    check_inputs([w for w in (cfg.teacher_weights, cfg.student_weights) if w], cfg.force)

    task = load_data(cfg.data, seed=cfg.seed)
    require_task(task, ("multiclass", "binary", "multilabel", "segmentation"), "distill")
    _check_model_kinds(cfg, task)
    cfg = resolve_task_defaults(cfg, task_kind(task))
    train, test = task.split("train"), task.split("test")
    val = task.split("val") if "val" in task.splits and len(task.splits["val"]) else None
    if len(train) < cfg.batch_size * world:
        raise ConfigError(
            f"the train split has {len(train)} images, fewer than one batch ({cfg.batch_size} x {world} ranks); "
            "lower --batch-size"
        )
    log(f"data {task.source}: task={task.task} classes={task.num_classes} channels={task.channels} "
        f"size={task.image_size} train/val/test={len(train)}/{len(val) if val else 0}/{len(test)}")
    for line in split_summary(task):
        log(line)
    if rank == 0:
        data_digest(task, cfg.data, cfg.seed)  # hashed now, as read; write_run records it with splits.csv

    student_pre = data_preprocess(task, train.images)
    # Volumes: val and test hold whole cases, segmented by sliding windows of the training patch's size.
    whole = student_pre.whole_volumes if task.info.get("volume") else student_pre
    label_dtype = torch.float32 if task.task == "multilabel" else torch.int64
    labeled = labeled_subset(np.asarray(train.labels), task.task, cfg.label_fraction, cfg.seed,
                             groups=train.groups if task.info.get("volume") else None)
    log(f"labels: {cfg.labels}; labeled subset {len(labeled)}/{len(train)} (fraction {cfg.label_fraction})")
    return DistillRun(
        cfg=cfg, device=device, distributed=distributed, rank=rank, world=world, out=out, log=log,
        ckpt_dir=ckpt_dir, manifest=manifest, task=task, train=train, val=val, test=test, student_pre=student_pre,
        x_train=torch.from_numpy(student_pre(train.images)).to(device),
        x_val=torch.from_numpy(whole(val.images)).to(device) if val is not None else None,
        x_test=torch.from_numpy(whole(test.images)).to(device),
        y_train=torch.from_numpy(np.asarray(train.labels)).to(device=device, dtype=label_dtype),
        labeled=labeled, steps_per_epoch=len(train) // (cfg.batch_size * world),
    )


def resolve_task_defaults(cfg: DistillConfig, task: str) -> DistillConfig:
    """``cfg`` with the settings left unset (``None``) that depend on the task filled in from
    :data:`TASK_DEFAULTS` (batch size, KD temperature); the manifest records the values used."""
    defaults = TASK_DEFAULTS.get(task, TASK_DEFAULTS[None])
    unset = {k: v for k, v in defaults.items() if getattr(cfg, k) is None}
    return dataclasses.replace(cfg, **unset) if unset else cfg


def teacher_path(spec: str | None) -> tuple[Path, Path] | None:
    """``(card, weights)`` when ``--teacher`` names a trained model on disk (a run directory, ``DIR/teacher``, a
    card or a .safetensors file) rather than an architecture; None for an architecture spec."""
    from ..models.card import resolve_model_files
    from ..models.factory import model_kinds

    if not spec or spec.split(":", 1)[0] in model_kinds():
        return None
    p = Path(spec)
    if p.is_dir() or p.suffix in (".json", ".safetensors") or (p.parent / f"{p.name}.json").is_file():
        return resolve_model_files(p, "teacher")
    return None


def adapted_teacher(run: DistillRun) -> tuple[Path, Path]:
    """``--teacher-adapt``: the teacher adapted to this run's labels (see :mod:`.adapt`), cached by the teacher
    weights' hash, the data digest and the adapt config; returns its ``(card, weights)``."""
    from ..data.digest import data_digest
    from .adapt import AdaptConfig, adapt_teacher

    cfg = run.cfg
    acfg = AdaptConfig(teacher=cfg.teacher, data=cfg.data, out=str(run.out), teacher_weights=cfg.teacher_weights,
                       weights_key_map=cfg.weights_key_map, method=cfg.teacher_adapt,
                       label_fraction=cfg.label_fraction, seed=cfg.seed, device=cfg.device, progress=cfg.progress)
    blob = json.dumps({
        "weights": sha256_file(cfg.teacher_weights) if cfg.teacher_weights else None,
        "data": data_digest(run.task, cfg.data, cfg.seed)["sha256"],
        "config": {k: v for k, v in acfg.to_dict().items() if k not in ("out", "progress", "device", "data")},
        "tool": "adapt-1",
    }, sort_keys=True).encode()
    tdir = cache_dir() / "adapted" / hashlib.sha256(blob).hexdigest()[:16]
    card, weights = tdir / "teacher.json", tdir / "teacher.safetensors"
    if card.is_file() and weights.is_file():
        run.log(f"teacher: adapted ({cfg.teacher_adapt}) teacher cached at {tdir}")
        return card, weights
    if run.rank == 0:
        run.log(f"teacher: adapting {cfg.teacher} to {run.task.source} ({cfg.teacher_adapt}, {len(run.labeled)} "
                f"labelled images), cached by weights hash, data digest and config at {tdir}")
        ensure_dir(tdir)
        adapted = adapt_teacher(acfg, run.task, run.log, run.device, tdir)
        atomic_write_json(tdir / "metrics.json", {k: v for k, v in adapted.metrics.items() if k != "history"})
        write_model(adapted.model, adapted.card, tdir, "teacher")
        m = adapted.metrics.get("val") or adapted.metrics.get("test") or {}
        if m:
            run.log(f"teacher: adapted, {'val' if 'val' in adapted.metrics else 'test'} macro AUC "
                    f"{m['macro_auc']:.4f} [{m['macro_auc_ci'][0]:.4f}, {m['macro_auc_ci'][1]:.4f}]")
    _barrier(run)
    return card, weights


def resolve_teacher(run: DistillRun) -> ResolvedTeacher:
    """The teacher: from ``--teacher-weights`` (with its card when one sits beside them), a factory that loads its
    own weights, or the default teacher trained on the synthetic task's full labels and cached by config hash."""
    from ..models.card import ModelCard
    from ..models.factory import count_params, create_model
    from ..models.weights import load_weights

    cfg, task, log = run.cfg, run.task, run.log
    teacher_weights = cfg.teacher_weights
    teacher_card_path = None
    tpath = adapted_teacher(run) if cfg.teacher_adapt else teacher_path(cfg.teacher)
    if tpath is not None:  # a run directory's teacher (adapt --out DIR, or a cached --teacher-adapt)
        teacher_card_path, teacher_weights = tpath
        teacher_arch = ModelCard.load(teacher_card_path).arch
    else:
        teacher_arch = cfg.teacher or default_teacher(task)
        if teacher_weights:
            cand = Path(teacher_weights).with_suffix(".json")
            if cand.is_file():
                teacher_card_path = cand
    teacher_pre = run.student_pre
    if teacher_card_path is not None:
        tcard = ModelCard.load(teacher_card_path)
        teacher_pre = tcard.preprocess
        if tcard.arch != teacher_arch:
            raise ModelError(f"{teacher_card_path} describes {tcard.arch}, but --teacher is {teacher_arch}")
        if task.task != "multilabel" and tcard.num_classes not in (0, task.num_classes):
            raise ModelError(
                f"the teacher predicts {tcard.num_classes} classes but the data has {task.num_classes}; "
                "adapt it to these labels (--teacher-adapt linear|finetune, or medfm-compress adapt), or use "
                "--labels none for embedding distillation"
            )
        if tcard.num_classes and tcard.label_names and list(tcard.label_names) != list(task.label_names):
            raise ModelError(
                f"the teacher's classes {tcard.label_names} are not the data's {task.label_names}; adapt it to "
                "these labels (--teacher-adapt linear|finetune, or medfm-compress adapt)"
            )
        teacher_model = tcard.build()
    else:
        head, in_ch, size = task.num_classes, task.channels, run.student_pre.input_size[0]
        if teacher_weights and cfg.labels == "none" and task.task != "segmentation":
            # An embedding teacher keeps its own head (any label set, or none) and input channels: only its
            # features are distilled, from the data re-expressed in its preprocessing.
            from ..models.weights import first_conv_in_chans
            from .adapt import file_head_classes, teacher_preprocess

            in_ch = first_conv_in_chans(teacher_weights) or task.channels
            head = file_head_classes(teacher_arch, teacher_weights, cfg.weights_key_map, in_ch, size) or head
        teacher_model = create_model(teacher_arch, head, in_ch, size)
        if in_ch != task.channels:
            teacher_pre = teacher_preprocess(teacher_model, task, in_ch, size, run.student_pre, pretrained=True)
        tcard = ModelCard(
            arch=teacher_arch,
            num_classes=head,
            in_chans=in_ch,
            img_size=run.student_pre.input_size[0] if "img_size" in accepted_keywords(teacher_model) else None,
            task=task.task,
            label_names=task.label_names if head == task.num_classes else [],
            preprocess=teacher_pre,
            role="teacher",
        )
    if task.task == "segmentation":  # a network that cannot segment these inputs is refused before it trains
        from .distill_seg import check_dense_model

        check_dense_model(teacher_model.to(run.device), adapt_batch(run.x_train[:1], run.student_pre, teacher_pre),
                          task.num_classes, f"teacher {teacher_arch}")
    teacher_weights_path: Path | None = None
    if teacher_weights:
        key_map = "name" if tpath is not None else cfg.weights_key_map
        try:
            load_weights(teacher_model, teacher_weights, what=f"teacher {teacher_arch}", key_map=key_map)
        except ModelError as e:
            if teacher_card_path is not None:
                raise
            raise ModelError(f"{e} (if the file predicts another label set, add --teacher-adapt linear|finetune)") \
                from None
        teacher_source = (f"adapted ({cfg.teacher_adapt}) from {cfg.teacher_weights or cfg.teacher}, cached at "
                          f"{Path(teacher_weights).parent}" if cfg.teacher_adapt else f"weights {teacher_weights}")
        teacher_weights_path = Path(teacher_weights)
    elif teacher_arch.startswith("python:"):
        teacher_source = f"factory {teacher_arch} (loads its own weights)"
    elif cfg.data.startswith("synthetic") or cfg.teacher_epochs is not None:
        epochs = cfg.teacher_epochs or TEACHER_EPOCHS
        key = _teacher_cache_key(cfg, task, teacher_arch, epochs, data_digest_of(cfg, task))
        tdir = cache_dir() / "teachers" / key
        tw = tdir / "teacher.safetensors"
        if tw.exists():
            load_weights(teacher_model, tw, what=f"cached teacher {teacher_arch}")
            log(f"teacher: no --teacher-weights; using the default teacher {teacher_arch} trained on the full labels, "
                f"cached at {tdir}")
        else:
            if run.rank == 0:
                log(f"teacher: no --teacher-weights; training {teacher_arch} on the full labels of {task.source} "
                    f"({epochs} epochs), cached by config hash at {tdir}")
            ensure_dir(tdir)
            _train_supervised(run, "teacher", teacher_model, np.arange(len(run.train)), epochs, TEACHER_LR,
                              tdir / "teacher-checkpoint.pt")
            teacher_model = teacher_model.to(run.device)
            if run.rank == 0:
                tcard.num_params = count_params(teacher_model)
                tcard.provenance = {"trained_on": task.source, "epochs": epochs, "cache_key": key}
                write_model(teacher_model, tcard, tdir, "teacher")
                (tdir / "teacher-checkpoint.pt").unlink(missing_ok=True)
            if run.distributed:
                import torch.distributed as dist

                dist.barrier()
        teacher_source = f"default teacher trained on full labels, cached at {tdir}"
        teacher_weights_path = tw
    else:
        raise ModelError(
            f"teacher {teacher_arch} has no weights; pass --teacher-weights FILE (.safetensors or .pt), or "
            "--teacher-epochs N to train it from scratch on these labels"
        )
    teacher = FrozenTeacher(teacher_model.to(run.device), tcard, teacher_source)
    if task.task == "segmentation":
        from .distill_seg import check_dense_model

        # A training input: a volume's test cases are whole scans (windowed later), its patches what the net takes.
        check_dense_model(teacher.model, adapt_batch(run.x_train[:1], run.student_pre, teacher_pre), task.num_classes,
                          f"teacher {teacher_arch}")
        return ResolvedTeacher(teacher, teacher_arch, teacher_pre, teacher_weights_path, {}, None)
    t_metrics, t_test_logits, _ = (
        evaluate_model(teacher.model, adapt_batch(run.x_test, run.student_pre, teacher_pre), run.test.labels, task.task)
        if classifier_present(teacher.model) and (task.task == "multilabel" or tcard.num_classes == task.num_classes)
        else ({}, None, None)
    )
    if t_metrics:
        log(f"teacher test: accuracy={t_metrics['accuracy']:.4f} macro_auc={t_metrics['macro_auc']:.4f}")
    return ResolvedTeacher(teacher, teacher_arch, teacher_pre, teacher_weights_path, t_metrics, t_test_logits)


def train_student(run: DistillRun, resolved: ResolvedTeacher) -> TrainedStudent:
    """Distill the teacher into the student (KD / feature / CE losses), then, label-free, fit its head."""
    import torch

    from ..models.factory import create_model
    from ..models.features import FeatureTap
    from ..models.heads import Projector
    from ..models.weights import load_weights
    from .losses import feature_kd_loss, labelled_loss, logit_kd_loss
    from .train import LoopConfig, augment_batch, predict, run_loop

    cfg, task, device, teacher = run.cfg, run.task, run.device, resolved.teacher
    x_train, y_train, student_pre = run.x_train, run.y_train, run.student_pre
    student_arch = cfg.student or default_student(task)
    torch.manual_seed(cfg.seed)
    student = create_model(student_arch, task.num_classes, task.channels, student_pre.input_size[0]).to(device)
    if cfg.student_weights:
        load_weights(student, cfg.student_weights, what=f"student {student_arch}")
    if task.task == "segmentation":
        return _train_dense(run, resolved, student, student_arch)
    losses = cfg.resolved_losses()
    if cfg.labels == "none" and set(losses) != {"feat"}:
        raise ConfigError("--labels none distills embeddings only; use --loss feat (or leave --loss unset)")
    if "kd" in losses and resolved.test_logits is None:
        raise ConfigError("the teacher has no classifier head, so logit KD ('kd') is impossible; use --loss feat")
    if "kd" in losses and task.task != "multilabel" and teacher.card.num_classes != task.num_classes:
        raise ConfigError(f"teacher predicts {teacher.card.num_classes} classes, data has {task.num_classes}")
    with torch.no_grad(), FeatureTap(student) as tap:
        student.eval()
        _, s_emb = tap.run(x_train[:2])
    _, t_emb = teacher.outputs(x_train[:2], student_pre)
    projector = Projector(s_emb.shape[1], t_emb.shape[1]).to(device) if "feat" in losses else None

    # Teacher outputs are fixed when nothing changes the inputs: compute them once.
    cached_t_logits = cached_t_emb = None
    if not cfg.augment:
        run.log("teacher outputs cached for the training set (augmentation off, teacher frozen)")
        cached_t_logits, cached_t_emb = teacher.outputs(x_train, student_pre)

    class _Pair(torch.nn.Module):
        def __init__(self, s, p):
            super().__init__()
            self.student = s
            self.projector = p
            self._tap = FeatureTap(s)

        def forward(self, x):
            with self._tap:
                logits, emb = self._tap.run(x)
            return logits, (self.projector(emb) if self.projector is not None else emb)

    net = run.wrap(_Pair(student, projector))
    labeled_mask = torch.zeros(len(run.train), dtype=torch.bool, device=device)
    labeled_mask[torch.as_tensor(run.labeled, device=device)] = True

    def student_step(batch_idx, epoch):
        bi = torch.as_tensor(batch_idx, device=device)
        xb = x_train[bi]
        if cfg.augment:
            xb = augment_batch(xb.cpu(), batch_idx, cfg.seed, epoch).to(device)
            with torch.no_grad():
                t_logits, t_e = teacher.outputs(xb, student_pre, batch_size=len(xb))
        else:
            t_logits = cached_t_logits[bi] if cached_t_logits is not None else None
            t_e = cached_t_emb[bi]
        with autocast(device):
            s_logits, s_proj = net(xb)
        s_logits = s_logits.float()
        total = torch.zeros((), device=device)
        shown = {}
        if "kd" in losses:
            kd = logit_kd_loss(s_logits, t_logits, cfg.temperature, task.task)
            total = total + cfg.kd_weight * kd
            shown["kd"] = float(kd.detach())
        if "feat" in losses:
            fe = feature_kd_loss(s_proj.float(), t_e, cfg.feat_loss)
            total = total + cfg.feat_weight * fe
            shown["feat"] = float(fe.detach())
        if "ce" in losses:
            ce = labelled_loss(s_logits, y_train[bi], labeled_mask[bi], task.task)
            total = total + cfg.ce_weight * ce
            shown["ce"] = float(ce.detach())
        return total, shown

    def val_metrics(_epoch):
        # In label-free mode the head is fitted afterwards, so a validation AUC would mean nothing yet.
        if run.x_val is None or cfg.labels == "none":
            return {}
        val_logits, _ = predict(student, run.x_val)
        return {"val_auc": round(get_task(task.task).macro_auc(val_logits, run.val.labels), 4)}

    spe = run.steps_per_epoch
    run.log(f"student {student_arch}: losses={'+'.join(losses)} epochs={cfg.epochs} steps/epoch={spe}")
    loop = LoopConfig("student", spe, cfg.epochs, cfg.lr, cfg.weight_decay, cfg.batch_size, cfg.seed, cfg.augment)
    modules = {"student": student} | ({"projector": projector} if projector is not None else {})
    history = run_loop(loop, modules, student_step, np.arange(len(run.train)), run.ckpt_dir / "student.pt",
                       cfg.resume, run.log, val_metrics, cfg.progress)
    if cfg.labels == "none":
        history["head"] = fit_head(run, student)
    return TrainedStudent(student, student_arch, losses, int(s_emb.shape[1]), history)


def _train_dense(run: DistillRun, resolved: ResolvedTeacher, student, student_arch: str) -> TrainedStudent:
    """The segmentation student: per-pixel KD (+ feature-map KD) + Dice/CE on the labelled masks
    (:mod:`.distill_seg`); label-free (``--labels none``) learns from the teacher's maps alone."""
    from .distill_seg import check_dense_model, train_dense_student

    cfg = run.cfg
    check_dense_model(student, run.x_train[:1], run.task.num_classes, f"student {student_arch}")
    losses = tuple(cfg.losses) if cfg.losses is not None else (("kd",) if cfg.labels == "none" else ("kd", "ce"))
    run.log(f"student {student_arch}: losses={'+'.join(losses)} epochs={cfg.epochs} steps/epoch={run.steps_per_epoch}"
            f" (segmentation, {len(run.labeled)} labelled masks)")
    history = train_dense_student(run, resolved.teacher, student, losses)
    return TrainedStudent(student, student_arch, losses, 0, history)


def train_baseline(run: DistillRun, arch: str):
    """The label-only baseline: the student's architecture trained on the labeled subset, same step budget."""
    import torch

    from ..models.factory import create_model
    from ..models.weights import load_weights

    cfg, task = run.cfg, run.task
    torch.manual_seed(cfg.seed)
    baseline = create_model(arch, task.num_classes, task.channels, run.student_pre.input_size[0]).to(run.device)
    if cfg.student_weights:
        load_weights(baseline, cfg.student_weights, what=f"baseline {arch}")
    run.log(f"baseline {arch}: labels only, {len(run.labeled)} labeled images, same budget "
            f"({cfg.epochs} x {run.steps_per_epoch} steps)")
    _train_supervised(run, "baseline", baseline, run.labeled, cfg.epochs, cfg.lr, run.ckpt_dir / "baseline.pt")
    return baseline


def evaluate_run(run: DistillRun, resolved: ResolvedTeacher, student: TrainedStudent, baseline,
                 seconds: float) -> dict[str, Any]:
    """``metrics.json``: student, teacher and baseline on the test split, agreement, retention, sizes."""
    from ..models.factory import count_params
    from ..models.features import macs_of

    task, teacher = run.task, resolved.teacher
    s_metrics, s_logits, _ = evaluate_model(student.model, run.x_test, run.test.labels, task.task)
    example = run.x_test[:1]
    metrics: dict[str, Any] = {
        "task": task.task,
        "test_size": len(run.test),
        "student": {**s_metrics, "params": count_params(student.model), "macs": macs_of(student.model, example),
                    "arch": student.arch},
        "teacher": {
            **resolved.test_metrics,
            "params": count_params(teacher.model),
            "macs": macs_of(teacher.model, adapt_batch(example, run.student_pre, resolved.preprocess)),
            "arch": resolved.arch,
            "source": teacher.source,
        },
    }
    if resolved.test_logits is not None:
        t_auc = resolved.test_metrics["macro_auc"]
        metrics["student_teacher_agreement"] = get_task(task.task).agreement(s_logits, resolved.test_logits)
        metrics["auc_retention"] = s_metrics["macro_auc"] / t_auc if t_auc else None
    metrics["param_ratio"] = metrics["teacher"]["params"] / metrics["student"]["params"]
    if run.x_val is not None and resolved.test_logits is not None:
        t_val, _, _ = evaluate_model(teacher.model, adapt_batch(run.x_val, run.student_pre, resolved.preprocess),
                                     run.val.labels, task.task)
        metrics["teacher"]["val"] = t_val
    if baseline is not None:
        from .taskprep import bootstrap_vs

        b_metrics, b_logits, _ = evaluate_model(baseline, run.x_test, run.test.labels, task.task)
        metrics["baseline"] = {**b_metrics, "params": count_params(baseline), "arch": student.arch}
        metrics["distill_gain_auc"] = s_metrics["macro_auc"] - b_metrics["macro_auc"]
        # Paired over the same test cases: the CI of (distilled - label-only) macro AUC.
        boot = bootstrap_vs(b_logits, s_logits, run.test.labels, task.task, seed=run.cfg.seed)
        metrics["distill_gain_auc_ci"] = [boot["macro_auc"]["ci_low"], boot["macro_auc"]["ci_high"]]
    metrics["warnings"] = run_warnings(metrics, run.task, run.test)
    metrics["seconds"] = round(seconds, 1)
    metrics["history"] = student.history
    return metrics


# Thresholds of the warnings a summary prints (and report.md repeats).
NEAR_CHANCE_AUC = 0.6
MIN_AGREEMENT = 0.9
MIN_TEST_CASES = 100
MIN_CLASS_CASES = 10


def run_warnings(metrics: dict[str, Any], task, test) -> list[str]:
    """What a reader of a distill summary must not miss: a teacher near chance on val, a student that often
    disagrees with its teacher, a test split too small for its CIs to mean much."""
    out = []
    t = metrics.get("teacher") or {}
    tv = t.get("val") or {}
    if tv.get("macro_auc") is not None and tv["macro_auc"] < NEAR_CHANCE_AUC:
        out.append(f"the teacher is near chance on val (macro AUC {tv['macro_auc']:.3f}, accuracy "
                   f"{tv.get('accuracy', float('nan')):.3f}): retention and agreement against it mean little")
    agree = metrics.get("student_teacher_agreement")
    if agree is not None and agree < MIN_AGREEMENT:
        out.append(f"student-teacher top-1 agreement is {agree:.3f} (< {MIN_AGREEMENT}): the student does not "
                   "behave like its teacher on many cases")
    n = len(test)
    if n < MIN_TEST_CASES:
        out.append(f"the test split has {n} cases (< {MIN_TEST_CASES}): its CIs are wide")
    if task.task != "multilabel" and task.task in ("multiclass", "binary"):
        counts = np.bincount(np.asarray(test.labels), minlength=task.num_classes)
        small = [f"{task.label_names[k]} ({int(c)})" for k, c in enumerate(counts) if c < MIN_CLASS_CASES]
        if small:
            out.append(f"test classes with fewer than {MIN_CLASS_CASES} cases: {', '.join(small)}; their AUC is "
                       "noisy")
    return out


def write_run(run: DistillRun, resolved: ResolvedTeacher, student: TrainedStudent, baseline,
              metrics: dict[str, Any]) -> dict[str, Path]:
    """Student, teacher and baseline weights + cards, ``metrics.json`` and the manifest record (rank 0)."""
    from ..data.digest import SPLITS_CSV, data_digest, write_splits_csv
    from ..data.spec import absolute_spec
    from ..models.card import ModelCard
    from ..models.factory import count_params
    from ..models.weights import save_state_dict

    cfg, task, out, teacher = run.cfg, run.task, run.out, resolved.teacher
    provenance = {
        "tool": f"medfm-compress {__version__}",
        "data": task.source,
        "data_absolute": absolute_spec(task.source),  # the same data named from any working directory
        "teacher": resolved.arch,
        "teacher_source": teacher.source,
        "losses": list(student.losses),
        "seed": cfg.seed,
    }
    artifacts: dict[str, Path] = {}
    scard = ModelCard(
        arch=student.arch, num_classes=task.num_classes, in_chans=task.channels,
        img_size=run.student_pre.input_size[0] if "img_size" in accepted_keywords(student.model) else None,
        task=task.task, label_names=task.label_names, preprocess=run.student_pre,
        num_params=count_params(student.model), embedding_dim=student.embedding_dim, role="student",
        provenance=provenance,
    )
    artifacts["student_weights"], artifacts["student_card"] = write_model(student.model, scard, out, "student")
    tcard_out = dataclasses.replace(teacher.card, num_params=count_params(teacher.model), role="teacher",
                                    provenance={**teacher.card.provenance, "source": teacher.source})
    artifacts["teacher_card"] = tcard_out.save(out / "teacher.json")
    if resolved.weights_path is not None and resolved.weights_path.suffix == ".safetensors":
        artifacts["teacher_weights"] = link_or_copy(resolved.weights_path, out / "teacher.safetensors")
    else:
        artifacts["teacher_weights"] = save_state_dict(teacher.model, out / "teacher.safetensors")
    if baseline is not None:
        bcard = dataclasses.replace(scard, role="baseline", provenance={**provenance, "losses": ["ce"],
                                    "labeled_images": int(len(run.labeled))})
        artifacts["baseline_weights"], artifacts["baseline_card"] = write_model(baseline, bcard, out, "baseline")
    artifacts["metrics"] = atomic_write_json(out / "metrics.json", metrics)
    artifacts["splits"] = write_splits_csv(task, out / SPLITS_CSV)
    rec = run.manifest.start("distill", {**cfg.to_dict(), "resolved_losses": list(student.losses)},
                             {"data": cfg.data} | ({"teacher_weights": cfg.teacher_weights} if cfg.teacher_weights
                                                   else {}))
    rec.inputs["data"]["digest"] = data_digest(task, cfg.data, cfg.seed)  # what was read, per split
    run.manifest.finish(rec, artifacts, {k: v for k, v in metrics.items() if k != "history"})
    shutil.rmtree(run.ckpt_dir, ignore_errors=True)
    return artifacts


def distill(cfg: DistillConfig) -> DistillResult:
    """Run distillation as configured; see the module docstring for what is written.

    The steps: :func:`prepare_run`, :func:`resolve_teacher`, :func:`train_student` (with :func:`fit_head` when
    label-free), :func:`train_baseline`, :func:`evaluate_run`, :func:`write_run`.
    """
    from .train import Interrupted

    t_start = time.time()
    # A run that fails leaves nothing it created but train.error.log; an interrupted one keeps its checkpoint.
    with no_partial_output(cfg.out, keep_log="train.log", keep_on=(Interrupted,)):
        run = prepare_run(cfg)
        resolved = resolve_teacher(run)
        student = train_student(run, resolved)
        baseline = train_baseline(run, student.arch) if cfg.baseline else None
        _barrier(run)
        if run.task.task == "segmentation":
            from .distill_seg import dense_run_metrics

            metrics = dense_run_metrics(run, resolved.teacher, resolved.arch, resolved.preprocess, student.model,
                                        student.arch, baseline, student.history, time.time() - t_start)
        else:
            metrics = evaluate_run(run, resolved, student, baseline, time.time() - t_start)
        artifacts = write_run(run, resolved, student, baseline, metrics) if run.rank == 0 else {}
    if run.distributed:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return DistillResult(out=run.out, metrics=metrics, artifacts=artifacts)


def _barrier(run: DistillRun) -> None:
    if run.distributed:
        import torch.distributed as dist

        dist.barrier()


def fit_head(run: DistillRun, student):
    """Label-free mode, second step: fit the classifier on frozen embeddings of the labeled subset."""
    import torch

    from ..models.features import classifier_of
    from .losses import hard_label_loss
    from .train import LoopConfig, predict, run_loop

    cfg, device, labeled = run.cfg, run.device, run.labeled
    head = classifier_of(student)
    if head is None:
        raise ModelError("the student has no classifier head to fit")
    _, emb = predict(student, run.x_train[torch.as_tensor(labeled, device=run.x_train.device)], embeddings=True)
    emb_t = torch.from_numpy(emb).to(device)
    y = run.y_train[torch.as_tensor(labeled, device=device)]
    for p in head.parameters():
        p.requires_grad_(True)
    bs = min(cfg.batch_size, len(labeled))

    def step(batch_idx, _epoch):
        bi = torch.as_tensor(batch_idx, device=device)
        loss = hard_label_loss(head(emb_t[bi]), y[bi], run.task.task)
        return loss, {"ce": float(loss.detach())}

    spe = max(1, len(labeled) // bs)
    loop = LoopConfig("head", spe, cfg.head_epochs, 1e-2, 1e-4, bs, cfg.seed, False)
    run.log(f"head: fitting the classifier on frozen embeddings of {len(labeled)} labeled images")
    return run_loop(loop, {"head": head}, step, np.arange(len(labeled)), run.ckpt_dir / "head.pt", cfg.resume,
                    run.log, progress=cfg.progress)
