"""What training stages write: the progress log and model weights + card pairs, each file atomically."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from .._io import atomic_path
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
