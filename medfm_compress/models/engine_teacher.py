"""A teacher held only as an engine: an ONNX model (run by ONNX Runtime) or an OpenVINO IR, forward only.

A user may hold a foundation model as an exported graph and nothing else: no architecture, no weights in a layout
timm reads. :class:`EngineModule` wraps such a graph as a frozen torch module, so distillation uses it as any other
teacher (its logits for logit KD, a tensor of it for embedding KD), while it runs in the engine it came in.

Which tensors it gives:

- ``logits``: a graph output or an intermediate tensor by name; by default the first output of a model exported by
  ``medfm-compress`` (its metadata says so), else none (a head-less encoder).
- ``embedding``: a tensor by name (an intermediate one is exposed as an extra output: DINOv2's final LayerNorm,
  ``/backbone/layernorm/Add_1_output_0``), pooled to one vector per image: ``(N, D)`` as it is; ``(N, T, D)``
  tokens by their first (class) token (``NAME:cls``, the default) or their mean (``NAME:mean``); ``(N, C, H, W)``
  maps by their spatial mean. By default: the input of the final classifier (the ``Gemm``/``MatMul`` that makes the
  logits), else the single 2-D output of a head-less encoder.

The graph is cut down to what those tensors need (:class:`onnx.utils.Extractor`): a saliency decoder after a
backbone is neither run nor counted. The teacher's preprocessing is its metadata's for a model we exported; for any
other it is the input's fixed size and channels with the mean/std the user gives (a foreign graph says nothing of
its normalisation, and a wrong one makes a silently worse teacher).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._io import sha256_file
from ..errors import ConfigError, ModelError, first_line

__all__ = ["EngineModule", "TensorRef", "is_engine_spec", "ENGINE_SUFFIXES"]

ENGINE_SUFFIXES = (".onnx", ".xml")
_POOLS = ("cls", "mean")


def is_engine_spec(spec: str | None) -> bool:
    """Whether ``--teacher`` names an engine file (``.onnx``, OpenVINO ``.xml``)."""
    return bool(spec) and Path(spec).suffix.lower() in ENGINE_SUFFIXES


@dataclass(frozen=True)
class TensorRef:
    """A tensor of the graph by name, and how tokens are pooled (``NAME``, ``NAME:cls``, ``NAME:mean``)."""

    name: str
    pool: str = "cls"

    @classmethod
    def parse(cls, text: str | None) -> TensorRef | None:
        if not text:
            return None
        # Graph names may hold ':' themselves (onnx::Gemm_12); only a known pooling suffix is split off.
        head, _, tail = text.rpartition(":")
        return cls(head, tail) if head and tail in _POOLS else cls(text)

    def __str__(self) -> str:
        return f"{self.name}:{self.pool}"


def pool(a: np.ndarray, how: str, what: str) -> np.ndarray:
    """One vector per image from a tensor of rank 2, 3 (tokens) or 4 (maps)."""
    if a.ndim == 2:
        return a
    if a.ndim == 3:
        return a[:, 0] if how == "cls" else a.mean(axis=1)
    if a.ndim == 4:
        return a.mean(axis=(2, 3))
    raise ModelError(f"{what} has shape {tuple(a.shape)}; an embedding needs (N, D), (N, T, D) tokens or (N, C, H, W)")


class _Head(nn.Module):
    """Marks an engine with logits as a model with a classifier (:func:`~.features.classifier_of`)."""


class _OnnxGraph:
    """An ONNX model cut down to the wanted tensors, run by ONNX Runtime on the CPU."""

    def __init__(self, path: Path, threads: int | None):
        from ..runtime.onnx_loader import image_input, load_onnx_checked

        self.path = path
        self.proto = load_onnx_checked(path)
        self.input, self.shape = image_input(self.proto, str(path), error=ConfigError)
        self.props = {p.key: p.value for p in self.proto.metadata_props}
        self.outputs = [o.name for o in self.proto.graph.output]
        self.threads = threads
        self.sub = None
        self._sess = None

    def has(self, name: str) -> bool:
        return name in self.outputs or any(name in n.output for n in self.proto.graph.node)

    def names(self) -> list[str]:
        return [o for n in self.proto.graph.node for o in n.output if o]

    def classifier_input(self, output: str) -> str | None:
        """The input of the Gemm / MatMul(+Add) that makes ``output``: the embedding a classifier reads."""
        producer = {o: n for n in self.proto.graph.node for o in n.output}
        inits = {t.name for t in self.proto.graph.initializer}
        node = producer.get(output)
        if node is not None and node.op_type == "Add":
            node = next((producer[i] for i in node.input if i in producer and producer[i].op_type == "MatMul"), None)
        if node is not None and node.op_type in ("Gemm", "MatMul"):
            return next((i for i in node.input if i not in inits), None)
        return None

    def select(self, names: list[str]) -> None:
        import onnx
        from onnx.utils import Extractor

        from ..runtime.onnx_loader import ort_session

        proto = onnx.ModelProto()
        proto.CopyFrom(self.proto)
        known = {v.name for v in [*proto.graph.value_info, *proto.graph.output]}
        # Shape inference does not reach every tensor of an exported graph; the Extractor needs each wanted one typed.
        proto.graph.value_info.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                                      for n in names if n not in known)
        try:
            self.sub = Extractor(proto).extract_model([self.input], names)
        except Exception as e:  # noqa: BLE001 - onnx's own errors for a graph it cannot cut
            raise ModelError(f"cannot cut {self.path} down to {', '.join(names)}: {first_line(e)}") from None
        self._sess = ort_session(self.sub, threads=self.threads)

    @property
    def params(self) -> int:
        graph = (self.sub or self.proto).graph
        return int(sum(int(np.prod(t.dims)) for t in graph.initializer))

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        return [np.asarray(v, np.float32) for v in self._sess.run(None, {self.input: x})]

    def openvino_model(self, convert):
        """The cut-down graph as an ``openvino.Model`` (``convert``: the exporter's ONNX-to-OpenVINO conversion)."""
        return convert(self.sub, source=str(self.path))


class _IRGraph:
    """An OpenVINO IR with the wanted tensors added as outputs, compiled for the CPU."""

    def __init__(self, path: Path, threads: int | None):
        from ..runtime.openvino_loader import load_ir_checked, ov_meta_props

        self.path = path
        self.model = load_ir_checked(path)
        if len(self.model.inputs) != 1:
            raise ConfigError(f"{path} has {len(self.model.inputs)} inputs; a teacher takes one image tensor")
        inp = self.model.inputs[0]
        ps = inp.get_partial_shape()
        if ps.rank.is_dynamic or ps.rank.get_length() != 4 or any(d.is_dynamic for d in list(ps)[1:]):
            raise ConfigError(f"{path}: input {inp.get_any_name()!r} must be NCHW with a fixed channel count and size, "
                              f"got {ps}; re-export it with a fixed size")
        self.input = inp.get_any_name()
        self.shape = tuple(int(d.get_length()) for d in list(ps)[1:])
        self.props = ov_meta_props(self.model)
        self.outputs = [o.get_any_name() for o in self.model.outputs]
        self.threads = threads
        self.wanted: list[str] = []
        self._compiled = None

    def _all(self) -> dict[str, Any]:
        return {n: out for op in self.model.get_ordered_ops() for out in op.outputs() for n in out.get_names()}

    def has(self, name: str) -> bool:
        return name in self._all()

    def names(self) -> list[str]:
        return sorted(self._all())

    def classifier_input(self, output: str) -> str | None:
        out = self._all().get(output)
        node = out.get_node() if out is not None else None
        if node is not None and node.get_type_name() == "Add":
            node = next((i.get_source_output().get_node() for i in node.inputs()
                         if i.get_source_output().get_node().get_type_name() == "MatMul"), None)
        if node is not None and node.get_type_name() == "MatMul":
            src = node.inputs()[0].get_source_output()
            return next(iter(src.get_names()), None)
        return None

    def select(self, names: list[str]) -> None:
        from ..runtime.openvino_loader import compile_ov

        self.wanted = list(names)
        extra = [n for n in names if n not in self.outputs]
        if extra:
            self.model.add_outputs(extra)
        self._compiled = compile_ov(self.model, threads=self.threads, source=str(self.path))

    @property
    def params(self) -> int:
        return int(sum(int(np.prod(op.get_output_shape(0))) for op in self.model.get_ordered_ops()
                       if op.get_type_name() == "Constant" and op.get_output_element_type(0).is_real()))

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        return run_by_name(self._compiled, x, self.wanted)

    def openvino_model(self, convert):
        return self.model


def run_by_name(compiled, x: np.ndarray, wanted: list[str]) -> list[np.ndarray]:
    """The outputs ``wanted`` of a compiled OpenVINO model, by tensor name."""
    res = compiled(x)
    by_name = {n: np.asarray(res[o], np.float32) for o in compiled.outputs for n in o.get_names()}
    return [by_name[n] for n in wanted]


class EngineModule(nn.Module):
    """A frozen teacher that runs in its engine; ``forward(x)`` returns its logits (or, head-less, its embedding) and
    :meth:`logits_and_embedding` both, as float32 tensors on ``x``'s device. It holds no torch parameters:
    :attr:`num_params` counts the graph's weights, :attr:`fingerprint` hashes the file and the tensors used."""

    is_engine = True

    def __init__(self, path: str | Path, embedding: str | None = None, logits: str | None = None,
                 threads: int | None = None):
        super().__init__()
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"--teacher {self.path} does not exist; give an .onnx file or an OpenVINO .xml")
        self.graph = _OnnxGraph(self.path, threads) if self.path.suffix.lower() == ".onnx" else _IRGraph(self.path, threads)
        g = self.graph
        self.ours = any(k.startswith("medfm.") for k in g.props)
        lref, eref = TensorRef.parse(logits), TensorRef.parse(embedding)
        for ref, flag in ((lref, "--teacher-logits"), (eref, "--teacher-embedding")):
            if ref is not None and not g.has(ref.name):
                near = [n for n in g.names() if ref.name.lower() in n.lower()][:3]
                raise ConfigError(f"{flag} {ref.name!r}: no tensor of that name in {self.path} (its outputs: "
                                  f"{', '.join(g.outputs)}" + (f"; close: {', '.join(near)}" if near else "") + ")")
        if lref is None and embedding is None and self.ours:
            lref = TensorRef(g.outputs[0])  # a model we exported: its first output is its logits
        if eref is None and lref is not None:
            inner = g.classifier_input(lref.name)
            eref = TensorRef(inner) if inner else None
        if eref is None and lref is None:
            if len(g.outputs) != 1:
                raise ConfigError(f"{self.path} has {len(g.outputs)} outputs ({', '.join(g.outputs)}); name the "
                                  "embedding to distil with --teacher-embedding NAME (and logits with --teacher-logits)")
            eref = TensorRef(g.outputs[0])
        self.logits_ref, self.embedding_ref = lref, eref
        self.wanted = list(dict.fromkeys(r.name for r in (lref, eref) if r is not None))
        g.select(self.wanted)
        self.input_shape: tuple[int, ...] = tuple(g.shape)
        self.head = _Head() if lref is not None else None
        raw = dict(zip(self.wanted, g.run(np.zeros((1, *self.input_shape), np.float32)), strict=True))
        if embedding is None and eref is not None and raw[eref.name].ndim == 4 and lref is None:
            raise ConfigError(f"{self.path}: its output {eref.name!r} is a {tuple(raw[eref.name].shape)} map, not an "
                              "embedding; name the tensor to distil with --teacher-embedding NAME (e.g. the encoder's "
                              "last normalisation)")
        probe = self.split([raw[n] for n in self.wanted])
        if lref is not None and probe[0].ndim != 2:
            raise ConfigError(f"--teacher-logits {lref.name!r} has shape {probe[0].shape}; logits are (N, classes)")
        self.num_classes = int(probe[0].shape[1]) if lref is not None else 0
        self.embedding_dim = int(probe[1].shape[1]) if eref is not None else 0
        self.num_params = self.graph.params
        self.fingerprint = hashlib.sha256(f"{sha256_file(self.path)}|{lref}|{eref}".encode()).hexdigest()

    # ----- what the distiller asks of a teacher -----
    def get_classifier(self):
        return self.head

    def parameters(self, recurse: bool = True):  # noqa: D102 - the engine's weights are not torch parameters
        return iter(())

    def describe(self) -> dict[str, Any]:
        return {"engine": "onnxruntime" if isinstance(self.graph, _OnnxGraph) else "openvino", "file": str(self.path),
                "logits": str(self.logits_ref) if self.logits_ref else None,
                "embedding": str(self.embedding_ref) if self.embedding_ref else None, "params": self.num_params}

    def split(self, arrays: list[np.ndarray]) -> tuple[np.ndarray | None, np.ndarray | None]:
        """``(logits, embedding)`` from the selected tensors (in :attr:`wanted` order), pooled; the embedding tensor
        as it came is kept for :meth:`last_embedding_tensor`."""
        by = dict(zip(self.wanted, arrays, strict=True))
        self._last = by[self.embedding_ref.name] if self.embedding_ref else by[self.logits_ref.name]
        lo = by[self.logits_ref.name] if self.logits_ref else None
        em = (pool(by[self.embedding_ref.name], self.embedding_ref.pool, f"tensor {self.embedding_ref.name!r}")
              if self.embedding_ref else None)
        return lo, em

    def last_embedding_tensor(self) -> torch.Tensor:
        """The embedding tensor of the last batch, unpooled (a ViT's tokens, a CNN's map): the patch-token map."""
        return torch.from_numpy(np.ascontiguousarray(self._last))

    def _run(self, x: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        return self.split(self.graph.run(np.ascontiguousarray(x, np.float32)))

    def logits_and_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        lo, em = self._run(x.detach().float().cpu().numpy())
        def to(a):
            return torch.from_numpy(np.ascontiguousarray(a)).to(x.device)

        return (to(lo) if lo is not None else None), to(em if em is not None else lo)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, em = self.logits_and_embedding(x)
        return lo if lo is not None else em

    def openvino_model(self, convert):
        """The graph (cut down) as an ``openvino.Model``; ``convert`` turns an ONNX proto into one."""
        return self.graph.openvino_model(convert)
