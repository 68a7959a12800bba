"""ONNX Runtime backend: CPU, plus the CUDA and TensorRT execution providers where installed."""

from __future__ import annotations

import os

import numpy as np

from ..errors import ConfigError, ModelError, first_line
from .base import Engine, register_backend, require_module
from .onnx_loader import BatchStreams, stream_threads

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
        session_config: ``{key: value}`` session configuration entries passed through to ONNX Runtime (e.g.
            ``{"session.intra_op.allow_spinning": "0"}`` where the caller has work of its own between runs).
        metadata: a :class:`~medfm_compress.runtime.metadata.ModelMeta` for a model that carries none (a foreign
            ONNX); ignored when the file has its own.
        streams: run a batch as this many sub-batches at once, each on ``threads // streams`` intra-op threads
            (:class:`~medfm_compress.runtime.onnx_loader.BatchStreams`; default 1: one run on every thread). On CPU,
            int8 QDQ models at batch > 1 gain most: ONNX Runtime's QLinearConv splits only each image's pixels among
            threads. ``quantize --precision auto --batch-sizes`` says where it pays.
    """

    OPTIONS = ("providers", "provider_options", "graph_optimization_level", "session_config", "metadata", "streams")

    priority = 20
    suffixes = (".onnx",)

    def _load_impl(self) -> None:
        ort = require_module("onnxruntime", "onnxruntime")
        from .metadata import check_supplied_shape, resolve_metadata

        unknown = set(self.options) - set(self.OPTIONS)
        if unknown:
            raise ConfigError(
                f"unknown onnxruntime option(s) {', '.join(sorted(unknown))}; known: "
                f"{', '.join(self.OPTIONS)}"
            )
        if not self.path.is_file():
            raise ModelError(f"{self.path} does not exist")
        so = ort.SessionOptions()
        threads = self.threads or os.cpu_count() or 1
        streams = self.options.get("streams", 1)
        # Checked before anything loads: one-line errors for a bad value or a GPU device.
        so.intra_op_num_threads = stream_threads(threads, streams)
        if streams > 1 and (self.device or "cpu").split(":", 1)[0] != "cpu":
            raise ConfigError(f"onnxruntime option streams={streams} is for device cpu, not {self.device}")
        so.inter_op_num_threads = 1
        level = self.options.get("graph_optimization_level", "all")
        levels = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        if level not in levels:
            raise ConfigError(f"graph_optimization_level must be one of {', '.join(levels)}, got {level!r}")
        so.graph_optimization_level = levels[level]
        for key, value in (self.options.get("session_config") or {}).items():
            try:
                so.add_session_config_entry(str(key), str(value))
            except Exception as e:  # ORT's own exception types
                raise ConfigError(f"onnxruntime session config {key}={value!r}: {first_line(e)}") from None
        providers = list(
            self.options.get("providers") or providers_for_device(self.device, ort.get_available_providers())
        )
        popts = self.options.get("provider_options") or {}
        if self.device and ":" in self.device and "CUDAExecutionProvider" in providers:
            popts = {
                **popts,
                "CUDAExecutionProvider": {
                    "device_id": int(self.device.split(":")[1]),
                    **popts.get("CUDAExecutionProvider", {}),
                },
            }
        try:
            self._sess = ort.InferenceSession(
                str(self.path),
                sess_options=so,
                providers=providers,
                provider_options=[popts.get(p, {}) for p in providers],
            )
        except Exception as e:  # ORT raises its own exception types for corrupt/unsupported models
            raise ModelError(f"onnxruntime cannot load {self.path}: {str(e).splitlines()[0]}") from None
        props = self._sess.get_modelmeta().custom_metadata_map
        supplied = self.options.get("metadata")
        self._meta = resolve_metadata(props, str(self.path), supplied)
        inputs, outputs = self._sess.get_inputs(), self._sess.get_outputs()
        if len(inputs) != 1:
            raise ModelError(f"{self.path} has {len(inputs)} inputs; medfm engines take one image tensor")
        if self._meta is supplied:
            check_supplied_shape(self._meta, inputs[0].shape[1:], str(self.path))
        self._input_name = inputs[0].name
        self._output_names = [outputs[0].name]
        batch_dim = inputs[0].shape[0]
        self._fixed_batch = batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else None
        if streams > 1 and self._fixed_batch is not None:
            raise ConfigError(f"onnxruntime option streams={streams} splits a batch into sub-batches, but "
                              f"{self.path.name} has a fixed batch of {self._fixed_batch}; drop streams or re-export "
                              "with a dynamic batch")
        self._feed: dict[str, np.ndarray] = {}
        self._streams = BatchStreams(streams) if streams > 1 else None
        self._info.update(
            precision=self._meta.precision,
            device=self.device or "cpu",
            threads=threads,
            providers=self._sess.get_providers(),
            **({"streams": streams} if streams > 1 else {}),
        )

    def _run_impl(self, x: np.ndarray) -> np.ndarray:
        # Thin on purpose: the harness must time ONNX Runtime, not us (reuse the feed dict, no copies).
        if self._streams is not None:
            return self._streams.run(self._run_one, x)
        self._feed[self._input_name] = x
        return self._sess.run(self._output_names, self._feed)[0]

    def _run_one(self, x: np.ndarray) -> np.ndarray:
        # One stream's sub-batch: a feed of its own (the streams run at once).
        return self._sess.run(self._output_names, {self._input_name: x})[0]

    def _close_impl(self) -> None:
        self._feed.clear()
        if self._streams is not None:
            self._streams.close()
            self._streams = None
        self._sess = None
