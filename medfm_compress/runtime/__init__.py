"""Runtime: one :class:`Engine` interface over torch, ONNX Runtime and (where installed) TensorRT and OpenVINO.

``Engine.load(path)`` picks the backend from the artifact; backends register themselves with
:func:`register_backend` and import their heavy package only when an engine is loaded.
"""

from .base import Engine, available_backends, backend_for_path, get_backend, register_backend

__all__ = ["Engine", "available_backends", "backend_for_path", "get_backend", "register_backend"]
