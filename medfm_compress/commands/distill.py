"""``medfm-compress distill``."""

from __future__ import annotations

import json
import os

import click

from ._common import csv_option


@click.command(name="distill")
@click.option("--data", default="synthetic", show_default=True,
              help="Data spec: medmnist:FILE.npz, folder:DIR, dicom:DIR or synthetic (the embedded default); "
              "volume crops: inv3:FILE, nifti:FILE, dicom-series:DIR with ?crop=X,Y,Z&n=N&z=LO,HI.")
@click.option("--teacher", default=None, help="Teacher: an architecture (timm:NAME, python:pkg.module:factory) or a "
              "trained model on disk (a run directory's teacher, e.g. the DIR/teacher that adapt --out DIR writes). "
              "Default on synthetic data: timm:resnet18, trained on the full labels and cached. "
              "A CT foundation teacher (astra-ct, astra-ct-tiny) with volume --data distills a 3-D student.")
@click.option("--eval-data", default=None,
              help="Volume teachers: crop spec of held-out crops scored after every epoch (cosine).")
@click.option("--teacher-weights", default=None, type=click.Path(dir_okay=False),
              help="Teacher weights (.safetensors, or .pt/.pth loaded with weights_only).")
@click.option("--student", default=None, help="Student model spec (default timm:medfm_resnet10_w24).")
@click.option("--student-weights", default=None, type=click.Path(dir_okay=False), help="Initial student weights.")
@click.option("--out", default="runs/distill", show_default=True, type=click.Path(file_okay=False),
              help="Run directory to write.")
@click.option("--loss", "losses", default=None,
              help="Comma-separated losses: kd (logit KD), feat (embedding KD), ce (hard labels). "
              "Default kd,ce; feat with --labels none.")
@click.option("--temperature", default=None, type=float, help="KD temperature [default: 4; 1 for segmentation].")
@click.option("--feat-loss", type=click.Choice(["cosine", "mse"]), default="cosine", show_default=True)
@click.option("--labels", type=click.Choice(["full", "none"]), default="full", show_default=True,
              help="'none': distill embeddings from unlabeled images, then fit the head on the labeled subset.")
@click.option("--label-fraction", default=1.0, show_default=True, type=float,
              help="Fraction of training labels used (stratified, seeded).")
@click.option("--epochs", default=6, show_default=True, type=int)
@click.option("--teacher-epochs", default=None, type=int,
              help="Train the teacher from scratch on this data's full training labels for N epochs (when you have "
              "no pretrained teacher; any data spec; cached). Default 4 for the embedded synthetic task.")
@click.option("--teacher-adapt", type=click.Choice(["linear", "finetune"]), default=None,
              help="Adapt a pretrained --teacher/--teacher-weights to this data's labelled subset first (linear probe "
              "or fine-tune, as `medfm-compress adapt`), cached by weights hash, data digest and config.")
@click.option("--weights-key-map", type=click.Choice(["name", "order"]), default="name", show_default=True,
              help="'order': --teacher-weights' tensors map onto the architecture in order (another implementation's "
              "names); shapes must agree one by one.")
@click.option("--head-epochs", default=30, show_default=True, type=int, help="Head-fitting epochs (--labels none).")
@click.option("--batch-size", default=None, type=int,
              help="Images per step [default: 64; 16 for segmentation; 8 for volume crops].")
@click.option("--lr", default=3e-3, show_default=True, type=float)
@click.option("--baseline", is_flag=True, help="Also train the student on labels alone with the same budget.")
@click.option("--augment/--no-augment", default=True, show_default=True,
              help="Small affine + intensity augmentation (off: teacher outputs are cached).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--resume", is_flag=True, help="Continue from the run directory's last checkpoint.")
@click.option("--force", is_flag=True,
              help="Use weights (--resume, --teacher-weights, --student-weights) whose hash differs from their manifest.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--quiet", is_flag=True, help="No progress output.")
@click.option("--json", "as_json", is_flag=True, help="Print metrics as JSON on stdout.")
def command(data, eval_data, teacher, teacher_weights, student, student_weights, out, losses, temperature, feat_loss, labels,
            label_fraction, epochs, teacher_epochs, teacher_adapt, weights_key_map, head_epochs, batch_size, lr, baseline, augment, seed, resume,
            force, device, quiet, as_json):
    """Distill a teacher into a small task-specific student.

    With no --data, --teacher and --student it runs on the embedded synthetic radiograph task.
    """
    from ..models.foundation import is_teacher_spec

    if is_teacher_spec(teacher or ""):
        return _volume(data, eval_data, teacher, out, epochs, batch_size, lr, seed, resume, quiet, as_json)
    if eval_data is not None:
        from ..errors import ConfigError

        raise ConfigError("--eval-data is for volume teachers (astra-ct); 2-D runs score their data's test split")
    from ..compress.distill import DistillConfig
    from ..compress.distill import distill as run
    from ..compress.tasks import distill_task

    cfg = DistillConfig(
        data=data, out=out, teacher=teacher, teacher_weights=teacher_weights, student=student,
        student_weights=student_weights, losses=csv_option(losses), temperature=temperature, feat_loss=feat_loss,
        labels=labels, label_fraction=label_fraction, epochs=epochs, teacher_epochs=teacher_epochs,
        teacher_adapt=teacher_adapt, weights_key_map=weights_key_map,
        head_epochs=head_epochs, batch_size=batch_size, lr=lr, baseline=baseline, augment=augment, seed=seed,
        resume=resume, force=force, device=device, progress=not quiet,
    )
    result = run(cfg)
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun only rank 0 reports
    m = result.metrics
    if as_json:
        click.echo(json.dumps({k: v for k, v in m.items() if k != "history"}, indent=2))
        return
    click.echo(distill_task(m["task"]).summary(m))
    click.echo(f"artifacts in {result.out}")


def _volume(data, eval_data, teacher, out, epochs, batch_size, lr, seed, resume, quiet, as_json):
    from ..compress.distill_volume import VolumeDistillConfig, distill_volume

    cfg = VolumeDistillConfig(data=data, eval_data=eval_data, teacher=teacher, out=out, epochs=epochs,
                              lr=lr, seed=seed, resume=resume, progress=not quiet,
                              **({"batch_size": batch_size} if batch_size is not None else {}))
    m = distill_volume(cfg).metrics
    if as_json:
        click.echo(json.dumps({k: v for k, v in m.items() if k != "history"}, indent=2))
        return
    click.echo(f"teacher {m['teacher']['spec']}: {m['teacher']['params'] / 1e6:.1f}M params; "
               f"student {m['student']['params'] / 1e6:.2f}M params ({m['param_ratio']:.1f}x fewer)")
    click.echo(f"train crops z {m['train']['z_range']}: student-teacher cosine {m['train']['cosine']:.4f}")
    if "eval" in m:
        e = m["eval"]
        click.echo(f"held-out crops z {e['z_range']}: cosine {e['cosine']:.4f} (centered {e['centered_cosine']:.4f}; "
                   f"mean-embedding floor {e['mean_embedding_cosine']:.4f})")
    click.echo(f"artifacts in {out}")
