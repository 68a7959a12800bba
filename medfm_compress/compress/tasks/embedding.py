"""Label-free embedding distillation of a foundation encoder into a small student: the plug-in the distiller asks
when its data is an embedding task (volume crops, ``inv3:``/``nifti:``/``dicom-series:`` with ``?crop=``).

The teacher (a foundation source: :class:`~medfm_compress.compress.teachers.FoundationTeacher`) gives each crop's
embedding through its on-disk cache; the student (by default the 3-D CNN of :mod:`medfm_compress.models.volume`)
learns them with ``1 - cosine`` (``--feat-loss mse``: MSE). Crops are preprocessed as the teacher saw them (its HU
window mapped to 0..1), so ``export``/``quantize``/``bench`` read the student's card unchanged. ``--eval-data``: held-out
crops scored after every epoch (student-teacher cosine, its centred version, and the mean-embedding floor).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ...errors import ConfigError
from .base import DistillRun, DistillTask, ResolvedTeacher, TrainedStudent

__all__ = ["EmbeddingDistill"]


class EmbeddingDistill(DistillTask):
    """No labels: the student learns the teacher's embedding of every training crop."""

    teacher_tool: ClassVar[str] = "foundation"

    def defaults(self, volumes: bool) -> dict[str, Any]:
        # 30 epochs at lr 2e-3 of 8 crops: the student's held-out cosine on the real head CT had settled by then.
        return {"batch_size": 8, "epochs": 30, "lr": 2e-3, "augment": False}

    def default_teacher(self, volumes: bool) -> str:
        return "astra-ct"

    def default_student(self, volumes: bool) -> str:
        from ...models.volume import STUDENT3D_ARCH

        return STUDENT3D_ARCH

    def check_model_kind(self, role, spec, kind, data, volumes) -> None:
        if role == "teacher":
            raise ConfigError(f"{data.source} holds unlabelled volume crops: their teacher is a foundation encoder "
                              f"(astra-ct, astra-ct-tiny), not --teacher {spec}")

    def check_config(self, cfg, data) -> None:
        """Flags that need labels or a trainable teacher are refused in one line, each by name."""
        refused = {
            "losses": ("--loss", "the loss is the embedding distance (--feat-loss cosine|mse)"),
            "temperature": ("--temperature", "there are no logits to soften"),
            "label_fraction": ("--label-fraction", "volume crops have no labels"),
            "baseline": ("--baseline", "a label-only baseline needs labels"),
            "head_epochs": ("--head-epochs", "the student has no classifier head"),
            "augment": ("--augment", "crops are taken as the teacher embedded them (its cache is per crop)"),
        }
        for name, (flag, why) in refused.items():
            value = cfg.get_option(name)
            if name == "losses" and value is not None and set(value) == {"feat"}:
                continue
            if name == "augment" and not value:
                continue
            if value is not None and value != type(cfg).option_default(name):
                raise ConfigError(f"{flag} does not apply to {data.source}: {why}")
        if cfg.student.spec is not None and (cfg.student.widths is not None or cfg.student.head_hidden is not None):
            raise ConfigError("--widths and --head-hidden shape the default 3-D student; drop them with --student")

    def load_splits(self, cfg, data):
        from ...data import load_data
        from ...data.volume import CROP_SPLIT

        eval_task = load_data(cfg.eval_data, seed=cfg.seed) if cfg.eval_data else None
        if eval_task is not None and eval_task.crops is None:
            raise ConfigError(f"--eval-data {cfg.eval_data} is not a volume crop spec (?crop=X,Y,Z&n=N)")
        test = eval_task.split(CROP_SPLIT) if eval_task is not None else None
        return data.split(CROP_SPLIT), None, test, eval_task

    def student_preprocess(self, cfg, data, train):
        """The teacher's HU window mapped to 0..1, nothing else: the student sees exactly what the teacher saw."""
        from ...models.foundation import teacher_window
        from ...runtime.preprocess import PreprocessSpec

        return PreprocessSpec(input_size=tuple(int(v) for v in train.images.shape[1:4]), channels=1, mean=(0.0,),
                              std=(1.0,), window=teacher_window(cfg.teacher.spec))

    def student_kwargs(self, cfg, resolved: ResolvedTeacher) -> dict[str, Any]:
        from ...models.volume import DEFAULT_WIDTHS

        kwargs: dict[str, Any] = {"embed_dim": resolved.teacher.encoder.embedding_dim}
        if cfg.student.spec is None:
            kwargs |= {"widths": list(cfg.student.widths or DEFAULT_WIDTHS), "head_hidden": cfg.student.head_hidden or 512}
        return kwargs

    def hard_loss(self, logits, labels):
        raise ConfigError("volume crops have no labels to train on")

    def train_student(self, run: DistillRun, resolved: ResolvedTeacher, student, arch: str) -> TrainedStudent:
        import torch

        from ...metrics import cosine_similarity
        from ..losses import feature_kd_loss
        from ..train import LoopConfig, run_loop

        cfg, device, teacher = run.cfg, run.device, resolved.teacher
        t_train = torch.from_numpy(teacher.embeddings(run.task)).to(device)
        t_eval = teacher.embeddings(run.eval_task) if run.eval_task is not None else None
        run.log(f"embedding cache {teacher.cache.directory}: {teacher.cache.hits} hits, {teacher.cache.misses} "
                "computed")
        with torch.no_grad():
            student.eval()
            out = student(run.x_train[:1])
        if tuple(out.shape) != (1, t_train.shape[1]):
            raise ConfigError(f"student {arch} outputs {tuple(out.shape)} per crop; the teacher's embedding is "
                              f"({t_train.shape[1]},): give a student that outputs one such vector per crop")
        net = run.wrap(student)
        x_train = run.x_train

        def step(batch_idx, _epoch):
            bi = torch.as_tensor(batch_idx, device=device)
            loss = feature_kd_loss(net(x_train[bi]).float(), t_train[bi], cfg.loss.feat_loss)
            return loss, ({"cos": 1.0 - float(loss.detach())} if cfg.loss.feat_loss == "cosine" else
                          {"mse": float(loss.detach())})

        def epoch_end(_epoch):
            if t_eval is None:
                return {}
            emb = _embed(student, run.x_test, cfg.loop.batch_size)
            return {"eval_cos": round(cosine_similarity(emb, t_eval), 4)}

        spe = run.steps_per_epoch
        run.log(f"student {arch}: {sum(p.numel() for p in student.parameters()) / 1e6:.2f} M params, losses=feat "
                f"({cfg.loss.feat_loss}) epochs={cfg.loop.epochs} steps/epoch={spe}")
        loop = LoopConfig("student", spe, cfg.loop.epochs, cfg.loop.lr, cfg.loop.weight_decay, cfg.loop.batch_size, cfg.seed, False)
        history = run_loop(loop, {"student": student}, step, np.arange(len(run.train)), run.ckpt_dir / "student.pt",
                           cfg.resume, run.log, epoch_end, cfg.progress)
        student.eval()
        return TrainedStudent(student, arch, ("feat",), int(t_train.shape[1]), history,
                              self.student_kwargs(cfg, resolved))

    def run_metrics(self, run, resolved, student, baseline, seconds) -> dict[str, Any]:
        """The student-teacher cosine on the training crops and, with ``--eval-data``, on the held-out ones (plain,
        centred on the mean training embedding, and the floor a constant mean-embedding prediction scores)."""
        from ...metrics import centered_cosine_similarity, cosine_similarity
        from ...models.factory import count_params
        from ...models.features import macs_of

        cfg, teacher, data = run.cfg, resolved.teacher, run.task
        t_train = teacher.embeddings(data)
        n_student = count_params(student.model)
        train_emb = _embed(student.model, run.x_train, cfg.loop.batch_size)
        metrics: dict[str, Any] = {
            "task": self.name,
            "teacher": teacher.describe(),
            "student": {"arch": student.arch, "params": n_student, "macs": macs_of(student.model, run.x_train[:1]),
                        **student.model_kwargs},
            "param_ratio": teacher.params / n_student,
            "train": {"spec": cfg.data, "n": len(run.train), "z_range": list(data.crops.z_range),
                      "cosine": cosine_similarity(train_emb, t_train)},
            "volume_sha256": data.crops.volume_sha256,
            "cache": {"dir": str(teacher.cache.directory), "hits": teacher.cache.hits,
                      "computed": teacher.cache.misses},
        }
        if run.eval_task is not None:
            t_eval = teacher.embeddings(run.eval_task)
            s_eval = _embed(student.model, run.x_test, cfg.loop.batch_size)
            center = t_train.mean(0)
            metrics["eval"] = {
                "spec": cfg.eval_data,
                "n": len(run.test),
                "z_range": list(run.eval_task.crops.z_range),
                "cosine": cosine_similarity(s_eval, t_eval),
                "centered_cosine": centered_cosine_similarity(s_eval, t_eval, t_train),
                # What predicting the mean training embedding for every crop would score: the floor to beat.
                "mean_embedding_cosine": cosine_similarity(np.broadcast_to(center, t_eval.shape), t_eval),
            }
        metrics["warnings"] = self.warnings(metrics, data, run.test)
        metrics["seconds"] = round(seconds, 1)
        metrics["history"] = student.history
        return metrics

    def warnings(self, metrics, data, test) -> list[str]:
        """Held-out crops the student scores no better on than the mean training embedding; no held-out crops."""
        e = metrics.get("eval")
        if e is None:
            return ["no --eval-data: the student is scored on its own training crops only"]
        if e["cosine"] <= e["mean_embedding_cosine"]:
            return [f"held-out cosine {e['cosine']:.4f} is no better than predicting the mean training embedding "
                    f"({e['mean_embedding_cosine']:.4f}): the student has learnt the common direction only"]
        return []

    def summary(self, m: dict[str, Any]) -> str:
        lines = [f"teacher {m['teacher']['spec']}: {m['teacher']['params'] / 1e6:.1f}M params; "
                 f"student {m['student']['params'] / 1e6:.2f}M params ({m['param_ratio']:.1f}x fewer)",
                 f"train crops z {m['train']['z_range']}: student-teacher cosine {m['train']['cosine']:.4f}"]
        if "eval" in m:
            e = m["eval"]
            lines.append(f"held-out crops z {e['z_range']}: cosine {e['cosine']:.4f} (centered "
                         f"{e['centered_cosine']:.4f}; mean-embedding floor {e['mean_embedding_cosine']:.4f})")
        lines += [f"warning: {w}" for w in m.get("warnings", [])]
        return "\n".join(lines)


def _embed(model, x, batch_size: int) -> np.ndarray:
    """The model's outputs on ``x`` (eval mode, batched, float32 on the CPU)."""
    import torch

    was = model.training
    model.eval()
    with torch.no_grad():
        out = [model(x[i:i + batch_size]).float().cpu() for i in range(0, len(x), batch_size)]
    model.train(was)
    return torch.cat(out).numpy()
