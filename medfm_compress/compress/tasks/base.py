"""What distillation needs to know of a task, as one object per task, and the run types the distiller and the task
modules share.

The distiller (:mod:`medfm_compress.compress.distill`) prepares a run, resolves the teacher, trains the student,
evaluates and writes, the same way for every task; a :class:`DistillTask` says what differs: the default teacher and
student, which networks suit the data, the loss against labels and against the teacher, how targets move under
augmentation, how the student is trained and scored, and which warnings its summary carries (thresholds from one
table, :data:`THRESHOLDS`). The runtime's task object (:mod:`medfm_compress.runtime.tasks`) says what outputs mean.

Task modules import this module, never each other; the package's ``__init__`` registers them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..._registry import Registry
from ...errors import ConfigError, ModelError
from ...runtime.tasks import Task, get_task

__all__ = [
    "DistillTask",
    "DistillRun",
    "ResolvedTeacher",
    "TrainedStudent",
    "THRESHOLDS",
    "register_distill_task",
    "distill_task",
    "distill_task_names",
    "adaptable_task_names",
    "small_test_warning",
    "weak_teacher_warnings",
    "distill_logits",
    "fit_head",
]

# The thresholds of the warnings a distill or adapt summary prints (and report.md repeats), in one place.
THRESHOLDS = {
    # A teacher whose validation macro AUC is below this is near chance: retention against it means little.
    "near_chance_auc": 0.6,
    # A classifier student agreeing with its teacher on fewer cases than this behaves unlike it.
    "min_agreement": 0.9,
    # A segmentation student agreeing with its teacher on fewer pixels than this draws other masks.
    "min_pixel_agreement": 0.95,
    # A test split below this many cases has wide CIs.
    "min_test_cases": 100,
    # A class shown by fewer test cases than this has a noisy score.
    "min_class_cases": 10,
    # A segmentation teacher whose validation mean Dice is below this draws poor masks to learn from.
    "weak_teacher_dice": 0.7,
    # A student whose test score beats its teacher's by more than this (AUC or Dice points) says the teacher is weak.
    "student_beats_teacher": 0.03,
}


@dataclass
class DistillRun:
    """What every step of a distillation run shares: device, ranks, output folder, log, and the data as tensors."""

    cfg: Any
    device: Any
    distributed: bool
    rank: int
    world: int
    out: Path
    log: Callable[[str], None]
    ckpt_dir: Path
    manifest: Any
    task: Any
    dtask: DistillTask
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
    eval_task: Any = None  # held-out data from --eval-data (data without a test split of its own)
    label_state: Any = None  # what DistillTask.prepare_labels did to the training labels
    # --student-input-size: the splits at the data's own size, and their preprocessing, for the teacher
    native_pre: Any = None
    native_x: dict[str, Any] | None = None
    # The budgets planned (:class:`~medfm_compress.compress.budget.Budget`): the student's (the baseline's too), and
    # a teacher trained from scratch's; metrics.json records them.
    budgets: dict[str, Any] = field(default_factory=dict)
    teacher_val: dict[str, Any] | None = None  # a teacher trained from scratch: its best validation figures

    def teacher_inputs(self, split: str):
        """``(tensor, preprocessing)`` of a split as the teacher's inputs are made from: the data at its own size
        (the student's tensors when the student sees the data at that size too)."""
        if self.native_x is None:
            return getattr(self, f"x_{split}"), self.student_pre
        return self.native_x[split], self.native_pre

    def labelled_mask(self):
        """A bool tensor on the run's device: which training cases' labels may be used."""
        import torch

        mask = torch.zeros(len(self.train), dtype=torch.bool, device=self.device)
        mask[torch.as_tensor(self.labeled, device=self.device)] = True
        return mask

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

    teacher: Any  # taskprep.FrozenTeacher
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
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # what the student was built with (its card keeps it)


class DistillTask:
    """How distillation treats one task. Subclasses override what differs; one instance per runtime task name.

    Attributes:
        runtime: the runtime task (what outputs mean: probabilities, parity, scores, what predict writes).
        teacher_tool: tag of how a default teacher is trained (part of its cache key).
        label_dtype: the torch dtype of a training batch's labels.
        label_free_embeddings: label-free distillation (``--labels none``) distills embeddings, so a teacher from a
            weight file keeps its own head and input channels (only its features are used).
        adaptable: ``adapt`` can fit a pretrained encoder to this task (a linear probe or fine-tuned head).
        per_image_images: one labelled output per 2-D image: a teacher held as an engine teaches it, and a student
            may see the images at another size than the teacher (``--student-input-size``).
    """

    teacher_tool: ClassVar[str] = ""
    label_dtype: ClassVar[str] = "int64"
    label_free_embeddings: ClassVar[bool] = False
    adaptable: ClassVar[bool] = False
    per_image_images: ClassVar[bool] = False

    def __init__(self, runtime: Task | str):
        self.runtime = get_task(runtime)

    @property
    def name(self) -> str:
        return self.runtime.name

    # The validation figure :meth:`val_scores` judges a model by (early stopping, best state), and its direction.
    val_key: ClassVar[str] = ""
    val_higher_is_better: ClassVar[bool] = True

    # ----- defaults -----
    def defaults(self, volumes: bool) -> dict[str, Any]:
        """Settings left unset (None) in a ``DistillConfig`` that depend on the task: epochs, learning rate,
        augmentation, batch size, KD temperature."""
        return {"epochs": 6, "lr": 3e-3, "augment": True}

    def default_steps(self, epochs: int, volumes: bool) -> int | None:
        """The optimizer steps ``epochs`` epochs give this task's embedded default (its training images at the
        task's default batch): the least budget a data set gets by default, so a small folder is not trained with
        a fraction of the steps the defaults were tuned with. None: the budget stays in epochs (volumes, crops)."""
        from ...data.synthetic import SyntheticConfig

        batch = self.defaults(volumes).get("batch_size")
        if volumes or not batch:
            return None
        return epochs * max(1, SyntheticConfig().n_train // batch)

    def default_teacher(self, volumes: bool) -> str:
        raise NotImplementedError

    def default_student(self, volumes: bool) -> str:
        raise NotImplementedError

    # ----- the run's data -----
    def check_config(self, cfg, data) -> None:
        """Refuse, in one line, settings that do not apply to this task's data (once it is read)."""
        for field_, flag in (("eval_data", "--eval-data"), ("widths", "--widths"), ("head_hidden", "--head-hidden")):
            if cfg.get_option(field_) is not None:
                raise ConfigError(f"{flag} applies to volume crops distilled from a foundation teacher (astra-ct); "
                                  f"{data.source} is a {data.task} task: it is scored on its own test split")

    def load_splits(self, cfg, data) -> tuple[Any, Any, Any, Any]:
        """``(train, val or None, test, eval data or None)`` of the run."""
        val = data.split("val") if "val" in data.splits and len(data.splits["val"]) else None
        return data.split("train"), val, data.split("test"), None

    def student_preprocess(self, cfg, data, train):
        """The student's preprocessing, from the training images (mean/std, size, window, voxel spacing)."""
        from ..taskprep import data_preprocess

        return data_preprocess(data, train.images)

    def student_kwargs(self, cfg, resolved: ResolvedTeacher) -> dict[str, Any]:
        """Keyword arguments the student's factory is called with (recorded in its card)."""
        return {}

    # ----- checks -----
    def check_model_kind(self, role: str, spec: str, kind: str, data, volumes: bool) -> None:
        """Refuse, in one line, a network of a ``kind`` (``timm``, ``smp``, ``monai``...) unfit for the data."""

    def check_network(self, model, x, num_classes: int, what: str) -> None:
        """Refuse, in one line, a built network whose output on ``x`` this task cannot use."""

    def check_teacher_card(self, card, data) -> None:
        """Refuse a teacher card whose outputs do not match the data's labels."""

    # ----- losses and targets -----
    def hard_loss(self, logits, labels):
        """The loss against labels (a teacher trained from scratch, the baseline, the ``ce`` term)."""
        raise NotImplementedError

    def kd_loss(self, student_logits, teacher_logits, temperature: float):
        """The loss against the teacher's outputs (the ``kd`` term)."""
        raise NotImplementedError

    def augment_targets(self, labels, index: np.ndarray, seed: int, epoch: int):
        """A batch's labels after the augmentation its images got (image-level labels: unchanged)."""
        return labels

    def prepare_labels(self, labels: np.ndarray) -> tuple[np.ndarray, Any]:
        """The training labels as the models learn them, and what :meth:`finish_model` needs to undo that (here:
        unchanged, None)."""
        return labels, None

    def teacher_targets(self, teacher_outputs, run: DistillRun):
        """The teacher's outputs in the scale the student learns in (see :meth:`prepare_labels`)."""
        return teacher_outputs

    def finish_model(self, model, run: DistillRun) -> None:
        """Turn a model trained on :meth:`prepare_labels`' labels into one that outputs the data's own (here: as is)."""

    def teacher_outputs_match(self, card, data) -> bool:
        """Whether a teacher's outputs can be distilled one to one into the data's (logit KD)."""
        return card.num_classes == data.num_classes

    # ----- training and scoring -----
    def val_scores(self, run: DistillRun, model) -> dict[str, float]:
        """A model's figures on the validation split (``{val_key: value}``), as it trains (inputs ``run.x_val``)."""
        raise NotImplementedError

    def teacher_metrics(self, run: DistillRun, teacher, teacher_pre) -> tuple[dict[str, float], np.ndarray | None]:
        """The teacher's test metrics and outputs, where the task scores them before training (else ``({}, None)``)."""
        return {}, None

    def train_student(self, run: DistillRun, resolved: ResolvedTeacher, student, arch: str) -> TrainedStudent:
        raise NotImplementedError

    def run_metrics(self, run: DistillRun, resolved: ResolvedTeacher, student: TrainedStudent, baseline,
                    seconds: float) -> dict[str, Any]:
        """``metrics.json`` of a run: student, teacher and baseline on the test split, agreement, sizes, warnings."""
        raise NotImplementedError

    def warnings(self, metrics: dict[str, Any], data, test) -> list[str]:
        """What a reader of the run's summary must not miss."""
        return small_test_warning(test)

    def summary(self, m: dict[str, Any]) -> str:
        """The run's summary as ``distill`` prints it: teacher, student and baseline in the task's score columns, the
        parameter ratio, the student's headline metric against its teacher's, their agreement, the distilled-minus-
        label-only difference with its paired 95% CI (in the task's points), then the warnings."""
        shown = self.runtime.shown
        lines = [*self.model_table(m), *self.summary_details(m), f"params ratio teacher/student: {m['param_ratio']:.1f}x"]
        if m.get(f"{shown.gain_key}_retention") is not None:
            lines.append(f"{shown.headline}: {self.runtime.retention_words(m[f'{shown.gain_key}_retention'])}")
        if m.get("student_teacher_agreement") is not None:
            lines.append(f"student-teacher {self.runtime.agreement_words}: {m['student_teacher_agreement']:.4f}")
        gain = m.get(f"distill_gain_{shown.gain_key}")
        if gain is not None:
            lo, hi = m.get(f"distill_gain_{shown.gain_key}_ci") or [None, None]
            scale, fmt = shown.points, shown.points_fmt
            ci = f" [{scale * lo:{fmt}}, {scale * hi:{fmt}}] (paired 95% CI)" if None not in (lo, hi) else ""
            lines.append(f"{self.gain_words}: {scale * gain:{fmt}}{shown.points_unit}{ci}")
        return "\n".join(lines + [f"warning: {w}" for w in m.get("warnings", [])])

    gain_words: ClassVar[str] = "distilled - baseline"

    def summary_details(self, m: dict[str, Any]) -> list[str]:
        """Lines a task adds after its table (e.g. per class)."""
        return []

    def model_table(self, m: dict[str, Any]) -> list[str]:
        """Teacher, student and baseline in the task's score columns, aligned (the head of a summary)."""
        cols = self.runtime.score_columns(m.get("student") or {})
        rows = [("model", "arch", "params", *(c[0] for c in cols))]
        for role in ("teacher", "student", "baseline"):
            if role in m:
                r = m[role]
                rows.append((role, r["arch"], f"{r['params'] / 1e6:.2f}M",
                             *(format(r[k], f) if r.get(k) is not None else "-" for _, k, f in cols)))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]

    def __repr__(self) -> str:
        return f"<distill task {self.name}>"


def small_test_warning(test) -> list[str]:
    n = len(test)
    lim = THRESHOLDS["min_test_cases"]
    return [f"the test split has {n} cases (< {lim}): its CIs are wide"] if n < lim else []


_DISTILL_TASKS: Registry[DistillTask] = Registry("distill task")


def weak_teacher_warnings(dtask: DistillTask, metrics: dict[str, Any], run: DistillRun) -> list[str]:
    """A teacher weaker than it should be, for every task: its validation score is low (a segmentation teacher's mean
    Dice), or its own student beats it on the test split by a wide margin (:data:`THRESHOLDS`). The cause named is the
    likeliest: a teacher trained from scratch had too few steps (its budget is said), any other is weak on this
    data."""
    key, higher = dtask.runtime.headline_metric, dtask.runtime.higher_is_better
    t, s = metrics.get("teacher") or {}, metrics.get("student") or {}
    budget, best = run.budgets.get("teacher"), run.teacher_val
    if budget is not None:
        cause = (f"it was trained from scratch for {budget.steps} steps ({budget.reason}): give it more "
                 "(--teacher-steps N) or a pretrained teacher (--teacher ARCH --teacher-weights FILE)")
    else:
        cause = ("give a stronger teacher, or adapt it to these labels first (--teacher-adapt finetune)"
                 if dtask.adaptable else "give a stronger teacher")
    out = []
    val_dice = (best or {}).get("val_dice", (t.get("val") or {}).get("mean_dice"))
    if val_dice is not None and val_dice < THRESHOLDS["weak_teacher_dice"]:
        out.append(f"the teacher's validation mean Dice is {val_dice:.3f} (< {THRESHOLDS['weak_teacher_dice']}): its "
                   f"masks are poor to learn from; {cause}")
    if key and t.get(key) is not None and s.get(key) is not None:
        margin = (s[key] - t[key]) if higher else (t[key] - s[key])
        if higher and margin > THRESHOLDS["student_beats_teacher"]:
            out.append(f"the student beats its teacher on the test split by {margin:.3f} {dtask.runtime.shown.headline} "
                       f"({s[key]:.3f} vs {t[key]:.3f}): the teacher is weak and retention against it means little; "
                       f"{cause}")
        elif not higher and t[key] > 0 and margin / t[key] > 2 * THRESHOLDS["student_beats_teacher"]:
            out.append(f"the student's {dtask.runtime.shown.headline} is {margin / t[key]:.0%} below its teacher's "
                       f"({s[key]:.4g} vs {t[key]:.4g}): the teacher is weak; {cause}")
    return out


def register_distill_task(task: DistillTask) -> DistillTask:
    """Register how distillation treats one runtime task; a second registration of a name is an error (a bug)."""
    return _DISTILL_TASKS.register(task.name, task)


def distill_task_names() -> tuple[str, ...]:
    """The tasks distillation handles."""
    return _DISTILL_TASKS.names()


def adaptable_task_names() -> tuple[str, ...]:
    """The tasks ``adapt`` fits a pretrained encoder to."""
    return tuple(t.name for t in _DISTILL_TASKS if t.adaptable)


def distill_task(task) -> DistillTask:
    """The distill task of a runtime task (its name, a task object, or data naming it: ``TaskData``). A task that
    distillation does not handle is a one-line error."""
    name = getattr(task, "task", None) or getattr(task, "name", None) or str(task)
    found = _DISTILL_TASKS.get(name)
    if found is None:
        raise ConfigError(f"distillation does not handle {name} tasks; it handles {', '.join(_DISTILL_TASKS.names())}")
    return found


def run_losses(cfg, has_logits: bool) -> tuple[str, ...]:
    """The loss terms of a run whose teacher has logits (or not): ``--loss`` as given; by default ``kd`` + ``ce``, and
    for a head-less teacher (an encoder) its embedding and the labels (``feat`` + ``ce``; ``feat`` alone without
    labels)."""
    if cfg.loss.losses is not None or has_logits:
        return cfg.resolved_losses()
    return ("feat",) if cfg.labels == "none" else ("feat", "ce")


def distill_logits(dtask: DistillTask, run: DistillRun, resolved: ResolvedTeacher, student, arch: str,
                   val_metrics_of: Callable[[np.ndarray], dict[str, float]]) -> TrainedStudent:
    """Distill the teacher into a student with a head (outputs per image): the task's KD on the teacher's outputs
    (``kd``), embedding KD through a projector (``feat``), the teacher's patch-token map (a ViT's tokens as a grid,
    pooled to 7x7; a CNN's last map) through a 1x1 projection onto the student's last stage (``patch``, compared
    position by position at the student's grid), the task's label loss on the labelled subset (``ce``); then,
    label-free, fit its head on the labelled subset's frozen embeddings (:func:`fit_head`). ``val_metrics_of(outputs)``
    scores the validation split after each epoch (the student's outputs as trained)."""
    import torch

    from ...models.features import FeatureTap, MapTap
    from ...models.heads import Projector
    from ..losses import feature_kd_loss, feature_map_kd_loss, labelled_loss, weighted_terms
    from ..taskprep import autocast, classifier_present
    from ..teacher_cache import teacher_outputs, training_views, view_inputs
    from ..train import LoopConfig, predict, run_loop

    cfg, task, device, teacher = run.cfg, run.task, run.device, resolved.teacher
    x_train, y_train = run.x_train, run.y_train
    has_logits = classifier_present(teacher.model)
    losses = run_losses(cfg, has_logits)
    if cfg.labels == "none" and (not set(losses) <= {"feat", "patch"} or "feat" not in losses):
        raise ConfigError("--labels none distills embeddings only; use --loss feat or feat,patch (or leave --loss unset)")
    if "kd" in losses and (resolved.test_logits is None or not has_logits):
        raise ConfigError("the teacher has no classifier head, so logit KD ('kd') is impossible; use --loss feat,ce")
    if "kd" in losses and not dtask.teacher_outputs_match(teacher.card, task):
        raise ConfigError(f"teacher predicts {teacher.card.num_classes} outputs, data has {task.num_classes}")
    patch = "patch" in losses
    if patch and MapTap(student).module is None:
        raise ConfigError(f"--loss patch needs a student whose last feature map is pooled by a global_pool (a timm CNN); "
                          f"{arch} has none")
    with torch.no_grad(), FeatureTap(student) as tap, MapTap(student) as mtap:
        student.eval()
        _, s_emb = tap.run(x_train[:2])
        s_map = mtap.map
    t_x, t_src = run.teacher_inputs("train")
    t_probe = teacher.outputs(t_x[:2], t_src, patch=patch)
    projector = Projector(s_emb.shape[1], t_probe[1].shape[1]).to(device) if "feat" in losses else None
    map_projector = torch.nn.Conv2d(s_map.shape[1], t_probe[2].shape[1], 1).to(device) if patch else None

    # The teacher is paid once: its outputs for every training image and view come from the cache.
    views = training_views(cfg)
    t_cache = teacher_outputs(run, teacher, views, patch=patch)

    class _Pair(torch.nn.Module):
        def __init__(self, s, p, mp):
            super().__init__()
            self.student = s
            self.projector = p
            self.map_projector = mp
            self._tap = FeatureTap(s)
            self._map = MapTap(s) if mp is not None else None

        def forward(self, x):
            if self._map is None:
                with self._tap:
                    logits, emb = self._tap.run(x)
                return logits, (self.projector(emb) if self.projector is not None else emb), None
            with self._tap, self._map:
                logits, emb = self._tap.run(x)
                smap = self._map.map
            return logits, (self.projector(emb) if self.projector is not None else emb), self.map_projector(smap)

    net = run.wrap(_Pair(student, projector, map_projector))
    labeled_mask = run.labelled_mask()

    def student_step(batch_idx, epoch):
        bi = torch.as_tensor(batch_idx, device=device)
        view = epoch % views
        xb = view_inputs(x_train[bi], batch_idx, view, cfg.loop.augment, cfg.seed)
        t_logits, t_e = t_cache.get(view, batch_idx, device)
        with autocast(device):
            s_logits, s_proj, s_pmap = net(xb)
        s_logits = s_logits.float()
        return weighted_terms(cfg.loss, losses, device, {
            "kd": lambda: dtask.kd_loss(s_logits, dtask.teacher_targets(t_logits, run), cfg.loss.temperature),
            "feat": lambda: feature_kd_loss(s_proj.float(), t_e, cfg.loss.feat_loss),
            "patch": lambda: feature_map_kd_loss(s_pmap.float(), t_cache.get_patch(view, batch_idx, device),
                                                 cfg.loss.feat_loss),
            "ce": lambda: labelled_loss(dtask.hard_loss, s_logits, y_train[bi], labeled_mask[bi]),
        })

    def val_metrics(_epoch):
        # In label-free mode the head is fitted afterwards, so a validation score would mean nothing yet.
        if run.x_val is None or cfg.labels == "none":
            return {}
        val_logits, _ = predict(student, run.x_val)
        return val_metrics_of(val_logits)

    spe = run.steps_per_epoch
    run.log(f"student {arch}: losses={'+'.join(losses)} epochs={cfg.loop.epochs} steps/epoch={spe}")
    loop = LoopConfig("student", spe, cfg.loop.epochs, cfg.loop.lr, cfg.loop.weight_decay, cfg.loop.batch_size, cfg.seed, cfg.loop.augment)
    modules = ({"student": student} | ({"projector": projector} if projector is not None else {})
               | ({"map_projector": map_projector} if map_projector is not None else {}))
    history = run_loop(loop, modules, student_step, np.arange(len(run.train)), run.ckpt_dir / "student.pt",
                       cfg.resume, run.log, val_metrics, cfg.progress)
    if cfg.labels == "none":
        history["head"] = fit_head(dtask, run, student)
    return TrainedStudent(student, arch, losses, int(s_emb.shape[1]), history)

def fit_head(dtask: DistillTask, run: DistillRun, student):
    """Label-free mode, second step: fit the classifier on frozen embeddings of the labeled subset."""
    import torch

    from ...models.features import classifier_of
    from ..train import LoopConfig, predict, run_loop

    cfg, device, labeled = run.cfg, run.device, run.labeled
    head = classifier_of(student)
    if head is None:
        raise ModelError("the student has no classifier head to fit")
    _, emb = predict(student, run.x_train[torch.as_tensor(labeled, device=run.x_train.device)], embeddings=True)
    emb_t = torch.from_numpy(emb).to(device)
    y = run.y_train[torch.as_tensor(labeled, device=device)]
    for p in head.parameters():
        p.requires_grad_(True)
    bs = min(cfg.loop.batch_size, len(labeled))

    def step(batch_idx, _epoch):
        bi = torch.as_tensor(batch_idx, device=device)
        loss = dtask.hard_loss(head(emb_t[bi]), y[bi])
        return loss, {"ce": float(loss.detach())}

    spe = max(1, len(labeled) // bs)
    loop = LoopConfig("head", spe, cfg.loop.head_epochs, 1e-2, 1e-4, bs, cfg.seed, False)
    run.log(f"head: fitting the classifier on frozen embeddings of {len(labeled)} labeled images")
    return run_loop(loop, {"head": head}, step, np.arange(len(labeled)), run.ckpt_dir / "head.pt", cfg.resume,
                    run.log, progress=cfg.progress)
