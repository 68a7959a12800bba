"""The registry of export formats behind ``medfm-compress export --format NAME``.

A format is one module with one function decorated by :func:`register_format`; it declares the request
options it honours, and :func:`export_artifact` refuses an option the chosen format would ignore (one line
naming both) instead of dropping it. Adding a format is a new module plus its name in :data:`FORMAT_MODULES`.

The registered modules are imported by name when a format is first looked up, like installed entry points:
``tensorrt``'s lives in :mod:`medfm_compress.compress.tensorrt_export` because building an int8 engine from a
run directory quantizes first. Each plug-in module keeps to the layers; this module imports none of them.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._registry import Registry
from ..errors import ConfigError

__all__ = [
    "ExportRequest",
    "ExportOutcome",
    "ExportFormat",
    "FORMAT_MODULES",
    "register_format",
    "get_format",
    "available_formats",
    "export_artifact",
]

# format name -> the module that registers it (imported on first use).
FORMAT_MODULES: dict[str, str] = {
    "onnx": "medfm_compress.export.onnx",
    "openvino": "medfm_compress.export.openvino",
    "tensorrt": "medfm_compress.compress.tensorrt_export",
}


@dataclass(frozen=True)
class ExportRequest:
    """What ``medfm-compress export`` asks of a format. ``None`` means "the format's default"; an option that is
    not None counts as given, and a format that does not honour it refuses it.

    Attributes:
        source: run directory, model card (.json), .safetensors or .onnx file.
        out: output path (default: chosen by the format next to the source).
        model: which model of a run directory (student, teacher, baseline).
        force: use inputs whose hash differs from the run manifest.
        progress: print progress lines.
        precision, batch_sizes, flavour, targets, workspace_mb, timing_cache: engine build options (tensorrt).
        opset, atol, num_check, dynamo, simplify: ONNX export options.
        data: data spec of the real images used by the self-check (onnx) or calibration (tensorrt int8/fp8).
        allow_small_holdout: tensorrt int8/fp8 from a run directory: the quantization gate judges point values
            where the held-out set is too small to show its threshold by the 95% lower bound.
    """

    source: str
    out: str | None = None
    model: str = "student"
    force: bool = False
    progress: bool = True
    precision: str | None = None
    batch_sizes: tuple[int, ...] | None = None
    flavour: str | None = None
    targets: tuple[str, ...] | None = None
    workspace_mb: int | None = None
    timing_cache: str | None = None
    opset: int | None = None
    atol: float | None = None
    data: str | None = None
    num_check: int | None = None
    dynamo: bool | None = None
    simplify: bool | None = None
    allow_small_holdout: bool | None = None

    # Always honoured: every format reads these.
    COMMON = ("source", "out", "model", "force", "progress")

    def given(self) -> list[str]:
        """Names of the optional fields that were set (not None)."""
        return [f.name for f in dataclasses.fields(self) if f.name not in self.COMMON
                and getattr(self, f.name) is not None]

    def options(self, *names: str, **defaults: Any) -> dict[str, Any]:
        """``{name: value}`` of ``names`` that were set, over ``defaults``."""
        out = dict(defaults)
        out.update({n: getattr(self, n) for n in names if getattr(self, n) is not None})
        return out


@dataclass
class ExportOutcome:
    """What a format wrote: the main file, every file written, lines for the terminal, a JSON record."""

    path: Path
    files: list[Path]
    lines: list[str] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExportFormat:
    name: str
    fn: Callable[[ExportRequest], ExportOutcome]
    options: tuple[str, ...]
    description: str = ""


_FORMATS: Registry[ExportFormat] = Registry("export format", origin=lambda f: f.fn.__module__)
_IMPORT_ERRORS: dict[str, str] = {}


def register_format(name: str, options: tuple[str, ...], description: str = ""):
    """Decorator registering ``fn(request) -> ExportOutcome`` as export format ``name``; a duplicate name is an
    error. ``options``: the :class:`ExportRequest` fields the format honours beyond the common ones."""
    unknown = set(options) - {f.name for f in dataclasses.fields(ExportRequest)}
    if unknown:
        raise ValueError(f"export format {name!r} declares unknown options {sorted(unknown)}")

    def deco(fn: Callable[[ExportRequest], ExportOutcome]):
        if FORMAT_MODULES.get(name, fn.__module__) != fn.__module__:
            raise ValueError(f"export format {name!r} is already registered by {FORMAT_MODULES[name]}")
        _FORMATS.register(name, ExportFormat(name, fn, tuple(options), description))
        return fn

    return deco


def _load(name: str) -> None:
    if name in _FORMATS or name not in FORMAT_MODULES or name in _IMPORT_ERRORS:
        return
    try:
        importlib.import_module(FORMAT_MODULES[name])
    except ImportError as e:
        _IMPORT_ERRORS[name] = f"{type(e).__name__}: {e}"


def available_formats() -> list[str]:
    """Every format name this install knows (whether or not its extra is installed)."""
    return sorted(set(FORMAT_MODULES) | set(_FORMATS.names()))


def get_format(name: str) -> ExportFormat:
    """The registered format ``name``; unknown or not importable is a one-line error."""
    _load(name)
    if name in _FORMATS:
        return _FORMATS.get(name)
    if name in _IMPORT_ERRORS:
        raise ConfigError(
            f"export format {name!r} needs the 'export' extra ({_IMPORT_ERRORS[name]}): "
            "pip install 'medfm-compress[export]'"
        )
    raise ConfigError(f"unknown export format {name!r}; available: {', '.join(available_formats())}")


def export_artifact(fmt: str, request: ExportRequest) -> ExportOutcome:
    """Export ``request.source`` to format ``fmt``; an option the format would ignore is refused first."""
    f = get_format(fmt)
    ignored = [n for n in request.given() if n not in f.options]
    if ignored:
        flags = ", ".join("--" + n.replace("_", "-") for n in ignored)
        raise ConfigError(f"{flags} do(es) not apply to --format {fmt} (it honours: "
                          f"{', '.join('--' + o.replace('_', '-') for o in f.options) or 'no extra options'})")
    return f.fn(request)
