"""``medfm-compress adapt``."""

from __future__ import annotations

import json

import click

from ..compress.adapt import METHODS, AdaptConfig
from ._common import field_default, given_options, teacher_normalisation_options


def _default(name: str) -> str:
    return field_default(AdaptConfig, name)


@click.command(name="adapt")
@click.option("--teacher", required=True,
              help="Foundation model architecture: timm:NAME or python:pkg.module:factory.")
@click.option("--teacher-weights", default=None, type=click.Path(dir_okay=False),
              help="Its pretrained weights (.safetensors, or .pt/.pth read with weights_only); the head may predict "
              "another label set (it is replaced) or be absent.")
@click.option("--weights-key-map", type=click.Choice(["name", "order"]), default=None,
              help="'order': the file's tensors map onto the architecture in order (weights written by another "
              "implementation of the same network); shapes must agree one by one." + _default("weights_key_map"))
@click.option("--data", default=None, help="Data spec with labels (folder:DIR, dicom:DIR, medmnist:FILE.npz, "
              "synthetic)." + _default("data"))
@click.option("--method", type=click.Choice(METHODS), default=None,
              help="linear: a new head on the frozen encoder (features computed once, cached); finetune: the encoder "
              "at --encoder-lr-scale x lr and the new head at lr." + _default("method"))
@click.option("--label-fraction", default=None, type=float,
              help="Fraction of the training labels used (stratified, seeded)." + _default("label_fraction"))
@click.option("--input-size", default=None, type=int, help="Teacher input size in pixels (default: the data's).")
@teacher_normalisation_options
@click.option("--finetune-blocks", default=None, type=int,
              help="finetune: train only the last N blocks/stages of the encoder (default: all layers).")
@click.option("--epochs", default=None, type=int, help="Maximum epochs (default 100 linear, 10 finetune); "
              "training stops early when val AUC stops improving.")
@click.option("--steps", default=None, type=int, help="finetune: the budget in optimizer steps instead of epochs "
              "(rounded up to whole epochs; early stopping still applies).")
@click.option("--patience", default=None, type=int, help="Epochs without a val AUC gain before stopping "
              "(default 10 linear, 3 finetune).")
@click.option("--lr", default=None, type=float, help="Head learning rate (default 1e-2 linear, 1e-3 finetune).")
@click.option("--encoder-lr-scale", default=None, type=float, help="finetune: the encoder's share of the learning "
              "rate." + _default("encoder_lr_scale"))
@click.option("--batch-size", default=None, type=int, help="Images per step." + _default("batch_size"))
@click.option("--augment/--no-augment", default=None, help="finetune: small affine + intensity augmentation."
              + _default("augment"))
@click.option("--seed", default=None, type=int, help="Seed of everything random." + _default("seed"))
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help="Where to train."
              + _default("device"))
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Run directory to write."
              + _default("out"))
@click.option("--quiet", is_flag=True, help="No progress output.")
@click.option("--json", "as_json", is_flag=True, help="Print metrics as JSON on stdout.")
def command(quiet, as_json, **options):
    """Adapt a pretrained foundation model to your labels: a linear probe or fine-tuning.

    Writes OUT/teacher.safetensors + OUT/teacher.json, which `distill --teacher OUT/teacher` takes, and
    OUT/metrics.json with val/test accuracy and macro AUC and their bootstrap 95% CIs.
    """
    from ..compress.adapt import adapt

    cfg = AdaptConfig(**given_options(options), progress=not quiet)
    result = adapt(cfg)
    m = result.metrics
    if as_json:
        click.echo(json.dumps({k: v for k, v in m.items() if k != "history"}, indent=2))
        return
    click.echo(adapt_summary(m))
    click.echo(f"teacher written: {result.out}/teacher (pass it as distill --teacher {result.out}/teacher)")


def _ci(entry: dict, key: str) -> str:
    v, ci = entry.get(key), entry.get(f"{key}_ci") or [None, None]
    if v is None:
        return "-"
    if ci[0] is None:
        return f"{v:.4f}"
    return f"{v:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]"


def adapt_summary(m: dict) -> str:
    lines = [f"adapted {m['teacher']} ({m['method']}, {m['labeled_images']} labelled images, best epoch "
             f"{m.get('best_epoch') or '-'})"]
    for split in ("val", "test"):
        if split in m:
            e = m[split]
            lines.append(f"{split:4s} n={e['n']}: accuracy {_ci(e, 'accuracy')}  macro AUC {_ci(e, 'macro_auc')}")
    lines += [f"warning: {w}" for w in m.get("warnings", [])]
    return "\n".join(lines)
