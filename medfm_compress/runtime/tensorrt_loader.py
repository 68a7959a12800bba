"""Loading checks for TensorRT engines (both flavours), before anything is deserialized.

* ``classic``: NVIDIA TensorRT (``import tensorrt``); ``rtx``: TensorRT for RTX (``import tensorrt_rtx``).
* Every engine we build has a sidecar ``<engine>.json`` (flavour and version, targets, profile, precision,
  hashes and the model's ``medfm.*`` metadata). :func:`read_sidecar` reads it; :func:`check_engine` decides
  whether the engine can run here (sidecar, hash, installed version, RTX's engine-validity API or the classic
  GPU's compute capability) and otherwise says to rebuild.

The builder (:mod:`medfm_compress.export.tensorrt`) imports the flavour and sidecar helpers from here.
"""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path
from typing import Any

from .._io import sha256_file
from ..errors import BackendMissingError, ConfigError, IntegrityError, ModelError

__all__ = [
    "DIAG_WORDS",
    "FLAVOURS",
    "FLAVOUR_NAMES",
    "SIDECAR_FORMAT",
    "SIDECAR_VERSION",
    "import_flavour",
    "resolve_flavour",
    "make_logger",
    "cuda_device",
    "sidecar_path",
    "read_sidecar",
    "check_engine",
    "engine_input_chw",
]

log = logging.getLogger(__name__)

# flavour -> python module
FLAVOURS = {"rtx": "tensorrt_rtx", "classic": "tensorrt"}
SIDECAR_FORMAT = "medfm-compress/tensorrt-engine"
SIDECAR_VERSION = 1
FLAVOUR_NAMES = {"rtx": "TensorRT-RTX", "classic": "TensorRT"}


def import_flavour(flavour: str):
    """Import the module of ``flavour`` (``rtx`` or ``classic``); missing -> BackendMissingError naming ``trt``."""
    if flavour not in FLAVOURS:
        raise ConfigError(f"TensorRT flavour must be auto, rtx or classic, got {flavour!r}")
    try:
        return importlib.import_module(FLAVOURS[flavour])
    except ImportError as e:
        detail = f"import {FLAVOURS[flavour]} failed: {e}"
        if flavour == "classic":
            detail += "; classic TensorRT's libraries come from NVIDIA's index (pip install tensorrt)"
        raise BackendMissingError(FLAVOUR_NAMES[flavour], "trt", detail=detail) from None


def resolve_flavour(flavour: str = "auto") -> tuple[str, Any]:
    """``(flavour, module)``. ``auto`` prefers TensorRT-RTX (it builds without a GPU), then classic."""
    if flavour != "auto":
        return flavour, import_flavour(flavour)
    for name in ("rtx", "classic"):
        try:
            return name, import_flavour(name)
        except BackendMissingError:
            continue
    raise BackendMissingError("TensorRT (tensorrt_rtx or tensorrt)", "trt")


def sidecar_path(engine_path) -> Path:
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


def make_logger(trt):
    class _Logger(trt.ILogger):
        """Routes TensorRT messages to logging and keeps errors for the one-line message."""

        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(msg)
                log.debug("TensorRT error: %s", msg)
            elif severity == trt.ILogger.Severity.WARNING:
                log.debug("TensorRT: %s", msg)

    return _Logger()


def cuda_device() -> dict[str, Any]:
    """Name and compute capability of CUDA device 0 via torch (which the runtime needs anyway), or {}."""
    try:
        import torch

        if torch.cuda.is_available():
            return {"name": torch.cuda.get_device_name(0), "cc": list(torch.cuda.get_device_capability(0))}
    except Exception:  # torch without CUDA support raises various errors; "no device" is the answer
        pass
    return {}


def read_sidecar(engine_path) -> dict[str, Any]:
    """The sidecar of ``engine_path``; missing or malformed -> one-line error saying to rebuild."""
    p = Path(engine_path)
    if not p.is_file():
        raise ModelError(f"{p} does not exist")
    sp = sidecar_path(p)
    if not sp.is_file():
        raise ModelError(
            f"{p} has no sidecar {sp.name}; rebuild it with medfm-compress export --format tensorrt"
        )
    try:
        side = json.loads(sp.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelError(f"{sp} is not valid JSON ({e}); rebuild the engine") from None
    if not isinstance(side, dict) or side.get("format") != SIDECAR_FORMAT:
        raise ModelError(f"{sp} is not a medfm-compress engine sidecar; rebuild the engine")
    if side.get("version") != SIDECAR_VERSION:
        raise ModelError(
            f"{sp} has sidecar version {side.get('version')!r}; this tool reads {SIDECAR_VERSION}: "
            "rebuild the engine"
        )
    missing = [
        k
        for k in ("flavour", "tensorrt_version", "engine_sha256", "profiles", "metadata", "input")
        if k not in side
    ]
    if missing or side["flavour"] not in FLAVOURS:
        raise ModelError(f"{sp} lacks {', '.join(missing) or 'a known flavour'}; rebuild the engine")
    return side


DIAG_WORDS = {
    "VERSION_MISMATCH": "built by another TensorRT-RTX version",
    "UNSUPPORTED_CC": "built for other compute capabilities than this GPU's",
    "OLD_CUDA_DRIVER": "the CUDA driver is too old",
    "OLD_CUDA_RUNTIME": "the CUDA runtime is too old",
    "INSUFFICIENT_GPU_MEMORY": "not enough GPU memory",
    "MALFORMED_ENGINE": "not a TensorRT-RTX engine, or corrupted",
    "CUDA_ERROR": "CUDA error while checking (is there a GPU?)",
}


def check_engine(engine_path, verify_hash: bool = True) -> dict[str, Any]:
    """Decide whether ``engine_path`` can run here, without deserializing it.

    Checks, in order: the sidecar; the engine bytes against the sidecar's sha256; the flavour is installed at
    the version that built it; then RTX's engine-validity API on the engine header (version, compute
    capability, driver, memory, malformed) or, for classic, this GPU's compute capability against the one the
    engine was built on. Returns the sidecar dict (plus ``validity``); refuses with a one-line
    :class:`ModelError` that says to rebuild.
    """
    p = Path(engine_path)
    side = read_sidecar(p)
    if verify_hash and sha256_file(p) != side["engine_sha256"]:
        raise IntegrityError(
            f"{p} does not match the sha256 in {sidecar_path(p).name} (changed since it was built); "
            "rebuild it with medfm-compress export --format tensorrt"
        )
    flavour = side["flavour"]
    trt = import_flavour(flavour)
    name = FLAVOUR_NAMES[flavour]
    if str(trt.__version__) != side["tensorrt_version"]:
        raise ModelError(
            f"{p} was built with {name} {side['tensorrt_version']} but {trt.__version__} is installed; "
            "engines are version-specific: rebuild it with medfm-compress export --format tensorrt"
        )
    if flavour == "rtx":
        runtime = trt.Runtime(make_logger(trt))
        with open(p, "rb") as f:
            header = f.read(int(runtime.engine_header_size))
        validity, diag = runtime.get_engine_validity(header)
        diag = int(diag)
        words = [w for k, w in DIAG_WORDS.items() if diag & int(getattr(trt.EngineInvalidityDiagnostics, k))]
        side["validity"] = {"status": validity.name, "diagnostics": words}
        if validity == trt.EngineValidity.INVALID:
            if "not a TensorRT-RTX engine, or corrupted" in words:
                raise ModelError(
                    f"{p} is refused by TensorRT-RTX {trt.__version__}: not a TensorRT-RTX engine, or "
                    "corrupted; rebuild it with medfm-compress export --format tensorrt"
                )
            if not words or words == [DIAG_WORDS["CUDA_ERROR"]]:
                if not cuda_device():
                    raise ModelError(
                        f"{p}: no usable CUDA GPU here; TensorRT engines run on an NVIDIA GPU (use the "
                        "onnxruntime or torch backend on this machine)"
                    )
            raise ModelError(
                f"{p} cannot run on this machine ({'; '.join(words) or 'invalid'}); rebuild it here with "
                f"medfm-compress export --format tensorrt{_target_hint()}"
            )
    else:
        dev = cuda_device()
        if not dev:
            raise ModelError(
                f"{p}: no usable CUDA GPU here; TensorRT engines run on an NVIDIA GPU (use the "
                "onnxruntime or torch backend on this machine)"
            )
        built = side.get("device", {}).get("cc")
        if built and list(built) != list(dev["cc"]):
            raise ModelError(
                f"{p} was built on compute capability {built[0]}.{built[1]} "
                f"({side['device'].get('name', '?')}) but this GPU ({dev['name']}) is "
                f"{dev['cc'][0]}.{dev['cc'][1]}; rebuild it on this GPU"
            )
        side["validity"] = {"status": "VALID", "diagnostics": []}
    return side


def _target_hint() -> str:
    dev = cuda_device()
    return f" (this GPU is sm{dev['cc'][0]}{dev['cc'][1]}; add --targets current)" if dev else ""


def engine_input_chw(side: dict[str, Any]) -> tuple[int, int, int]:
    return tuple(side["profiles"][0]["max"][1:])
