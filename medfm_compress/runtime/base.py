"""The one inference interface every backend implements.

An :class:`Engine` loads a model artifact (a run directory or model card for torch, an ``.onnx`` file for ONNX
Runtime, a TensorRT plan, ...), checks its inputs against the model's metadata, and runs it. Backends are
subclasses registered with :func:`register_backend`; they implement three hooks (``_load_impl``,
``_run_impl``, ``_close_impl``) and leave input checks, preprocessing and bookkeeping to this base class,
so each backend stays small (the Polygraphy runner pattern).

Backend modules import their heavy package (torch, onnxruntime, tensorrt, openvino) only inside
``_load_impl``; a missing package raises :class:`~medfm_compress.errors.BackendMissingError` naming the
extra to install.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .._io import sha256_file
from .._registry import Registry
from ..errors import BackendMissingError, ConfigError, DataError, ModelError

__all__ = [
    "Engine",
    "register_backend",
    "available_backends",
    "backend_for_path",
    "get_backend",
    "require_module",
]

# Backend name -> (module that registers it, the extra that installs what it runs on; None: a core dependency).
# Adding a backend is: a module with a class decorated by @register_backend, plus its line here. The torch
# backend builds networks from model cards, so it lives in the models layer; it is found here by name, as an
# installed entry point would be, and the runtime itself imports nothing above it.
_BACKEND_MODULES: dict[str, tuple[str, str | None]] = {
    "torch": ("medfm_compress.models.torch_engine", "train"),
    "onnxruntime": ("medfm_compress.runtime.onnxruntime_backend", None),
    "tensorrt": ("medfm_compress.runtime.tensorrt_backend", "trt"),
    "openvino": ("medfm_compress.runtime.openvino_backend", "openvino"),
}

# Suffixes of artifacts whose backend may not be available; used only to make the error message exact.
_SUFFIX_HINTS = {".onnx": "onnxruntime", ".engine": "tensorrt", ".plan": "tensorrt", ".xml": "openvino",
                 ".safetensors": "torch", ".json": "torch"}

_REGISTRY: Registry[type[Engine]] = Registry("runtime backend",
                                             origin=lambda c: f"{c.__module__}.{c.__qualname__}")
# Backends whose module failed to import: name -> the import error.
_UNAVAILABLE: dict[str, str] = {}
_modules_loaded = False


def register_backend(name: str):
    """Class decorator registering an :class:`Engine` subclass under ``name``; a duplicate name is an error."""

    def wrap(cls: type[Engine]) -> type[Engine]:
        if not (isinstance(cls, type) and issubclass(cls, Engine)):
            raise TypeError(f"@register_backend({name!r}) must decorate an Engine subclass, got {cls!r}")
        cls.backend_name = name
        _REGISTRY.register(name, cls)
        return cls

    return wrap


def _load_backend_modules() -> None:
    global _modules_loaded
    if _modules_loaded:
        return
    _modules_loaded = True
    for name, (module, _extra) in _BACKEND_MODULES.items():
        try:
            importlib.import_module(module)
        except ImportError as e:
            # A backend whose module cannot import here (an install without its extra) must not take the
            # others down; asking for it by name says what to install.
            _UNAVAILABLE[name] = f"{type(e).__name__}: {e}"


def available_backends() -> list[str]:
    """Names of the registered backends (whether or not their package is installed)."""
    _load_backend_modules()
    return sorted(_REGISTRY.names())


def get_backend(name: str) -> type[Engine]:
    """The backend class called ``name``; an unknown name is a one-line error listing the backends."""
    _load_backend_modules()
    if name in _UNAVAILABLE:
        raise BackendMissingError(f"the {name} runtime backend", _BACKEND_MODULES[name][1] or "all",
                                  detail=_UNAVAILABLE[name])
    if name not in _REGISTRY:
        raise ConfigError(f"unknown runtime backend {name!r}; available backends: {', '.join(available_backends())}")
    return _REGISTRY.get(name)


def backend_for_path(path: str | os.PathLike) -> str:
    """Pick the backend for an artifact from its path (directory, suffix, or run-directory stem)."""
    _load_backend_modules()
    p = Path(path)
    for cls in sorted(_REGISTRY, key=lambda c: c.priority):
        if cls.accepts(p):
            return cls.backend_name
    hint = "torch" if p.is_dir() else _SUFFIX_HINTS.get(p.suffix.lower())
    if hint and hint not in _REGISTRY:
        get_backend(hint)  # names the extra that installs it
        raise ConfigError(f"{p}: the {hint} runtime backend is not available in this version of medfm-compress")
    if not p.exists() and not p.parent.joinpath(f"{p.name}.json").exists():
        raise ModelError(f"{p} does not exist; give a run directory, a model card (.json), .safetensors or .onnx file")
    raise ConfigError(
        f"cannot tell which runtime backend runs {p}; pass backend= one of {', '.join(available_backends())}"
    )


def require_module(module: str, backend: str, extra: str | None = None):
    """Import ``module`` or raise :class:`BackendMissingError` naming the extra that installs it.

    ``extra=None`` marks a core dependency (torch, onnxruntime): the fix is to reinstall the package.
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if extra is None:
            raise ModelError(f"{backend} backend: import {module} failed ({e}); it is a core dependency of "
                             "medfm-compress: reinstall with pip install medfm-compress") from None
        raise BackendMissingError(backend, extra, detail=f"import {module} failed: {e}") from None


class Engine:
    """A loaded model that turns preprocessed NCHW float32 tensors into logits.

    Use :meth:`Engine.load`; engines are context managers (``with Engine.load(path) as eng: ...``).

    Subclasses implement:

    * ``_load_impl()``: open the artifact; set ``self._meta`` (a :class:`ModelMeta`), and optionally
      ``self._fixed_batch`` (an int for a static batch dimension), ``self._max_batch`` and ``self._info``
      entries (``precision``, ``params``, ``device``, ``threads``).
    * ``_run_impl(x)``: run a checked, C-contiguous float32 batch; return logits as a numpy array. Keep it a
      thin direct call: the latency harness times it.
    * ``_close_impl()``: release the session/context.
    """

    backend_name: ClassVar[str] = ""
    # Lower priority is asked first in backend_for_path.
    priority: ClassVar[int] = 50
    suffixes: ClassVar[tuple[str, ...]] = ()
    # True when the backend queues its GPU work on torch's current CUDA stream, so CUDA events recorded there
    # bracket the engine's device time (the latency harness then times with events).
    supports_cuda_events: ClassVar[bool] = False

    def __init__(self, path: str | os.PathLike, device: str | None = None, threads: int | None = None,
                 **options: Any):
        if threads is not None and threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}")
        self.path = Path(path)
        self.device = device
        self.threads = threads
        self.options = options
        self._meta = None
        self._fixed_batch: int | None = None
        self._max_batch: int | None = None
        self._info: dict[str, Any] = {}
        self._loaded = False
        self._sha256: str | None = None

    # ----- construction -----
    @classmethod
    def accepts(cls, path: Path) -> bool:
        """Whether this backend runs the artifact at ``path`` (by suffix by default)."""
        return path.suffix.lower() in cls.suffixes

    @staticmethod
    def load(path: str | os.PathLike, backend: str | None = None, device: str | None = None,
             threads: int | None = None, **options: Any) -> Engine:
        """Open ``path`` with ``backend`` (default: chosen from the path) and return the loaded engine.

        Args:
            path: run directory (or a run-directory stem such as ``runs/p/teacher``), model card (.json),
                .safetensors, .onnx, TensorRT plan (.engine/.plan).
            backend: backend name (``torch``, ``onnxruntime``, ...); None picks it from ``path``.
            device: ``cpu`` or ``cuda[:N]`` (backend-specific values allowed); None is the backend default.
            threads: intra-op CPU threads; None uses every core of the machine.
            **options: backend options (e.g. ``name="teacher"`` for torch run directories, ``providers`` and
                ``provider_options`` for ONNX Runtime).
        """
        cls = get_backend(backend) if backend is not None else get_backend(backend_for_path(path))
        eng = cls(path, device=device, threads=threads, **options)
        eng._load_impl()
        if eng._meta is None:
            raise ModelError(f"{path}: the {cls.backend_name} backend did not read the model's metadata")
        eng._loaded = True
        return eng

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the backend's resources; idempotent."""
        if self._loaded:
            self._loaded = False
            self._close_impl()

    # ----- properties -----
    @property
    def meta(self):
        """The :class:`~medfm_compress.runtime.metadata.ModelMeta` of the loaded model."""
        return self._meta

    @property
    def input_shape(self) -> tuple[int, ...]:
        """``(channels, height, width)`` the model expects (``(channels, x, y, z)`` for a volume model)."""
        pre = self._meta.preprocess
        return (pre.channels, *(int(v) for v in pre.input_size))

    @property
    def fixed_batch(self) -> int | None:
        """The only batch size the artifact accepts, or None when its batch dimension is dynamic."""
        return self._fixed_batch

    @property
    def batch_range(self) -> tuple[int, int | None]:
        """``(min, max)`` batch sizes the artifact accepts (max None: unbounded)."""
        if self._fixed_batch is not None:
            return self._fixed_batch, self._fixed_batch
        return int(getattr(self, "_min_batch", 1) or 1), self._max_batch

    def weight_files(self) -> list[Path]:
        """Files whose bytes make up the artifact (for size and hash)."""
        return [self.path] if self.path.is_file() else []

    @property
    def info(self) -> dict[str, Any]:
        """Backend, precision, device, threads, params (if known), size_bytes, path and sha256."""
        files = self.weight_files()
        if self._sha256 is None and files:
            # One hash over the main file: it identifies the artifact in reports and manifests.
            self._sha256 = sha256_file(files[0])
        return {
            "backend": self.backend_name,
            "precision": self._info.get("precision", self._meta.precision if self._meta else None),
            "device": self._info.get("device", self.device or "cpu"),
            "threads": self._info.get("threads", self.threads),
            "params": self._info.get("params"),
            "size_bytes": sum(f.stat().st_size for f in files),
            "path": str(files[0] if files else self.path),
            "sha256": self._sha256,
            **{k: v for k, v in self._info.items() if k not in ("precision", "device", "threads", "params")},
        }

    # ----- inference -----
    def check_input(self, tensors: Any) -> np.ndarray:
        """Validate a preprocessed batch against the model's input spec; returns it as a contiguous array."""
        if not isinstance(tensors, np.ndarray):
            raise DataError(f"engine input must be a numpy array, got {type(tensors).__name__}")
        if tensors.dtype != np.float32:
            raise DataError(f"engine input must be float32 (preprocessed), got {tensors.dtype}; use engine.predict "
                            "for raw images")
        if tensors.ndim != 1 + len(self.input_shape) or tensors.shape[1:] != self.input_shape:
            raise DataError(
                f"engine input must have shape (N, {', '.join(map(str, self.input_shape))}), got {tensors.shape}; "
                "preprocess with the model's PreprocessSpec (engine.predict does it)"
            )
        n = tensors.shape[0]
        if n < 1:
            raise DataError("engine input has an empty batch")
        if self._fixed_batch is not None and n != self._fixed_batch:
            raise DataError(f"{self.path.name} was built for batch size {self._fixed_batch}, got a batch of {n}")
        if self._max_batch is not None and n > self._max_batch:
            raise DataError(f"{self.path.name} accepts batches up to {self._max_batch}, got {n}")
        if not tensors.flags.c_contiguous:
            tensors = np.ascontiguousarray(tensors)
        return tensors

    def run(self, tensors: np.ndarray) -> np.ndarray:
        """Logits for a preprocessed ``(N, C, H, W)`` float32 batch."""
        if not self._loaded:
            raise ModelError(f"engine for {self.path} is closed")
        return self._run_impl(self.check_input(tensors))

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """Raw images -> the model's input tensors (from the model's metadata)."""
        return self._meta.preprocess(images)

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(logits, probabilities)`` for raw images (preprocessing from the model's metadata)."""
        from .tasks import get_task

        logits = self.run(self.preprocess(images))
        return logits, get_task(self._meta.task).probabilities(logits).astype(np.float32)

    def synchronize(self) -> None:
        """Wait for queued device work (no-op on CPU backends; GPU backends override)."""

    # ----- hooks -----
    def _load_impl(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _run_impl(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _close_impl(self) -> None:
        """Default: nothing to release."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} backend={self.backend_name} path={self.path} loaded={self._loaded}>"
