"""The distill stage's config: the data and run settings, then typed parts (teacher, student, loss, loop).

``DistillConfig(data=..., teacher=TeacherConfig(spec="timm:resnet18", weights="r18.safetensors"),
loop=DistillLoopConfig(epochs=10))``. The command line and recipes stay flat
(``DistillConfig.from_options(data=..., teacher="timm:resnet18", teacher_weights="r18.safetensors", epochs=10)``):
each option goes to the part that declares it, under the name the part gives it (``teacher_weights`` is
``TeacherConfig.weights``). ``None`` means "use the default": the data's task fills the loop's and the loss's
(:meth:`~medfm_compress.compress.tasks.DistillTask.defaults`), the teacher source its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ..config import DictConfig, PartedConfig, option, require_positive
from ..errors import ConfigError

__all__ = ["DistillConfig", "TeacherConfig", "StudentConfig", "LossConfig", "DistillLoopConfig"]

CONFIG_VERSION = 1


@dataclass(frozen=True)
class TeacherConfig(DictConfig):
    """Where the teacher comes from (:mod:`medfm_compress.compress.teachers` picks the source from these).

    Attributes:
        spec: an architecture (``timm:resnet50``), a run directory's teacher (``DIR/teacher``), a foundation encoder
            (``astra-ct``), or None: the data's task's default, trained from scratch (``--teacher``).
        weights: a weight file for ``spec`` (``--teacher-weights``).
        weights_key_map: how the file's keys map onto the model: ``name`` or ``order``.
        epochs, steps: train the teacher from scratch for at most this many epochs (``--teacher-epochs``) or optimizer
            steps (``--teacher-steps``), stopping early on its validation score; default: 4 epochs, and at least
            the steps they give the embedded default (:mod:`medfm_compress.compress.budget`).
        patience: a teacher trained from scratch stops after this many optimizer steps without a better validation
            score (``--teacher-patience``; default a third of its budget), and keeps its best state.
        adapt: adapt a pretrained teacher to the data's labels first: ``linear`` or ``finetune``.
        cache: where the teacher's outputs are cached: a foundation encoder's per-crop embeddings (default
            ``<cache>/embeddings``), any other teacher's outputs per training image and view (default
            ``<cache>/teacher-outputs``, :mod:`medfm_compress.compress.teacher_cache`).
        batch_size: the teacher's batch when filling its cache (``--teacher-batch-size``; default 64, 1 for a
            foundation encoder's crops).
        mean, std: the teacher's own normalisation (``--teacher-mean``/``--teacher-std``; one value or one per
            channel) for a teacher built from an architecture and weights (``--teacher-weights``, ``--teacher-adapt``,
            ``python:``); default: its pretraining's from timm, else the data's. Recorded in the teacher's card.
        views: with augmentation, the augmented views of each training image the teacher answers once
            (``--teacher-views``); epoch ``e`` trains on view ``e % views``. None: one per epoch, at most 12.
        embedding, logits: for a teacher held as an engine (``--teacher model.onnx`` or an OpenVINO ``.xml``), the
            tensors to distil by name (``--teacher-embedding NAME[:cls|:mean]``, ``--teacher-logits NAME``), see
            :mod:`medfm_compress.models.engine_teacher`.
    """

    spec: str | None = option(name="teacher")
    weights: str | None = option(name="teacher_weights")
    weights_key_map: Literal["name", "order"] = "name"
    epochs: int | None = option(name="teacher_epochs")
    steps: int | None = option(name="teacher_steps")
    patience: int | None = option(name="teacher_patience")
    adapt: Literal["linear", "finetune"] | None = option(name="teacher_adapt")
    cache: str | None = None
    batch_size: int | None = option(name="teacher_batch_size")
    views: int | None = option(name="teacher_views")
    mean: tuple[float, ...] | None = option(name="teacher_mean")
    std: tuple[float, ...] | None = option(name="teacher_std")
    embedding: str | None = option(name="teacher_embedding")
    logits: str | None = option(name="teacher_logits")

    def __post_init__(self):
        from ..models.engine_teacher import is_engine_spec
        from .teachers import teacher_path

        require_positive(self, "epochs", "steps", "patience", "batch_size", "views",
                         flags={"epochs": "teacher-epochs", "steps": "teacher-steps", "patience": "teacher-patience",
                                "batch_size": "teacher-batch-size", "views": "teacher-views"})
        if self.epochs is not None and self.steps is not None:
            raise ConfigError("--teacher-epochs and --teacher-steps both set the teacher's budget; give one")
        if self.weights and not self.spec:
            raise ConfigError("--teacher-weights needs --teacher naming its architecture (e.g. timm:vit_small_patch16_224)")
        if self.adapt is not None and self.adapt not in ("linear", "finetune"):
            raise ConfigError(f"unknown --teacher-adapt {self.adapt!r}; choose linear or finetune")
        if self.adapt and self.from_scratch:
            raise ConfigError("--teacher-adapt adapts pretrained weights; --teacher-epochs/--teacher-steps train from "
                              "scratch: pick one")

        if self.adapt and (self.spec is None or teacher_path(self.spec) is not None):
            raise ConfigError("--teacher-adapt needs --teacher ARCH (with --teacher-weights for a pretrained model)")
        if (self.embedding or self.logits) and not is_engine_spec(self.spec):
            raise ConfigError("--teacher-embedding/--teacher-logits name tensors of a teacher held as an engine; give "
                              "--teacher model.onnx (or an OpenVINO .xml)")
        if self.weights_key_map != "name" and not self.weights:
            raise ConfigError("--weights-key-map applies to --teacher-weights; give the weight file")
        from .adapt import check_normalisation

        check_normalisation(self.mean, self.std)

    @property
    def from_scratch(self) -> bool:
        """Whether a budget to train the teacher from scratch was given."""
        return self.epochs is not None or self.steps is not None


@dataclass(frozen=True)
class StudentConfig(DictConfig):
    """The student network.

    Attributes:
        spec: its architecture (``--student``; None: the data's task's default).
        weights: weights to start from (``--student-weights``).
        widths: the 3-D embedding student of volume crops (default student only): its stage widths.
        head_hidden: that student's embedding head's hidden width.
        input_size: the side of the square input the student sees (``--student-input-size``), where it differs from
            the data's: the teacher still sees the data at its own size (a 224 px teacher, a student at 128 px).
    """

    spec: str | None = option(name="student")
    weights: str | None = option(name="student_weights")
    widths: tuple[int, ...] | None = None
    head_hidden: int | None = None
    input_size: int | None = option(name="student_input_size")

    def __post_init__(self):
        require_positive(self, "head_hidden", "input_size", flags={"input_size": "student-input-size"})
        if self.widths is not None and (len(self.widths) < 2 or min(self.widths) < 1):
            raise ConfigError(f"widths needs at least two positive channel counts, got {self.widths}")
        if self.weights and not self.spec:
            raise ConfigError("--student-weights needs --student naming its architecture")


@dataclass(frozen=True)
class LossConfig(DictConfig):
    """What the student learns from.

    Attributes:
        losses: the loss terms (``kd``: logits, ``feat``: the pooled embedding, ``patch``: the teacher's patch-token
            (or last feature) map onto the student's last stage, ``ce``: labels; None: ``kd`` + ``ce``, ``feat`` +
            ``ce`` for a head-less teacher, or ``feat`` without labels).
        temperature: the KD temperature (None: the data's task's default).
        kd_weight, feat_weight, patch_weight, ce_weight: the weight of each term.
        feat_loss: the feature terms' distance: ``cosine`` or ``mse``.
    """

    losses: tuple[str, ...] | None = None
    temperature: float | None = None
    kd_weight: float = 1.0
    feat_weight: float = 1.0
    patch_weight: float = 1.0
    ce_weight: float = 1.0
    feat_loss: Literal["cosine", "mse"] = "cosine"

    def __post_init__(self):
        from .losses import LOSS_NAMES

        if self.temperature is not None and self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if self.losses is not None:
            bad = [x for x in self.losses if x not in LOSS_NAMES]
            if bad or not self.losses:
                raise ConfigError(f"unknown loss(es) {bad or '(none)'}; choose from {', '.join(LOSS_NAMES)}")


@dataclass(frozen=True)
class DistillLoopConfig(DictConfig):
    """The student's training loop (:func:`medfm_compress.compress.train.run_loop`); None: the data's task's default.

    Attributes:
        epochs, steps: the budget, in epochs (``--epochs``) or optimizer steps (``--steps``, rounded up to whole
            epochs); None for both: the task's default epochs, and at least the steps they give the embedded
            default (:func:`medfm_compress.compress.budget.plan_budget`). The baseline gets the same.
        batch_size, lr, weight_decay: the optimizer's settings (AdamW, cosine schedule).
        augment: augment the training images (and label maps with them).
        head_epochs: without labels (``labels: none``), the epochs fitting the student's classifier on its frozen
            embeddings of the labeled subset afterwards.
    """

    epochs: int | None = None
    steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float = 0.02
    augment: bool | None = None
    head_epochs: int = 30

    def __post_init__(self):
        require_positive(self, "epochs", "steps", "batch_size", "head_epochs")
        if self.epochs is not None and self.steps is not None:
            raise ConfigError("--epochs and --steps both set the budget; give one")
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")


@dataclass(frozen=True)
class DistillConfig(PartedConfig):
    """Everything that defines a distillation run. ``None`` means "use the default".

    Attributes:
        data: the data spec; ``eval_data``: held-out data scored after every epoch, for data without a test split of
            its own (volume crops).
        out: the run directory.
        labels: ``full`` or ``none`` (train without labels); ``label_fraction``: the labeled share of the train split.
        baseline: also train the student's architecture on the labels alone, with the same budget.
        seed, resume, force, device, progress: the run's settings.
        teacher, student, loss, loop: :class:`TeacherConfig`, :class:`StudentConfig`, :class:`LossConfig`,
            :class:`DistillLoopConfig`.
    """

    data: str = "synthetic"
    out: str = "runs/distill"
    eval_data: str | None = None
    labels: Literal["full", "none"] = "full"
    label_fraction: float = 1.0
    baseline: bool = False
    seed: int = 0
    resume: bool = False
    force: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    progress: bool = True
    version: int = CONFIG_VERSION
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = StudentConfig()
    loss: LossConfig = LossConfig()
    loop: DistillLoopConfig = DistillLoopConfig()

    def __post_init__(self):
        from ..data.spec import parse_data_spec

        parse_data_spec(self.data)  # a malformed spec is reported before anything else
        if self.eval_data is not None:
            parse_data_spec(self.eval_data)
        if self.version != CONFIG_VERSION:
            raise ConfigError(f"distill config version {self.version} is not supported (expected {CONFIG_VERSION})")
        if not 0.0 < self.label_fraction <= 1.0:
            raise ConfigError(f"label-fraction must be in (0, 1], got {self.label_fraction}")
        if self.labels == "none" and self.loss.losses is not None and "ce" in self.loss.losses:
            raise ConfigError("--labels none trains without labels; drop 'ce' from --loss")
        if self.teacher.views is not None and self.loop.augment is False:
            raise ConfigError("--teacher-views counts augmented views; with --no-augment the teacher answers each "
                              "image once: drop one of them")
        if self.teacher.patience is not None and (self.teacher.adapt or self.teacher.weights or not (
                self.teacher.from_scratch or (self.data.startswith("synthetic") and self.teacher.spec is None))):
            raise ConfigError("--teacher-patience stops a teacher trained from scratch; give --teacher-steps or "
                              "--teacher-epochs with it")
        if self.teacher.spec is None and not self.data.startswith("synthetic") and not self.teacher.from_scratch:
            raise ConfigError(
                "no --teacher given for real data: pass --teacher ARCH --teacher-weights FILE (add --teacher-adapt "
                "linear|finetune when it predicts another label set), a run directory's teacher (adapt --out DIR: "
                "--teacher DIR/teacher), or --teacher-steps N (--teacher-epochs N) to train one from scratch on these labels"
            )

    @classmethod
    def from_options(cls, where: str = "distill config", /, **options: Any) -> DistillConfig:
        return super().from_options(where, **options)

    def resolved_losses(self) -> tuple[str, ...]:
        if self.loss.losses is not None:
            return tuple(self.loss.losses)
        return ("feat",) if self.labels == "none" else ("kd", "ce")
