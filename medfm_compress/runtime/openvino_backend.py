"""OpenVINO backend: an ``.xml`` IR, or an ONNX file with ``backend="openvino"``, on an Intel CPU (or GPU/NPU).

Options:
    hint: performance hint, ``latency`` (default) | ``throughput`` | ``cumulative_throughput``.
    inference_precision: ``f32`` | ``bf16`` | ``f16``, the precision of the ops that are not quantized. Default:
        the one the artifact was validated at (``bf16`` for a bf16 artifact, ``f32`` for fp32 and int8), never
        OpenVINO's CPU-dependent default (bf16 on CPUs with native bf16).
    metadata: a :class:`~medfm_compress.runtime.metadata.ModelMeta` for a model that carries none (a foreign
        ONNX or IR); ignored when the file has its own.

``threads`` sets ``INFERENCE_NUM_THREADS``; ``device`` is an OpenVINO device name (default ``CPU``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError, ModelError
from .base import Engine, register_backend, require_module

__all__ = ["OpenVINOEngine"]


@register_backend("openvino")
class OpenVINOEngine(Engine):
    """A compiled OpenVINO model with one reused infer request."""

    OPTIONS = ("hint", "inference_precision", "metadata")

    priority = 30
    suffixes = (".xml",)

    def _load_impl(self) -> None:
        require_module("openvino", "openvino", extra="openvino-runtime")
        from .metadata import check_supplied_shape, resolve_metadata
        from .openvino_loader import (
            compile_ov,
            load_ir_checked,
            ov_core,
            ov_inference_precision,
            ov_meta_props,
        )

        unknown = set(self.options) - set(self.OPTIONS)
        if unknown:
            raise ConfigError(
                f"unknown openvino option(s) {', '.join(sorted(unknown))}; known: {', '.join(self.OPTIONS)}"
            )
        supplied = self.options.get("metadata")
        if self.path.suffix.lower() == ".xml":
            model = load_ir_checked(self.path)
            meta = resolve_metadata(ov_meta_props(model), str(self.path), supplied)
        elif self.path.suffix.lower() == ".onnx":
            from .onnx_loader import load_onnx_checked

            proto = load_onnx_checked(self.path)
            meta = resolve_metadata({p.key: p.value for p in proto.metadata_props}, str(self.path), supplied)
            try:
                model = ov_core().read_model(str(self.path))
            except Exception as e:
                raise ModelError(
                    f"OpenVINO cannot read {self.path}: {str(e).strip().splitlines()[0][:300]}"
                ) from None
        else:
            raise ConfigError(f"{self.path}: the openvino backend runs .xml IR or .onnx files")
        if len(model.inputs) != 1:
            raise ModelError(
                f"{self.path} has {len(model.inputs)} inputs; medfm engines take one image tensor"
            )
        if meta is supplied:
            dims = model.inputs[0].get_partial_shape()
            check_supplied_shape(
                meta, [d.get_length() if d.is_static else None for d in list(dims)[1:]], str(self.path)
            )
        batch = model.inputs[0].get_partial_shape()[0]
        self._fixed_batch = batch.get_length() if batch.is_static else None
        precision = self.options.get("inference_precision") or ov_inference_precision(meta.precision)
        self._compiled = compile_ov(
            model,
            self.device,
            self.threads,
            self.options.get("hint"),
            str(self.path),
            inference_precision=precision,
        )
        self._request = self._compiled.create_infer_request()
        self._meta = meta
        threads = int(self._compiled.get_property("INFERENCE_NUM_THREADS"))
        self._info.update(
            precision=meta.precision,
            device=self.device or "CPU",
            threads=threads,
            hint=str(self._compiled.get_property("PERFORMANCE_HINT")),
            inference_precision=_compiled_precision(self._compiled, precision),
            openvino=require_module("openvino", "openvino", extra="openvino-runtime").__version__,
        )

    def weight_files(self) -> list[Path]:
        if self.path.suffix.lower() == ".xml":
            return [self.path, self.path.with_suffix(".bin")]
        return super().weight_files()

    def _run_impl(self, x: np.ndarray) -> np.ndarray:
        # Thin on purpose: one reused infer request and a zero-copy input; the logits are copied out because
        # the request's output buffer is overwritten by the next call.
        self._request.infer(x, share_inputs=True)
        return self._request.get_output_tensor(0).data.copy()

    def _close_impl(self) -> None:
        self._request = None
        self._compiled = None


def _compiled_precision(compiled, requested: str) -> str:
    """The inference precision the compiled model reports (CPU/GPU), else the one requested."""
    try:
        return compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
    except Exception:
        return requested
