"""TensorRT engine building behind one interface for two flavours.

* ``classic``: NVIDIA TensorRT (``import tensorrt``): data-centre GPUs and Jetson. Builds on (and for) the GPU
  it runs on; honours a timing cache file.
* ``rtx``: TensorRT for RTX (``import tensorrt_rtx``, PyPI ``tensorrt-rtx-cu13``): RTX-class GPUs. Builds
  ahead of time without any GPU for a list of compute capabilities; kernels are specialised at load time
  (its timing cache is a no-op; the runtime backend's ``runtime_cache`` option plays that role).

Both take our ONNX (dynamic batch axis, ``medfm.*`` metadata) and write ``<engine>`` atomically plus a sidecar
``<engine>.json`` holding the flavour and version, compute-capability targets, the optimization profile, the
precision, the source ONNX's sha256, the engine's sha256 and the model's metadata (the
:func:`~medfm_compress.runtime.metadata.encode_metadata` dict), so a runtime needs nothing else.

Precisions: ``fp32``; ``fp16`` (RTX networks are strongly typed, so the ONNX is converted to fp16 with fp32
I/O before parsing; classic sets its FP16 builder flag); ``int8`` and ``fp8`` need explicit symmetric QDQ
nodes in the ONNX (``medfm-compress quantize --target tensorrt``); ONNX Runtime's U8S8 QDQ is refused.

:func:`check_engine` decides, BEFORE deserializing, whether an engine can run here (sidecar, hash, installed
version, the RTX engine-validity API or the classic device's compute capability) and says to rebuild if not.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._io import atomic_path, atomic_write_bytes, atomic_write_json, sha256_file
from ..config import DictConfig
from ..errors import ConfigError, ExportError
from ..runtime.tensorrt_loader import (
    FLAVOUR_NAMES,
    FLAVOURS,
    SIDECAR_FORMAT,
    SIDECAR_VERSION,
    cuda_device,
    make_logger,
    resolve_flavour,
    sidecar_path,
)

__all__ = [
    "TensorRTConfig",
    "EngineResult",
    "PRECISIONS",
    "build_engine",
    "profile_from_batch_sizes",
    "qdq_kind",
]

log = logging.getLogger(__name__)

CONFIG_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8", "fp8")
# Compute capabilities TensorRT-RTX can target ahead of time, by our spelling -> its enum member name.
_RTX_TARGETS = {
    "sm75": "SM75",
    "sm80": "SM80",
    "sm86": "SM86",
    "sm89": "SM89",
    "sm120": "SM120",
    "sm121": "SM121",
    "current": "CURRENT",
}
# What an RTX build without explicit targets runs on (TensorRT-RTX documentation: 8.0, 8.6, 8.9, 12.0+).
RTX_DEFAULT_TARGETS = ("sm80", "sm86", "sm89", "sm120")


# --------------------------------------------------------------------------------------------------------------
# Config and result


@dataclass(frozen=True)
class TensorRTConfig(DictConfig):
    """One engine build. ``None`` means "use the default".

    Attributes:
        onnx: source ONNX file (ours: dynamic batch axis and medfm metadata).
        out: engine path (``.engine`` or ``.plan``); the sidecar is ``<out>.json``.
        flavour: ``auto`` (RTX if installed, else classic), ``rtx`` or ``classic``.
        precision: ``fp32`` | ``fp16`` | ``int8`` | ``fp8`` (int8/fp8 need QDQ from ``--target tensorrt``).
        batch_sizes: batch sizes the engine must accept; the profile is min / middle / max of them.
        workspace_mb: builder workspace limit in MiB (None: TensorRT's default, the device memory).
        timing_cache: classic only: a timing-cache file read before and written after the build.
        targets: RTX only: compute capabilities (``sm75 sm80 sm86 sm89 sm120 sm121`` or ``current``);
            None: TensorRT-RTX's default portable set.
        force: build from an ONNX whose hash differs from its run directory's manifest (warns).
    """

    onnx: str
    out: str
    flavour: str = "auto"
    precision: str = "fp32"
    batch_sizes: tuple[int, ...] = (1,)
    workspace_mb: int | None = None
    timing_cache: str | None = None
    targets: tuple[str, ...] | None = None
    force: bool = False
    version: int = CONFIG_VERSION

    def __post_init__(self):
        if self.version != CONFIG_VERSION:
            raise ConfigError(
                f"tensorrt config version {self.version} is not supported (expected {CONFIG_VERSION})"
            )
        if self.flavour not in ("auto", *FLAVOURS):
            raise ConfigError(f"--flavour must be auto, rtx or classic, got {self.flavour!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"--precision for a TensorRT engine must be one of {', '.join(PRECISIONS)}, "
                f"got {self.precision!r}"
            )
        bs = tuple(self.batch_sizes)
        if not bs or any(not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in bs):
            raise ConfigError(f"--batch-sizes must be positive integers, got {self.batch_sizes!r}")
        object.__setattr__(self, "batch_sizes", tuple(sorted(set(bs))))
        if self.workspace_mb is not None and self.workspace_mb < 1:
            raise ConfigError(f"--workspace-mb must be >= 1, got {self.workspace_mb}")
        if self.targets is not None:
            t = tuple(s.strip().lower().replace(".", "").replace("sm_", "sm") for s in self.targets)
            bad = [s for s in t if s not in _RTX_TARGETS]
            if bad or not t:
                raise ConfigError(
                    f"unknown compute-capability target(s) {', '.join(bad) or '(none)'}; "
                    f"choose from {', '.join(_RTX_TARGETS)}"
                )
            if "current" in t and len(t) > 1:
                raise ConfigError(
                    "target 'current' (the GPU building the engine) cannot be combined with others"
                )
            object.__setattr__(self, "targets", t)
        if Path(self.out).suffix.lower() not in (".engine", ".plan"):
            raise ConfigError(f"engine path {self.out} must end in .engine or .plan")


@dataclass
class EngineResult:
    path: Path
    sidecar: Path
    flavour: str
    trt_version: str
    precision: str
    profile: dict[str, Any]
    targets: list[str]
    build_seconds: float
    size_bytes: int
    notes: list[str] = field(default_factory=list)


def profile_from_batch_sizes(batch_sizes, chw) -> dict[str, list[int]]:
    """One optimization profile covering ``batch_sizes``: min, the middle one as opt, max."""
    bs = sorted(set(int(b) for b in batch_sizes))
    c, h, w = (int(v) for v in chw)
    return {"min": [bs[0], c, h, w], "opt": [bs[len(bs) // 2], c, h, w], "max": [bs[-1], c, h, w]}


# --------------------------------------------------------------------------------------------------------------
# ONNX inspection


def qdq_kind(proto) -> str | None:
    """``None`` (no QDQ), ``int8``, ``uint8``, ``fp8`` or ``mixed``: the zero-point type of QuantizeLinear nodes."""
    import onnx

    inits = {t.name: t.data_type for t in proto.graph.initializer}
    consts = {}
    for n in proto.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = a.t.data_type
    kinds = set()
    T = onnx.TensorProto
    names = {
        T.INT8: "int8",
        T.UINT8: "uint8",
        T.FLOAT8E4M3FN: "fp8",
        T.INT16: "int16",
        T.UINT16: "uint16",
        T.INT4: "int4",
        T.UINT4: "uint4",
    }
    for n in proto.graph.node:
        if n.op_type != "QuantizeLinear":
            continue
        if len(n.input) >= 3 and n.input[2]:
            dt = inits.get(n.input[2], consts.get(n.input[2]))
            kinds.add(names.get(dt, f"type{dt}"))
        else:
            # No zero point: output_dtype attribute (opset 21) or the default uint8.
            out_dt = next((a.i for a in n.attribute if a.name == "output_dtype"), 0)
            kinds.add(names.get(out_dt, "uint8") if out_dt else "uint8")
    if not kinds:
        return None
    return kinds.pop() if len(kinds) == 1 else "mixed"


# --------------------------------------------------------------------------------------------------------------
# Build


def _parser_errors(parser) -> list[str]:
    out = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        name, op = e.node_name() or "?", e.node_operator() or "?"
        out.append(f"node {name!r} ({op}): {' '.join(str(e.desc()).split())}")
    return out


def build_engine(cfg: TensorRTConfig, progress: bool = True) -> EngineResult:
    """Parse ``cfg.onnx``, build a serialized engine, write it and its sidecar atomically."""

    from ..manifest import check_inputs
    from ..runtime.metadata import encode_metadata
    from ..runtime.onnx_loader import image_input, load_onnx_checked, read_meta
    from .onnx_build import to_fp16

    t0 = time.time()
    check_inputs([cfg.onnx], cfg.force)  # before TensorRT is even looked for: a refused input needs no GPU
    flavour, trt = resolve_flavour(cfg.flavour)
    notes: list[str] = []
    src = Path(cfg.onnx)
    proto = load_onnx_checked(src)
    meta = read_meta(proto)
    input_name, chw = image_input(proto, str(src), error=ExportError)
    if tuple(chw) != (meta.preprocess.channels, *meta.preprocess.input_size):
        raise ExportError(
            f"{src}: input shape {chw} disagrees with its metadata "
            f"({meta.preprocess.channels}, {meta.preprocess.input_size}); re-export it"
        )
    kind = qdq_kind(proto)
    _check_precision(cfg.precision, kind, src, flavour, trt)
    if cfg.targets is not None and flavour != "rtx":
        raise ConfigError(
            "--targets (compute capabilities) applies to TensorRT-RTX ahead-of-time builds; classic "
            "TensorRT builds for the GPU it runs on"
        )

    if meta.precision == "fp16" and cfg.precision != "fp16":
        raise ConfigError(f"{src.name} is an fp16 ONNX; build it with --precision fp16")
    if cfg.precision == "fp16" and flavour == "rtx" and meta.precision != "fp16":
        # TensorRT-RTX networks are strongly typed: the precision comes from the ONNX types.
        proto = to_fp16(proto, keep_io_types=True)
    onnx_bytes = proto.SerializeToString()

    logger = make_logger(trt)
    builder = trt.Builder(logger)
    if builder is None:
        raise ExportError(
            f"{FLAVOUR_NAMES[flavour]} could not create a builder: {'; '.join(logger.errors) or 'no GPU?'}"
        )
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes, str(src.resolve())):
        errs = _parser_errors(parser)
        hint = ""
        if kind == "uint8":
            hint = (
                " -- this is ONNX Runtime's U8S8 QDQ (quantize --target cpu); TensorRT needs symmetric int8 QDQ: "
                "quantize with --target tensorrt"
            )
        raise ExportError(
            f"{FLAVOUR_NAMES[flavour]} parser rejected {src.name} ({len(errs)} error(s)): "
            + "; ".join(errs[:5])
            + (f"; ... {len(errs) - 5} more" if len(errs) > 5 else "")
            + hint
        )

    config = builder.create_builder_config()
    if cfg.workspace_mb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(cfg.workspace_mb) << 20)
    prof_dims = profile_from_batch_sizes(cfg.batch_sizes, chw)
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, prof_dims["min"], prof_dims["opt"], prof_dims["max"])
    config.add_optimization_profile(profile)

    targets: list[str]
    device: dict[str, Any] = {}
    if flavour == "rtx":
        if cfg.targets:
            config.num_compute_capabilities = len(cfg.targets)
            for i, t in enumerate(cfg.targets):
                if not config.set_compute_capability(getattr(trt.ComputeCapability, _RTX_TARGETS[t]), i):
                    raise ConfigError(f"TensorRT-RTX {trt.__version__} refused target {t}")
            targets = list(cfg.targets)
        else:
            targets = list(RTX_DEFAULT_TARGETS)
        if cfg.timing_cache:
            notes.append(
                "timing cache ignored: TensorRT-RTX has none (use the runtime backend's runtime_cache)"
            )
    else:
        _set_classic_precision_flags(trt, config, cfg.precision)
        device = cuda_device()
        targets = [f"sm{device['cc'][0]}{device['cc'][1]}"] if device else []
        cache = _load_timing_cache(config, cfg.timing_cache)

    stop_spinner = _progress(
        f"building {FLAVOUR_NAMES[flavour]} {cfg.precision} engine for {src.name}", progress
    )
    try:
        tb = time.time()
        serialized = builder.build_serialized_network(network, config)
        build_s = time.time() - tb
    finally:
        stop_spinner()
    if serialized is None:
        raise ExportError(
            f"{FLAVOUR_NAMES[flavour]} failed to build {src.name}: "
            f"{'; '.join(logger.errors[-3:]) or 'no reason given'}"
        )
    if flavour == "classic" and cfg.timing_cache:
        atomic_write_bytes(cfg.timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
        notes.append(f"timing cache {'updated' if cache else 'written'}: {cfg.timing_cache}")

    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, suffix=".engine.tmp") as tmp:
        with open(tmp, "wb") as f:
            f.write(memoryview(serialized))
    meta.precision = cfg.precision
    meta.provenance = {**meta.provenance, "engine_source_onnx": src.name}
    side = {
        "format": SIDECAR_FORMAT,
        "version": SIDECAR_VERSION,
        "flavour": flavour,
        "tensorrt_module": FLAVOURS[flavour],
        "tensorrt_version": str(trt.__version__),
        "targets": targets,
        "targets_explicit": cfg.targets is not None,
        "device": device,
        "precision": cfg.precision,
        "onnx_qdq": kind,
        "input": input_name,
        "output": [network.get_output(i).name for i in range(network.num_outputs)],
        "batch_sizes": list(cfg.batch_sizes),
        "profiles": [{"input": input_name, **prof_dims}],
        "workspace_mb": cfg.workspace_mb,
        "source_onnx": str(src),
        "source_onnx_sha256": sha256_file(src),
        "engine_sha256": sha256_file(out),
        "engine_bytes": out.stat().st_size,
        "build_seconds": round(build_s, 3),
        "metadata": encode_metadata(meta),
        "config": cfg.to_dict(),
    }
    side_path = sidecar_path(out)
    atomic_write_json(side_path, side)
    total = time.time() - t0
    if progress:
        print(
            f"built {out} ({FLAVOUR_NAMES[flavour]} {trt.__version__}, {cfg.precision}, batch "
            f"{prof_dims['min'][0]}..{prof_dims['max'][0]}, targets {','.join(targets) or '-'}): "
            f"build {build_s:.2f} s, total {total:.2f} s, {side['engine_bytes'] / 1e6:.2f} MB",
            flush=True,
        )
    return EngineResult(
        out,
        side_path,
        flavour,
        str(trt.__version__),
        cfg.precision,
        side["profiles"][0],
        targets,
        round(build_s, 3),
        side["engine_bytes"],
        notes,
    )


def _check_precision(precision: str, kind: str | None, src: Path, flavour: str, trt) -> None:
    name = FLAVOUR_NAMES[flavour]
    if kind == "mixed":
        raise ExportError(f"{src.name} mixes QDQ types; quantize it again with --target tensorrt")
    if precision in ("fp32", "fp16") and kind is not None:
        raise ConfigError(
            f"{src.name} holds {kind} QDQ nodes; build it with --precision "
            f"{'fp8' if kind == 'fp8' else 'int8'}, or give the unquantized ONNX for {precision}"
        )
    if precision == "int8" and kind is None:
        raise ConfigError(
            f"--precision int8 needs explicit QDQ nodes; {src.name} has none: quantize it first with "
            "medfm-compress quantize --target tensorrt --precision int8"
        )
    if precision == "int8" and kind not in ("int8", "uint8"):
        raise ConfigError(f"--precision int8 needs int8 QDQ; {src.name} holds {kind} QDQ")
    if precision == "fp8":
        if kind != "fp8":
            raise ConfigError(
                f"--precision fp8 needs FP8 QDQ nodes; quantize with --target tensorrt --precision fp8 "
                f"({src.name} has {kind or 'none'})"
            )
        if not hasattr(trt, "fp8") and not hasattr(getattr(trt, "DataType", None), "FP8"):
            raise ConfigError(f"{name} {trt.__version__} does not support FP8")
    if precision == "fp16" and flavour == "classic" and not hasattr(trt.BuilderFlag, "FP16"):
        raise ConfigError(
            f"{name} {trt.__version__} has no FP16 builder flag; give an fp16 ONNX with --precision fp32"
        )


def _set_classic_precision_flags(trt, config, precision: str) -> None:
    # Weakly typed classic networks pick kernels per layer among the enabled precisions.
    flags = {"fp16": ["FP16"], "int8": ["INT8", "FP16"], "fp8": ["FP8", "FP16"]}.get(precision, [])
    for f in flags:
        if hasattr(trt.BuilderFlag, f):
            config.set_flag(getattr(trt.BuilderFlag, f))


def _load_timing_cache(config, path: str | None) -> bool:
    if not path:
        return False
    p = Path(path)
    data = p.read_bytes() if p.is_file() else b""
    cache = config.create_timing_cache(data)
    if cache is None or not config.set_timing_cache(cache, False):
        raise ExportError(f"timing cache {p} is not usable by this TensorRT; delete it to start a new one")
    return bool(data)


def _progress(label: str, enabled: bool):
    """Log a start line; return a callable that ends it (a build has no fine-grained progress to show)."""
    if enabled:
        print(f"{label} ...", flush=True)
    return lambda: None


