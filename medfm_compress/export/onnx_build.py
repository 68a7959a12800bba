"""Building ONNX from torch: the classic exporter (or dynamo), onnxslim clean-up, fixed I/O names and a dynamic
batch axis, ``onnx.checker``, our metadata inside, fp16 conversion, and the parity check against torch.

The stage that writes a checked file from a run directory is :mod:`medfm_compress.export.onnx`; loading checks
for a file someone hands us are in :mod:`medfm_compress.runtime.onnx_loader`.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from .._io import atomic_path
from ..errors import ConfigError, ExportError, ModelError, first_line
from ..runtime.metadata import ModelMeta, encode_metadata
from ..runtime.onnx_loader import ort_session, run_onnx

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "BATCH_AXIS",
    "build_onnx",
    "export_model_to_onnx",
    "save_onnx",
    "set_meta",
    "parity_check",
    "to_fp16",
    "toposort",
]

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BATCH_AXIS = "batch"
# Protobuf cannot serialise a model above 2 GiB in one message.
_PROTO_LIMIT = 2**31 - 1


# --------------------------------------------------------------------------------------------------------------
# Building and saving


def build_onnx(model, meta: ModelMeta, example, opset: int = 17, dynamo: bool = False, simplify: bool = True):
    """Export ``model`` to an in-memory, checked ``onnx.ModelProto`` with ``meta`` in ``metadata_props``.

    Args:
        model: a torch module (put in eval mode here).
        meta: what the model needs to be fed and read (stored as ``medfm.*`` metadata).
        example: an example input tensor ``(N, C, H, W)`` (or ``(N, C, X, Y, Z)`` for a volume model); its
            spatial size becomes static, the batch dynamic.
        opset: ONNX opset (>= 17).
        dynamo: use the dynamo exporter (slower; the classic one is the default because it is 5-10x faster
            here and is the only one modelopt fake-quant models export with).
        simplify: clean the graph with onnxslim (constant folding, dead-node removal, fusions).
    """
    import onnx
    import torch

    if opset < 17:
        raise ConfigError(f"opset {opset} is too old; use --opset 17 or newer")
    if not isinstance(example, torch.Tensor) or example.ndim not in (4, 5):
        raise ModelError("the example input must be a 4-D (N, C, H, W) or 5-D (N, C, X, Y, Z) tensor")
    model.eval()
    buf = io.BytesIO()
    kwargs: dict[str, Any] = {}
    if dynamo:
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=4096)},)
    else:
        kwargs["dynamic_axes"] = {INPUT_NAME: {0: BATCH_AXIS}, OUTPUT_NAME: {0: BATCH_AXIS}}
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The classic exporter warns about its own deprecation and about traced control flow; neither is
            # actionable for a user here, and parity is checked numerically afterwards.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                buf,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                do_constant_folding=True,
                dynamo=dynamo,
                **kwargs,
            )
    except Exception as e:  # torch raises many unrelated types for unexportable models
        raise ExportError(
            f"torch.onnx.export failed for {meta.arch or type(model).__name__}: {type(e).__name__}: {first_line(e)}"
        ) from None
    proto = onnx.load_from_string(buf.getvalue())
    if dynamo:
        proto = _rename_io(proto)
    if simplify:
        proto = _slim(proto)
    _force_batch_axis(proto)
    set_meta(proto, meta)
    _check(proto, full=True)
    return proto


def export_model_to_onnx(
    model, meta: ModelMeta, path, example, opset: int = 17, dynamo: bool = False, simplify: bool = True
) -> Path:
    """Export ``model`` to ``path`` (atomically): checked, cleaned, dynamic batch axis, ``meta`` inside.

    See :func:`build_onnx` for the arguments. Returns the written path.
    """
    proto = build_onnx(model, meta, example, opset=opset, dynamo=dynamo, simplify=simplify)
    return save_onnx(proto, path)


def save_onnx(proto, path) -> Path:
    """Write ``proto`` to ``path`` atomically (a failure leaves no file and any earlier file intact)."""
    if proto.ByteSize() > _PROTO_LIMIT:
        raise ExportError(
            f"model is {proto.ByteSize() / 2**30:.1f} GiB, above ONNX's 2 GiB single-file limit; "
            "external-data export is not supported yet"
        )
    dest = Path(path)
    with atomic_path(dest, suffix=".onnx.tmp") as tmp:
        tmp.write_bytes(proto.SerializeToString())
    return dest


def _slim(proto):
    import onnxslim

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            slimmed = onnxslim.slim(proto)
    except Exception as e:  # onnxslim is a clean-up: a failure in it must not lose the export
        warnings.warn(
            f"onnxslim could not clean the graph ({first_line(e)}); keeping the unslimmed model",
            stacklevel=2,
        )
        return proto
    return slimmed if slimmed is not None else proto


def _rename_io(proto):
    """The dynamo exporter names I/O after the Python arguments; give them our fixed names."""
    old_in, old_out = proto.graph.input[0].name, proto.graph.output[0].name
    for node in proto.graph.node:
        node.input[:] = [INPUT_NAME if n == old_in else n for n in node.input]
        node.output[:] = [OUTPUT_NAME if n == old_out else n for n in node.output]
    proto.graph.input[0].name = INPUT_NAME
    proto.graph.output[0].name = OUTPUT_NAME
    return proto


def _force_batch_axis(proto) -> None:
    """Name the leading dimension of the input and output ``batch`` (simplifiers may rename or fix it)."""
    for vi in (proto.graph.input[0], proto.graph.output[0]):
        dims = vi.type.tensor_type.shape.dim
        if len(dims):
            dims[0].ClearField("dim_value")
            dims[0].dim_param = BATCH_AXIS


def _check(proto, full: bool) -> None:
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=full)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"onnx.checker rejected the exported model: {first_line(e)}") from None


def set_meta(proto, meta: ModelMeta) -> None:
    """Replace the ``medfm.*`` entries of ``proto.metadata_props`` with ``meta`` (other keys are kept)."""
    keep = [(p.key, p.value) for p in proto.metadata_props if not p.key.startswith("medfm.")]
    del proto.metadata_props[:]
    for k, v in keep + list(encode_metadata(meta).items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    proto.producer_name = "medfm-compress"
    proto.producer_version = __version__


def parity_check(model, proto, real: np.ndarray | None, n_random: int = 8, seed: int = 0) -> dict[str, float]:
    """Compare ONNX Runtime with the torch model on ``real`` inputs and ``n_random`` random tensors."""
    import torch

    from ..metrics import cosine_similarity, max_abs_error, top1_agreement

    shape = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim][1:]
    rng = np.random.default_rng(seed)
    random = rng.standard_normal((n_random, *shape)).astype(np.float32)
    sess = ort_session(proto)
    report: dict[str, float] = {}
    for kind, x in (("real", real), ("random", random)):
        if x is None or not len(x):
            continue
        with torch.no_grad():
            ref = np.concatenate(
                [model(torch.from_numpy(x[i : i + 32])).float().numpy() for i in range(0, len(x), 32)]
            )
        got = run_onnx(sess, x, batch_size=16)
        report[f"{kind}_n"] = len(x)
        report[f"{kind}_max_abs"] = max_abs_error(ref, got)
        report[f"{kind}_cosine"] = cosine_similarity(ref, got)
        if kind == "real":
            # Dense outputs (N, K, H, W): the argmax over K is the label map, so this is the masks' pixel agreement.
            report["real_mask_agreement" if ref.ndim == 4 else "real_top1_agreement"] = top1_agreement(ref, got)
    report["max_abs"] = max(v for k, v in report.items() if k.endswith("_max_abs"))
    report["cosine"] = min(v for k, v in report.items() if k.endswith("_cosine"))
    return report


def to_fp16(proto, keep_io_types: bool = True):
    """A copy of an fp32 ONNX model with fp16 weights and activations (fp32 inputs/outputs unless
    ``keep_io_types`` is False), in topological order."""
    import warnings

    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    with warnings.catch_warnings():
        # It warns about every value it clamps to the fp16 range; the parity checks are the judge.
        warnings.simplefilter("ignore")
        try:
            out = convert_float_to_float16(copy, keep_io_types=keep_io_types)
        except Exception as e:  # the converter raises assorted types for graphs it cannot handle
            raise ExportError(f"fp16 conversion failed: {str(e).strip().splitlines()[0][:300]}") from None
    # The converter appends its I/O Cast nodes at the end of the node list; ONNX requires topological order.
    toposort(out.graph)
    return out


def toposort(graph) -> None:
    """Reorder ``graph.node`` topologically in place (stable: keeps the original order where it is valid)."""
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        rest = []
        for n in pending:
            if all(i in known for i in n.input):
                ordered.append(n)
                known.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise ExportError("the converted graph has a cycle or a dangling input; cannot order it")
        pending = rest
    copies = [type(n)() for n in ordered]
    for c, n in zip(copies, ordered, strict=True):
        c.CopyFrom(n)
    del graph.node[:]
    graph.node.extend(copies)
