"""PyTorch backend: a run directory, run-directory stem, model card or .safetensors file, on CPU or CUDA."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .base import Engine, register_backend, require_module

__all__ = ["TorchEngine"]


@register_backend("torch")
class TorchEngine(Engine):
    """Eager PyTorch inference of a model saved by ``medfm-compress distill``.

    Options:
        name: which model of a run directory (``student``, ``teacher``, ``baseline``); default ``student``.
        cuda_graphs: on CUDA, capture one CUDA graph per input shape and replay it (lower launch overhead).
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
        torch = require_module("torch", "torch")
        from ..export.metadata import ModelMeta
        from ..models.card import load_model, resolve_model_files
        from ..models.factory import count_params

        unknown = set(self.options) - {"name", "cuda_graphs"}
        if unknown:
            raise ConfigError(f"unknown torch backend option(s) {', '.join(sorted(unknown))}; known: name, cuda_graphs")
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
        self._model = model.to(self._device).eval()
        self._meta = ModelMeta.from_card(card, precision="fp32")
        self._cuda_graphs = bool(self.options.get("cuda_graphs")) and self._device.type == "cuda"
        self._graphs: dict[tuple, tuple] = {}
        self._info.update(precision="fp32", device=device, threads=threads, params=count_params(model),
                          arch=card.arch, cuda_graphs=self._cuda_graphs)

    def weight_files(self) -> list[Path]:
        return [self._weights_path]

    def _run_impl(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            if self._cuda_graphs:
                out = self._run_graph(x)
            else:
                out = self._model(torch.from_numpy(x).to(self._device, non_blocking=True))
            if isinstance(out, tuple | list):
                out = out[0]
            return out.float().cpu().numpy()

    def _run_graph(self, x: np.ndarray):
        """Replay a CUDA graph captured for this input shape (captured on first use after a warm-up)."""
        torch = self._torch
        key = x.shape
        if key not in self._graphs:
            static_in = torch.empty(key, dtype=torch.float32, device=self._device)
            static_in.copy_(torch.from_numpy(x))
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

    def synchronize(self) -> None:
        if self._device.type == "cuda":
            self._torch.cuda.synchronize(self._device)

    def _close_impl(self) -> None:
        self._graphs.clear()
        self._model = None
