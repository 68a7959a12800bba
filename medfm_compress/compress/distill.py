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
from .artifacts import RunResult, TrainLog, link_or_copy, write_model
from .taskprep import (
    FrozenTeacher,
    accepted_keywords,
    adapt_batch,
    autocast,
    data_preprocess,
    labeled_subset,
    select_device,
)
from .tasks import DistillRun, DistillTask, ResolvedTeacher, TrainedStudent, distill_task, distill_task_names

__all__ = [
    "DistillConfig",
    "DistillResult",
    "DistillRun",
    "distill",
    "prepare_run",
    "resolve_teacher",
    "train_student",
    "train_baseline",
    "write_run",
    "resolve_task_defaults",
    "TEACHER_EPOCHS",
]

TEACHER_EPOCHS = 4
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
    temperature: float | None = None  # None: the data's task's default (DistillTask.defaults)
    kd_weight: float = 1.0
    feat_weight: float = 1.0
    ce_weight: float = 1.0
    feat_loss: Literal["cosine", "mse"] = "cosine"
    labels: Literal["full", "none"] = "full"
    label_fraction: float = 1.0
    epochs: int = 6
    batch_size: int | None = None  # None: the data's task's default (DistillTask.defaults)
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


def _check_model_kinds(cfg: DistillConfig, task, dtask: DistillTask) -> None:
    """A network unfit for the data (a classifier for label maps, a 2-D network for volumes...) is refused in one
    line, before anything trains."""
    from ..models.factory import check_model_spec, parse_model_spec

    for role, spec in (("teacher", cfg.teacher or dtask.default_teacher(task.volumes)),
                       ("student", cfg.student or dtask.default_student(task.volumes))):
        if teacher_path(spec) is not None:
            continue
        check_model_spec(spec)
        dtask.check_model_kind(role, spec, parse_model_spec(spec)[0], task, task.volumes)


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
            # How the task trains a teacher from scratch (its loss): a change there is a new teacher.
            "tool": distill_task(task).teacher_tool,
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

    from .train import LoopConfig, augment_batch, run_loop

    cfg, device, x, y, dtask = run.cfg, run.device, run.x_train, run.y_train, run.dtask
    net = run.wrap(model)

    def step(batch_idx, epoch):
        xb = x[torch.as_tensor(batch_idx, device=x.device)]
        yb = y[torch.as_tensor(batch_idx, device=y.device)]
        if cfg.augment:
            xb = augment_batch(xb.cpu(), batch_idx, cfg.seed, epoch).to(device)
            yb = dtask.augment_targets(yb, batch_idx, cfg.seed, epoch)  # label maps move with their images
        with autocast(device):
            logits = net(xb)
            loss = dtask.hard_loss(logits.float(), yb)
        return loss, {"loss": float(loss.detach())}

    loop = LoopConfig(name, run.steps_per_epoch, epochs, lr, cfg.weight_decay, cfg.batch_size, cfg.seed, cfg.augment)
    return run_loop(loop, {"model": model}, step, idx, ckpt, cfg.resume, run.log, progress=cfg.progress)


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
    require_task(task, distill_task_names(), "distill")
    dtask = distill_task(task)
    _check_model_kinds(cfg, task, dtask)
    cfg = resolve_task_defaults(cfg, dtask, task.volumes)
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
    whole = student_pre.whole_volumes if task.volumes else student_pre
    labeled = labeled_subset(np.asarray(train.labels), task.task, cfg.label_fraction, cfg.seed,
                             groups=train.groups if task.volumes else None)
    log(f"labels: {cfg.labels}; labeled subset {len(labeled)}/{len(train)} (fraction {cfg.label_fraction})")
    return DistillRun(
        cfg=cfg, device=device, distributed=distributed, rank=rank, world=world, out=out, log=log,
        ckpt_dir=ckpt_dir, manifest=manifest, task=task, dtask=dtask, train=train, val=val, test=test,
        student_pre=student_pre,
        x_train=torch.from_numpy(student_pre(train.images)).to(device),
        x_val=torch.from_numpy(whole(val.images)).to(device) if val is not None else None,
        x_test=torch.from_numpy(whole(test.images)).to(device),
        y_train=torch.from_numpy(np.asarray(train.labels)).to(device=device, dtype=getattr(torch, dtask.label_dtype)),
        labeled=labeled, steps_per_epoch=len(train) // (cfg.batch_size * world),
    )


def resolve_task_defaults(cfg: DistillConfig, task, volumes: bool = False) -> DistillConfig:
    """``cfg`` with the settings left unset (``None``) that depend on the task (a name or a distill task) filled in
    from its :meth:`~medfm_compress.compress.tasks.DistillTask.defaults` (batch size, KD temperature; ``volumes``:
    3-D data); the manifest records the values used."""
    defaults = distill_task(task).defaults(volumes)
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

    cfg, task, log, dtask = run.cfg, run.task, run.log, run.dtask
    teacher_weights = cfg.teacher_weights
    teacher_card_path = None
    tpath = adapted_teacher(run) if cfg.teacher_adapt else teacher_path(cfg.teacher)
    if tpath is not None:  # a run directory's teacher (adapt --out DIR, or a cached --teacher-adapt)
        teacher_card_path, teacher_weights = tpath
        teacher_arch = ModelCard.load(teacher_card_path).arch
    else:
        teacher_arch = cfg.teacher or dtask.default_teacher(task.volumes)
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
        dtask.check_teacher_card(tcard, task)
        if tcard.num_classes and tcard.label_names and list(tcard.label_names) != list(task.label_names):
            raise ModelError(
                f"the teacher's classes {tcard.label_names} are not the data's {task.label_names}; adapt it to "
                "these labels (--teacher-adapt linear|finetune, or medfm-compress adapt)"
            )
        teacher_model = tcard.build()
    else:
        head, in_ch, size = task.num_classes, task.channels, run.student_pre.input_size[0]
        if teacher_weights and cfg.labels == "none" and dtask.label_free_embeddings:
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
    # A network whose outputs the task cannot use is refused before it trains; a training input (a volume's test cases
    # are whole scans, windowed later; its patches are what the network takes).
    dtask.check_network(teacher_model.to(run.device), adapt_batch(run.x_train[:1], run.student_pre, teacher_pre),
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
    t_metrics, t_test_logits = dtask.teacher_metrics(run, teacher, teacher_pre)
    return ResolvedTeacher(teacher, teacher_arch, teacher_pre, teacher_weights_path, t_metrics, t_test_logits)


def train_student(run: DistillRun, resolved: ResolvedTeacher) -> TrainedStudent:
    """Build the student (with ``--student-weights`` when given) and distill the teacher into it as its task does
    (:meth:`~medfm_compress.compress.tasks.DistillTask.train_student`)."""
    import torch

    from ..models.factory import create_model
    from ..models.weights import load_weights

    cfg, task = run.cfg, run.task
    student_arch = cfg.student or run.dtask.default_student(task.volumes)
    torch.manual_seed(cfg.seed)
    student = create_model(student_arch, task.num_classes, task.channels, run.student_pre.input_size[0]).to(run.device)
    if cfg.student_weights:
        load_weights(student, cfg.student_weights, what=f"student {student_arch}")
    return run.dtask.train_student(run, resolved, student, student_arch)


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

    The steps, the same for every task: :func:`prepare_run`, :func:`resolve_teacher`, :func:`train_student`,
    :func:`train_baseline`, the task's ``run_metrics``, :func:`write_run`.
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
        metrics = run.dtask.run_metrics(run, resolved, student, baseline, time.time() - t_start)
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
