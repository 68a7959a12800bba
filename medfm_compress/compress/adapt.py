"""Adapting a pretrained foundation model to the user's task: a linear probe or fine-tuning on the labels.

A foundation model pretrained elsewhere (ImageNet, a radiology corpus) predicts its own label set, or none.
Before it can teach a task-specific student it must speak the task's labels: :func:`adapt` fits a new task
head on the frozen encoder (``linear``: the encoder's features are computed once and cached) or fine-tunes the
encoder with a lower learning rate than the new head (``finetune``: all layers, or the last N blocks), on the
labelled subset of any data spec, with early stopping on the validation split.

``adapt(AdaptConfig(...))`` writes into ``config.out``: ``teacher.safetensors`` + ``teacher.json`` (a model
card that ``distill --teacher OUT/teacher`` takes), ``metrics.json`` (val/test accuracy and macro AUC with
bootstrap 95% CIs), ``manifest.json`` and ``train.log``. A run that fails leaves nothing it created except
``train.error.log``. ``distill --teacher-adapt`` calls :func:`adapt_teacher` and caches its result.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .. import __version__
from .._cache import cache_dir
from .._io import atomic_path, ensure_dir, no_partial_output, sha256_file
from ..config import DictConfig
from ..errors import ConfigError, ModelError
from ..layout import RunLayout
from ..manifest import Manifest, check_inputs
from ..runtime.tasks import get_task
from .artifacts import RunResult, TrainLog, record_run, write_model
from .budget import plan_budget
from .probe import BestState, fit_linear_head
from .tasks import adaptable_task_names
from .tasks.classification import summary_warnings

__all__ = ["AdaptConfig", "AdaptResult", "AdaptedTeacher", "adapt", "adapt_teacher", "METHODS", "summary_warnings",
           "file_head_classes", "fit_linear_head"]

METHODS = ("linear", "finetune")
CONFIG_VERSION = 1
# Defaults per method: the linear probe is cheap (a head on cached features), fine-tuning is not.
DEFAULT_EPOCHS = {"linear": 100, "finetune": 10}
DEFAULT_LR = {"linear": 1e-2, "finetune": 1e-3}
DEFAULT_PATIENCE = {"linear": 10, "finetune": 3}


@dataclass(frozen=True)
class AdaptConfig(DictConfig):
    """Everything that defines an adaptation run. ``None`` means "use the method's default"."""

    teacher: str
    data: str = "synthetic"
    out: str = "runs/adapt"
    teacher_weights: str | None = None
    weights_key_map: Literal["name", "order"] = "name"
    method: Literal["linear", "finetune"] = "linear"
    label_fraction: float = 1.0
    input_size: int | None = None
    # The teacher's own normalisation (its pretraining's), one value or one per input channel; default: timm's
    # pretrained_cfg for the architecture when weights are given, else the data's statistics.
    teacher_mean: tuple[float, ...] | None = None
    teacher_std: tuple[float, ...] | None = None
    finetune_blocks: int | None = None
    epochs: int | None = None
    # --method finetune: the budget in optimizer steps instead of epochs (rounded up to whole epochs).
    steps: int | None = None
    lr: float | None = None
    encoder_lr_scale: float = 0.1
    patience: int | None = None
    batch_size: int = 64
    augment: bool = True
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    progress: bool = True
    version: int = CONFIG_VERSION

    def __post_init__(self):
        from ..data.spec import parse_data_spec
        from ..models.factory import check_model_spec
        from ..models.weights import KEY_MAPS

        parse_data_spec(self.data)
        check_model_spec(self.teacher)
        if self.version != CONFIG_VERSION:
            raise ConfigError(f"adapt config version {self.version} is not supported (expected {CONFIG_VERSION})")
        if self.method not in METHODS:
            raise ConfigError(f"unknown adapt method {self.method!r}; choose from {', '.join(METHODS)}")
        if self.weights_key_map not in KEY_MAPS:
            raise ConfigError(f"unknown --weights-key-map {self.weights_key_map!r}; choose from {', '.join(KEY_MAPS)}")
        if not 0.0 < self.label_fraction <= 1.0:
            raise ConfigError(f"label-fraction must be in (0, 1], got {self.label_fraction}")
        if self.steps is not None and self.method != "finetune":
            raise ConfigError("--steps sets a fine-tune's budget (--method finetune); a linear probe runs --epochs "
                              "over cached features")
        if self.steps is not None and self.epochs is not None:
            raise ConfigError("--epochs and --steps both set the budget; give one")
        for name in ("epochs", "steps", "patience", "finetune_blocks", "input_size"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be >= 1, got {v}")
        if self.batch_size < 1:
            raise ConfigError(f"batch-size must be >= 1, got {self.batch_size}")
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not 0.0 < self.encoder_lr_scale <= 1.0:
            raise ConfigError(f"encoder-lr-scale must be in (0, 1], got {self.encoder_lr_scale}")
        if self.finetune_blocks is not None and self.method != "finetune":
            raise ConfigError("--finetune-blocks applies to --method finetune only")
        if self.weights_key_map != "name" and not self.teacher_weights:
            raise ConfigError("--weights-key-map needs --teacher-weights")
        check_normalisation(self.teacher_mean, self.teacher_std)

    @property
    def resolved_epochs(self) -> int:
        return self.epochs or DEFAULT_EPOCHS[self.method]

    @property
    def resolved_lr(self) -> float:
        return self.lr or DEFAULT_LR[self.method]

    @property
    def resolved_patience(self) -> int:
        return self.patience or DEFAULT_PATIENCE[self.method]


@dataclass
class AdaptedTeacher:
    """The adapted model (eval mode, on the run's device), its card and its metrics."""

    model: Any
    card: Any
    metrics: dict[str, Any]


AdaptResult = RunResult


def _classifier_name(model) -> str:
    from ..models.features import classifier_of

    head = classifier_of(model)
    if head is None:
        raise ModelError(f"{type(model).__name__} has no classifier head to adapt; use a classification architecture")
    for name, mod in model.named_modules():
        if mod is head:
            return name
    raise ModelError("the classifier head is not a submodule of the model")


def file_head_classes(arch: str, weights: str, key_map: str, in_chans: int, img_size: int | None) -> int | None:
    """Classes the weight file's head predicts (None when the file holds no head, e.g. an encoder only)."""
    from ..models.factory import create_model
    from ..models.weights import read_state_dict, timm_layout

    probe = create_model(arch, 7, in_chans, img_size)
    head_w = f"{_classifier_name(probe)}.weight"
    sd = read_state_dict(weights)
    if key_map == "name":
        sd = timm_layout(sd, probe)
        own_names = probe.state_dict()
        if not set(sd) & set(own_names):
            raise ModelError(
                f"{weights}: none of its {len(sd)} tensor names match {arch} (e.g. file {next(iter(sd))!r} vs model "
                f"{next(iter(own_names))!r}); if it is this architecture written by another implementation, try "
                "--weights-key-map order"
            )
        return int(sd[head_w].shape[0]) if head_w in sd else None
    own = [k for k in probe.state_dict() if not (k.endswith("num_batches_tracked") and len(sd) < len(probe.state_dict()))]
    pos = own.index(head_w)
    items = list(sd.values())
    if len(items) == len(own) - 2:  # the file stops before the head
        return None
    return int(items[pos].shape[0]) if pos < len(items) and items[pos].ndim == 2 else None


def _load_encoder_weights(model, arch: str, weights: str, key_map: str, log) -> None:
    """Load a file without a head: everything except the (new) classifier must match."""
    from ..models.weights import load_weights

    head = _classifier_name(model)

    class _Headless:  # state_dict view without the classifier, for the strict loader
        def __init__(self, m):
            self.m = m

        def state_dict(self):
            return {k: v for k, v in self.m.state_dict().items() if not k.startswith(head + ".")}

        def load_state_dict(self, sd, strict=True):
            missing, unexpected = self.m.load_state_dict(sd, strict=False)
            bad = [k for k in missing if not k.startswith(head + ".")] + list(unexpected)
            if bad:
                raise ModelError(f"{weights}: keys do not fit {arch}: {bad[:4]}")

    load_weights(_Headless(model), weights, what=f"teacher {arch} (without its head)", key_map=key_map)
    log(f"teacher: {weights} holds the encoder only; the {head} head starts from random weights")


def build_pretrained(cfg: AdaptConfig, task, log):
    """The teacher architecture with the file's weights and a new head for the task's classes."""
    import torch

    from ..models.factory import create_model
    from ..models.weights import first_conv_in_chans, load_weights

    in_chans = task.channels
    img = cfg.input_size or task.image_size[0]
    if cfg.teacher_weights:
        in_chans = first_conv_in_chans(cfg.teacher_weights) or task.channels
        if in_chans not in (1, 3):
            raise ModelError(f"{cfg.teacher_weights}: the first convolution takes {in_chans} channels; only 1 or 3 "
                             "are supported")
        file_classes = file_head_classes(cfg.teacher, cfg.teacher_weights, cfg.weights_key_map, in_chans, img)
        torch.manual_seed(cfg.seed)
        if file_classes is None:
            model = create_model(cfg.teacher, task.num_classes, in_chans, img)
            _load_encoder_weights(model, cfg.teacher, cfg.teacher_weights, cfg.weights_key_map, log)
        else:
            model = create_model(cfg.teacher, file_classes, in_chans, img)
            load_weights(model, cfg.teacher_weights, what=f"teacher {cfg.teacher}", key_map=cfg.weights_key_map)
            _new_head(model, task.num_classes, cfg)  # a new head even at the same size: other labels
            log(f"teacher: {cfg.teacher_weights} loaded ({cfg.weights_key_map} key map); its {file_classes}-class "
                f"head replaced by a new {task.num_classes}-class head")
    else:
        torch.manual_seed(cfg.seed)
        model = create_model(cfg.teacher, task.num_classes, in_chans, img)
        if not cfg.teacher.startswith("python:"):
            log(f"teacher: {cfg.teacher} has no --teacher-weights: adapting a randomly initialised network "
                "(pass the pretrained weights for a foundation model)")
    return model, in_chans, img


def _new_head(model, num_classes: int, cfg: AdaptConfig) -> None:
    import torch

    if not hasattr(model, "reset_classifier"):
        raise ModelError(f"{cfg.teacher} cannot replace its classifier (no reset_classifier); give a factory that "
                         "builds the task's head")
    torch.manual_seed(cfg.seed + 1)
    model.reset_classifier(num_classes)


def check_normalisation(mean, std) -> None:
    """One-line errors for a teacher mean/std given alone, empty, or with a std that is not positive."""
    if (mean is None) != (std is None):
        raise ConfigError("--teacher-mean and --teacher-std go together: give both (one value, or one per channel)")
    if mean is not None:
        if not mean or len(mean) != len(std):
            raise ConfigError(f"--teacher-mean {list(mean)} and --teacher-std {list(std)} need the same number of "
                              "values (one, or one per channel)")
        if min(std) <= 0:
            raise ConfigError(f"--teacher-std must be > 0, got {list(std)}")


def teacher_preprocess(model, task, in_chans: int, img: int, data_pre, pretrained: bool,
                       mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None):
    """The teacher's input spec: ``mean``/``std`` when given (one value, or one per channel), else the
    pretraining's (timm's pretrained_cfg) when weights were given and their channels match, else the data's own
    statistics."""
    from ..runtime.preprocess import PreprocessSpec

    if mean is not None and std is not None:
        if len(mean) not in (1, in_chans):
            raise ConfigError(f"--teacher-mean/--teacher-std give {len(mean)} values; the teacher takes {in_chans} "
                              "channel(s): give one value or one per channel")
        mean, std = (tuple(mean) * in_chans, tuple(std) * in_chans) if len(mean) == 1 else (mean, std)
        return PreprocessSpec(input_size=(img, img), channels=in_chans, mean=tuple(float(v) for v in mean),
                              std=tuple(float(v) for v in std), window=task.window)
    pcfg = getattr(model, "pretrained_cfg", None) or {}
    mean, std = pcfg.get("mean"), pcfg.get("std")
    if not (pretrained and mean and std and len(mean) == in_chans and len(std) == in_chans):
        m, s = data_pre.mean[0], data_pre.std[0]
        mean, std = (m,) * in_chans, (s,) * in_chans
    return PreprocessSpec(input_size=(img, img), channels=in_chans, mean=tuple(float(v) for v in mean),
                          std=tuple(float(v) for v in std), window=task.window)


def _preprocessed(pre, images, batch: int = 256):
    """``pre`` applied batch by batch (lazy splits decode only the batch in use), as one torch tensor."""
    import torch

    from ..data.lazy import iter_batches

    return torch.from_numpy(np.concatenate([pre(b) for b in iter_batches(images, batch)]))


def _feature_key(cfg: AdaptConfig, weights_sha: str | None, pre, data_digest: str) -> str:
    blob = json.dumps({"arch": cfg.teacher, "weights": weights_sha, "key_map": cfg.weights_key_map,
                       "pre": pre.to_dict(), "data": data_digest, "seed": cfg.seed, "v": CONFIG_VERSION,
                       "tool": "features-1"}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _features(model, x_by_split: dict[str, Any], key: str, log, device) -> dict[str, np.ndarray]:
    """Frozen-encoder features of every split, computed once and cached by key."""
    from .train import predict

    path = cache_dir() / "features" / f"{key}.npz"
    if path.is_file():
        with np.load(path) as z:
            if set(z.files) == set(x_by_split):
                log(f"features: cached at {path}")
                return {k: z[k] for k in z.files}
    t0 = time.time()
    feats = {}
    model = model.to(device)
    for name, x in x_by_split.items():
        _, emb = predict(model, x.to(device), batch_size=64, embeddings=True)
        feats[name] = emb.astype(np.float32)
    ensure_dir(path.parent)
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **feats)
    log(f"features: {sum(len(v) for v in feats.values())} images through the frozen encoder in "
        f"{time.time() - t0:.1f} s, cached at {path}")
    return feats


def _scored(logits: np.ndarray, labels: np.ndarray, task: str, seed: int) -> dict[str, Any]:
    """Accuracy and macro AUC with their bootstrap 95% CIs over cases."""
    from .taskprep import bootstrap_vs

    b = bootstrap_vs(logits, logits, labels, task, seed=seed)
    out: dict[str, Any] = {"n": int(len(labels))}
    for m in ("accuracy", "macro_auc"):
        out[m] = b[m]["test"]
        out[f"{m}_ci"] = [b[m]["test_ci_low"], b[m]["test_ci_high"]]
    return out


def _finetune_params(model, blocks: int | None, head_name: str):
    """Encoder parameters to train: all, or from the first parameter of the N-th last block on."""
    names = [n for n, _ in model.named_parameters() if not n.startswith(head_name + ".")]
    if blocks is None:
        return names
    seq = None
    for attr in ("blocks", "stages", "layers"):
        if isinstance(getattr(model, attr, None), (list, tuple)) or hasattr(getattr(model, attr, None), "__len__"):
            seq = [(f"{attr}.{i}", m) for i, m in enumerate(getattr(model, attr))]
            break
    if seq is None and hasattr(model, "layer4"):
        seq = [(f"layer{i}", getattr(model, f"layer{i}")) for i in range(1, 5) if hasattr(model, f"layer{i}")]
    if not seq:
        raise ConfigError(f"{type(model).__name__} has no blocks/stages/layers to count for --finetune-blocks; "
                          "fine-tune all layers (leave it unset)")
    if blocks > len(seq):
        raise ConfigError(f"--finetune-blocks {blocks} exceeds the {len(seq)} blocks of the teacher")
    first = seq[-blocks][0] + "."
    start = next(i for i, n in enumerate(names) if n.startswith(first))
    return names[start:]


def adapt_teacher(cfg: AdaptConfig, task, log, device, work_dir: str | Path) -> AdaptedTeacher:
    """Fit the task head (linear) or fine-tune (finetune) the teacher on the labelled subset of ``task``'s train
    split; early stopping on val; scored on val and test. Returns the model in eval mode on ``device``.
    ``work_dir/checkpoints`` holds the training checkpoint while it runs."""
    import torch

    from ..models.card import ModelCard
    from ..models.factory import count_params
    from ..models.features import classifier_of
    from .taskprep import data_preprocess, labeled_subset
    from .tasks import distill_task
    from .train import LoopConfig, augment_batch, predict, run_loop

    if task.task not in adaptable_task_names():
        raise ConfigError(f"adapt fits a classifier; the data's task is {task.task!r} (use distill --labels none)")
    dtask = distill_task(task)
    hard_loss = dtask.hard_loss
    train = task.split("train")
    test = task.split("test")
    val = task.splits.get("val")
    val = val if val is not None and len(val) else None
    labeled = labeled_subset(np.asarray(train.labels), task.task, cfg.label_fraction, cfg.seed)
    log(f"adapt {cfg.method}: {cfg.teacher} on {task.source}, {len(labeled)}/{len(train)} labelled training images"
        f" (fraction {cfg.label_fraction}); val {len(val) if val is not None else 0}, test {len(test)}")
    model, in_chans, img = build_pretrained(cfg, task, log)
    data_pre = data_preprocess(task, train.images)
    pre = teacher_preprocess(model, task, in_chans, img, data_pre, pretrained=bool(cfg.teacher_weights),
                             mean=cfg.teacher_mean, std=cfg.teacher_std)
    head_name = _classifier_name(model)
    head = classifier_of(model)
    from ..models.weights import weights_file

    weights_sha = sha256_file(weights_file(cfg.teacher_weights)) if cfg.teacher_weights else None
    xs = {"train": _preprocessed(pre, train.subset(labeled).images), "test": _preprocessed(pre, test.images)}
    if val is not None:
        xs["val"] = _preprocessed(pre, val.images)
    y_lab = np.asarray(train.labels)[labeled]
    label_dtype = getattr(torch, dtask.label_dtype)
    y_t = torch.from_numpy(y_lab).to(device=device, dtype=label_dtype)
    y_val = (torch.from_numpy(np.asarray(val.labels)).to(device=device, dtype=label_dtype) if val is not None
             else None)
    epochs, lr, patience = cfg.resolved_epochs, cfg.resolved_lr, cfg.resolved_patience
    model = model.to(device)
    ckpt_dir = ensure_dir(RunLayout(work_dir).checkpoints)
    bs = min(cfg.batch_size, len(labeled))
    spe = max(1, len(labeled) // bs)

    if cfg.method == "linear":
        for p in model.parameters():
            p.requires_grad_(False)
        key = _feature_key(cfg, weights_sha, pre, _labeled_digest(task, labeled))
        feats = _features(model, xs, key, log, device)
        result = fit_linear_head(head, feats["train"], y_lab, feats.get("val"),
                                 np.asarray(val.labels) if val is not None else None, dtask, task.task, device,
                                 ckpt_dir / "adapt-head.pt", log, cfg.progress, epochs=epochs, lr=lr,
                                 patience=patience, batch_size=cfg.batch_size, seed=cfg.seed)
    else:
        trainable = set(_finetune_params(model, cfg.finetune_blocks, head_name))
        for n, p in model.named_parameters():
            p.requires_grad_(n in trainable or n.startswith(head_name + "."))
        x_train = xs["train"].to(device)
        best = BestState(model, patience)

        class _Encoder(torch.nn.Module):  # the encoder's parameters as one group (lower learning rate)
            def __init__(self, m):
                super().__init__()
                self.params = torch.nn.ParameterList([p for n, p in m.named_parameters()
                                                      if not n.startswith(head_name + ".") and p.requires_grad])

        encoder = _Encoder(model)

        def step(batch_idx, epoch):
            bi = torch.as_tensor(batch_idx, device=device)
            xb = x_train[bi]
            if cfg.augment:
                xb = augment_batch(xb.cpu(), labeled[batch_idx], cfg.seed, epoch).to(device)
            loss = hard_loss(model(xb).float(), y_t[bi])
            return loss, {"ce": float(loss.detach())}

        def epoch_end(epoch):
            if "val" not in xs:
                return {}
            logits, _ = predict(model, xs["val"].to(device), batch_size=64)
            auc = get_task(task.task).macro_auc(logits, val.labels)
            loss = float(hard_loss(torch.from_numpy(logits).to(device), y_val))
            best.update(epoch, auc, loss)
            return {"val_auc": round(float(auc), 4), "val_loss": round(loss, 4)}

        n_enc = sum(p.numel() for p in encoder.parameters())
        log(f"fine-tune: {n_enc / 1e6:.2f}M encoder parameters at {cfg.encoder_lr_scale} x lr"
            f"{'' if cfg.finetune_blocks is None else f' (last {cfg.finetune_blocks} blocks)'}, new head at lr {lr}")
        budget = plan_budget(spe, epochs=cfg.epochs, steps=cfg.steps, default_epochs=epochs, default_steps=None)
        log(f"fine-tune budget: at most {budget.plan(len(labeled), bs)}")
        loop = LoopConfig("finetune", spe, budget.epochs, lr, 0.02, bs, cfg.seed, cfg.augment)
        result = run_loop(loop, {"head": head, "encoder": encoder}, step, np.arange(len(labeled)),
                          ckpt_dir / "adapt-finetune.pt", False, log, epoch_end, cfg.progress,
                          lr_scales={"encoder": cfg.encoder_lr_scale},
                          stop_after=best.stop if "val" in xs else None)
        best.restore()
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    metrics: dict[str, Any] = {
        "method": cfg.method,
        "teacher": cfg.teacher,
        "teacher_weights": cfg.teacher_weights,
        "teacher_weights_sha256": weights_sha,
        "labeled_images": int(len(labeled)),
        "label_fraction": cfg.label_fraction,
        "params": count_params(model),
        "best_epoch": result["best_epoch"] if cfg.method == "linear" else (
            int(best.best_epoch + 1) if best.state is not None else None),
        "history": result["history"],
    }
    for name, split in (("val", val), ("test", test)):
        if split is None:
            continue
        logits, _ = predict(model, xs[name].to(device), batch_size=64)
        metrics[name] = _scored(logits, np.asarray(split.labels), task.task, cfg.seed)
    card = ModelCard(
        arch=cfg.teacher, num_classes=task.num_classes, in_chans=in_chans,
        img_size=img if "img_size" in _accepted(model) else None, task=task.task, label_names=task.label_names,
        preprocess=pre, num_params=count_params(model), role="teacher",
        provenance={"tool": f"medfm-compress {__version__}", "adapted": cfg.method, "data": cfg.data,
                    "pretrained_weights": cfg.teacher_weights, "pretrained_weights_sha256": weights_sha,
                    "weights_key_map": cfg.weights_key_map, "labeled_images": int(len(labeled))},
    )
    return AdaptedTeacher(model, card, metrics)


def _accepted(model) -> set[str]:
    from .taskprep import accepted_keywords

    return accepted_keywords(model)


def _labeled_digest(task, labeled: np.ndarray) -> str:
    """What the cached features depend on: the data read (all splits) and which training images are labelled."""
    from ..data.digest import data_digest

    h = hashlib.sha256(data_digest(task)["sha256"].encode())
    h.update(np.asarray(labeled, dtype=np.int64).tobytes())
    return h.hexdigest()


def adapt(cfg: AdaptConfig) -> AdaptResult:
    """Run the adaptation as configured; see the module docstring for what is written."""
    from ..data import load_data
    from ..data.dataset import require_task
    from ..data.digest import split_summary
    from .taskprep import select_device

    t0 = time.time()
    out = Path(cfg.out)
    layout = RunLayout(out)
    with no_partial_output(out, keep_log=layout.train_log.name):
        ensure_dir(out)
        layout.train_log.unlink(missing_ok=True)
        log = TrainLog(layout.train_log, echo=cfg.progress)
        check_inputs([cfg.teacher_weights] if cfg.teacher_weights else [], False)
        device = select_device(cfg.device)
        task = load_data(cfg.data, seed=cfg.seed)
        require_task(task, adaptable_task_names(), "adapt")
        for line in split_summary(task):
            log(line)
        adapted = adapt_teacher(cfg, task, log, device, out)
        metrics = {**adapted.metrics, "seconds": round(time.time() - t0, 1),
                   "warnings": summary_warnings(adapted.metrics)}
        artifacts: dict[str, Path] = {}
        artifacts["teacher_weights"], artifacts["teacher_card"] = write_model(adapted.model, adapted.card, out,
                                                                              "teacher")
        record_run(Manifest(out), "adapt", cfg.to_dict(), {"data": cfg.data} | (
            {"teacher_weights": cfg.teacher_weights} if cfg.teacher_weights else {}), task, cfg.seed, artifacts, metrics)
    return AdaptResult(out=out, metrics=metrics, artifacts=artifacts)
