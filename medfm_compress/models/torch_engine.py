"""PyTorch runtime backend: a run directory, run-directory stem, model card or .safetensors file, on CPU or CUDA.

It builds the network from its model card (timm / MONAI architectures), so it lives in the models layer and
registers itself in the runtime's backend registry; the runtime finds it by module name (``_BACKEND_MODULES``
in :mod:`medfm_compress.runtime.base`). Running it needs the ``train`` extra (torch, timm).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..runtime.base import Engine, register_backend, require_module

__all__ = ["TorchEngine"]

_OPTIONS = ("name", "cuda_graphs", "precision", "channels_last", "compile")
_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
_COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@register_backend("torch")
class TorchEngine(Engine):
    """Eager PyTorch inference of a model saved by ``medfm-compress distill``.

    Options:
        name: which model of a run directory (``student``, ``teacher``, ``baseline``); default ``student``.
        cuda_graphs: on CUDA, capture one CUDA graph per input shape and replay it (lower launch overhead).
        precision: ``fp32`` (default), ``fp16`` or ``bf16``: weights and activations cast to that type
            (inputs are cast on the device; outputs are returned as float32).
        channels_last: run in NHWC memory layout (faster convolutions with fp16/bf16 on tensor cores).
        compile: ``torch.compile`` the model with this mode (``default``, ``reduce-overhead``,
            ``max-autotune``, ``max-autotune-no-cudagraphs``; ``true`` means ``default``). Each new input
            shape compiles once, on first use (the harness's warm-up absorbs it).
    """

    priority = 10
    suffixes = (".safetensors", ".json")
    supports_cuda_events = True

    @classmethod
    def accepts(cls, path: Path) -> bool:
        if path.is_dir() or path.suffix.lower() in cls.suffixes:
            return True
        # Run-directory stem: runs/p/teacher -> runs/p/teacher.json + .safetensors.
        return not path.exists() and path.parent.joinpath(f"{path.name}.json").is_file()

    def _load_impl(self) -> None:
        torch = require_module("torch", "torch", extra="train")
        from ..runtime.metadata import ModelMeta
        from .card import load_model, resolve_model_files
        from .factory import count_params

        unknown = set(self.options) - set(_OPTIONS)
        if unknown:
            raise ConfigError(f"unknown torch backend option(s) {', '.join(sorted(unknown))}; "
                              f"known: {', '.join(_OPTIONS)}")
        precision = str(self.options.get("precision", "fp32"))
        if precision not in _DTYPES:
            raise ConfigError(f"torch backend precision must be one of {', '.join(_DTYPES)}, got {precision!r}")
        compile_mode = self.options.get("compile", False)
        if compile_mode is True:
            compile_mode = "default"
        if compile_mode not in (False, *_COMPILE_MODES):
            raise ConfigError(f"torch backend compile must be one of {', '.join(_COMPILE_MODES)} (or false), "
                              f"got {compile_mode!r}")
        name = self.options.get("name", "student")
        self._card_path, self._weights_path = resolve_model_files(self.path, name)
        device = self.device or "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError("device 'cuda' requested but torch sees no CUDA device; use --device cpu")
        if not (device == "cpu" or device.startswith("cuda")):
            raise ConfigError(f"torch backend device must be cpu or cuda[:N], got {device!r}")
        threads = self.threads or os.cpu_count() or 1
        # torch's thread pool is process-wide: set it so the measurement uses what the report records.
        torch.set_num_threads(threads)
        model, card = load_model(self._card_path)
        self._torch = torch
        self._device = torch.device(device)
        self._dtype = getattr(torch, _DTYPES[precision])
        self._memory_format = torch.channels_last if self.options.get("channels_last") else torch.contiguous_format
        params = count_params(model)
        model = model.to(self._device, dtype=self._dtype, memory_format=self._memory_format).eval()
        if compile_mode:
            model = torch.compile(model, mode=compile_mode, dynamic=False)
        self._model = model
        self._meta = ModelMeta.from_card(card, precision=precision)
        self._cuda_graphs = bool(self.options.get("cuda_graphs")) and self._device.type == "cuda"
        if self._cuda_graphs and compile_mode in ("reduce-overhead", "max-autotune"):
            raise ConfigError(f"compile={compile_mode} already captures CUDA graphs; drop cuda_graphs or use "
                              "compile=max-autotune-no-cudagraphs")
        self._graphs: dict[tuple, tuple] = {}
        self._info.update(precision=precision, device=device, threads=threads, params=params,
                          arch=card.arch, cuda_graphs=self._cuda_graphs, compile=compile_mode or None,
                          channels_last=self._memory_format is torch.channels_last)

    def weight_files(self) -> list[Path]:
        return [self._weights_path]

    def _run_impl(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            if self._cuda_graphs:
                out = self._run_graph(x)
            else:
                out = self._model(self._to_device(torch.from_numpy(x)))
            if isinstance(out, tuple | list):
                out = out[0]
            return out.float().cpu().numpy()

    def _run_graph(self, x: np.ndarray):
        """Replay a CUDA graph captured for this input shape (captured on first use after a warm-up)."""
        torch = self._torch
        key = x.shape
        if key not in self._graphs:
            static_in = self._to_device(torch.from_numpy(x)).clone()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):  # warm-up on a side stream, as CUDA graph capture requires
                    self._model(static_in)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._model(static_in)
            self._graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = self._graphs[key]
        static_in.copy_(torch.from_numpy(x), non_blocking=True)
        graph.replay()
        return static_out

    def _to_device(self, t):
        t = t.to(self._device, non_blocking=True).to(self._dtype)
        return t.contiguous(memory_format=self._memory_format) if t.dim() == 4 else t

    def synchronize(self) -> None:
        if self._device.type == "cuda":
            self._torch.cuda.synchronize(self._device)

    def _close_impl(self) -> None:
        self._graphs.clear()
        self._model = None
