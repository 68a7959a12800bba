"""What training stages write: the progress log and model weights + card pairs, each file atomically."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from .._io import atomic_path, atomic_write_json
from ..layout import RunLayout

__all__ = ["TrainLog", "write_model", "link_or_copy", "RunResult"]


@dataclass
class RunResult:
    """What a training stage (distill, adapt) returns: its run directory, metrics and written artifacts."""

    out: Path
    metrics: dict[str, Any]
    artifacts: dict[str, Path]


class TrainLog:
    """Writes progress lines to a log file (``train.log``) and, when ``echo``, to stderr."""

    def __init__(self, path: Path, echo: bool):
        self.path = path
        self.echo = echo

    def __call__(self, line: str) -> None:
        import click

        stamp = time.strftime("%H:%M:%S")
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(f"{stamp} {line}\n")
        if self.echo:
            click.echo(line, err=True)


def write_model(model, card, out: Path, name: str) -> tuple[Path, Path]:
    """``out/<name>.safetensors`` and ``out/<name>.json`` (the model card), each written atomically."""
    from ..models.weights import save_state_dict

    layout = RunLayout(out)
    w = save_state_dict(model, layout.weights(name),
                        metadata={"arch": card.arch, "tool": f"medfm-compress {__version__}"})
    c = card.save(layout.card(name))
    return w, c


def link_or_copy(src: Path, dst: Path) -> Path:
    """``dst`` as a hard link to ``src`` (a copy across file systems), swapped in atomically."""
    if src.resolve() == dst.resolve():
        return dst
    with atomic_path(dst, suffix=".safetensors") as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
    return dst


def record_run(manifest, stage: str, config: dict[str, Any], inputs: dict[str, Any], task, seed: int,
               artifacts: dict[str, Path], metrics: dict[str, Any]) -> dict[str, Path]:
    """The end of a training stage (distill, adapt), the same for each: ``metrics.json`` and ``splits.csv`` (which
    file went to which split) written atomically into the run directory, then the stage's manifest record, its
    data input with what was read of each split. Returns ``artifacts`` with the two files added."""
    from ..data.digest import data_digest, write_splits_csv

    layout = RunLayout(manifest.run_dir)
    artifacts["metrics"] = atomic_write_json(layout.metrics, metrics)
    artifacts["splits"] = write_splits_csv(task, layout.splits)
    rec = manifest.start(stage, config, inputs)
    rec.inputs["data"]["digest"] = data_digest(task, inputs["data"], seed)
    manifest.finish(rec, artifacts, {k: v for k, v in metrics.items() if k != "history"})
    return artifacts
