"""Loading checks for ONNX files, and the one batched ONNX Runtime runner.

What a runtime needs before it trusts an ``.onnx`` file: :func:`load_onnx_checked` (the ``onnx`` package: checker,
external data kept inside the model's folder), :func:`read_meta` (our ``medfm.*`` metadata from an ONNX file,
proto or OpenVINO IR), :func:`ort_session` and :func:`run_onnx` (ONNX Runtime on the CPU, in batches). The
exporters and quantizers import these from here; nothing here imports them.

``onnx`` belongs to the ``export`` extra: without it, :func:`load_onnx_checked` raises a one-line
:class:`~medfm_compress.errors.BackendMissingError`, and :func:`read_onnx_meta` falls back to ONNX Runtime
(part of every install), which reads ``metadata_props`` without the ``onnx`` package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendMissingError, ConfigError, MedfmError, ModelError, first_line
from .metadata import ModelMeta, decode_metadata

__all__ = ["load_onnx_checked", "read_meta", "read_onnx_meta", "ort_session", "run_onnx", "require_onnx",
           "BatchStreams", "stream_threads"]


def require_onnx():
    """``import onnx`` or a one-line error naming the extra that installs it."""
    try:
        import onnx

        return onnx
    except ImportError as e:
        raise BackendMissingError("onnx", "export", detail=f"import onnx failed: {e}") from None


def read_onnx_meta(path) -> ModelMeta:
    """The metadata of an ``.onnx`` file: through :func:`load_onnx_checked` where ``onnx`` is installed, else
    through an ONNX Runtime session (the edge install)."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        sess = ort_session(path)
        return decode_metadata(sess.get_modelmeta().custom_metadata_map, str(path))
    proto = load_onnx_checked(path)
    return decode_metadata({p.key: p.value for p in proto.metadata_props}, str(path))


def read_meta(path_or_model) -> ModelMeta:
    """The :class:`ModelMeta` stored in an ONNX file or ``ModelProto`` (or an OpenVINO ``.xml`` IR); a model
    without it is an error."""
    if isinstance(path_or_model, str | Path) and Path(path_or_model).suffix.lower() == ".xml":
        from .openvino_loader import read_ir_meta

        return read_ir_meta(path_or_model)
    if isinstance(path_or_model, str | Path):
        return read_onnx_meta(path_or_model)
    return decode_metadata({p.key: p.value for p in path_or_model.metadata_props}, "the ONNX model")


def image_input(proto, source: str, ranks: tuple[int, ...] = (4,), error: type[MedfmError] = ModelError):
    """``(name, shape)`` of a model's single image input, ``shape`` without the batch axis: ``(C, H, W)``, or
    ``(C, X, Y, Z)`` where ``ranks`` takes 5. A fixed batch, a dynamic C/H/W or another input is ``error``."""
    inits = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise error(f"{source} has {len(inputs)} inputs; medfm models take one image tensor")
    name, dims = inputs[0].name, inputs[0].type.tensor_type.shape.dim
    if len(dims) not in ranks:
        layouts = " or ".join({4: "NCHW", 5: "NCXYZ"}.get(r, f"rank {r}") for r in ranks)
        raise error(f"{source}: input {name!r} has rank {len(dims)}; expected {layouts} with a batch axis")
    if dims[0].HasField("dim_value"):
        raise error(
            f"{source}: input {name!r} has a fixed batch of {dims[0].dim_value}; re-export it with a dynamic batch "
            "axis (medfm-compress export does)"
        )
    shape = []
    for d in dims[1:]:
        if not d.HasField("dim_value") or d.dim_value <= 0:
            raise error(f"{source}: input {name!r} has a dynamic channel or spatial size; re-export it with a fixed "
                        "input size")
        shape.append(int(d.dim_value))
    return name, tuple(shape)


def load_onnx_checked(path) -> Any:
    """Load an ONNX file with one-line errors for anything a user can get wrong.

    External data is loaded only when every referenced file resolves inside the model's own directory:
    absolute locations, ``..`` traversal and symlinks that lead outside are refused.
    """
    onnx = require_onnx()
    from google.protobuf.message import DecodeError

    p = Path(path)
    if not p.exists():
        raise ModelError(f"{p} does not exist; give the path of an .onnx file")
    if p.is_dir():
        raise ModelError(f"{p} is a directory; give the path of an .onnx file")
    try:
        proto = onnx.load(str(p), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError, UnicodeDecodeError) as e:
        raise ModelError(f"{p} is not a valid ONNX model ({type(e).__name__}); re-export it") from None
    # Arbitrary bytes can decode as a protobuf with nothing in it; a real model has a graph and an IR version.
    if proto.ir_version <= 0 or not proto.graph.node or not proto.graph.input or not proto.graph.output:
        raise ModelError(f"{p} is not an ONNX model (no graph, inputs or outputs); re-export it")
    _load_external_data_safely(proto, p)
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as e:
        raise ModelError(f"{p} fails onnx.checker: {first_line(e)}") from None
    return proto


def _load_external_data_safely(proto, path: Path) -> None:
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    base = path.parent.resolve()
    external = [t for t in _all_tensors(proto.graph) if uses_external_data(t)]
    if not external:
        return
    for t in external:
        loc = ExternalDataInfo(t).location
        if not loc or Path(loc).is_absolute() or loc.startswith(("/", "\\")):
            raise ModelError(
                f"{path}: tensor {t.name!r} points at external data {loc!r} with an absolute path; "
                "external data must sit beside the model"
            )
        target = (base / loc).resolve()
        if not target.is_relative_to(base):
            raise ModelError(
                f"{path}: tensor {t.name!r} points at external data {loc!r} outside the model's "
                "directory; refused (move the data beside the model)"
            )
        if not target.is_file():
            raise ModelError(f"{path}: external data file {loc!r} for tensor {t.name!r} is missing")
    from onnx.external_data_helper import load_external_data_for_model

    try:
        load_external_data_for_model(proto, str(base))
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: cannot read its external data ({first_line(e)})") from None


def ort_session(model, threads: int | None = None, streams: int = 1):
    """An ONNX Runtime CPU session for a ``ModelProto``, bytes or path; a model ORT cannot load is an error.

    ``streams`` > 1: a session for :class:`BatchStreams` (``threads // streams`` intra-op threads per run, all cores
    when ``threads`` is None)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if streams > 1:
        opts.intra_op_num_threads = stream_threads(threads, streams)
        opts.inter_op_num_threads = 1
    elif threads:
        opts.intra_op_num_threads = threads
    src = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    try:
        return ort.InferenceSession(src, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own exception types (Fail, InvalidGraph, NotImplemented, ...)
        raise ModelError(f"ONNX Runtime cannot load the model: {first_line(e)}") from None


def stream_threads(threads: int | None, streams: int) -> int:
    """Intra-op threads of each of ``streams`` concurrent runs on ``threads`` cores (None: every core); more streams
    than cores is an error."""
    import os

    cores = threads or os.cpu_count() or 1
    if not isinstance(streams, int) or isinstance(streams, bool) or streams < 1:
        raise ConfigError(f"streams must be an integer >= 1, got {streams!r}")
    if streams > cores:
        raise ConfigError(f"streams ({streams}) must not exceed the threads ({cores}): each stream needs a core of "
                          "its own; lower streams or raise threads")
    return max(1, cores // streams)


class BatchStreams:
    """Runs a batch as ``streams`` contiguous sub-batches at once, one per thread, and concatenates the outputs.

    Why: ONNX Runtime's quantized convolution (QLinearConv) loops over the images of a batch one by one and splits
    each image's output pixels among the intra-op threads, so deep layers of a small input (2x2 pixels at 64x64)
    get one task per image and every image pays a thread-pool dispatch per layer; float NCHWc convolutions split
    the whole batch. Single-threaded runs of sub-batches side by side use every core for any op. ``fn`` runs one
    sub-batch (ONNX Runtime releases the GIL); the calling thread runs the first one itself.
    """

    def __init__(self, streams: int):
        from concurrent.futures import ThreadPoolExecutor

        stream_threads(streams, streams)  # checks the value
        self.streams = streams
        self._pool = ThreadPoolExecutor(streams - 1, thread_name_prefix="medfm-stream") if streams > 1 else None

    def run(self, fn, x: np.ndarray):
        """``fn(x)``, or ``fn`` of ``min(streams, len(x))`` sub-batches at once, concatenated along the batch axis."""
        parts = min(self.streams, len(x))
        if parts <= 1 or self._pool is None:
            return fn(x)
        chunks = np.array_split(x, parts)
        futures = [self._pool.submit(fn, c) for c in chunks[1:]]
        first = fn(chunks[0])
        return np.concatenate([first, *(f.result() for f in futures)], axis=0)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def run_onnx(model, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Run an ONNX model over ``x`` in batches on the CPU; returns the first output as float32, concatenated.

    ``model``: an ONNX Runtime session, or anything :func:`ort_session` opens (proto, bytes, path). A fixed batch
    dimension sets the batch size; a float16 input (``--fp16-io`` models) is fed ``x`` cast to float16.
    """
    session = model if hasattr(model, "get_inputs") and hasattr(model, "run") else ort_session(model)
    inp = session.get_inputs()[0]
    fixed = inp.shape[0]
    if isinstance(fixed, int) and fixed > 0:
        batch_size = fixed
    dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
    outs = [
        session.run(None, {inp.name: np.ascontiguousarray(x[i : i + batch_size], dtype=dtype)})[0]
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(outs, axis=0).astype(np.float32, copy=False)


def _all_tensors(graph):
    """Every TensorProto of ``graph``: initializers and tensor attributes, subgraphs (If/Loop/Scan) included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for g in attr.graphs:
                yield from _all_tensors(g)
