"""ONNX Runtime backend: CPU, plus the CUDA and TensorRT execution providers where installed."""

from __future__ import annotations

import os

import numpy as np

from ..errors import ConfigError, ModelError
from .base import Engine, register_backend, require_module

__all__ = ["OnnxRuntimeEngine", "providers_for_device"]

_DEVICE_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def providers_for_device(device: str | None, available: list[str]) -> list[str]:
    """Execution providers for ``device`` (``cpu``, ``cuda[:N]``, ``tensorrt``); a missing one is an error."""
    kind = (device or "cpu").split(":", 1)[0]
    if kind not in _DEVICE_PROVIDERS:
        raise ConfigError(f"onnxruntime device must be one of {', '.join(_DEVICE_PROVIDERS)}, got {device!r}")
    wanted = _DEVICE_PROVIDERS[kind]
    if wanted[0] not in available:
        raise ConfigError(
            f"device {device!r} needs onnxruntime's {wanted[0]}, which this onnxruntime build lacks "
            f"(available: {', '.join(available)}); install onnxruntime-gpu or use device cpu"
        )
    return [p for p in wanted if p in available]


@register_backend("onnxruntime")
class OnnxRuntimeEngine(Engine):
    """An ``InferenceSession`` on an ONNX model carrying medfm metadata.

    Options:
        providers: explicit execution-provider list (overrides ``device``).
        provider_options: ``{provider name: {option: value}}`` passed through to ONNX Runtime.
        graph_optimization_level: ``disable`` | ``basic`` | ``extended`` | ``all`` (default ``all``).
    """

    priority = 20
    suffixes = (".onnx",)

    def _load_impl(self) -> None:
        ort = require_module("onnxruntime", "onnxruntime")
        from .metadata import decode_metadata

        unknown = set(self.options) - {"providers", "provider_options", "graph_optimization_level"}
        if unknown:
            raise ConfigError(f"unknown onnxruntime option(s) {', '.join(sorted(unknown))}; known: providers, "
                              "provider_options, graph_optimization_level")
        if not self.path.is_file():
            raise ModelError(f"{self.path} does not exist")
        so = ort.SessionOptions()
        threads = self.threads or os.cpu_count() or 1
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        level = self.options.get("graph_optimization_level", "all")
        levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                  "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
        if level not in levels:
            raise ConfigError(f"graph_optimization_level must be one of {', '.join(levels)}, got {level!r}")
        so.graph_optimization_level = levels[level]
        providers = list(self.options.get("providers") or providers_for_device(self.device,
                                                                                ort.get_available_providers()))
        popts = self.options.get("provider_options") or {}
        if self.device and ":" in self.device and "CUDAExecutionProvider" in providers:
            popts = {**popts, "CUDAExecutionProvider": {"device_id": int(self.device.split(":")[1]),
                                                        **popts.get("CUDAExecutionProvider", {})}}
        try:
            self._sess = ort.InferenceSession(str(self.path), sess_options=so, providers=providers,
                                              provider_options=[popts.get(p, {}) for p in providers])
        except Exception as e:  # ORT raises its own exception types for corrupt/unsupported models
            raise ModelError(f"onnxruntime cannot load {self.path}: {str(e).splitlines()[0]}") from None
        self._meta = decode_metadata(self._sess.get_modelmeta().custom_metadata_map, str(self.path))
        inputs, outputs = self._sess.get_inputs(), self._sess.get_outputs()
        if len(inputs) != 1:
            raise ModelError(f"{self.path} has {len(inputs)} inputs; medfm engines take one image tensor")
        self._input_name = inputs[0].name
        self._output_names = [outputs[0].name]
        batch_dim = inputs[0].shape[0]
        self._fixed_batch = batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else None
        self._feed: dict[str, np.ndarray] = {}
        self._info.update(precision=self._meta.precision, device=self.device or "cpu", threads=threads,
                          providers=self._sess.get_providers())

    def _run_impl(self, x: np.ndarray) -> np.ndarray:
        # Thin on purpose: the harness must time ONNX Runtime, not us (reuse the feed dict, no copies).
        self._feed[self._input_name] = x
        return self._sess.run(self._output_names, self._feed)[0]

    def _close_impl(self) -> None:
        self._feed.clear()
        self._sess = None
