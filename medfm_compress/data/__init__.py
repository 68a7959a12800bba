"""Datasets: spec strings, readers, preprocessing and the embedded synthetic default."""

from __future__ import annotations

from ..runtime.preprocess import PreprocessSpec
from .dataset import SPLITS, TASKS, Split, TaskData
from .lazy import LazyImages, iter_batches, memory_budget_bytes
from .spec import DATA_KINDS, DEFAULT_DATA_SPEC, load_data, parse_data_spec

__all__ = [
    "SPLITS",
    "TASKS",
    "Split",
    "TaskData",
    "LazyImages",
    "iter_batches",
    "memory_budget_bytes",
    "PreprocessSpec",
    "DATA_KINDS",
    "DEFAULT_DATA_SPEC",
    "load_data",
    "parse_data_spec",
]
