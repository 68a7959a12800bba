"""Distillation of classifiers (multi-class, binary, multi-label): logit KD, embedding KD through a projector, and
the cross-entropy (binary cross-entropy per label for multi-label) on the labelled subset; label-free
(``--labels none``) distills embeddings, then fits the head on the labelled subset's frozen embeddings."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ...errors import ModelError
from .base import (
    THRESHOLDS,
    DistillRun,
    DistillTask,
    ResolvedTeacher,
    TrainedStudent,
    distill_logits,
    small_test_warning,
)

__all__ = ["ClassifierDistill", "DEFAULT_TEACHER", "DEFAULT_STUDENT", "summary_warnings"]

DEFAULT_TEACHER = "timm:resnet18"
DEFAULT_STUDENT = "timm:medfm_resnet10_w24"


class ClassifierDistill(DistillTask):
    """Image-level labels: one class per image (multi-class, binary) or a set of labels (multi-label)."""

    teacher_tool: ClassVar[str] = "teacher-ce-1"
    gain_words: ClassVar[str] = "distilled - baseline macro AUC"
    label_free_embeddings: ClassVar[bool] = True
    per_image_images: ClassVar[bool] = True
    adaptable: ClassVar[bool] = True

    @property
    def multilabel(self) -> bool:
        # A label per column (0/1 vectors) rather than one class index per case.
        return self.runtime.label_rank == 2

    @property
    def label_dtype(self) -> str:  # type: ignore[override]
        return "float32" if self.multilabel else "int64"

    def defaults(self, volumes: bool) -> dict[str, Any]:
        return {**super().defaults(volumes), "batch_size": 64, "temperature": 4.0}

    def default_teacher(self, volumes: bool) -> str:
        return DEFAULT_TEACHER

    def default_student(self, volumes: bool) -> str:
        return DEFAULT_STUDENT

    def check_model_kind(self, role, spec, kind, data, volumes) -> None:
        from ...models.factory import is_dense_kind

        if is_dense_kind(kind):
            raise ModelError(f"--{role} {spec} is a segmentation network, but {data.source} has image-level labels "
                             f"({data.task}): give a classifier (timm:NAME), or data with masks")

    def teacher_outputs_match(self, card, data) -> bool:
        return self.multilabel or card.num_classes == data.num_classes

    def check_teacher_card(self, card, data) -> None:
        # A multi-label teacher may score a superset of labels only through adapt; a class count must match.
        if not self.multilabel and card.num_classes not in (0, data.num_classes):
            raise ModelError(
                f"the teacher predicts {card.num_classes} classes but the data has {data.num_classes}; "
                "adapt it to these labels (--teacher-adapt linear|finetune, or medfm-compress adapt), or use "
                "--labels none for embedding distillation"
            )

    # ----- losses -----
    def hard_loss(self, logits, labels):
        """Cross-entropy on class indices; binary cross-entropy on 0/1 label vectors (multi-label)."""
        import torch.nn.functional as F

        if self.multilabel:
            return F.binary_cross_entropy_with_logits(logits, labels.float())
        return F.cross_entropy(logits, labels.long())

    def kd_loss(self, student_logits, teacher_logits, temperature: float):
        """Temperature-scaled KL(teacher || student), times T^2 so gradients keep their scale (Hinton et al.); for
        multi-label each label is a Bernoulli: binary cross-entropy against the teacher's tempered sigmoid."""
        import torch
        import torch.nn.functional as F

        t = float(temperature)
        if self.multilabel:
            target = torch.sigmoid(teacher_logits / t)
            return F.binary_cross_entropy_with_logits(student_logits / t, target) * t * t
        log_p_s = F.log_softmax(student_logits / t, dim=1)
        log_p_t = F.log_softmax(teacher_logits / t, dim=1)
        return F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean") * t * t

    # ----- training -----
    def teacher_metrics(self, run, teacher, teacher_pre):
        """The teacher's test metrics and logits: its own head's where it predicts the data's classes; for a
        head-less teacher (an encoder held as an engine), a linear probe's fitted on its embeddings of the labelled
        training images (what the student's labels are), early-stopped on val: the teacher a student is measured
        against. Label-free runs score no teacher."""
        from ..taskprep import adapt_batch, classifier_present, evaluate_model

        task = run.task
        if not classifier_present(teacher.model):
            return self._probe_metrics(run, teacher) if run.cfg.labels != "none" else ({}, None)
        if not (self.multilabel or teacher.card.num_classes == task.num_classes):
            return {}, None
        metrics, logits, _ = evaluate_model(teacher.model, adapt_batch(*run.teacher_inputs("test"), teacher_pre),
                                            run.test.labels, task.task)
        run.log(f"teacher test: accuracy={metrics['accuracy']:.4f} macro_auc={metrics['macro_auc']:.4f}")
        return metrics, logits

    def _probe_metrics(self, run, teacher):
        import torch

        from ..probe import fit_linear_head
        from ..teacher_cache import teacher_outputs, training_views
        from .base import run_losses

        task, cfg = run.task, run.cfg
        run.log(f"teacher: head-less; fitting a linear probe on its embeddings of the {len(run.labeled)} labelled "
                "training images to score it")
        # The training embeddings are the cache's first view, the one the student trains on first: the teacher
        # pays for them once (the probe fits on that view, augmented as the student's inputs are).
        cache = teacher_outputs(run, teacher, training_views(cfg), patch="patch" in run_losses(cfg, False))
        feats = {"train": cache.get(0, run.labeled)[1]}
        for name in ("val", "test"):
            if getattr(run, f"x_{name}") is not None:
                feats[name] = teacher.outputs(*run.teacher_inputs(name), batch_size=cfg.teacher.batch_size or 64)[1]
        torch.manual_seed(cfg.seed)
        head = torch.nn.Linear(feats["train"].shape[1], task.num_classes)
        fit_linear_head(head, feats["train"].cpu().numpy(), np.asarray(run.train.labels)[run.labeled],
                        feats["val"].cpu().numpy() if "val" in feats else None,
                        np.asarray(run.val.labels) if "val" in feats else None, self, task.task, run.device,
                        run.ckpt_dir / "teacher-probe.pt", run.log, cfg.progress and run.rank == 0, seed=cfg.seed)
        with torch.no_grad():
            logits = {k: head(v.to(run.device)).float().cpu().numpy() for k, v in feats.items() if k != "train"}
        metrics = {**self.runtime.task_metrics(logits["test"], run.test.labels), "probe": "linear"}
        if "val" in logits:
            metrics["val"] = self.runtime.task_metrics(logits["val"], run.val.labels)
        run.log(f"teacher test (linear probe): accuracy={metrics['accuracy']:.4f} macro_auc={metrics['macro_auc']:.4f}")
        return metrics, logits["test"]

    def train_student(self, run: DistillRun, resolved: ResolvedTeacher, student, arch: str) -> TrainedStudent:
        """Logit KD / embedding KD / cross-entropy (:func:`~.base.distill_logits`), validation macro AUC."""

        return distill_logits(self, run, resolved, student, arch, lambda logits: self._val_from(run, logits))

    val_key: ClassVar[str] = "val_auc"

    def _val_from(self, run, val_logits) -> dict[str, float]:
        return {"val_auc": round(self.runtime.macro_auc(val_logits, run.val.labels), 4)}

    def val_scores(self, run, model) -> dict[str, float]:
        from ..train import predict

        return self._val_from(run, predict(model, run.x_val)[0])

    # ----- scoring -----
    def run_metrics(self, run, resolved, student, baseline, seconds) -> dict[str, Any]:
        """Student, teacher and baseline on the test split, agreement, AUC retention, sizes."""
        from ...models.factory import count_params
        from ...models.features import macs_of
        from ..taskprep import adapt_batch, bootstrap_vs, evaluate_model

        task, teacher = run.task, resolved.teacher
        s_metrics, s_logits, _ = evaluate_model(student.model, run.x_test, run.test.labels, task.task)
        example = run.x_test[:1]
        t_test, t_src = run.teacher_inputs("test")
        metrics: dict[str, Any] = {
            "task": task.task,
            "test_size": len(run.test),
            "student": {**s_metrics, "params": count_params(student.model), "macs": macs_of(student.model, example),
                        "arch": student.arch},
            "teacher": {
                **resolved.test_metrics,
                "params": count_params(teacher.model),
                "macs": macs_of(teacher.model, adapt_batch(t_test[:1], t_src, resolved.preprocess)),
                "arch": resolved.arch + (" + linear probe" if resolved.test_metrics.get("probe") else ""),
                "source": teacher.source,
            },
        }
        if resolved.test_logits is not None:
            t_auc = resolved.test_metrics["macro_auc"]
            metrics["student_teacher_agreement"] = self.runtime.agreement(s_logits, resolved.test_logits)
            metrics["auc_retention"] = s_metrics["macro_auc"] / t_auc if t_auc else None
        metrics["param_ratio"] = metrics["teacher"]["params"] / metrics["student"]["params"]
        if run.x_val is not None and resolved.test_logits is not None and "val" not in metrics["teacher"]:
            t_val, _, _ = evaluate_model(teacher.model, adapt_batch(*run.teacher_inputs("val"), resolved.preprocess),
                                         run.val.labels, task.task)
            metrics["teacher"]["val"] = t_val
        if baseline is not None:
            b_metrics, b_logits, _ = evaluate_model(baseline, run.x_test, run.test.labels, task.task)
            metrics["baseline"] = {**b_metrics, "params": count_params(baseline), "arch": student.arch}
            metrics["distill_gain_auc"] = s_metrics["macro_auc"] - b_metrics["macro_auc"]
            # Paired over the same test cases: the CI of (distilled - label-only) macro AUC.
            boot = bootstrap_vs(b_logits, s_logits, run.test.labels, task.task, seed=run.cfg.seed)
            metrics["distill_gain_auc_ci"] = [boot["macro_auc"]["ci_low"], boot["macro_auc"]["ci_high"]]
        metrics["warnings"] = self.warnings(metrics, run.task, run.test)
        metrics["seconds"] = round(seconds, 1)
        metrics["history"] = student.history
        return metrics

    def warnings(self, metrics, data, test) -> list[str]:
        """A teacher near chance on val, a student that often disagrees with its teacher, a test split too small for
        its CIs to mean much, classes too rare in it for their AUC to mean much."""
        out = []
        tv = (metrics.get("teacher") or {}).get("val") or {}
        if tv.get("macro_auc") is not None and tv["macro_auc"] < THRESHOLDS["near_chance_auc"]:
            out.append(f"the teacher is near chance on val (macro AUC {tv['macro_auc']:.3f}, accuracy "
                       f"{tv.get('accuracy', float('nan')):.3f}): retention and agreement against it mean little")
        agree = metrics.get("student_teacher_agreement")
        if agree is not None and agree < THRESHOLDS["min_agreement"]:
            out.append(f"student-teacher top-1 agreement is {agree:.3f} (< {THRESHOLDS['min_agreement']}): the "
                       "student does not behave like its teacher on many cases")
        out += small_test_warning(test)
        if not self.multilabel:
            lim = THRESHOLDS["min_class_cases"]
            counts = np.bincount(np.asarray(test.labels), minlength=data.num_classes)
            small = [f"{data.label_names[k]} ({int(c)})" for k, c in enumerate(counts) if c < lim]
            if small:
                out.append(f"test classes with fewer than {lim} cases: {', '.join(small)}; their AUC is noisy")
        return out



def summary_warnings(metrics: dict[str, Any]) -> list[str]:
    """``warning:`` lines an adapt run's metrics call for: the adapted teacher near chance on val, small test split
    (thresholds from :data:`~.base.THRESHOLDS`)."""
    out = []
    auc = (metrics.get("val") or {}).get("macro_auc")
    if auc is not None and auc < THRESHOLDS["near_chance_auc"]:
        out.append(f"the adapted teacher is near chance on val (macro AUC {auc:.3f}); it has little to teach")
    n = (metrics.get("test") or {}).get("n", THRESHOLDS["min_test_cases"])
    if n < THRESHOLDS["min_test_cases"]:
        out.append(f"the test split has {n} cases (< {THRESHOLDS['min_test_cases']}): its CIs are wide, read them "
                   "before the point estimates")
    return out
