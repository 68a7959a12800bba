"""medfm-compress: distill, quantize, export and benchmark medical-imaging models.

Importing the package is cheap: it pulls in neither torch nor onnxruntime nor any GPU backend. The public Python API
is these names, each imported from its module the first time it is used (so the edge install, without torch, still
imports the package and uses ``predict`` and ``Engine``)::

    from medfm_compress import DistillConfig, distill, QuantizeConfig, quantize, ExportConfig, export_onnx
    from medfm_compress import BenchConfig, run_bench, PredictConfig, predict, Engine, load_recipe, run_pipeline

Deeper imports (``medfm_compress.compress.distill``) keep working; these are the documented, stable ones.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public name -> the module that defines it. (``export`` and ``bench`` are subpackages, so their stage functions are
# ``export_onnx`` and ``run_bench``.)
_PUBLIC = {
    "DistillConfig": "medfm_compress.compress.distill_config",
    "distill": "medfm_compress.compress.distill",
    "AdaptConfig": "medfm_compress.compress.adapt",
    "adapt": "medfm_compress.compress.adapt",
    "QuantizeConfig": "medfm_compress.compress.quantize_config",
    "quantize": "medfm_compress.compress.quantize",
    "ExportConfig": "medfm_compress.export.onnx",
    "export_onnx": "medfm_compress.export.onnx",
    "BenchConfig": "medfm_compress.bench.harness",
    "run_bench": "medfm_compress.bench.harness",
    "PredictConfig": "medfm_compress.runtime.predict",
    "predict": "medfm_compress.runtime.predict",
    "Engine": "medfm_compress.runtime.base",
    "load_recipe": "medfm_compress.pipeline",
    "run_pipeline": "medfm_compress.pipeline",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'medfm_compress' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # imported once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
