"""The names of the files in a run directory, in one place: every stage that writes or reads a run directory asks
:class:`RunLayout` instead of spelling a file name.

::

    RUN/
      manifest.json             every stage's record (medfm_compress.manifest)
      train.log                 distill's log (train.error.log when it failed)
      checkpoints/              distill's checkpoints while it runs
      student.safetensors       weights of a model by role (student, teacher, baseline) ...
      student.json              ... and its model card
      metrics.json              distill's metrics
      splits.csv                which file went to which split
      student.onnx              the exported fp32 student
      student.<variant>.onnx    a quantized variant (.xml + .bin for an OpenVINO IR)
      student.<name>.engine     a TensorRT engine (+ .engine.json, its sidecar)
      report/report.json        bench's report (report.md, junit.xml, pareto.png beside it)
      pipeline.json             the pipeline's stages and their cache keys
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["RunLayout", "MODEL_SUFFIXES"]

# A model on disk as weights and card, by role: <role>.safetensors + <role>.json.
MODEL_SUFFIXES = (".safetensors", ".json")


class _File:
    """A file (or folder) at a fixed place in the run directory, read as an attribute: ``RunLayout(run).manifest``."""

    def __init__(self, *parts: str, doc: str = ""):
        self.parts = parts
        self.__doc__ = doc or "/".join(parts)

    def __get__(self, layout, owner=None):
        return self if layout is None else layout.root.joinpath(*self.parts)


@dataclass(frozen=True)
class RunLayout:
    """Where each file of the run directory ``root`` is."""

    root: Path

    manifest = _File("manifest.json")
    metrics = _File("metrics.json")
    train_log = _File("train.log")
    checkpoints = _File("checkpoints")
    splits = _File("splits.csv")
    onnx = _File("student.onnx", doc="The exported fp32 student.")
    pipeline_state = _File("pipeline.json", doc="What the pipeline ran and the hashes it cached each stage under.")
    report_dir = _File("report")
    report = _File("report", "report.json")

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    def weights(self, role: str) -> Path:
        """A model's weights by role (``student``, ``teacher``, ``baseline``)."""
        return self.root / f"{role}{MODEL_SUFFIXES[0]}"

    def card(self, role: str) -> Path:
        """A model's card by role."""
        return self.root / f"{role}{MODEL_SUFFIXES[1]}"

    def model(self, role: str) -> Path:
        """A model by role as its loaders name it: the path without a suffix (``RUN/teacher``)."""
        return self.root / role

    def variant_stem(self, name: str) -> Path:
        """A quantized variant without its suffix (the target, or the winner of ``format: any``, completes it)."""
        return self.root / f"student.{name}"

    def engine(self, name: str) -> Path:
        return self.root / f"student.{name}.engine"
