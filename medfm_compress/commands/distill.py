"""``medfm-compress distill``.

Every option defaults to None: the defaults live once, in :class:`~medfm_compress.compress.distill.DistillConfig` and
in the task plug-ins (:meth:`~medfm_compress.compress.tasks.DistillTask.defaults`); the help text reads them there.
"""

from __future__ import annotations

import json
import os
import typing

import click

from ..compress.distill import DistillConfig
from ..compress.losses import LOSS_NAMES
from ..compress.tasks import distill_task, distill_task_names
from ..errors import ConfigError
from ._common import csv_option, field_default, given_options, teacher_normalisation_options


def _default(name: str) -> str:
    return field_default(DistillConfig, name)


def _choices(name: str) -> list[str]:
    """The values a ``Literal`` field of the config takes."""
    return [str(v) for v in typing.get_args(DistillConfig.option_type(name))]


def _task_defaults(key: str) -> str:
    """Where a setting's default depends on the data's task: each value with the tasks that take it."""
    groups: dict[object, list[str]] = {}
    for name in distill_task_names():
        task = distill_task(name)
        flat, vol = ((task.default_student(v) if key == "student" else task.defaults(v).get(key)) for v in (False, True))
        groups.setdefault(flat, []).append(name)
        if vol != flat:
            groups.setdefault(vol, []).append(f"{name} volumes")
    parts = ["{} for {}".format(v, ", ".join(names)) for v, names in groups.items() if v is not None]
    return f" [default: {'; '.join(parts)}]"


@click.command(name="distill")
@click.option("--data", default=None, help="Data spec: medmnist:FILE.npz, folder:DIR, dicom:DIR or synthetic (the "
              "embedded default); volume crops: inv3:FILE, nifti:FILE, dicom-series:DIR with ?crop=X,Y,Z&n=N&z=LO,HI."
              + _default("data"))
@click.option("--teacher", default=None, help="Teacher: an architecture (timm:NAME, python:pkg.module:factory), a "
              "trained model on disk (a run directory's teacher, e.g. the DIR/teacher that adapt --out DIR writes), "
              "a foundation encoder (astra-ct, astra-ct-tiny: volume crops), or a model held only as an engine (FILE.onnx, "
              "OpenVINO FILE.xml: run forward only). Default on synthetic data: the task's default architecture, trained "
              "on the full labels and cached.")
@click.option("--eval-data", default=None,
              help="Data without a test split of its own (volume crops): held-out data scored after every epoch.")
@click.option("--teacher-weights", default=None, type=click.Path(dir_okay=False),
              help="Teacher weights (.safetensors, or .pt/.pth loaded with weights_only).")
@click.option("--student", default=None, help="Student model spec." + _task_defaults("student"))
@click.option("--student-weights", default=None, type=click.Path(dir_okay=False), help="Initial student weights.")
@click.option("--student-input-size", default=None, type=int,
              help="The student's input side in pixels, where it differs from the data's: the teacher still sees the "
              "data at its own size (e.g. a 224 px teacher, a 128 px student). Per-image tasks.")
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Run directory to write." + _default("out"))
@click.option("--loss", "losses", default=None,
              help=f"Comma-separated losses ({', '.join(LOSS_NAMES)}): kd (logit KD), feat (embedding KD), patch (the "
              "teacher's patch-token map onto the student's last stage: ViT to CNN), ce (hard labels). Default kd,ce; "
              "feat,ce for a head-less teacher; feat with --labels none or volume crops.")
@click.option("--temperature", default=None, type=float, help="KD temperature." + _task_defaults("temperature"))
@click.option("--feat-loss", type=click.Choice(_choices("feat_loss")), default=None,
              help="Embedding distance." + _default("feat_loss"))
@click.option("--labels", type=click.Choice(_choices("labels")), default=None,
              help="'none': distill embeddings from unlabeled images, then fit the head on the labeled subset."
              + _default("labels"))
@click.option("--label-fraction", default=None, type=float,
              help="Fraction of training labels used (stratified, seeded)." + _default("label_fraction"))
@click.option("--epochs", default=None, type=int,
              help="Student epochs (the baseline's too)." + _task_defaults("epochs") + " Left unset with --steps "
              "unset, a data set smaller than the embedded default gets as many optimizer steps as it does.")
@click.option("--steps", default=None, type=int,
              help="The student's budget in optimizer steps instead of epochs (rounded up to whole epochs; the "
              "plan line says what runs).")
@click.option("--teacher-epochs", default=None, type=int,
              help="Train the teacher from scratch on this data's full training labels for at most N epochs (when "
              "you have no pretrained teacher; any data spec; cached); with a validation split it stops early and "
              "keeps its best state. Default 4 for the embedded synthetic task, and at least the steps they give it.")
@click.option("--teacher-steps", default=None, type=int,
              help="As --teacher-epochs, in optimizer steps.")
@click.option("--teacher-patience", default=None, type=int,
              help="A teacher trained from scratch stops after this many steps without a better validation score "
              "[default: a third of its budget].")
@click.option("--teacher-adapt", type=click.Choice(["linear", "finetune"]), default=None,
              help="Adapt a pretrained --teacher/--teacher-weights to this data's labelled subset first (linear probe "
              "or fine-tune, as `medfm-compress adapt`), cached by weights hash, data digest and config.")
@click.option("--weights-key-map", type=click.Choice(_choices("weights_key_map")), default=None,
              help="'order': --teacher-weights' tensors map onto the architecture in order (another implementation's "
              "names); shapes must agree one by one." + _default("weights_key_map"))
@click.option("--head-epochs", default=None, type=int, help="Head-fitting epochs (--labels none)."
              + _default("head_epochs"))
@click.option("--batch-size", default=None, type=int, help="Images per step." + _task_defaults("batch_size"))
@click.option("--lr", default=None, type=float, help="Peak learning rate." + _task_defaults("lr"))
@click.option("--baseline", is_flag=True, default=None,
              help="Also train the student on labels alone with the same budget.")
@click.option("--augment/--no-augment", default=None,
              help="Small affine + intensity augmentation of the training images." + _task_defaults("augment"))
@click.option("--widths", default=None,
              help="Volume crops: the default 3-D student's stage widths, e.g. 16,32,64,128.")
@click.option("--head-hidden", default=None, type=int, help="Volume crops: the 3-D student's embedding head width.")
@click.option("--cache", default=None, type=click.Path(file_okay=False),
              help="Where teacher outputs are cached, computed once per training image and view and reused by every "
              "epoch and run [default: the cache's teacher-outputs/; a foundation encoder's: embeddings/].")
@teacher_normalisation_options
@click.option("--teacher-embedding", default=None,
              help="A teacher held as an engine: the tensor to distil as its embedding, by name (an output or an "
              "intermediate tensor); tokens (N,T,D) pooled by NAME:cls (default) or NAME:mean [default: the input of its "
              "classifier, or its single output].")
@click.option("--teacher-logits", default=None,
              help="A teacher held as an engine: the tensor holding its logits, by name [default: the first output of a "
              "model exported by medfm-compress; none for another].")
@click.option("--teacher-views", default=None, type=int,
              help="With augmentation: augmented views of each training image the teacher answers once; epoch e "
              "trains on view e mod N [default: one per epoch, at most 12].")
@click.option("--teacher-batch-size", default=None, type=int,
              help="Images per teacher batch when filling the cache [default: 64; a foundation encoder's crops: 1].")
@click.option("--seed", default=None, type=int, help="Seed of everything random." + _default("seed"))
@click.option("--resume", is_flag=True, default=None, help="Continue from the run directory's last checkpoint.")
@click.option("--force", is_flag=True, default=None,
              help="Use weights (--resume, --teacher-weights, --student-weights) whose hash differs from their manifest.")
@click.option("--device", type=click.Choice(_choices("device")), default=None, help="Where to train."
              + _default("device"))
@click.option("--quiet", is_flag=True, help="No progress output.")
@click.option("--json", "as_json", is_flag=True, help="Print metrics as JSON on stdout.")
def command(losses, widths, quiet, as_json, **options):
    """Distill a teacher into a small task-specific student.

    With no --data, --teacher and --student it runs on the embedded synthetic radiograph task; volume crops with a
    foundation teacher (--teacher astra-ct) distill a 3-D embedding student, the same command with the same flags.
    """
    from ..compress.distill import distill as run

    given = given_options(options)
    if losses is not None:
        given["losses"] = csv_option(losses)
    if widths is not None:
        try:
            given["widths"] = tuple(int(v) for v in csv_option(widths))
        except ValueError:
            raise ConfigError(f"--widths {widths}: give channel counts as integers, e.g. 16,32,64,128") from None
    cfg = DistillConfig.from_options("", **given, progress=not quiet)
    result = run(cfg)
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun only rank 0 reports
    m = result.metrics
    if as_json:
        click.echo(json.dumps({k: v for k, v in m.items() if k != "history"}, indent=2))
        return
    click.echo(distill_task(m["task"]).summary(m))
    click.echo(f"artifacts in {result.out}")
