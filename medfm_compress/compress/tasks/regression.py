"""Distillation of regression models (a continuous target per image: bone age, ejection fraction, a lesion's area).

Students and teachers are image networks with one output per target (timm). They learn standardised targets (zero
mean, unit spread over the training values), so one learning rate suits any unit; when training ends the output layer
is rescaled (:meth:`ValueDistill.finish_model`), so every saved or exported model outputs the target's own units.
Losses: ``kd`` the MSE to the teacher's (standardised) outputs, ``feat`` embedding KD, ``ce`` the MSE to the labelled
values. Scores: MAE, RMSE and Pearson r on the test split, with the distilled-minus-label-only MAE and its paired
bootstrap 95% CI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ...errors import ModelError
from .base import THRESHOLDS, DistillTask, distill_logits, small_test_warning

if TYPE_CHECKING:
    from .base import DistillRun, ResolvedTeacher, TrainedStudent

__all__ = ["ValueDistill"]


class ValueDistill(DistillTask):
    teacher_tool: ClassVar[str] = "teacher-mse-standardised-1"
    label_dtype: ClassVar[str] = "float32"
    label_free_embeddings: ClassVar[bool] = True
    per_image_images: ClassVar[bool] = True

    def defaults(self, volumes: bool) -> dict[str, Any]:
        # No temperature: the KD term is a squared error, nothing is softened.
        return {**super().defaults(volumes), "batch_size": 64}

    def default_teacher(self, volumes: bool) -> str:
        return "timm:resnet18"

    def default_student(self, volumes: bool) -> str:
        return "timm:medfm_resnet10_w24"

    def check_model_kind(self, role, spec, kind, data, volumes) -> None:
        from ...models.factory import is_dense_kind

        if is_dense_kind(kind):
            raise ModelError(f"--{role} {spec} is a segmentation network, but {data.source} has a value per image "
                             "(regression): give an image network (timm:NAME) with one output per target")

    def check_config(self, cfg, data) -> None:
        from ...errors import ConfigError

        super().check_config(cfg, data)
        if cfg.loss.temperature is not None:
            raise ConfigError(f"--temperature does not apply to {data.source}: regression KD is a squared error")

    # ----- the scale models learn in -----
    def prepare_labels(self, labels):
        values = np.asarray(labels, dtype=np.float64).reshape(len(labels), -1)
        mean, std = values.mean(0), values.std(0)
        std = np.where(std > 0, std, 1.0)
        scaled = ((values - mean) / std).astype(np.float32)
        return scaled.reshape(np.asarray(labels).shape), (mean.astype(np.float32), std.astype(np.float32))

    def _scale(self, run: DistillRun, like):
        import torch

        mean, std = run.label_state
        return (torch.as_tensor(mean, device=like.device, dtype=like.dtype),
                torch.as_tensor(std, device=like.device, dtype=like.dtype))

    def teacher_targets(self, teacher_outputs, run):
        mean, std = self._scale(run, teacher_outputs)
        return (teacher_outputs - mean) / std

    def finish_model(self, model, run) -> None:
        """Rescale the output layer, so the model outputs ``mean + std * z`` for the ``z`` it learnt."""
        import torch

        from ...models.features import classifier_of

        head = classifier_of(model)
        if not isinstance(head, torch.nn.Linear) or head.bias is None:
            raise ModelError(f"{type(model).__name__} has no linear output layer with a bias to put the target's units "
                             "in; give a timm image network")
        mean, std = self._scale(run, head.weight)
        with torch.no_grad():
            head.weight.mul_(std[:, None])
            head.bias.mul_(std).add_(mean)

    def _to_units(self, outputs: np.ndarray, run: DistillRun) -> np.ndarray:
        mean, std = run.label_state
        return np.asarray(outputs).reshape(len(outputs), -1) * std + mean

    # ----- losses -----
    def hard_loss(self, logits, labels):
        """Mean squared error against the (standardised) values."""
        import torch.nn.functional as F

        return F.mse_loss(logits.float(), labels.float().reshape(logits.shape))

    def kd_loss(self, student_logits, teacher_logits, temperature: float):
        """Mean squared error to the teacher's outputs, both on the scale the student learns in."""
        import torch.nn.functional as F

        return F.mse_loss(student_logits.float(), teacher_logits.float().reshape(student_logits.shape))

    # ----- training and scoring -----
    def teacher_metrics(self, run, teacher, teacher_pre):
        from ..taskprep import adapt_batch, classifier_present
        from ..train import predict

        if not classifier_present(teacher.model) or teacher.card.num_classes != run.task.num_classes:
            return {}, None
        outputs, _ = predict(teacher.model, adapt_batch(*run.teacher_inputs("test"), teacher_pre))
        metrics = self.runtime.scores(outputs, run.test.labels)
        run.log(f"teacher test: MAE={metrics['mae']:.4g} RMSE={metrics['rmse']:.4g} r={metrics['pearson_r']:.4f}")
        return metrics, outputs

    def train_student(self, run: DistillRun, resolved: ResolvedTeacher, student, arch: str) -> TrainedStudent:
        """MSE KD / embedding KD / MSE on the labelled values (:func:`~.base.distill_logits`), validation MAE."""

        return distill_logits(self, run, resolved, student, arch, lambda outputs: self._val_from(run, outputs))

    val_key: ClassVar[str] = "val_mae"
    val_higher_is_better: ClassVar[bool] = False

    def _val_from(self, run, outputs) -> dict[str, float]:
        return {"val_mae": round(self.runtime.scores(self._to_units(outputs, run), run.val.labels)["mae"], 4)}

    def val_scores(self, run, model) -> dict[str, float]:
        from ..train import predict

        return self._val_from(run, predict(model, run.x_val)[0])

    def run_metrics(self, run, resolved, student, baseline, seconds) -> dict[str, Any]:
        """Student, teacher and baseline MAE / RMSE / Pearson r on the test split, student-teacher Pearson r, the
        student's MAE as a share of the teacher's, and the label-only baseline's MAE minus the distilled student's
        with its paired 95% CI (positive: distillation helps)."""
        from ...models.factory import count_params
        from ...models.features import macs_of
        from ..taskprep import adapt_batch
        from ..train import predict

        task, teacher, labels = run.task, resolved.teacher, run.test.labels
        s_out, _ = predict(student.model, run.x_test)
        example = run.x_test[:1]
        t_test, t_src = run.teacher_inputs("test")
        metrics: dict[str, Any] = {
            "task": self.name,
            "test_size": len(run.test),
            "label_names": list(task.label_names),
            "student": {**self.runtime.scores(s_out, labels), "params": count_params(student.model),
                        "macs": macs_of(student.model, example), "arch": student.arch},
            "teacher": {**resolved.test_metrics, "params": count_params(teacher.model), "arch": resolved.arch,
                        "source": teacher.source,
                        "macs": macs_of(teacher.model, adapt_batch(t_test[:1], t_src, resolved.preprocess))},
        }
        if resolved.test_logits is not None:
            metrics["student_teacher_agreement"] = self.runtime.parity_metrics(resolved.test_logits, s_out)["pearson_r"]
            t_mae = resolved.test_metrics["mae"]
            metrics["mae_retention"] = metrics["student"]["mae"] / t_mae if t_mae else None
        metrics["param_ratio"] = metrics["teacher"]["params"] / metrics["student"]["params"]
        if baseline is not None:
            b_out, _ = predict(baseline, run.x_test)
            metrics["baseline"] = {**self.runtime.scores(b_out, labels), "params": count_params(baseline),
                                   "arch": student.arch}
            # Paired over the same test cases: baseline MAE - distilled MAE (the error distillation saves).
            boot = self.runtime.label_deltas(s_out, b_out, labels, None, 1000, run.cfg.seed)["mae"]
            metrics["distill_gain_mae"] = boot["delta"]
            metrics["distill_gain_mae_ci"] = [boot["ci_low"], boot["ci_high"]]
        metrics["warnings"] = self.warnings(metrics, task, run.test)
        metrics["seconds"] = round(seconds, 1)
        metrics["history"] = student.history
        return metrics

    def warnings(self, metrics, data, test) -> list[str]:
        """A student whose outputs correlate weakly with its teacher's; a test split too small for its CIs."""
        out = []
        r = metrics.get("student_teacher_agreement")
        if r is not None and not r >= THRESHOLDS["min_agreement"]:
            out.append(f"student-teacher Pearson r is {r:.3f} (< {THRESHOLDS['min_agreement']}): the student's values "
                       "do not follow its teacher's")
        return out + small_test_warning(test)

    gain_words: ClassVar[str] = "baseline - distilled MAE"
