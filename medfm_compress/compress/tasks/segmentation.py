"""Distillation of segmentation students (2-D images and 3-D volumes alike): the task plug-in the distiller asks
when its data holds label maps.

- Models output one map per class, ``(N, K, *spatial)`` at the input's size: ``smp:ARCH:ENCODER`` networks, MONAI
  networks (``monai:NET``) or a ``python:`` factory (checked on one batch before training).
- Losses (``--loss``): ``kd`` per-pixel temperature-scaled KL to the teacher's class maps plus Dice + CE against
  the teacher's label map (every class weighted alike, however few its pixels), ``feat`` feature-map KD
  from the student encoder's deepest stage through a 1x1 projector to the teacher encoder's (models with an
  ``encoder`` returning a feature pyramid, as smp's), ``ce`` MONAI's Dice + cross-entropy on the labelled subset.
- Augmentation moves each label map with its image (the same affine, nearest-neighbour).
- Scores: Dice per foreground class and mean, pixel accuracy and HD95 on the test split
  (:mod:`medfm_compress.segmetrics`); whole volumes are segmented by sliding windows; distilled minus label-only
  mean Dice with its paired bootstrap 95% CI.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np

from ...errors import ConfigError, ModelError
from ...models.taps import ModuleTap, first_output
from .base import THRESHOLDS, DistillRun, DistillTask, ResolvedTeacher, TrainedStudent, small_test_warning

__all__ = ["SegmentationDistill", "DEFAULT_SEG_TEACHER", "DEFAULT_SEG_STUDENT", "DEFAULT_SEG3D_TEACHER",
           "DEFAULT_SEG3D_STUDENT", "SW_OVERLAP", "SW_BATCH_SIZE", "DenseTap", "check_dense_model", "predict_masks",
           "evaluate_dense", "whole_scoring"]

# 23.1 M parameters vs 0.78 M: 30x (FPN on ResNet-50 has 26.1 M but trains 2.7x slower on a 2-core CPU).
DEFAULT_SEG_TEACHER = "smp:FPN:tu-resnet34"
DEFAULT_SEG_STUDENT = "smp:Linknet:tu-medfm_resnet10_w24"
# Volumes: MONAI U-Nets, 4.75 M parameters vs 0.15 M (31x), with batch norm (folded into the convolutions at export,
# so the deployed student is convolutions and activations only; MONAI's default instance norm stays a runtime op). On
# synthetic3d (32x32x32 patches, 4 teacher epochs, 8 student epochs, no augmentation) the student reached test mean Dice
# 0.683 against its teacher's 0.657; an epoch took 45 s (teacher) and 16 s (student) on two cores.
DEFAULT_SEG3D_TEACHER = "monai:UNet?channels=32,64,128,256&strides=2,2,2&num_res_units=2&norm=batch"
DEFAULT_SEG3D_STUDENT = "monai:UNet?channels=8,16,32,64&strides=2,2,2&num_res_units=1&norm=batch"
# Sliding-window inference of whole volumes (scores during and after training): MONAI's default overlap.
SW_OVERLAP = 0.25
SW_BATCH_SIZE = 4


class DenseTap(ModuleTap):
    """Runs a dense model and records its encoder's deepest feature map (smp models: ``model.encoder`` returns the
    feature pyramid). ``run(x)`` returns ``(class maps, features or None)``."""

    def __init__(self, model):
        super().__init__(getattr(model, "encoder", None), pre=False)
        self.model = model

    @property
    def features(self):
        return self.seen[-1] if isinstance(self.seen, list | tuple) else self.seen

    def run(self, x):
        return first_output(self.model(x)), self.features


def check_dense_model(model, x, num_classes: int, what: str) -> None:
    """Refuse, in one line, a model whose output is not one map per class at the input's size."""
    import torch

    from ...errors import first_line

    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = DenseTap(model).run(x[:1])[0]
    except ImportError as e:  # a network's optional dependency, imported when it runs (MONAI's einops)
        raise ModelError(f"{what} needs a package that is not installed: {first_line(e)}") from None
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        raise ModelError(f"{what} fails on a {tuple(x[:1].shape)} input ({first_line(e)}); a network that "
                         "downsamples N times needs inputs of at least 2^N voxels per axis: a larger ?patch= or a "
                         "shallower network") from None
    finally:
        model.train(was)
    want = (1, num_classes, *x.shape[2:])
    if tuple(out.shape) != want:
        raise ModelError(f"{what} outputs {tuple(out.shape)} on a {tuple(x[:1].shape)} input, not {want} (one map "
                         f"per class, background included, at the input's size): segmentation needs a dense model "
                         "such as smp:Unet:tu-resnet18")


def predict_masks(model, x, batch_size: int = 64, logits: bool = False, roi=None, shapes=None):
    """Argmax label maps ``(N, H, W)`` uint8 of ``model`` on ``x`` (eval mode, batched); with ``logits`` also the
    class maps as float16 (a whole training set's teacher maps fit in memory so).

    ``roi`` (runs on patches): ``x`` holds whole cases ``(N, C, *spatial)``, segmented by sliding windows of ``roi``
    (:func:`medfm_compress.runtime.sliding_window.sliding_window`, Gaussian blending), and ``shapes`` their true
    sizes: a list of ``(X, Y, Z)`` label maps is returned, each cropped to its case."""
    import torch

    was = model.training
    model.eval()
    if roi is not None:
        from ...runtime.sliding_window import sliding_window

        def run(batch):
            with torch.no_grad():
                return DenseTap(model).run(torch.from_numpy(batch).to(x.device))[0].float().cpu().numpy()

        out = []
        for i in range(len(x)):
            case = x[i:i + 1].cpu().numpy()
            if shapes is not None:
                case = case[(slice(None), slice(None), *(slice(0, n) for n in shapes[i]))]
            out.append(sliding_window(case, tuple(roi), run, overlap=SW_OVERLAP, sw_batch_size=SW_BATCH_SIZE,
                                      cval=float(case.min()))[0].argmax(0).astype(np.uint8))
        model.train(was)
        return out
    masks, maps = [], []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            out = DenseTap(model).run(x[i:i + batch_size])[0].float()
            masks.append(out.argmax(1).to(torch.uint8).cpu())
            if logits:
                maps.append(out.to(torch.float16))
    model.train(was)
    m = torch.cat(masks).numpy()
    return (m, torch.cat(maps)) if logits else m


def _case_scores(pred: list, ref: np.ndarray, shapes, label_names: list[str], spacing, hd95: bool):
    """Dice per class and mean (over cases, as :func:`~medfm_compress.segmetrics.dice_summary`), voxel accuracy, HD95
    (mm given the ``spacing``, else pixels) and per-case Dice of whole-case predictions (each of its case's size)
    against references padded to the largest case."""
    from ...segmetrics import class_dice, dice_per_case, hd95_per_case, mean_dice

    k = len(label_names)
    refs = [ref[i][tuple(slice(0, n) for n in shapes[i])] for i in range(len(pred))]
    per_case = np.concatenate([dice_per_case(p[None], r[None], k) for p, r in zip(pred, refs, strict=True)])
    cls = class_dice(per_case)
    agree = sum(int(np.count_nonzero(p == r)) for p, r in zip(pred, refs, strict=True))
    metrics = {
        "mean_dice": mean_dice(per_case),
        "dice": {name: (None if np.isnan(v) else float(v)) for name, v in zip(label_names[1:], cls, strict=True)},
        "pixel_accuracy": agree / max(1, sum(r.size for r in refs)),
    }
    if hd95:
        hd = np.concatenate([hd95_per_case(p[None], r[None], k, spacing=spacing) for p, r in zip(pred, refs,
                                                                                                  strict=True)])
        metrics["hd95"] = float(np.nanmean(hd)) if np.isfinite(hd).any() else None
        if spacing is not None:
            metrics["hd95_unit"] = "mm"
    return metrics, per_case


def evaluate_dense(model, x, ref_masks, label_names: list[str], hd95: bool = True, volume=None):
    """``(metrics, predicted masks, per-case Dice)`` of ``model`` on ``x`` against ``ref_masks``. ``volume`` (whole
    cases, :func:`whole_scoring`): a dict with the sliding window's ``roi``, the cases' true ``shapes`` and the
    ``spacing`` (HD95 in mm; None: pixels)."""
    from ...segmetrics import dice_per_case, dice_summary, hd95_per_case

    ref = np.asarray(ref_masks)
    if volume is not None:
        pred = predict_masks(model, x, roi=volume["roi"], shapes=volume["shapes"])
        metrics, per_case = _case_scores(pred, ref, volume["shapes"], label_names, volume["spacing"], hd95)
        return metrics, pred, per_case
    pred = predict_masks(model, x)
    metrics = dice_summary(pred, ref, label_names)
    if hd95:
        hd = hd95_per_case(pred, ref, len(label_names))
        metrics["hd95"] = float(np.nanmean(hd)) if np.isfinite(hd).any() else None
    return metrics, pred, dice_per_case(pred, ref, len(label_names))


def whole_scoring(run, split: str) -> dict[str, Any] | None:
    """How a run on patches scores the whole cases of ``split`` (volumes, and 2-D images given ``?patch=``):
    sliding-window ``roi`` = the training patch, the cases' true ``shapes``, the ``spacing`` HD95 is measured in (mm
    for volumes; None, pixels, for images); None for a run trained on whole images."""
    if not run.task.whole_cases:
        return None
    from ...data.patches import case_shapes

    spacing = (run.task.spacing_mm or (1.0, 1.0, 1.0)) if run.task.volumes else None
    return {"roi": tuple(run.student_pre.input_size), "shapes": case_shapes(run.task, split), "spacing": spacing}


def _teacher_cache(teacher_maps, x, batch_size: int = 64):
    import torch

    return torch.cat([teacher_maps(x[i:i + batch_size])[0].to(torch.float16) for i in range(0, len(x), batch_size)])


def _agreement(a, b) -> float:
    """Fraction of pixels (voxels) where two sets of label maps agree; lists of volumes are pooled."""
    from ...segmetrics import pixel_agreement

    if isinstance(a, list):
        return sum(int(np.count_nonzero(x == y)) for x, y in zip(a, b, strict=True)) / max(1, sum(x.size for x in a))
    return pixel_agreement(a, b)


class SegmentationDistill(DistillTask):
    """A label map per image or volume; 2-D and 3-D differ in their default networks and batch only."""

    teacher_tool: ClassVar[str] = "teacher-dicece-batch-1"  # the batch Dice + CE loss of hard_loss

    # batch_size: a dense label map carries a target per pixel, so segmentation learns from small batches and needs
    # their steps: on the synthetic task at 10% of the masks the 0.78 M-parameter student (KD at T=1) reached
    # validation mean Dice 0.43 in 6 epochs at batch 64, its lesions at Dice <= 0.17, and 0.78 at batch 16, its lesions
    # at 0.61-0.75, for about the same time per epoch.
    # temperature: per pixel, a high temperature flattens the teacher's confident few-pixel lesions into the organ
    # around them: at batch 16, 6 epochs, the student reached validation mean Dice 0.78 at T=1 and 0.55 at T=4.
    # Volumes: patches of 48x48x32 voxels, 4 to a batch (a step of the default teacher takes 0.8 s on two cores).
    def defaults(self, volumes: bool) -> dict[str, Any]:
        return {**super().defaults(volumes), "batch_size": 4 if volumes else 16, "temperature": 1.0}

    def default_teacher(self, volumes: bool) -> str:
        return DEFAULT_SEG3D_TEACHER if volumes else DEFAULT_SEG_TEACHER

    def check_config(self, cfg, data) -> None:
        """Dense teacher outputs (a map per image) are computed in the training loop, not kept in the teacher-output
        cache: the cache's options are refused by name."""
        super().check_config(cfg, data)
        for name, flag in (("teacher_views", "--teacher-views"), ("cache", "--cache"),
                           ("teacher_batch_size", "--teacher-batch-size")):
            if cfg.get_option(name) is not None:
                raise ConfigError(f"{flag} applies to the teacher-output cache of classification, regression and "
                                  f"embedding runs; a segmentation teacher's maps are computed in the training loop")
        if "patch" in (cfg.loss.losses or ()):
            raise ConfigError("--loss patch distils a teacher's patch-token map into a classifier's last stage; a "
                              "segmentation run's feature-map KD is 'feat' (the encoders' deepest stages)")

    def default_student(self, volumes: bool) -> str:
        return DEFAULT_SEG3D_STUDENT if volumes else DEFAULT_SEG_STUDENT

    def check_model_kind(self, role, spec, kind, data, volumes) -> None:
        from ...models.factory import is_dense_kind

        if not is_dense_kind(kind) and kind != "python":
            example = ("monai:NET, e.g. monai:UNet?channels=8,16,32,64&strides=2,2,2" if volumes else
                       "smp:ARCH:ENCODER, e.g. smp:Unet:tu-resnet18")
            raise ModelError(f"--{role} {spec} is an image classifier, but {data.source} is a segmentation task: "
                             f"give a dense model ({example})")
        if volumes and kind == "smp":
            raise ModelError(f"--{role} {spec} is a 2-D network, but {data.source} holds volumes: give a 3-D one "
                             "(monai:NET, e.g. monai:UNet?channels=8,16,32,64&strides=2,2,2)")
        if not volumes and kind == "monai" and "spatial_dims=2" not in spec:
            raise ModelError(f"--{role} {spec} is a 3-D network (MONAI's default here), but {data.source} holds 2-D "
                             "images: add spatial_dims=2 to the spec, or use smp:ARCH:ENCODER")

    def check_network(self, model, x, num_classes: int, what: str) -> None:
        check_dense_model(model, x, num_classes, what)

    # ----- losses and targets -----
    def hard_loss(self, logits, labels):
        """MONAI's ``DiceCELoss`` (Dice + cross-entropy) on ``(N, K, *spatial)`` logits against label maps."""
        from ..losses import dice_ce

        return dice_ce()(logits, labels.long().unsqueeze(1))

    def kd_loss(self, student_logits, teacher_logits, temperature: float):
        """Temperature-scaled KL divergence per pixel over the classes, averaged over pixels, times T^2; teacher maps
        of another size are resized (bilinear) to the student's first."""
        import torch.nn.functional as F

        t = float(temperature)
        if teacher_logits.shape[2:] != student_logits.shape[2:]:
            mode = "bilinear" if student_logits.ndim == 4 else "trilinear"
            teacher_logits = F.interpolate(teacher_logits, size=student_logits.shape[2:], mode=mode,
                                           align_corners=False)
        log_p_s = F.log_softmax(student_logits / t, dim=1)
        log_p_t = F.log_softmax(teacher_logits / t, dim=1)
        return (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1).mean() * t * t

    def augment_targets(self, labels, index, seed, epoch):
        """The label maps move with their images (same affine, nearest-neighbour)."""
        from ..train import augment_masks

        return augment_masks(labels.cpu(), index, seed, epoch).to(labels.device)

    # ----- training and scoring -----
    def train_student(self, run: DistillRun, resolved: ResolvedTeacher, student, arch: str) -> TrainedStudent:
        """Per-pixel KD (+ feature-map KD) + Dice/CE on the labelled masks; label-free (``--labels none``) learns
        from the teacher's maps alone."""
        cfg = run.cfg
        check_dense_model(student, run.x_train[:1], run.task.num_classes, f"student {arch}")
        losses = tuple(cfg.loss.losses) if cfg.loss.losses is not None else (("kd",) if cfg.labels == "none" else ("kd", "ce"))
        run.log(f"student {arch}: losses={'+'.join(losses)} epochs={cfg.loop.epochs} steps/epoch={run.steps_per_epoch}"
                f" (segmentation, {len(run.labeled)} labelled masks)")
        history = self._distill(run, resolved.teacher, student, losses)
        return TrainedStudent(student, arch, losses, 0, history)

    def _distill(self, run, teacher, student, losses: tuple[str, ...]) -> dict[str, Any]:
        """Distill ``teacher`` (a :class:`~medfm_compress.compress.taskprep.FrozenTeacher`) into ``student`` on the
        run's training images; returns the loop's history. ``ce`` uses the labelled subset only."""
        import torch

        from ...models.heads import Projector
        from ..losses import feature_map_kd_loss, labelled_loss, weighted_terms
        from ..taskprep import adapt_batch, autocast
        from ..train import LoopConfig, augment_batch, augment_masks, run_loop

        cfg, device = run.cfg, run.device
        x_train, y_train, pre = run.x_train, run.y_train, run.student_pre
        if "feat" in losses and (getattr(student, "encoder", None) is None
                                 or getattr(teacher.model, "encoder", None) is None):
            raise ConfigError("feature KD ('feat') for segmentation taps the models' encoder (smp models have one); "
                              "this student or teacher has none: use --loss kd,ce")

        def teacher_maps(xb):
            with torch.no_grad(), DenseTap(teacher.model) as tap:
                out, feats = tap.run(adapt_batch(xb, pre, teacher.card.preprocess))
            return out.float(), (feats.float() if feats is not None else None)

        projector = None
        if "feat" in losses:
            with torch.no_grad(), DenseTap(student) as tap:
                student.eval()
                _, s_feat = tap.run(x_train[:2])
            _, t_feat = teacher_maps(x_train[:2])
            # A 1x1 convolution: the channels of the student's deepest map onto the teacher's.
            projector = Projector(s_feat.shape[1], t_feat.shape[1], conv=True).to(device)

        cached_maps = None
        if not cfg.loop.augment and "kd" in losses:
            run.log("teacher class maps cached (float16) for the training set (augmentation off, teacher frozen)")
            cached_maps = _teacher_cache(teacher_maps, x_train)

        class _Pair(torch.nn.Module):
            def __init__(self, s, p):
                super().__init__()
                self.student = s
                self.projector = p

            def forward(self, x):
                with DenseTap(self.student) as tap:
                    out, feats = tap.run(x)
                return out, (self.projector(feats) if self.projector is not None else None)

        net = run.wrap(_Pair(student, projector))
        labeled_mask = run.labelled_mask()

        def step(batch_idx, epoch):
            bi = torch.as_tensor(batch_idx, device=device)
            xb, yb = x_train[bi], y_train[bi]
            if cfg.loop.augment:
                xb = augment_batch(xb.cpu(), batch_idx, cfg.seed, epoch).to(device)
                yb = augment_masks(yb.cpu(), batch_idx, cfg.seed, epoch).to(device)
            t_out = t_feat = None
            if "kd" in losses or "feat" in losses:
                if cached_maps is not None and "feat" not in losses:
                    t_out = cached_maps[bi].float()
                else:
                    t_out, t_feat = teacher_maps(xb)
            with autocast(device):
                s_out, s_proj = net(xb)
            s_out = s_out.float()
            return weighted_terms(cfg.loss, losses, device, {
                # Soft per-pixel KL, plus Dice + CE against the teacher's label map: averaged over pixels, the KL is
                # the background's and the organs'; the batch Dice gives each class, a few-pixel lesion included, a
                # term of its own (with the KL alone the student never drew a lesion its teacher drew at Dice 0.67-0.88).
                "kd": lambda: self.kd_loss(s_out, t_out, cfg.loss.temperature) + self.hard_loss(s_out, t_out.argmax(1)),
                "feat": lambda: feature_map_kd_loss(s_proj.float(), t_feat, cfg.loss.feat_loss),
                "ce": lambda: labelled_loss(self.hard_loss, s_out, yb, labeled_mask[bi]),
            })

        def val_metrics(_epoch):
            return {} if run.x_val is None else self.val_scores(run, student)

        spe = run.steps_per_epoch
        loop = LoopConfig("student", spe, cfg.loop.epochs, cfg.loop.lr, cfg.loop.weight_decay, cfg.loop.batch_size, cfg.seed, cfg.loop.augment)
        modules = {"student": student} | ({"projector": projector} if projector is not None else {})
        return run_loop(loop, modules, step, np.arange(len(run.train)), run.ckpt_dir / "student.pt", cfg.resume,
                        run.log, val_metrics, cfg.progress)

    val_key: ClassVar[str] = "val_dice"

    def val_scores(self, run, model) -> dict[str, float]:
        """Mean Dice on the validation split (whole volumes by sliding windows)."""
        from ...segmetrics import dice_per_case, mean_dice

        vol = whole_scoring(run, "val")
        if vol is not None:
            m, _ = _case_scores(predict_masks(model, run.x_val, roi=vol["roi"], shapes=vol["shapes"]),
                                np.asarray(run.val.labels), vol["shapes"], run.task.label_names, None, hd95=False)
            return {"val_dice": round(m["mean_dice"], 4)}
        pred = predict_masks(model, run.x_val)
        return {"val_dice": round(mean_dice(dice_per_case(pred, np.asarray(run.val.labels), run.task.num_classes)), 4)}

    def run_metrics(self, run: DistillRun, resolved: ResolvedTeacher, trained: TrainedStudent, baseline,
                    seconds: float) -> dict[str, Any]:
        """``metrics.json`` of a segmentation run: teacher, student and baseline on the test split (mean Dice, Dice
        per class, pixel accuracy, HD95), student-teacher pixel agreement, Dice retention, and distilled minus label-only
        mean Dice with its paired 95% CI."""
        from ...models.factory import count_params
        from ...models.features import macs_of
        from ...segmetrics import paired_dice_bootstrap
        from ..taskprep import adapt_batch

        teacher, teacher_arch, teacher_pre = resolved.teacher, resolved.arch, resolved.preprocess
        student, student_arch, history = trained.model, trained.arch, trained.history
        task, names = run.task, run.task.label_names
        ref = np.asarray(run.test.labels)
        vol = whole_scoring(run, "test")
        example = run.x_test[:1] if vol is None else run.x_train[:1]  # on patches: the cost of one window
        s_m, s_pred, s_dice = evaluate_dense(student, run.x_test, ref, names, volume=vol)
        # Whole cases stay whole for the teacher (its windows are the student's); only its normalisation differs.
        t_pre = teacher_pre
        if vol is not None and teacher_pre != run.student_pre:
            t_pre = dataclasses.replace(teacher_pre, input_size=tuple(run.x_test.shape[2:]))
        t_x = adapt_batch(run.x_test, run.student_pre, t_pre)
        t_m, t_pred, _ = evaluate_dense(teacher.model, t_x, ref, names, volume=vol)
        metrics: dict[str, Any] = {
            "task": self.name,
            "test_size": len(run.test),
            "label_names": list(names),
            "student": {**s_m, "params": count_params(student), "macs": macs_of(student, example), "arch": student_arch},
            "teacher": {**t_m, "params": count_params(teacher.model), "arch": teacher_arch, "source": teacher.source,
                        "macs": macs_of(teacher.model, adapt_batch(example, run.student_pre, teacher_pre))},
            "student_teacher_agreement": _agreement(s_pred, t_pred),
            "dice_retention": s_m["mean_dice"] / t_m["mean_dice"] if t_m["mean_dice"] else None,
        }
        metrics["param_ratio"] = metrics["teacher"]["params"] / metrics["student"]["params"]
        if baseline is not None:
            b_m, _, b_dice = evaluate_dense(baseline, run.x_test, ref, names, volume=vol)
            metrics["baseline"] = {**b_m, "params": count_params(baseline), "arch": student_arch}
            boot = paired_dice_bootstrap(b_dice, s_dice, seed=run.cfg.seed)
            metrics["distill_gain_dice"] = boot["delta"]
            metrics["distill_gain_dice_ci"] = [boot["ci_low"], boot["ci_high"]]
        metrics["warnings"] = self.warnings(metrics, task, run.test)
        metrics["seconds"] = round(seconds, 1)
        metrics["history"] = history
        return metrics

    def warnings(self, metrics, data, test) -> list[str]:
        """Low pixel agreement with the teacher, a small test split, classes that few test cases show (their Dice is
        noisy)."""
        from ...data.dataset import class_presence

        out = []
        agree = metrics.get("student_teacher_agreement")
        if agree is not None and agree < THRESHOLDS["min_pixel_agreement"]:
            out.append(f"student-teacher pixel agreement is {agree:.3f} (< {THRESHOLDS['min_pixel_agreement']}): the "
                       "student's masks differ from its teacher's")
        out += small_test_warning(test)
        lim = THRESHOLDS["min_class_cases"]
        shown = class_presence(np.asarray(test.labels), data.num_classes).sum(axis=0)
        small = [f"{data.label_names[k]} ({int(c)})" for k, c in enumerate(shown) if k and c < lim]
        if small:
            out.append(f"test classes shown by fewer than {lim} cases: {', '.join(small)}; their Dice is noisy")
        return out

    gain_words: ClassVar[str] = "distilled - baseline mean Dice"

    def summary_details(self, m: dict[str, Any]) -> list[str]:
        names = list(m["student"].get("dice") or {})
        if not names:
            return []
        roles = [r for r in ("teacher", "student", "baseline") if r in m]
        return [f"Dice per class ({' / '.join(roles)}): " + ", ".join(
            f"{n} " + " / ".join("-" if m[r]["dice"].get(n) is None else f"{m[r]['dice'][n]:.3f}" for r in roles)
            for n in names)]
