"""Knowledge distillation: a large teacher into a small task-specific student.

``distill(DistillConfig.from_options(...))`` writes into ``config.out``: ``student.safetensors`` + ``student.json`` (model
card), ``teacher.json`` (+ weights), ``baseline.*`` with ``baseline=True``, ``metrics.json``,
``manifest.json`` and ``train.log``.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from .._io import ensure_dir, no_partial_output
from ..errors import ConfigError
from ..layout import RunLayout
from ..manifest import Manifest, check_inputs
from .artifacts import RunResult, TrainLog, link_or_copy, record_run, write_model
from .budget import plan_budget
from .distill_config import DistillConfig, DistillLoopConfig, LossConfig, StudentConfig, TeacherConfig
from .taskprep import (
    accepted_keywords,
    labeled_subset,
    select_device,
)
from .tasks import (
    DistillRun,
    DistillTask,
    ResolvedTeacher,
    TrainedStudent,
    distill_task,
    distill_task_names,
    weak_teacher_warnings,
)
from .teachers import names_architecture, teacher_source, train_supervised

__all__ = [
    "DistillConfig",
    "TeacherConfig",
    "StudentConfig",
    "LossConfig",
    "DistillLoopConfig",
    "DistillResult",
    "DistillRun",
    "distill",
    "prepare_run",
    "resolve_teacher",
    "train_student",
    "train_baseline",
    "write_run",
    "resolve_task_defaults",
]

DistillResult = RunResult


def _check_model_kinds(cfg: DistillConfig, task, dtask: DistillTask) -> None:
    """A network unfit for the data (a classifier for label maps, a 2-D network for volumes...) is refused in one
    line, before anything trains."""
    from ..models.factory import check_model_spec, parse_model_spec

    for role, spec in (("teacher", cfg.teacher.spec or dtask.default_teacher(task.volumes)),
                       ("student", cfg.student.spec or dtask.default_student(task.volumes))):
        if not names_architecture(spec):  # a model on disk, a foundation encoder, an engine
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


def prepare_run(cfg: DistillConfig) -> DistillRun:
    """Device and process group, output folder and log, input checks, and the data as preprocessed tensors."""
    import torch

    from ..data import load_data
    from ..data.dataset import require_task
    from ..data.digest import data_digest, split_summary
    from ..models.factory import check_model_spec

    # A mistyped architecture is refused before anything is read or trained (the default teacher takes minutes);
    # whether it suits the task, and whether the teacher's source can serve the run, once the data is read.
    from .train import dist_info

    for spec in (cfg.teacher.spec, cfg.student.spec):
        if spec and names_architecture(spec):
            check_model_spec(spec)
    device = select_device(cfg.device)
    distributed = _init_distributed(device)
    rank, world = dist_info()
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)

    out = ensure_dir(cfg.out)
    layout = RunLayout(out)
    log = TrainLog(layout.train_log, echo=cfg.progress and rank == 0)
    if rank == 0 and not cfg.resume:
        # A fresh run must not mix with an older one's checkpoints or outputs.
        shutil.rmtree(layout.checkpoints, ignore_errors=True)
    ckpt_dir = ensure_dir(layout.checkpoints)
    manifest = Manifest(out)
    if cfg.resume:
        for path in (layout.weights("student"), layout.card("student")):
            if path.exists():
                manifest.check_input(path, cfg.force)
    # Weights taken from another run directory must still be what its manifest recorded.
    check_inputs([w for w in (cfg.teacher.weights, cfg.student.weights) if w], cfg.force)

    task = load_data(cfg.data, seed=cfg.seed)
    require_task(task, distill_task_names(), "distill")
    dtask = distill_task(task)
    dtask.check_config(cfg, task)
    _check_model_kinds(cfg, task, dtask)
    source = teacher_source(cfg)
    source.check(cfg)
    source.check_data(cfg, task)
    asked_epochs = cfg.loop.epochs
    cfg = resolve_task_defaults(cfg, dtask, task.volumes)
    train, val, test, eval_task = dtask.load_splits(cfg, task)
    if len(train) < cfg.loop.batch_size * world:
        raise ConfigError(
            f"the train split has {len(train)} images, fewer than one batch ({cfg.loop.batch_size} x {world} ranks); "
            "lower --batch-size"
        )
    steps_per_epoch = len(train) // (cfg.loop.batch_size * world)
    default_epochs = dtask.defaults(task.volumes)["epochs"]
    budget = plan_budget(steps_per_epoch, epochs=asked_epochs, steps=cfg.loop.steps, default_epochs=default_epochs,
                         default_steps=dtask.default_steps(default_epochs, task.volumes))
    cfg = cfg.replace_options(epochs=budget.epochs, steps=None)  # the manifest records the epochs run
    log(f"data {task.source}: task={task.task} classes={task.num_classes} channels={task.channels} "
        f"size={task.image_size} train/val/test={len(train)}/{len(val) if val else 0}/{len(test) if test else 0}")
    for line in split_summary(task):
        log(line)
    if rank == 0:
        data_digest(task, cfg.data, cfg.seed)  # hashed now, as read; write_run records it with splits.csv

    student_pre = native_pre = dtask.student_preprocess(cfg, task, train)
    native_x = None
    if cfg.student.input_size and (cfg.student.input_size,) * 2 != tuple(student_pre.input_size):
        if not dtask.per_image_images:
            raise ConfigError(f"--student-input-size applies to per-image tasks on 2-D images; {task.source} is a "
                              f"{task.task} task: resize its data instead (?size=N)")
        student_pre = dataclasses.replace(native_pre, input_size=(cfg.student.input_size,) * 2)
        # The teacher sees the data at its own size; the student at its own, made from the same images.
        native_x = {name: torch.from_numpy(native_pre(s.images)).to(device)
                    for name, s in (("train", train), ("val", val), ("test", test)) if s is not None}
        log(f"student input: {cfg.student.input_size}x{cfg.student.input_size} (the data and the teacher's input are "
            f"made from {native_pre.input_size[0]}x{native_pre.input_size[1]})")
    # Volumes: val and test hold whole cases, segmented by sliding windows of the training patch's size.
    whole = student_pre.whole if task.whole_cases else student_pre
    labeled = (labeled_subset(np.asarray(train.labels), task.task, cfg.label_fraction, cfg.seed,
                              groups=train.groups if task.whole_cases else None)
               if dtask.runtime.has_labels else np.arange(len(train)))
    log(f"labels: {cfg.labels}; labeled subset {len(labeled)}/{len(train)} (fraction {cfg.label_fraction})")
    items = "training patches" if task.whole_cases else "training images"
    log(f"student budget: {budget.plan(len(train), cfg.loop.batch_size * world, items)}")
    y_train, label_state = dtask.prepare_labels(np.asarray(train.labels))
    return DistillRun(
        cfg=cfg, device=device, distributed=distributed, rank=rank, world=world, out=out, log=log,
        ckpt_dir=ckpt_dir, manifest=manifest, task=task, dtask=dtask, train=train, val=val, test=test,
        student_pre=student_pre,
        x_train=torch.from_numpy(student_pre(train.images)).to(device),
        x_val=torch.from_numpy(whole(val.images)).to(device) if val is not None else None,
        x_test=torch.from_numpy(whole(test.images)).to(device) if test is not None else None,
        y_train=torch.from_numpy(np.asarray(y_train)).to(device=device, dtype=getattr(torch, dtask.label_dtype)),
        label_state=label_state,
        labeled=labeled, steps_per_epoch=steps_per_epoch, eval_task=eval_task, budgets={"student": budget},
        native_pre=native_pre if native_x is not None else None, native_x=native_x,
    )


def resolve_task_defaults(cfg: DistillConfig, task, volumes: bool = False) -> DistillConfig:
    """``cfg`` with the settings left unset (``None``) that depend on the task (a name or a distill task) filled in
    from its :meth:`~medfm_compress.compress.tasks.DistillTask.defaults` (batch size, KD temperature; ``volumes``:
    3-D data); the manifest records the values used."""
    defaults = distill_task(task).defaults(volumes)
    unset = {k: v for k, v in defaults.items() if cfg.get_option(k) is None
             and not (k == "epochs" and cfg.loop.steps is not None)}  # a step budget is planned once the data is read
    return cfg.replace_options(**unset) if unset else cfg


def resolve_teacher(run: DistillRun) -> ResolvedTeacher:
    """The run's teacher, from the source its config names (:func:`~medfm_compress.compress.teachers.teacher_source`:
    a foundation encoder, an adapted teacher, a run directory, a weight file, a factory, or trained from scratch)."""
    return teacher_source(run.cfg).resolve(run)


def train_student(run: DistillRun, resolved: ResolvedTeacher) -> TrainedStudent:
    """Build the student (with ``--student-weights`` when given) and distill the teacher into it as its task does
    (:meth:`~medfm_compress.compress.tasks.DistillTask.train_student`)."""
    import torch

    from ..models.factory import create_model
    from ..models.weights import load_weights

    cfg, task = run.cfg, run.task
    student_arch = cfg.student.spec or run.dtask.default_student(task.volumes)
    torch.manual_seed(cfg.seed)
    kwargs = run.dtask.student_kwargs(cfg, resolved)
    student = create_model(student_arch, task.num_classes, task.channels, run.student_pre.input_size[0],
                           **kwargs).to(run.device)
    if cfg.student.weights:
        load_weights(student, cfg.student.weights, what=f"student {student_arch}")
    trained = run.dtask.train_student(run, resolved, student, student_arch)
    run.dtask.finish_model(trained.model, run)
    return trained


def train_baseline(run: DistillRun, arch: str):
    """The label-only baseline: the student's architecture trained on the labeled subset, same step budget."""
    import torch

    from ..models.factory import create_model
    from ..models.weights import load_weights

    cfg, task = run.cfg, run.task
    torch.manual_seed(cfg.seed)
    baseline = create_model(arch, task.num_classes, task.channels, run.student_pre.input_size[0]).to(run.device)
    if cfg.student.weights:
        load_weights(baseline, cfg.student.weights, what=f"baseline {arch}")
    run.log(f"baseline {arch}: labels only, {len(run.labeled)} labeled images, same budget "
            f"({cfg.loop.epochs} x {run.steps_per_epoch} steps)")
    train_supervised(run, "baseline", baseline, run.labeled, cfg.loop.epochs, cfg.loop.lr, run.ckpt_dir / "baseline.pt")
    run.dtask.finish_model(baseline, run)
    return baseline


def write_run(run: DistillRun, resolved: ResolvedTeacher, student: TrainedStudent, baseline,
              metrics: dict[str, Any]) -> dict[str, Path]:
    """Student, teacher and baseline weights + cards, ``metrics.json`` and the manifest record (rank 0)."""
    from ..data.spec import absolute_spec
    from ..models.card import ModelCard
    from ..models.factory import count_params
    from ..models.weights import save_state_dict

    cfg, task, out, teacher = run.cfg, run.task, run.out, resolved.teacher
    layout = RunLayout(out)
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
        provenance=provenance, model_kwargs=dict(student.model_kwargs),
    )
    artifacts["student_weights"], artifacts["student_card"] = write_model(student.model, scard, out, "student")
    if teacher_source(cfg).writes_artifact():  # a packaged foundation encoder is not copied into every run
        tcard_out = dataclasses.replace(teacher.card, num_params=count_params(teacher.model), role="teacher",
                                        provenance={**teacher.card.provenance, "source": teacher.source})
        artifacts["teacher_card"] = tcard_out.save(layout.card("teacher"))
        if resolved.weights_path is not None and resolved.weights_path.suffix == layout.weights("teacher").suffix:
            artifacts["teacher_weights"] = link_or_copy(resolved.weights_path, layout.weights("teacher"))
        else:
            artifacts["teacher_weights"] = save_state_dict(teacher.model, layout.weights("teacher"))
    if baseline is not None:
        bcard = dataclasses.replace(scard, role="baseline", provenance={**provenance, "losses": ["ce"],
                                    "labeled_images": int(len(run.labeled))})
        artifacts["baseline_weights"], artifacts["baseline_card"] = write_model(baseline, bcard, out, "baseline")
    engine = getattr(teacher.model, "is_engine", False)  # an engine teacher is not copied: its file is hashed here
    inputs = ({"data": cfg.data} | ({"teacher_weights": cfg.teacher.weights} if cfg.teacher.weights else {})
              | ({"teacher_engine": cfg.teacher.spec} if engine else {})
              | ({"eval_data": cfg.eval_data} if cfg.eval_data else {}))
    record_run(run.manifest, "distill", {**cfg.to_dict(), "resolved_losses": list(student.losses)}, inputs, task,
               cfg.seed, artifacts, metrics)
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
    with no_partial_output(cfg.out, keep_log=RunLayout(cfg.out).train_log.name, keep_on=(Interrupted,)):
        run = prepare_run(cfg)
        resolved = resolve_teacher(run)
        student = train_student(run, resolved)
        baseline = train_baseline(run, student.arch) if cfg.baseline else None
        _barrier(run)
        metrics = run.dtask.run_metrics(run, resolved, student, baseline, time.time() - t_start)
        metrics["budget"] = {role: b.to_dict() for role, b in run.budgets.items()}
        metrics["warnings"] = [*metrics.get("warnings", []), *weak_teacher_warnings(run.dtask, metrics, run)]
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
