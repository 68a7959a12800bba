"""OpenVINO IR (``.xml`` + ``.bin``): conversion from ONNX, metadata in the IR's runtime info, safe load/save.

The IR keeps the same ``medfm.*`` keys as an ONNX file's ``metadata_props`` (see
:mod:`medfm_compress.runtime.metadata`), stored as top-level ``rt_info`` entries, so ``read_meta`` works on
``.xml`` files and a runtime needs nothing else to feed the model.

An IR is two files. :func:`save_ir` writes both into a temporary folder beside the destination and then
renames them (``.bin`` first, ``.xml`` last), so an interrupted save never leaves an ``.xml`` that points at a
half-written ``.bin``; :func:`load_ir_checked` refuses an ``.xml`` whose ``.bin`` is missing or shorter than
the weights it references, with one line instead of OpenVINO's stack trace.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, ExportError, first_line
from ..runtime.metadata import ModelMeta, decode_metadata, encode_metadata
from ..runtime.openvino_loader import check_ir_files, compile_ov, ir_size_bytes, require_openvino
from .formats import ExportOutcome, ExportRequest, register_format

__all__ = ["onnx_to_ov", "graph_rewrites", "set_ov_meta", "save_ir", "OpenVINOExportResult", "export_openvino"]


# Runtime-info key of an IR converted here: the graph rewrites applied to the ONNX model first (kept in the .xml).
REWRITES_KEY = "medfm_compress_graph_rewrites"


def onnx_to_ov(model: Any, source: str = "the ONNX model", subpixel: bool = False):
    """Convert an ONNX file path or ``ModelProto`` to an ``openvino.Model``; unconvertible ops are named.

    ``subpixel``: transposed convolutions that upsample by exactly their stride become sub-pixel convolutions first
    (:mod:`~medfm_compress.export.subpixel`: OpenVINO's CPU plugin runs ConvTranspose in f32 only, which pays for a
    model run in bf16); how many is in the model's runtime info (:func:`graph_rewrites`)."""
    ov = require_openvino()
    rewritten = 0
    if subpixel:
        import onnx

        from .subpixel import conv_transpose_to_subpixel

        proto = model if not isinstance(model, str | os.PathLike) else None
        if proto is None:
            try:
                proto = onnx.load(str(model))
            except Exception:  # noqa: BLE001 - a file onnx cannot parse goes to OpenVINO as it is, for its message
                proto = None
        if proto is not None:
            new, rewritten = conv_transpose_to_subpixel(proto)
            if rewritten:
                model = new
    arg = model
    if not isinstance(model, str | os.PathLike):
        # convert_model takes a path; a proto goes through a temporary file (it may hold > 2 GB otherwise).
        tmp = tempfile.NamedTemporaryFile(suffix=".onnx", delete=False)
        try:
            tmp.write(model.SerializeToString())
        finally:
            tmp.close()
        arg = tmp.name
    try:
        converted = ov.convert_model(str(arg))
        if rewritten:
            converted.set_rt_info(f"conv_transpose_as_subpixel_conv={rewritten}", REWRITES_KEY)
        return converted
    except Exception as e:  # OpConversionFailure, GeneralFailure, ...
        msg = str(e)
        m = re.search(r"No conversion rule found for operations?:\s*([^\n]+)", msg)
        if m:
            raise ExportError(
                f"OpenVINO cannot convert {source}: no conversion rule for operation(s) {m.group(1).strip()}; "
                "replace the op(s) before export or use --target cpu (ONNX Runtime)"
            ) from None
        m = re.search(r"(?:Error|failed)[^\n]*", msg)
        raise ExportError(
            f"OpenVINO cannot convert {source}: {(m.group(0) if m else first_line(e))[:300]}"
        ) from None
    finally:
        if arg is not model:
            Path(arg).unlink(missing_ok=True)


def graph_rewrites(ov_model) -> dict[str, int]:
    """The rewrites :func:`onnx_to_ov` applied (``{"conv_transpose_as_subpixel_conv": 3}``; empty for none)."""
    if not ov_model.has_rt_info(REWRITES_KEY):
        return {}
    out = {}
    for item in ov_model.get_rt_info(REWRITES_KEY).astype(str).split(","):
        name, _, count = item.partition("=")
        out[name] = int(count)
    return out


def set_ov_meta(ov_model, meta: ModelMeta) -> None:
    """Store ``meta`` as ``medfm.*`` entries of the model's runtime info (replacing earlier ones)."""
    for key, value in encode_metadata(meta).items():
        ov_model.set_rt_info(value, key)


def save_ir(ov_model, out, compress_to_fp16: bool = True) -> Path:
    """Write ``ov_model`` to ``out`` (``.xml``) and its ``.bin`` atomically as a pair.

    Args:
        ov_model: the ``openvino.Model``.
        out: destination ``.xml`` path.
        compress_to_fp16: store fp32 weights as fp16 in the ``.bin`` (OpenVINO decompresses them at load).
    """
    ov = require_openvino()
    out = Path(out)
    if out.suffix.lower() != ".xml":
        raise ConfigError(f"an OpenVINO IR is written as .xml (+ .bin); got --out {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    bin_dest = out.with_suffix(".bin")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.stem}.", suffix=".irtmp", dir=out.parent))
    try:
        tmp_xml = tmp / out.name
        try:
            ov.save_model(ov_model, str(tmp_xml), compress_to_fp16=compress_to_fp16)
        except Exception as e:
            if isinstance(e, OSError) and e.errno == 28:
                raise ExportError(f"no space left on the device writing {out}; free space and retry") from None
            raise ExportError(f"OpenVINO could not write {out}: {first_line(e)}") from None
        tmp_bin = tmp_xml.with_suffix(".bin")
        check_ir_files(tmp_xml)
        # .bin first, .xml last: the .xml is what readers open, so it appears only once its weights are there.
        os.replace(tmp_bin, bin_dest)
        try:
            os.replace(tmp_xml, out)
        except BaseException:
            bin_dest.unlink(missing_ok=True)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


@dataclass
class OpenVINOExportResult:
    path: Path
    size_bytes: int
    seconds: float
    check: dict[str, float]


def export_openvino(source: str, out: str | None = None, model: str = "student", compress_to_fp16: bool = True,
                    force: bool = False, num_check: int = 8, seed: int = 0) -> OpenVINOExportResult:
    """Export a run directory, card, ``.safetensors`` or ONNX file to an fp32 OpenVINO IR with metadata.

    A non-ONNX source is exported to a checked ONNX first. The IR's outputs are compared with ONNX Runtime's
    on random inputs before anything is written (cosine >= 0.9999).
    """
    from ..metrics import cosine_similarity, max_abs_error
    from ..runtime.onnx_loader import load_onnx_checked, ort_session, run_onnx
    from .onnx import ExportConfig, export_onnx

    t0 = time.time()
    src = Path(source)
    with tempfile.TemporaryDirectory(prefix="medfm-ov-") as tmp:
        if src.suffix.lower() == ".onnx":
            from ..manifest import check_inputs

            check_inputs([src], force)
            onnx_path = src
        else:
            onnx_path = export_onnx(ExportConfig(source=str(src), out=str(Path(tmp) / "model.onnx"), model=model,
                                                 force=force)).path
        proto = load_onnx_checked(onnx_path)
        meta = decode_metadata({p.key: p.value for p in proto.metadata_props}, str(onnx_path))
        ov_model = onnx_to_ov(onnx_path, str(onnx_path))
        set_ov_meta(ov_model, meta)
        pre = meta.preprocess
        x = np.random.default_rng(seed).standard_normal(
            (num_check, pre.channels, *pre.input_size)).astype(np.float32)
        ref = run_onnx(ort_session(proto), x)
        got = compile_ov(ov_model, source=str(onnx_path))(x)[0]
        check = {"cosine": cosine_similarity(ref, got), "max_abs": max_abs_error(ref, got), "n": num_check}
        if not check["cosine"] >= 0.9999:
            raise ExportError(
                f"the OpenVINO IR disagrees with ONNX Runtime (cosine {check['cosine']:.6f}); nothing written"
            )
        dest = Path(out) if out else onnx_path.with_suffix(".xml") if src.suffix.lower() == ".onnx" else (
            (src if src.is_dir() else src.parent) / f"{model}.xml")
        save_ir(ov_model, dest, compress_to_fp16=compress_to_fp16)
    return OpenVINOExportResult(dest, ir_size_bytes(dest), round(time.time() - t0, 2), check)


@register_format("openvino", options=(), description="OpenVINO IR (.xml + .bin), fp32")
def _openvino_format(req: ExportRequest) -> ExportOutcome:
    res = export_openvino(req.source, out=req.out, model=req.model, force=req.force)
    weights = res.path.with_suffix(".bin")
    return ExportOutcome(
        res.path,
        [res.path, weights],
        [f"wrote {res.path} + {weights.name} ({res.size_bytes / 1e6:.2f} MB, {res.seconds:.1f} s); "
         f"OpenVINO vs ONNX Runtime cosine {res.check['cosine']:.7f}"],
        {"path": str(res.path), "weights": str(weights), "size_bytes": res.size_bytes, "seconds": res.seconds,
         "check": res.check},
    )
