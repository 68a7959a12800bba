"""TensorRT engine backend (``.engine`` / ``.plan`` with a medfm sidecar), classic or RTX flavour.

Compatibility is decided before deserializing (:func:`~medfm_compress.export.tensorrt.check_engine`: sidecar,
hash, installed version, RTX validity API / classic compute capability). Inputs and outputs live in torch CUDA
tensors sized for the profile's largest batch; ``execute_async_v3`` runs on a torch CUDA stream. Batches
outside the engine's optimization profile are a one-line error.

The ONNX Runtime TensorRT execution provider is the other way to run on TensorRT: load the ``.onnx`` with
``Engine.load(path, backend="onnxruntime", device="tensorrt")``.

Options:
    cuda_graphs: capture one CUDA graph per batch size and replay it (less launch overhead at batch 1).
    runtime_cache: TensorRT-RTX only: a file holding JIT-compiled kernels, read at load and written at close,
        so the second load of an engine on the same GPU skips kernel compilation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_bytes
from ..errors import ConfigError, DataError, ModelError
from .base import Engine, register_backend

__all__ = ["TensorRTEngine"]

_OPTIONS = ("cuda_graphs", "runtime_cache", "verify_hash")


@register_backend("tensorrt")
class TensorRTEngine(Engine):
    """A deserialized TensorRT engine running on one CUDA device."""

    priority = 10
    suffixes = (".engine", ".plan")

    def _load_impl(self) -> None:
        from .metadata import decode_metadata
        from .tensorrt_loader import check_engine, import_flavour

        unknown = set(self.options) - set(_OPTIONS)
        if unknown:
            raise ConfigError(
                f"unknown tensorrt option(s) {', '.join(sorted(unknown))}; known: {', '.join(_OPTIONS)}"
            )
        side = check_engine(self.path, verify_hash=bool(self.options.get("verify_hash", True)))
        self._side = side
        self._meta = decode_metadata(side["metadata"], str(self.path))
        torch = _torch_cuda(self.path)
        trt = import_flavour(side["flavour"])
        self._trt, self._torch = trt, torch
        dev = torch.device(self.device if self.device and self.device.startswith("cuda") else "cuda")
        if self.device and not self.device.startswith("cuda"):
            raise ConfigError(f"the tensorrt backend runs on cuda[:N], got device {self.device!r}")
        torch.cuda.set_device(dev)
        self._dev = dev

        from .tensorrt_loader import make_logger

        self._logger = make_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(Path(self.path).read_bytes())
        if engine is None:
            raise ModelError(
                f"{self.path} could not be deserialized ({'; '.join(self._logger.errors[-2:]) or '?'}); "
                "rebuild it with medfm-compress export --format tensorrt"
            )
        self._engine = engine
        self._runtime_cache = None
        if side["flavour"] == "rtx":
            self._context = self._rtx_context(trt, engine)
        else:
            self._context = engine.create_execution_context()
        if self._context is None:
            raise ModelError(
                f"{self.path}: TensorRT could not create an execution context "
                f"({'; '.join(self._logger.errors[-2:]) or 'out of GPU memory?'})"
            )
        prof = side["profiles"][0]
        self._input = side["input"]
        self._min_batch, self._max_batch = int(prof["min"][0]), int(prof["max"][0])
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        outs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(outs) < 1 or self._input not in names:
            raise ModelError(f"{self.path}: engine I/O {names} does not match its sidecar; rebuild it")
        self._output = outs[0]
        self._stream = torch.cuda.Stream(device=dev)
        chw = tuple(prof["max"][1:])
        self._in_buf = torch.empty(
            (self._max_batch, *chw),
            dtype=_torch_dtype(torch, trt, engine.get_tensor_dtype(self._input)),
            device=dev,
        )
        self._context.set_input_shape(self._input, (self._max_batch, *chw))
        out_shape = tuple(self._context.get_tensor_shape(self._output))
        self._out_buf = torch.empty(
            out_shape, dtype=_torch_dtype(torch, trt, engine.get_tensor_dtype(self._output)), device=dev
        )
        self._graphs: dict[int, Any] = {}
        self._use_graph = bool(self.options.get("cuda_graphs", False))
        self._info.update(
            precision=side["precision"],
            device=str(dev),
            flavour=side["flavour"],
            tensorrt_version=side["tensorrt_version"],
            gpu=torch.cuda.get_device_name(dev),
            batch_range=[self._min_batch, self._max_batch],
            cuda_graphs=self._use_graph,
            validity=side.get("validity", {}).get("status"),
        )

    def _rtx_context(self, trt, engine):
        cfg = engine.create_runtime_config()
        cache_path = self.options.get("runtime_cache")
        if cache_path:
            cache = cfg.create_runtime_cache()
            p = Path(cache_path)
            if p.is_file() and p.stat().st_size:
                cache.deserialize(p.read_bytes())
            cfg.set_runtime_cache(cache)
            self._runtime_cache = (cache, p)
        return engine.create_execution_context(cfg)

    def check_input(self, tensors: Any) -> np.ndarray:
        x = super().check_input(tensors)
        n = x.shape[0]
        if not self._min_batch <= n <= self._max_batch:
            raise DataError(
                f"{self.path.name} accepts batch sizes {self._min_batch}..{self._max_batch} (its "
                f"optimization profile), got {n}; rebuild it with --batch-sizes covering {n}"
            )
        return x

    def _enqueue(self, n: int) -> None:
        ctx = self._context
        ctx.set_input_shape(self._input, tuple(self._in_buf[:n].shape))
        ctx.set_tensor_address(self._input, self._in_buf.data_ptr())
        ctx.set_tensor_address(self._output, self._out_buf.data_ptr())
        if not ctx.execute_async_v3(self._stream.cuda_stream):
            raise ModelError(
                f"{self.path}: TensorRT execution failed ({'; '.join(self._logger.errors[-2:]) or '?'})"
            )

    def _run_impl(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        n = x.shape[0]
        with torch.cuda.stream(self._stream):
            self._in_buf[:n].copy_(torch.from_numpy(x), non_blocking=False)
            if self._use_graph:
                g = self._graphs.get(n)
                if g is None:
                    g = self._capture(n)
                g.replay()
            else:
                self._enqueue(n)
            out = self._out_buf[:n].float().cpu()
        return out.numpy()

    def _capture(self, n: int):
        torch = self._torch
        # One plain run first: TensorRT allocates lazily and a capture must not see allocations.
        self._enqueue(n)
        self._stream.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, stream=self._stream):
            self._enqueue(n)
        self._graphs[n] = g
        return g

    def synchronize(self) -> None:
        self._stream.synchronize()

    def _close_impl(self) -> None:
        if getattr(self, "_runtime_cache", None):
            cache, p = self._runtime_cache
            data = cache.serialize()
            if data is not None:
                atomic_write_bytes(p, bytes(memoryview(data)))
        self._graphs = {}
        self._context = None
        self._engine = None
        self._in_buf = self._out_buf = None


def _torch_cuda(path):
    try:
        import torch
    except ImportError:
        raise ModelError(
            "the tensorrt backend needs torch (for CUDA buffers); reinstall medfm-compress"
        ) from None
    if not torch.cuda.is_available():
        raise ModelError(
            f"{path}: no usable CUDA GPU here; TensorRT engines run on an NVIDIA GPU (use the "
            "onnxruntime or torch backend on this machine)"
        )
    return torch


def _torch_dtype(torch, trt, dt):
    table = {
        trt.DataType.FLOAT: torch.float32,
        trt.DataType.HALF: torch.float16,
        trt.DataType.INT32: torch.int32,
        trt.DataType.INT8: torch.int8,
        trt.DataType.BOOL: torch.bool,
    }
    if hasattr(trt.DataType, "BF16"):
        table[trt.DataType.BF16] = torch.bfloat16
    if dt not in table:
        raise ModelError(
            f"engine I/O type {dt} is not supported by the tensorrt backend; rebuild with fp32 I/O"
        )
    return table[dt]
