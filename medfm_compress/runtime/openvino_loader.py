"""Loading checks for OpenVINO IR (``.xml`` + ``.bin``) and compiling a model for a device.

What a runtime needs before it runs an IR: :func:`check_ir_files` (the ``.bin`` is there and long enough),
:func:`load_ir_checked`, :func:`read_ir_meta` (our ``medfm.*`` metadata from the IR's runtime info) and
:func:`compile_ov` (threads, performance hint, and the inference precision the artifact was validated at).
The exporter (:mod:`medfm_compress.export.openvino`) and the quantizer import these from here.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from ..errors import BackendMissingError, ConfigError, ModelError, first_line
from .metadata import ModelMeta, decode_metadata, encode_metadata
from .preprocess import PreprocessSpec

__all__ = [
    "require_openvino",
    "ov_core",
    "ov_meta_props",
    "check_ir_files",
    "load_ir_checked",
    "read_ir_meta",
    "ir_size_bytes",
    "compile_ov",
    "OV_INFERENCE_PRECISIONS",
    "ov_inference_precision",
    "ov_supports",
    "require_ov_precision",
]


def require_openvino():
    """``import openvino`` or a :class:`BackendMissingError` naming the extra."""
    try:
        import openvino

        return openvino
    except ImportError as e:
        # Running an IR needs only the runtime; making one (NNCF) asks for [openvino] in compress.quantize_openvino.
        raise BackendMissingError("openvino", "openvino-runtime", detail=f"import openvino failed: {e}") from None


_CORE = None


def ov_core():
    """One shared ``openvino.Core`` (creating one costs ~50 ms and loads the device plugins)."""
    global _CORE
    if _CORE is None:
        _CORE = require_openvino().Core()
    return _CORE


def ov_meta_props(ov_model) -> dict[str, str]:
    """The ``medfm.*`` runtime-info entries of an ``openvino.Model`` as strings."""
    props = {}
    for key in _META_KEYS:
        if ov_model.has_rt_info(key):
            props[key] = ov_model.get_rt_info(key).astype(str)
    return props


# The keys encode_metadata writes (derived once so that the two never drift apart). The probe sets every optional
# field (a volume model's window and spacing): a key written only when set would otherwise never be read back, and
# an IR of a 3-D model would lose its voxel spacing (predict would then segment a scan on the wrong grid).
def _meta_keys() -> tuple[str, ...]:
    probe = ModelMeta(PreprocessSpec(input_size=(1, 1, 1), channels=1, mean=(0.0,), std=(1.0,), window=(0.0, 1.0),
                                     spacing=(1.0, 1.0, 1.0)), "segmentation", [])
    return tuple(encode_metadata(probe))


_META_KEYS = _meta_keys()


def ir_size_bytes(xml: Path) -> int:
    xml = Path(xml)
    return xml.stat().st_size + xml.with_suffix(".bin").stat().st_size


def check_ir_files(xml) -> None:
    """Refuse an IR whose ``.xml`` is unreadable or whose ``.bin`` is missing or shorter than it references."""
    xml = Path(xml)
    if not xml.is_file():
        raise ModelError(f"{xml} does not exist")
    bin_path = xml.with_suffix(".bin")
    try:
        root = ET.parse(xml).getroot()
    except (ET.ParseError, OSError) as e:
        raise ModelError(f"{xml} is not a readable OpenVINO IR ({e}); re-export it") from None
    if root.tag != "net":
        raise ModelError(f"{xml} is not an OpenVINO IR (root element <{root.tag}>, expected <net>)")
    needed = 0
    for data in root.iter("data"):
        off, size = data.get("offset"), data.get("size")
        if off is not None and size is not None:
            try:
                needed = max(needed, int(off) + int(size))
            except ValueError:
                raise ModelError(f"{xml} has a malformed weight offset/size; re-export it") from None
    if needed == 0:
        return
    if not bin_path.is_file():
        raise ModelError(
            f"{xml}: its weights file {bin_path.name} is missing; copy the .xml and .bin together"
        )
    have = bin_path.stat().st_size
    if have < needed:
        raise ModelError(
            f"{xml}: its weights file {bin_path.name} is truncated ({have} of {needed} bytes); "
            "copy it again or re-export"
        )


def load_ir_checked(xml):
    """Read an IR after :func:`check_ir_files`; OpenVINO's own failures become one-line errors."""
    check_ir_files(xml)
    try:
        return ov_core().read_model(str(xml))
    except (BackendMissingError, ModelError):
        raise
    except Exception as e:
        raise ModelError(f"OpenVINO cannot read {xml}: {first_line(e)}") from None


def read_ir_meta(xml_or_model, source: str | None = None) -> ModelMeta:
    """The :class:`ModelMeta` kept in an IR's runtime info (a path or an ``openvino.Model``)."""
    if isinstance(xml_or_model, str | os.PathLike):
        model, source = load_ir_checked(xml_or_model), source or str(xml_or_model)
    else:
        model, source = xml_or_model, source or "the OpenVINO model"
    return decode_metadata(ov_meta_props(model), source)


# OpenVINO's names for the precision non-quantized ops run at (INFERENCE_PRECISION_HINT), and the CPU capability
# each needs. Left unset, the CPU plugin runs an "fp32" model in bf16 wherever the CPU has native bf16 (AVX512-BF16,
# AMX): faster, but not the model that was validated (logits off by ~1e-2 here), so we always set it.
OV_INFERENCE_PRECISIONS = {"f32": "FP32", "bf16": "BF16", "f16": "FP16"}
# Our artifact precision -> the inference precision its IR is run at.
_PRECISION_TO_OV = {"bf16": "bf16", "fp16": "f16"}


def ov_inference_precision(artifact_precision: str) -> str:
    """The ``INFERENCE_PRECISION_HINT`` an artifact of this precision is validated and run at: ``bf16`` for a bf16
    artifact, ``f16`` for fp16, ``f32`` for everything else (fp32, and the non-quantized ops of int8)."""
    return _PRECISION_TO_OV.get(artifact_precision, "f32")


def ov_supports(precision: str, device: str = "CPU") -> bool:
    """Whether ``device`` runs ``precision`` (f32/bf16/f16) natively (its OPTIMIZATION_CAPABILITIES)."""
    if precision == "f32":
        return True
    try:
        caps = ov_core().get_property(device, "OPTIMIZATION_CAPABILITIES")
    except Exception:
        return False
    return OV_INFERENCE_PRECISIONS[precision] in {str(c).upper() for c in caps}


def require_ov_precision(precision: str, device: str = "CPU", what: str = "the model") -> None:
    """A one-line :class:`ConfigError` unless ``device`` runs ``precision`` natively: never emulated silently."""
    if ov_supports(precision, device):
        return
    try:
        caps = ", ".join(map(str, ov_core().get_property(device, "OPTIMIZATION_CAPABILITIES")))
    except Exception:
        caps = "none reported"
    raise ConfigError(
        f"{what} runs at {precision}: OpenVINO's {device} device has no native support for it on this machine "
        f"(native {precision} would be listed in its capabilities: {caps}); run it where it has, or use an "
        "fp32/int8 artifact"
    )


def compile_ov(model, device: str | None = None, threads: int | None = None, hint: str | None = None,
               source: str = "model", inference_precision: str | None = None):
    """``Core.compile_model`` with thread count, performance hint and inference precision; an unknown device or
    a precision the device cannot run is a one-line error.

    Args:
        model: ``openvino.Model`` or a path OpenVINO reads (.xml, .onnx).
        device: OpenVINO device name (``CPU``, ``GPU``, ``NPU``, ``AUTO``...; default ``CPU``).
        threads: ``INFERENCE_NUM_THREADS`` (None: every core).
        hint: ``latency`` | ``throughput`` | ``cumulative_throughput`` (default ``latency``).
        inference_precision: ``f32`` (default) | ``bf16`` | ``f16``: the precision of the ops that are not
            quantized, set on CPU and GPU devices (OpenVINO's own default depends on the CPU).
    """
    core = ov_core()
    dev = (device or "CPU").upper()
    hints = {"latency": "LATENCY", "throughput": "THROUGHPUT", "cumulative_throughput": "CUMULATIVE_THROUGHPUT"}
    hint_name = (hint or "latency").lower()
    if hint_name not in hints:
        raise ConfigError(f"OpenVINO performance hint must be one of {', '.join(hints)}, got {hint!r}")
    prec = (inference_precision or "f32").lower()
    if prec not in OV_INFERENCE_PRECISIONS:
        raise ConfigError(f"OpenVINO inference precision must be one of {', '.join(OV_INFERENCE_PRECISIONS)}, "
                          f"got {inference_precision!r}")
    base = dev.split(":", 1)[0].split(".", 1)[0]
    available = core.available_devices
    if base not in ("AUTO", "MULTI", "HETERO", "BATCH") and not any(
        d == dev or d.split(".", 1)[0] == base for d in available
    ):
        raise ConfigError(
            f"OpenVINO device {device!r} is not present on this machine (available: {', '.join(available)}); "
            "use --device CPU"
        )
    config: dict[str, Any] = {"PERFORMANCE_HINT": hints[hint_name]}
    if base in ("CPU", "GPU"):
        require_ov_precision(prec, dev, source)
        config["INFERENCE_PRECISION_HINT"] = prec
    elif prec != "f32":
        raise ConfigError(f"an inference precision ({prec}) can be set on CPU and GPU devices only, not {dev}")
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}")
        config["INFERENCE_NUM_THREADS"] = int(threads)
    try:
        return core.compile_model(model if not isinstance(model, Path) else str(model), dev, config)
    except Exception as e:
        raise ModelError(f"OpenVINO cannot compile {source} for {dev}: {first_line(e)}") from None
