"""Where a distillation run's teacher comes from, as plug-ins: one :class:`TeacherSource` per kind of source.

- ``foundation``: a foundation encoder shipped in a package (``astra-ct``), paid once per crop through the on-disk
  :class:`~medfm_compress.compress.embedding_cache.EmbeddingCache`;
- ``adapted``: a pretrained encoder adapted to the data's labels first (``--teacher-adapt linear|finetune``), cached;
- ``engine``: a teacher held only as an engine (``--teacher model.onnx`` or an OpenVINO ``.xml``), forward only;
- ``run``: a trained model on disk (a run directory's teacher, a card, a ``.safetensors`` file with its card);
- ``weights``: an architecture and a weight file in its own layout (``--teacher-weights``, keys by name or order);
- ``factory``: a ``python:`` factory that loads its own weights;
- ``scratch``: the architecture trained from scratch on the data's full labels, cached by config hash.

:func:`teacher_source` picks the first that matches the config, in that order. Each returns a
:class:`~medfm_compress.compress.tasks.ResolvedTeacher`; the distiller does not ask which source made it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .._cache import cache_dir
from .._io import atomic_write_json, ensure_dir, sha256_file
from .._registry import Registry
from ..errors import ConfigError, ModelError
from ..layout import RunLayout
from .artifacts import write_model
from .budget import BestOnVal, plan_budget
from .taskprep import FrozenTeacher, accepted_keywords, adapt_batch, autocast
from .tasks import DistillRun, ResolvedTeacher, distill_task

__all__ = ["TeacherSource", "FoundationTeacher", "register_teacher_source", "teacher_source", "teacher_sources",
           "teacher_path", "names_architecture", "train_supervised", "TEACHER_EPOCHS", "TEACHER_LR"]

TEACHER_EPOCHS = 4
TEACHER_LR = 2e-3
_TEACHER_KEY_VERSION = 2  # part of a scratch teacher's cache key


class TeacherSource:
    """One kind of teacher source. ``matches`` says whether a config names it; ``check`` refuses a config it cannot
    serve before any data is read; ``resolve`` gives the run's teacher."""

    name: ClassVar[str] = ""
    # Whether the teacher is built here from an architecture, so that its normalisation can be given
    # (--teacher-mean/--teacher-std); a teacher on disk carries its own in its card.
    takes_normalisation: ClassVar[bool] = False
    # Why the teacher is used as it is, where it is: its weights are not given, adapted or trained (those flags are
    # refused with this reason).
    used_as_is: ClassVar[str] = ""

    def matches(self, cfg) -> bool:
        raise NotImplementedError

    def check(self, cfg) -> None:
        """Refuse, in one line, settings this source cannot honour (before the data is read)."""
        if cfg.teacher.mean is not None and not self.takes_normalisation:
            raise ConfigError(f"--teacher-mean/--teacher-std apply to a teacher built from an architecture and weights "
                              f"(--teacher-weights, --teacher-adapt, python:); the {self.name} teacher "
                              f"{cfg.teacher.spec or '(default)'} carries its own normalisation")
        if self.used_as_is:
            for field, flag in (("teacher_weights", "--teacher-weights"), ("teacher_adapt", "--teacher-adapt"),
                                ("teacher_epochs", "--teacher-epochs"), ("teacher_steps", "--teacher-steps")):
                if cfg.get_option(field):
                    raise ConfigError(f"{flag} does not apply to --teacher {cfg.teacher.spec}: {self.used_as_is}")

    def check_data(self, cfg, data) -> None:
        """Refuse, in one line, data this source cannot teach on (once it is read)."""

    def resolve(self, run: DistillRun) -> ResolvedTeacher:
        raise NotImplementedError

    def writes_artifact(self) -> bool:
        """Whether the run directory gets the teacher's card and weights (a packaged encoder does not)."""
        return True

    def __repr__(self) -> str:
        return f"<teacher source {self.name}>"


_SOURCES: Registry[TeacherSource] = Registry("teacher source")


def register_teacher_source(source: TeacherSource) -> TeacherSource:
    """Register a source; the order of registration is the order :func:`teacher_source` tries them in."""
    return _SOURCES.register(source.name, source)


def teacher_sources() -> tuple[str, ...]:
    return _SOURCES.names()


def teacher_source(cfg) -> TeacherSource:
    """The source of ``cfg``'s teacher: the first registered one that matches; a config none serves is a one-line
    error saying what would."""
    for source in _SOURCES:
        if source.matches(cfg):
            return source
    raise ModelError(
        f"teacher {cfg.teacher.spec} has no weights; pass --teacher-weights FILE (.safetensors or .pt), or "
        "--teacher-steps N (or --teacher-epochs N) to train it from scratch on these labels"
    )


# ----- shared by the sources of a torch model ------------------------------------------------------------------


def teacher_path(spec: str | None) -> tuple[Path, Path] | None:
    """``(card, weights)`` when ``--teacher`` names a trained model on disk (a run directory, ``DIR/teacher``, a
    card or a .safetensors file) rather than an architecture; None for an architecture spec."""
    from ..models.card import resolve_model_files
    from ..models.factory import model_kinds
    from ..models.foundation import is_teacher_spec

    if not spec or spec.split(":", 1)[0] in model_kinds() or is_teacher_spec(spec):
        return None
    p = Path(spec)
    if p.is_dir() or p.suffix in (".json", ".safetensors") or (p.parent / f"{p.name}.json").is_file():
        return resolve_model_files(p, "teacher")
    return None


def names_architecture(spec: str) -> bool:
    """Whether a model spec names an architecture (``timm:resnet18``) rather than a model on disk, a foundation
    encoder or an engine file."""
    from ..models.engine_teacher import is_engine_spec
    from ..models.foundation import is_teacher_spec

    return teacher_path(spec) is None and not is_teacher_spec(spec) and not is_engine_spec(spec)


def train_supervised(run: DistillRun, name: str, model, idx: np.ndarray, epochs: int, lr: float, ckpt: Path,
                     best: BestOnVal | None = None):
    """Label-only training on ``idx`` of the training set with the task's loss (a teacher from scratch, the
    baseline); with ``best``, scored on the validation split after every epoch, stopped early and left in its best
    state."""
    import torch

    from .train import LoopConfig, augment_batch, run_loop

    cfg, device, x, y, dtask = run.cfg, run.device, run.x_train, run.y_train, run.dtask
    net = run.wrap(model)

    def step(batch_idx, epoch):
        xb = x[torch.as_tensor(batch_idx, device=x.device)]
        yb = y[torch.as_tensor(batch_idx, device=y.device)]
        if cfg.loop.augment:
            xb = augment_batch(xb.cpu(), batch_idx, cfg.seed, epoch).to(device)
            yb = dtask.augment_targets(yb, batch_idx, cfg.seed, epoch)  # label maps move with their images
        with autocast(device):
            logits = net(xb)
            loss = dtask.hard_loss(logits.float(), yb)
        return loss, {"loss": float(loss.detach())}

    loop = LoopConfig(name, run.steps_per_epoch, epochs, lr, cfg.loop.weight_decay, cfg.loop.batch_size, cfg.seed, cfg.loop.augment)
    result = run_loop(loop, {"model": model}, step, idx, ckpt, cfg.resume, run.log, progress=cfg.progress,
                      epoch_end=best.epoch_end if best else None, stop_after=best.stop_after if best else None)
    if best is not None:
        result["best"] = kept = best.restore()
        if kept:
            run.log(f"[{name}] kept epoch {kept['best_epoch']} of {len(result['history'])} ({best.key} {best.best})")
    return result


def _from_card(run: DistillRun, card_path: Path, arch: str):
    """``(model, card, preprocessing)`` of a teacher described by its card, checked against the data's labels."""
    from ..models.card import ModelCard

    task, dtask = run.task, run.dtask
    tcard = ModelCard.load(card_path)
    if tcard.arch != arch:
        raise ModelError(f"{card_path} describes {tcard.arch}, but --teacher is {arch}")
    dtask.check_teacher_card(tcard, task)
    if tcard.num_classes and tcard.label_names and list(tcard.label_names) != list(task.label_names):
        raise ModelError(
            f"the teacher's classes {tcard.label_names} are not the data's {task.label_names}; adapt it to "
            "these labels (--teacher-adapt linear|finetune, or medfm-compress adapt)"
        )
    return tcard.build(), tcard, tcard.preprocess


def _from_arch(run: DistillRun, arch: str, weights: str | None = None):
    """``(model, card, preprocessing)`` of a teacher built from its architecture for the data's labels; a label-free
    embedding teacher with a weight file keeps the file's own head and input channels."""
    from ..models.card import ModelCard
    from ..models.factory import create_model

    cfg, task, dtask = run.cfg, run.task, run.dtask
    pre = run.teacher_inputs("train")[1]  # the data's own preprocessing, at its own size
    head, in_ch, size = task.num_classes, task.channels, pre.input_size[0]
    if weights and cfg.labels == "none" and dtask.label_free_embeddings:
        # Only its features are distilled, from the data re-expressed in its preprocessing.
        from ..models.weights import first_conv_in_chans
        from .adapt import file_head_classes

        in_ch = first_conv_in_chans(weights) or task.channels
        head = file_head_classes(arch, weights, cfg.teacher.weights_key_map, in_ch, size) or head
    model = create_model(arch, head, in_ch, size)
    if in_ch != task.channels or cfg.teacher.mean is not None:
        from .adapt import teacher_preprocess

        pre = teacher_preprocess(model, task, in_ch, size, run.teacher_inputs("train")[1], pretrained=True,
                                 mean=cfg.teacher.mean,
                                 std=cfg.teacher.std)
    tcard = ModelCard(arch=arch, num_classes=head, in_chans=in_ch,
                      img_size=size if "img_size" in accepted_keywords(model) else None, task=task.task,
                      label_names=task.label_names if head == task.num_classes else [], preprocess=pre,
                      role="teacher")
    return model, tcard, pre


def _checked(run: DistillRun, model, pre, arch: str) -> None:
    """A network whose outputs the task cannot use is refused before it trains or loads (on a training input: a
    volume's test cases are whole scans, windowed later; its patches are what the network takes)."""
    x, src = run.teacher_inputs("train")
    run.dtask.check_network(model.to(run.device), adapt_batch(x[:1], src, pre),
                            run.task.num_classes, f"teacher {arch}")


def _load(model, weights, arch: str, key_map: str, hint: bool) -> None:
    from ..models.weights import load_weights

    try:
        load_weights(model, weights, what=f"teacher {arch}", key_map=key_map)
    except ModelError as e:
        if not hint:
            raise
        raise ModelError(f"{e} (if the file predicts another label set, add --teacher-adapt linear|finetune)") from None


def _resolved(run: DistillRun, model, tcard, pre, arch: str, weights: Path | None, source: str) -> ResolvedTeacher:
    teacher = FrozenTeacher(model.to(run.device), tcard, source)
    metrics, logits = run.dtask.teacher_metrics(run, teacher, pre)
    return ResolvedTeacher(teacher, arch, pre, weights, metrics, logits)


def _barrier(run: DistillRun) -> None:
    if run.distributed:
        import torch.distributed as dist

        dist.barrier()


class _ModelSource(TeacherSource):
    def check(self, cfg) -> None:
        from ..models.factory import check_model_spec

        super().check(cfg)
        if cfg.teacher.spec and names_architecture(cfg.teacher.spec):
            check_model_spec(cfg.teacher.spec)

    def check_data(self, cfg, data) -> None:
        if not distill_task(data).runtime.has_labels:
            raise ConfigError(f"{data.source} has no labels to train or check a --teacher {cfg.teacher.spec or ''} on; "
                              "its teacher is a foundation encoder (astra-ct, astra-ct-tiny)")


# ----- the sources ---------------------------------------------------------------------------------------------


class AdaptedSource(_ModelSource):
    """``--teacher-adapt``: the teacher adapted to this run's labels (see :mod:`.adapt`), cached by the teacher
    weights' hash, the data digest and the adapt config."""

    name: ClassVar[str] = "adapted"
    takes_normalisation: ClassVar[bool] = True

    def matches(self, cfg) -> bool:
        return bool(cfg.teacher.adapt)

    def _adapted(self, run: DistillRun) -> tuple[Path, Path]:
        from ..data.digest import data_digest
        from ..models.weights import weights_file
        from .adapt import AdaptConfig, adapt_teacher

        cfg = run.cfg
        acfg = AdaptConfig(teacher=cfg.teacher.spec, data=cfg.data, out=str(run.out), teacher_weights=cfg.teacher.weights,
                           weights_key_map=cfg.teacher.weights_key_map, method=cfg.teacher.adapt,
                           label_fraction=cfg.label_fraction, seed=cfg.seed, device=cfg.device,
                           teacher_mean=cfg.teacher.mean, teacher_std=cfg.teacher.std, progress=cfg.progress)
        blob = json.dumps({
            "weights": sha256_file(weights_file(cfg.teacher.weights)) if cfg.teacher.weights else None,
            "data": data_digest(run.task, cfg.data, cfg.seed)["sha256"],
            "config": {k: v for k, v in acfg.to_dict().items() if k not in ("out", "progress", "device", "data")},
            "tool": "adapt-1",
        }, sort_keys=True).encode()
        tdir = cache_dir() / "adapted" / hashlib.sha256(blob).hexdigest()[:16]
        card, weights = RunLayout(tdir).card("teacher"), RunLayout(tdir).weights("teacher")
        if card.is_file() and weights.is_file():
            run.log(f"teacher: adapted ({cfg.teacher.adapt}) teacher cached at {tdir}")
            return card, weights
        if run.rank == 0:
            run.log(f"teacher: adapting {cfg.teacher.spec} to {run.task.source} ({cfg.teacher.adapt}, {len(run.labeled)} "
                    f"labelled images), cached by weights hash, data digest and config at {tdir}")
            ensure_dir(tdir)
            adapted = adapt_teacher(acfg, run.task, run.log, run.device, tdir)
            atomic_write_json(RunLayout(tdir).metrics, {k: v for k, v in adapted.metrics.items() if k != "history"})
            write_model(adapted.model, adapted.card, tdir, "teacher")
            m = adapted.metrics.get("val") or adapted.metrics.get("test") or {}
            if m:
                run.log(f"teacher: adapted, {'val' if 'val' in adapted.metrics else 'test'} macro AUC "
                        f"{m['macro_auc']:.4f} [{m['macro_auc_ci'][0]:.4f}, {m['macro_auc_ci'][1]:.4f}]")
        _barrier(run)
        return card, weights

    def resolve(self, run: DistillRun) -> ResolvedTeacher:
        from ..models.card import ModelCard

        card_path, weights = self._adapted(run)
        arch = ModelCard.load(card_path).arch
        model, tcard, pre = _from_card(run, card_path, arch)
        _checked(run, model, pre, arch)
        _load(model, weights, arch, "name", hint=False)
        source = (f"adapted ({run.cfg.teacher.adapt}) from {run.cfg.teacher.weights or run.cfg.teacher.spec}, cached at "
                  f"{Path(weights).parent}")
        return _resolved(run, model, tcard, pre, arch, Path(weights), source)


class EngineSource(_ModelSource):
    """``--teacher model.onnx`` (ONNX Runtime) or ``model.xml`` (OpenVINO IR): a teacher held only as an engine, run
    forward only through :class:`~medfm_compress.models.engine_teacher.EngineModule`, for logit and embedding KD.
    A graph exported by ``medfm-compress`` carries its preprocessing and labels; any other takes the input's fixed
    size and channels and needs ``--teacher-mean/--teacher-std``."""

    name: ClassVar[str] = "engine"
    takes_normalisation: ClassVar[bool] = True

    def matches(self, cfg) -> bool:
        from ..models.engine_teacher import is_engine_spec

        return is_engine_spec(cfg.teacher.spec)

    used_as_is: ClassVar[str] = "a teacher held as an engine runs forward only, as it is (adapt the model before " \
        "exporting it)"

    def check(self, cfg) -> None:
        TeacherSource.check(self, cfg)
        if not Path(cfg.teacher.spec).is_file():
            raise ConfigError(f"--teacher {cfg.teacher.spec} does not exist; give an .onnx file or an OpenVINO .xml")

    def check_data(self, cfg, data) -> None:
        if not distill_task(data).per_image_images:
            raise ConfigError(f"--teacher {cfg.teacher.spec}: a teacher held as an engine teaches per-image tasks "
                              f"(logit and embedding KD); {data.source} is a {data.task} task")

    def writes_artifact(self) -> bool:
        return False  # the run records the engine's path and hash; it is not copied into every run

    def resolve(self, run: DistillRun) -> ResolvedTeacher:
        from ..models.card import ModelCard
        from ..models.engine_teacher import EngineModule
        from ..runtime.metadata import decode_metadata
        from .adapt import teacher_preprocess

        cfg, task, spec = run.cfg, run.task, run.cfg.teacher.spec
        run.log(f"teacher: loading the engine {spec}")
        model = EngineModule(spec, embedding=cfg.teacher.embedding, logits=cfg.teacher.logits)
        channels, height, width = model.input_shape
        labels: list[str] = []
        if model.ours and cfg.teacher.mean is None:
            meta = decode_metadata(model.graph.props, spec)
            pre, labels = meta.preprocess, list(meta.label_names or [])
            if model.num_classes and labels and labels != list(task.label_names):
                raise ModelError(f"the teacher's classes {labels} are not the data's {task.label_names}; distil its "
                                 "embedding instead (--teacher-embedding NAME --loss feat,ce)")
        elif cfg.teacher.mean is None:
            raise ConfigError(f"{spec} carries no preprocessing; give the normalisation it was trained with: "
                              "--teacher-mean and --teacher-std (ImageNet's: 0.485,0.456,0.406 and 0.229,0.224,0.225)")
        else:
            if height != width:
                raise ConfigError(f"{spec} takes {height}x{width} inputs; teachers take square inputs")
            pre = teacher_preprocess(model, task, channels, height, run.teacher_inputs("train")[1], pretrained=False,
                                     mean=cfg.teacher.mean, std=cfg.teacher.std)
        if model.num_classes and not labels:
            run.log(f"teacher: its logits ({model.num_classes}) are taken in the data's class order "
                    f"({', '.join(task.label_names)})")
        what = model.describe()
        tcard = ModelCard(arch=f"engine:{Path(spec).name}", num_classes=model.num_classes, in_chans=channels,
                          task=task.task, label_names=labels or (task.label_names if model.num_classes else []),
                          preprocess=pre, role="teacher", num_params=model.num_params,
                          embedding_dim=model.embedding_dim, provenance={"engine": what})
        run.log(f"teacher: {what['engine']} engine, {model.num_params / 1e6:.1f} M weights, embedding "
                f"{what['embedding']} ({model.embedding_dim})" + (f", logits {what['logits']}" if what["logits"] else ""))
        return _resolved(run, model, tcard, pre, tcard.arch, Path(spec), f"engine {spec} ({what['engine']})")


class RunDirSource(_ModelSource):
    """A trained model on disk: a run directory's teacher (``adapt --out DIR`` writes ``DIR/teacher``), a card, or a
    ``.safetensors`` file with its card."""

    name: ClassVar[str] = "run"

    def matches(self, cfg) -> bool:
        return teacher_path(cfg.teacher.spec) is not None

    def resolve(self, run: DistillRun) -> ResolvedTeacher:
        from ..models.card import ModelCard

        card_path, weights = teacher_path(run.cfg.teacher.spec)
        arch = ModelCard.load(card_path).arch
        model, tcard, pre = _from_card(run, card_path, arch)
        _checked(run, model, pre, arch)
        _load(model, weights, arch, "name", hint=False)
        return _resolved(run, model, tcard, pre, arch, Path(weights), f"weights {weights}")


class WeightsSource(_ModelSource):
    """``--teacher ARCH --teacher-weights FILE``: the file's tensors by name, or in order (``--weights-key-map
    order``) for another implementation's names; a card beside the file describes its labels and preprocessing."""

    name: ClassVar[str] = "weights"
    takes_normalisation: ClassVar[bool] = True

    def matches(self, cfg) -> bool:
        return bool(cfg.teacher.weights)

    def resolve(self, run: DistillRun) -> ResolvedTeacher:
        cfg = run.cfg
        arch = cfg.teacher.spec or run.dtask.default_teacher(run.task.volumes)
        card_path = Path(cfg.teacher.weights).with_suffix(".json")
        if card_path.is_file():
            model, tcard, pre = _from_card(run, card_path, arch)
        else:
            card_path = None
            model, tcard, pre = _from_arch(run, arch, cfg.teacher.weights)
        _checked(run, model, pre, arch)
        _load(model, cfg.teacher.weights, arch, cfg.teacher.weights_key_map, hint=card_path is None)
        return _resolved(run, model, tcard, pre, arch, Path(cfg.teacher.weights), f"weights {cfg.teacher.weights}")


class FactorySource(_ModelSource):
    """``--teacher python:pkg.module:factory``: the factory builds the model with its weights."""

    name: ClassVar[str] = "factory"
    takes_normalisation: ClassVar[bool] = True

    def matches(self, cfg) -> bool:
        return bool(cfg.teacher.spec) and cfg.teacher.spec.startswith("python:")

    def resolve(self, run: DistillRun) -> ResolvedTeacher:
        arch = run.cfg.teacher.spec
        model, tcard, pre = _from_arch(run, arch)
        _checked(run, model, pre, arch)
        return _resolved(run, model, tcard, pre, arch, None, f"factory {arch} (loads its own weights)")


class ScratchSource(_ModelSource):
    """The architecture (default: the task's) trained on the data's full labels, cached by a hash of the data, the
    architecture and the training settings: the embedded synthetic default's teacher, or ``--teacher-steps N`` /
    ``--teacher-epochs N`` (a ceiling: with a validation split it stops early and keeps its best state)."""

    name: ClassVar[str] = "scratch"

    def matches(self, cfg) -> bool:
        return cfg.data.startswith("synthetic") or cfg.teacher.from_scratch

    @staticmethod
    def cache_key(cfg, task, arch: str, budget, patience: int | None, data_digest: str) -> str:
        blob = json.dumps({
            "data": data_digest, "arch": arch, "epochs": budget.epochs, "steps": budget.steps, "patience": patience,
            "seed": cfg.seed, "batch_size": cfg.loop.batch_size,
            "augment": cfg.loop.augment, "labels": task.label_names, "v": _TEACHER_KEY_VERSION,
            # How the task trains a teacher from scratch (its loss): a change there is a new teacher.
            "tool": distill_task(task).teacher_tool,
        }, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @staticmethod
    def data_digest(cfg, task) -> str:
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

    def resolve(self, run: DistillRun) -> ResolvedTeacher:
        from ..models.factory import count_params
        from ..models.weights import load_weights

        cfg, task, log = run.cfg, run.task, run.log
        if run.native_x is not None:
            raise ConfigError("--student-input-size distils a teacher that sees the data at its own size; a teacher "
                              "trained from scratch here would learn at the student's: give a trained teacher "
                              "(--teacher DIR/teacher, --teacher-weights, FILE.onnx)")
        arch = cfg.teacher.spec or run.dtask.default_teacher(task.volumes)
        model, tcard, pre = _from_arch(run, arch)
        _checked(run, model, pre, arch)
        budget = plan_budget(run.steps_per_epoch, epochs=cfg.teacher.epochs, steps=cfg.teacher.steps,
                             default_epochs=TEACHER_EPOCHS,
                             default_steps=run.dtask.default_steps(TEACHER_EPOCHS, task.volumes),
                             flags=("--teacher-epochs", "--teacher-steps"))
        patience = cfg.teacher.patience or max(1, budget.steps // 3)
        early = run.x_val is not None and bool(run.dtask.val_key)
        run.budgets["teacher"] = budget
        epochs = budget.epochs
        key = self.cache_key(cfg, task, arch, budget, patience if early else None, self.data_digest(cfg, task))
        tdir = cache_dir() / "teachers" / key
        tw = RunLayout(tdir).weights("teacher")
        if tw.exists():
            load_weights(model, tw, what=f"cached teacher {arch}")
            card = RunLayout(tdir).card("teacher")
            kept = (json.loads(card.read_text()).get("provenance") or {}) if card.is_file() else {}
            run.teacher_val = {k: v for k, v in kept.items() if k == "best_epoch" or k.startswith("val_")} or None
            log(f"teacher: no --teacher-weights; using the default teacher {arch} trained on the full labels, "
                f"cached at {tdir}")
        else:
            if run.rank == 0:
                log(f"teacher: no --teacher-weights; training {arch} on the full labels of {task.source}, cached by "
                    f"config hash at {tdir}")
                items = "training patches" if task.whole_cases else "training images"
                log(f"teacher budget: at most {budget.plan(len(run.train), cfg.loop.batch_size * run.world, items)}"
                    + (f"; stops after {patience} steps without a better {run.dtask.val_key} and keeps its best state"
                       if early else "; no validation split: no early stop"))
            ensure_dir(tdir)
            # Each rank keeps its own copy of the best state (the ranks' models are the same under DDP).
            best = (BestOnVal(model, lambda m: run.dtask.val_scores(run, m), run.dtask.val_key,
                              run.dtask.val_higher_is_better, patience, run.steps_per_epoch,
                              tdir / f"teacher-best.rank{run.rank}.pt", resume=cfg.resume)
                    if early else None)
            trained = train_supervised(run, "teacher", model, np.arange(len(run.train)), epochs, TEACHER_LR,
                                       tdir / "teacher-checkpoint.pt", best=best)
            run.teacher_val = trained.get("best") or None
            run.dtask.finish_model(model, run)
            model = model.to(run.device)
            if run.rank == 0:
                tcard.num_params = count_params(model)
                tcard.provenance = {"trained_on": task.source, "budget": budget.to_dict(), "cache_key": key,
                                    "epochs_run": len(trained["history"]), **trained.get("best", {})}
                write_model(model, tcard, tdir, "teacher")
                (tdir / "teacher-checkpoint.pt").unlink(missing_ok=True)
            _barrier(run)
        return _resolved(run, model, tcard, pre, arch, tw, f"default teacher trained on full labels, cached at {tdir}")


class FoundationTeacher:
    """A frozen foundation encoder from a package (:func:`medfm_compress.models.foundation.load_teacher`) whose
    embeddings of a data set's crops come through the on-disk cache: the teacher runs once per crop, ever."""

    card = None  # nothing of it is written into the run directory: the package is the artifact

    def __init__(self, spec: str, seed: int, cache: str | None, batch_size: int | None, progress: bool):
        from ..models.foundation import load_teacher
        from .embedding_cache import EmbeddingCache

        self.encoder = load_teacher(spec, seed=seed)
        self.model = self.encoder.model
        self.cache = EmbeddingCache(cache or cache_dir() / "embeddings")
        self.batch_size = batch_size or 1
        self.progress = progress
        self.source = f"foundation encoder {spec} (id {self.encoder.teacher_id})"

    @property
    def params(self) -> int:
        return self.encoder.params

    def embeddings(self, data) -> np.ndarray:
        """``(N, D)`` float32 embeddings of the crops of ``data`` (a volume crop data set)."""
        from .embedding_cache import crop_embeddings

        return crop_embeddings(data, self.encoder, self.cache, self.batch_size, self.progress)

    def describe(self) -> dict[str, Any]:
        return {"spec": self.encoder.spec, "id": self.encoder.teacher_id, "params": self.encoder.params,
                **self.encoder.info}


class FoundationSource(TeacherSource):
    """A foundation encoder named by its spec (``astra-ct``: the Astra/Merlin I3ResNet-152 CT encoder; ``astra-ct-tiny``
    a random-weight stand-in of its interface for tests), taught label-free on volume crops."""

    name: ClassVar[str] = "foundation"

    def matches(self, cfg) -> bool:
        from ..models.foundation import is_teacher_spec

        return is_teacher_spec(cfg.teacher.spec or "")

    used_as_is: ClassVar[str] = "a foundation encoder loads its own weights from its package and is used as it is"

    def check(self, cfg) -> None:
        super().check(cfg)
        if cfg.teacher.views is not None:
            raise ConfigError(f"--teacher-views does not apply to --teacher {cfg.teacher.spec}: its crops are embedded "
                              "as they are, once, in its embedding cache")

    def check_data(self, cfg, data) -> None:
        if data.crops is None:
            raise ConfigError(f"--teacher {cfg.teacher.spec} is a CT volume encoder; give --data volume crops "
                              "(inv3:FILE, nifti:FILE or dicom-series:DIR with ?crop=X,Y,Z&n=N)")

    def writes_artifact(self) -> bool:
        return False

    def resolve(self, run: DistillRun) -> ResolvedTeacher:
        cfg = run.cfg
        teacher = FoundationTeacher(cfg.teacher.spec, cfg.seed, cfg.teacher.cache, cfg.teacher.batch_size, cfg.progress)
        run.log(f"teacher {cfg.teacher.spec} ({teacher.params / 1e6:.1f} M params, id {teacher.encoder.teacher_id}); "
                f"embeddings cached per crop in {teacher.cache.directory}")
        return ResolvedTeacher(teacher, cfg.teacher.spec, run.student_pre, None, {}, None)


for _source in (FoundationSource(), EngineSource(), AdaptedSource(), RunDirSource(), WeightsSource(), FactorySource(),
                ScratchSource()):
    register_teacher_source(_source)
del _source
