"""Post-training quantization of ONNX models, dispatched to a per-target backend.

``quantize(QuantizeConfig(...))`` takes any ONNX file (ours, or any other with its preprocessing given by
flags) or a run directory (exported first), builds a calibration set, hands both to the backend registered
for ``cfg.target`` and writes the backend's model atomically with updated ``medfm.*`` metadata.

A backend is a config class registered under its ``--target`` name
(:func:`~medfm_compress.compress.quantize_config.backend_config`) and a handler registered for that class with
:func:`register_target`; the handler is found by the type of ``cfg.backend``. The modules of :data:`TARGET_MODULES`
are imported on first use, so a new target is a module plus its name in that list::

    @backend_config("mytarget")
    @dataclass(frozen=True)
    class MyTargetConfig(BackendConfig):
        calibrator: str = "minmax"

    @register_target(MyTargetConfig, precisions=("int8",), methods=("ptq",))
    def quantize_mytarget(ctx: QuantizeContext) -> QuantizedModel: ...
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from .. import __version__
from .._io import sha256_file
from .._registry import Registry
from ..errors import ConfigError, ExportError, GateFailure, ModelError
from ..layout import RunLayout
from ..runtime.onnx_loader import image_input
from ..runtime.tasks import get_task
from .calibration import CalibrationSet, build_calibration
from .quantize_config import (
    CALIBRATORS,
    DEFAULT_SEARCH_BUDGET_S,
    SEARCH_OPTIONS,
    VOLUME_NUM_HOLDOUT,
    BackendConfig,
    CalibrationConfig,
    GateConfig,
    ModelOptConfig,
    NNCFConfig,
    OnnxRuntimeConfig,
    QATConfig,
    QuantizeConfig,
    backend_config_class,
    backend_config_classes,
)

T = TypeVar("T")

__all__ = [
    "QuantizeConfig",
    "CalibrationConfig",
    "GateConfig",
    "BackendConfig",
    "OnnxRuntimeConfig",
    "NNCFConfig",
    "ModelOptConfig",
    "QATConfig",
    "QuantizeResult",
    "QuantizeContext",
    "QuantizedModel",
    "QuantTarget",
    "register_target",
    "get_target",
    "handler_for",
    "available_targets",
    "out_is_stem",
    "quantize",
    "CALIBRATORS",
    "SEARCH_OPTIONS",
    "DEFAULT_SEARCH_BUDGET_S",
]

@dataclass
class QuantizeContext:
    """What a target backend gets: the fp32 model (file and proto), its metadata and the calibration set."""

    cfg: QuantizeConfig
    fp32_path: Path
    fp32_proto: Any
    meta: Any
    calib: CalibrationSet
    input_shape: tuple[int, int, int]
    workdir: Path
    run_dir: Path | None = None
    log: Callable[[str], None] = print
    # Times candidates: ``timer(models, shape, runs, dtypes)`` -> p50 ms by name, each model a ``name -> (engine,
    # model[, precision[, streams]])`` entry (latency.interleaved_latency_ms; tests inject their own).
    timer: Callable[..., dict[str, float]] | None = None

    def time_ms(self, models: dict[str, tuple], shape: tuple[int, ...], dtypes: dict[str, Any] | None = None
                ) -> dict[str, float]:
        """p50 latency (ms) of each candidate at ``shape``, all timed in the same interleaved rounds."""
        from . import latency

        return (self.timer or latency.interleaved_latency_ms)(models, shape, self.cfg.backend.latency_runs, dtypes)


@dataclass
class QuantizedModel:
    """A backend's output: the model, the precision it ended up in, provenance and a report (parity, timing)."""

    proto: Any
    precision: str
    provenance: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    # A model that is not an ONNX proto (an OpenVINO IR) brings its own writer ``save(meta, out_path)`` (which
    # stores ``meta`` and writes atomically) and the output suffix used for the default name.
    save: Callable[[Any, Path], Any] | None = None
    suffix: str = ".onnx"
    # ``--precision auto --batch-sizes``: the models that win another batch size than this one's (candidate name ->
    # model, first winning batch size first); quantize() writes each beside the main output, ``<stem>.bs<N><suffix>``.
    per_batch: dict[str, QuantizedModel] = field(default_factory=dict)


@dataclass
class QuantizeResult:
    """What ``quantize`` wrote. ``by_batch`` (``--precision auto --batch-sizes``): per batch size the artifact
    (``path``) and how to run it (``engine``, ``streams``), with its measured p50 and speed-up over fp32."""

    path: Path
    precision: str
    meta: Any
    report: dict[str, Any]
    seconds: float
    size_bytes: int
    input_size_bytes: int
    by_batch: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class QuantTarget:
    """A backend's handler, registered for its config class (:mod:`medfm_compress.compress.quantize_config`)."""

    config: type[BackendConfig]
    fn: Callable[[QuantizeContext], QuantizedModel]
    precisions: tuple[str, ...]
    methods: tuple[str, ...]
    check: Callable[[Any, QuantizeConfig], None] | None = None
    suffix: str = ".onnx"

    @property
    def name(self) -> str:
        return self.config.target

    def check_config(self, cfg: QuantizeConfig) -> None:
        """One-line errors for a precision or method this backend lacks (an option it does not take cannot be
        set: its config class has no such field)."""
        if cfg.precision not in self.precisions:
            raise ConfigError(
                f"--target {self.name} supports --precision {', '.join(self.precisions)}; got {cfg.precision!r}"
            )
        if cfg.method not in self.methods:
            raise ConfigError(f"--target {self.name} supports --method {', '.join(self.methods)}; got {cfg.method!r}")


_TARGETS: Registry[QuantTarget] = Registry("quantization handler", origin=lambda t: t.fn.__module__)
# The modules that register quantization handlers, imported on first use (a backend whose optional dependency is
# missing must not take the other targets down).
TARGET_MODULES = ("quantize_ort", "quantize_openvino", "quantize_trt")
_DISCOVERED = False
_BROKEN: dict[str, str] = {}


def register_target(
    config: type[BackendConfig],
    precisions: tuple[str, ...],
    methods: tuple[str, ...] = ("ptq",),
    check: Callable[[Any, QuantizeConfig], None] | None = None,
    suffix: str = ".onnx",
):
    """Decorator registering the handler of a backend config class (registered with
    :func:`~medfm_compress.compress.quantize_config.backend_config`); a second handler for one class is an error.

    ``check(fp32_proto, cfg)``, when given, runs before calibration data is loaded and raises a
    :class:`~medfm_compress.errors.MedfmError` for a model the backend cannot handle (e.g. an unsupported op).
    ``suffix``: the file the backend writes (``.onnx``, ``.xml``).
    """
    if backend_config_classes().get(config.target) is not config:
        raise ValueError(f"{config.__name__} is not a registered backend config (decorate it with @backend_config)")

    def deco(fn: Callable[[QuantizeContext], QuantizedModel]):
        _TARGETS.register(config.target, QuantTarget(config, fn, tuple(precisions), tuple(methods), check, suffix))
        return fn

    return deco


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    for name in TARGET_MODULES:
        try:
            importlib.import_module(f"{__package__}.{name}")
        except ImportError as e:
            _BROKEN[name] = f"{type(e).__name__}: {e}"


def available_targets() -> dict[str, QuantTarget]:
    _discover()
    return {t.name: t for t in _TARGETS}


def handler_for(backend: BackendConfig) -> QuantTarget:
    """The handler registered for ``backend``'s type."""
    _discover()
    target = _TARGETS.get(type(backend).target)
    if target is None or target.config is not type(backend):
        broken = f" (backend modules that failed to import: {', '.join(sorted(_BROKEN))})" if _BROKEN else ""
        raise ConfigError(f"--target {type(backend).target} has no quantization backend here{broken}")
    return target


def get_target(name: str) -> QuantTarget:
    """The handler of ``--target name``."""
    return handler_for(backend_config_class(name)())


# --------------------------------------------------------------------------------------------------------------


def _check_meta_matches(meta, shape: tuple[int, int, int], source: str) -> None:
    pre = meta.preprocess
    if pre.channels != shape[0]:
        raise ModelError(
            f"{source}: preprocessing says {pre.channels} channel(s) but the model input has {shape[0]}; "
            "fix --channels"
        )
    if tuple(pre.input_size) != tuple(shape[1:]):
        raise ModelError(
            f"{source}: preprocessing says {'x'.join(map(str, pre.input_size))} but the model input "
            f"is {'x'.join(map(str, shape[1:]))}; fix --input-size"
        )


def _resolve_input(cfg: QuantizeConfig, workdir: Path, log) -> tuple[Path, Any, Path | None]:
    """(fp32 ONNX path, proto, run dir or None). A run directory is exported first."""
    from ..export.onnx import ExportConfig, export_onnx
    from ..runtime.onnx_loader import load_onnx_checked

    src = Path(cfg.input)
    if src.is_dir():
        if not RunLayout(src).card(cfg.model).is_file():
            raise ModelError(
                f"{src} is a directory without {cfg.model}.json; give an .onnx file or a run directory"
            )
        out = src / f"{cfg.model}.onnx"
        log(f"exporting {cfg.model} of {src} to {out}")
        res = export_onnx(ExportConfig(source=str(src), out=str(out), model=cfg.model, force=cfg.force))
        return res.path, load_onnx_checked(res.path), src
    proto = load_onnx_checked(src)
    run_dir = src.parent if RunLayout(src.parent).manifest.is_file() else None
    return src, proto, run_dir


AUTO_SUFFIXES = (".onnx", ".xml")


def out_is_stem(cfg: QuantizeConfig) -> bool:
    """Whether ``cfg.out`` is a stem that the winner's suffix completes: ``--target cpu --precision auto`` with an
    out that names neither an ``.onnx`` nor an ``.xml`` file (ONNX Runtime and OpenVINO candidates both compete)."""
    return (bool(cfg.out) and cfg.target == "cpu" and cfg.precision == "auto"
            and not str(cfg.out).lower().endswith(AUTO_SUFFIXES))


def _default_out(cfg: QuantizeConfig, fp32_path: Path, precision: str) -> Path:
    stem = fp32_path.name[: -len(".onnx")] if fp32_path.name.endswith(".onnx") else fp32_path.stem
    return fp32_path.with_name(f"{stem}.{precision}.onnx")


def quantize(cfg: QuantizeConfig, timer: Callable[..., dict[str, float]] | None = None) -> QuantizeResult:
    """Quantize ``cfg.input`` for ``cfg.target``; writes nothing unless every check passes. ``timer`` times latency
    candidates (default :func:`medfm_compress.compress.latency.interleaved_latency_ms`; see
    :attr:`QuantizeContext.timer`)."""
    from ..export.onnx_build import save_onnx, set_meta
    from ..manifest import Manifest
    from ..runtime.metadata import decode_metadata, meta_from_flags

    t0 = time.time()
    log = (lambda s: print(s, file=sys.stderr, flush=True)) if cfg.progress else (lambda s: None)
    target = handler_for(cfg.backend)
    target.check_config(cfg)
    if cfg.out and Path(cfg.out).resolve() == Path(cfg.input).resolve():
        raise ConfigError("--out must differ from the input model")
    if cfg.out and not out_is_stem(cfg):
        # The file type follows what the target writes (an ONNX model is not a TensorRT engine): cpu auto may also
        # write an OpenVINO IR, which an .xml --out asks for.
        allowed = {target.suffix} | ({".xml"} if cfg.target == "cpu" and cfg.precision == "auto" else set())
        if Path(cfg.out).suffix.lower() not in allowed:
            raise ConfigError(f"--out {cfg.out}: --target {cfg.target} writes {' or '.join(sorted(allowed))} "
                              f"files; name it so" + (" (an engine is built from it by export --format tensorrt)"
                                                      if cfg.target == "tensorrt" else ""))

    with tempfile.TemporaryDirectory(prefix="medfm-quant-") as tmp:
        workdir = Path(tmp)
        fp32_path, proto, run_dir = _resolve_input(cfg, workdir, log)
        manifest = (
            Manifest(run_dir) if run_dir is not None and RunLayout(run_dir).manifest.is_file() else None
        )
        if manifest is not None:
            manifest.check_input(fp32_path, cfg.force)
        _, shape = image_input(proto, str(fp32_path), ranks=(4, 5))
        props = {p.key: p.value for p in proto.metadata_props}
        ours = props.get("medfm.format") is not None
        meta = (
            decode_metadata(props, str(fp32_path))
            if ours
            else meta_from_flags(str(fp32_path), cfg.input_size, cfg.channels, cfg.mean, cfg.std)
        )
        _check_meta_matches(meta, shape, str(fp32_path))
        if ours and meta.precision != "fp32":
            raise ModelError(f"{fp32_path} is already {meta.precision}; quantize the fp32 model instead")
        task = get_task(meta.task)
        if "top1_agreement" not in task.gate_metrics:
            # No classes to agree on (an embedding, a regression): its own figures are the gate, not top-1; an
            # embedding's is the cosine to fp32 (default 0.99).
            cosine = (DEFAULT_MIN_COSINE if cfg.gate.min_cosine is None and "cosine" in task.gate_metrics
                      else cfg.gate.min_cosine)
            cfg = cfg.with_gate(min_agreement=0.0, min_cosine=cosine)
        if meta.preprocess.is_volume and cfg.gate.num_holdout == GateConfig.num_holdout:
            cfg = cfg.with_gate(num_holdout=VOLUME_NUM_HOLDOUT)
            log(f"volume model: parity gate on {VOLUME_NUM_HOLDOUT} held-out patches (--num-holdout to change)")
        if task.gate_metrics != ("top1_agreement",):
            log(f"{task.name} model: parity gate is {gate_text(cfg, task)} on held-out images")
        _check_gate_flags(cfg, task, fp32_path.name)
        if target.check is not None:
            target.check(proto, cfg)
        calib = build_calibration(
            cfg.calibration.calib_data,
            meta.preprocess,
            shape,
            cfg.calibration.num_calib,
            cfg.gate.num_holdout,
            cfg.seed,
            cfg.calibration.allow_random_calibration,
        )
        log(
            f"calibration: {len(calib.images)} images, held-out: {len(calib.holdout)} images ({calib.source})"
        )
        check_holdout_size(len(calib.holdout), cfg, task)
        ctx = QuantizeContext(
            cfg=cfg,
            fp32_path=fp32_path,
            fp32_proto=proto,
            meta=meta,
            calib=calib,
            input_shape=shape,
            workdir=workdir,
            run_dir=run_dir,
            log=log,
            timer=timer,
        )
        out = Path(cfg.out) if cfg.out and not out_is_stem(cfg) else None
        rec = (
            manifest.start("quantize", cfg.to_dict(), {"model": fp32_path, "calibration": calib.source})
            if manifest is not None
            else None
        )
        qm = target.fn(ctx)
        _speed_check(ctx, qm)
        confidence = gate_confidence(qm.report.get("parity") or {}, cfg, task)  # the command prints them
        if confidence:
            qm.report["warnings"] = [*qm.report.get("warnings", []), *confidence]

        source_sha = sha256_file(fp32_path)

        def metadata(m: QuantizedModel):
            provenance = {
                **meta.provenance,
                "quantization": {
                    "tool": f"medfm-compress {__version__}",
                    "target": cfg.target,
                    "method": cfg.method,
                    "requested_precision": cfg.precision,
                    "precision": m.precision,
                    "source_model": fp32_path.name,
                    "source_model_sha256": source_sha,
                    "calibration": calib.provenance(),
                    **m.provenance,
                },
            }
            return dataclasses.replace(meta, precision=m.precision, provenance=provenance)

        if out is None:
            out = (Path(str(cfg.out) + qm.suffix) if cfg.out
                   else _default_out(cfg, fp32_path, qm.precision).with_suffix(qm.suffix))
        paths = {None: out, **_per_batch_paths(qm, out)}
        by_batch = _name_artifacts(qm, paths)
        written: dict[str, Path] = {}
        for m in (qm, *qm.per_batch.values()):
            # Every model is checked before any is written, so a failure leaves nothing behind.
            if m.save is None:
                set_meta(m.proto, metadata(m))
                _check_output(m.proto, cfg)
        for key, m in ((None, qm), *qm.per_batch.items()):
            path = paths[key]
            tag = "" if key is None else f"_{path.name.rsplit('.', 2)[-2]}"  # _bs32
            if m.save is not None:
                m.save(metadata(m), path)
                # An IR is an .xml + .bin pair: both count towards its size and both go in the manifest.
                written |= {f"model{tag}": path, **({f"weights{tag}": path.with_suffix(".bin")}
                                                    if m.suffix == ".xml" else {})}
            else:
                save_onnx(m.proto, path)
                written[f"onnx{tag}"] = path
        new_meta = metadata(qm)
        report = {**qm.report, "calibration": calib.provenance()}
        if manifest is not None and rec is not None:
            manifest.finish(rec, written, {k: v for k, v in report.items() if k != "calibration"})
        size_in = fp32_path.stat().st_size
    return QuantizeResult(
        out, qm.precision, new_meta, report, round(time.time() - t0, 2),
        sum(p.stat().st_size for k, p in written.items() if k in ("model", "weights", "onnx")), size_in,
        [{**row, "path": out.with_name(row["artifact"])} for row in by_batch],
    )


def _speed_check(ctx: QuantizeContext, qm: QuantizedModel) -> None:
    """An int8 ONNX model shipped without a latency comparison (the first shot passed the gate, so no search
    timed it) is timed against fp32 at batch 1 in one interleaved loop; ``report["speed_vs_fp32"]`` records it, and
    one slower than fp32 is said in a warning line (small models at batch 1 can be: per-image int8 kernels, thread
    dispatch). ``--precision auto`` and the search choose by speed; this only tells."""
    from .latency import interleaved_latency_ms

    timer = ctx.timer or interleaved_latency_ms
    if qm.save is not None or qm.precision != "int8" or "search" in qm.report or qm.provenance.get("auto"):
        return
    shape = (1, *ctx.input_shape)
    ms = timer({"fp32": ("onnxruntime", ctx.fp32_proto), "q": ("onnxruntime", qm.proto)}, shape,
               runs=min(ctx.cfg.backend.latency_runs, 50), rounds=3)
    ratio = ms["fp32"] / ms["q"] if ms["q"] else None
    qm.report["speed_vs_fp32"] = {"batch_size": 1, "fp32_ms": ms["fp32"], "ms": ms["q"], "speedup": ratio,
                                  "engine": "onnxruntime"}
    if ratio is not None and ratio < 1.0:
        ctx.log(f"warning: the {qm.precision} model is slower than fp32 at batch 1 on this CPU ({ms['q']:.3f} vs "
                f"{ms['fp32']:.3f} ms p50, ONNX Runtime's default session); --precision auto chooses by speed")


def _per_batch_paths(qm: QuantizedModel, out: Path) -> dict[str, Path]:
    """Where the models winning other batch sizes go: beside ``out``, named after the first batch size each wins."""
    rows = (qm.provenance.get("auto") or {}).get("by_batch") or []
    stem = out.name[: -len(out.suffix)] if out.suffix else out.name
    paths = {}
    for name, m in qm.per_batch.items():
        first = min(r["batch_size"] for r in rows if r["candidate"] == name)
        paths[name] = out.with_name(f"{stem}.bs{first}{m.suffix}")
        if paths[name].resolve() == out.resolve():
            raise ConfigError(f"--out {out} would be overwritten by the batch-{first} model; give another --out")
    return paths


def _name_artifacts(qm: QuantizedModel, paths: dict[Any, Path]) -> list[dict[str, Any]]:
    """Fill in the file name of each batch size's artifact in the table every written model carries."""
    auto = qm.provenance.get("auto") or {}
    rows = auto.get("by_batch") or []
    chosen = auto.get("chosen")
    for row in rows:
        row["artifact"] = paths[None if row["candidate"] == chosen else row["candidate"]].name
    if rows:
        qm.report["auto_by_batch"] = rows
    return rows


def _check_output(proto, cfg: QuantizeConfig) -> None:
    import onnx

    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as e:
        raise ExportError(
            f"the {cfg.precision} model for --target {cfg.target} fails onnx.checker "
            f"({str(e).strip().splitlines()[0][:200]}); nothing written"
        ) from None


# The option that sets the threshold of each parity metric a task's gate judges (Task.gate_metrics).
GATE_OPTIONS = {"mean_dice": "min_dice", "pearson_r": "min_pearson", "top1_agreement": "min_agreement",
                "cosine": "min_cosine"}
DEFAULT_MIN_COSINE = 0.99  # the cosine gate of a task judged by cosine alone, when --min-cosine is not given


def gate_text(cfg: QuantizeConfig, task) -> str:
    """The parity gate of a model of ``task`` (a name or a task) in words."""
    task = get_task(task)
    words = {"mean_dice": "mean Dice vs fp32's masks", "pearson_r": "Pearson r vs fp32's outputs",
             "top1_agreement": task.agreement_words, "cosine": "cosine"}
    # The figures judged by the lower bound of their 95% interval (where a parity record carries one).
    bounded = set() if cfg.gate.allow_small_holdout else {"mean_dice"} | (
        {"top1_agreement"} if agreement_over_cases(task) else set())
    parts = [f"{words[m]}{' (95% lower bound)' if m in bounded else ''} >= {getattr(cfg.gate, GATE_OPTIONS[m])}"
             for m in task.gate_metrics if m != "cosine"]
    if cfg.gate.min_cosine is not None:
        parts.append(f"cosine >= {cfg.gate.min_cosine}")
    return ", ".join(parts)


def gate_flags(task) -> str:
    """The flags that loosen the parity gate of a model of ``task``."""
    return "/".join("--" + GATE_OPTIONS[m].replace("_", "-") for m in get_task(task).gate_metrics)


def check_gate(parity: dict[str, Any], ctx: QuantizeContext, what: str, hint: str = "") -> None:
    """Refuse ``what`` (e.g. ``int8 model``) in one line when its ``parity`` on the held-out images misses the gate:
    the gate, the figures, ``hint`` (remedies worth trying before lowering the gate), the flags that lower it."""
    cfg, task = ctx.cfg, ctx.meta.task
    if not gate_passes(parity, cfg):
        raise GateFailure(f"{what} fails the parity gate ({gate_text(cfg, task)}) on {len(ctx.calib.holdout)} held-out "
                          f"images: {parity_text(parity)}; {hint}lower {gate_flags(task)}; nothing written")


def gate_settings(cfg: QuantizeConfig, task) -> dict[str, float | None]:
    """The gate's thresholds as recorded in a report: agreement and cosine, and those the task's gate adds."""
    fields = ["min_agreement", "min_cosine", *(GATE_OPTIONS[m] for m in get_task(task).gate_metrics)]
    return {f: getattr(cfg.gate, f) for f in dict.fromkeys(fields)}


def _check_gate_flags(cfg: QuantizeConfig, task, name: str) -> None:
    """A gate option the model's task does not judge (--min-dice on a classifier) is refused in one line."""
    from ..runtime.tasks import models_where

    for metric, option in GATE_OPTIONS.items():
        if option in ("min_agreement", "min_cosine") or metric in task.gate_metrics:
            continue
        if getattr(cfg.gate, option) != getattr(GateConfig, option):
            models = models_where(lambda t, m=metric: m in t.gate_metrics)
            raise ConfigError(f"--{option.replace('_', '-')} gates {models}; {name} is a {task.name} model (its gate "
                              f"is {gate_flags(task)}{'' if 'cosine' in task.gate_metrics else ' / --min-cosine'})")


def parity_text(p: dict[str, Any]) -> str:
    """A parity record's figures in words (mean Dice first for segmentation)."""
    if p.get("pearson_r") is not None:
        return f"Pearson r {p['pearson_r']:.5f}, mean absolute difference {p['mae']:.4g}, cosine {p['cosine']:.5f}"
    def ci(key):
        c = p.get(f"{key}_ci")
        return f" [95% CI {c[0]:.4f}, {c[1]:.4f}]" if c else ""

    dice = (f"mean Dice {p['mean_dice']:.4f}{ci('mean_dice')}, pixel agreement" if p.get("mean_dice") is not None
            else "top-1 agreement")
    cases = f" ({p['cases']} cases)" if p.get("cases") else ""
    return f"{dice} {p['top1_agreement']:.4f}{ci('top1_agreement')}, cosine {p['cosine']:.5f}{cases}"


def parity_report(ref: np.ndarray, got: np.ndarray, task: str) -> dict[str, float]:
    """Parity of a quantized model's logits against fp32 on the same inputs (the comparator's figures), with the
    number of held-out cases and the 95% interval of the figure the task's gate judges: Wilson for a classifier's
    top-1 agreement, a bootstrap over cases for a segmentation model's mean Dice."""
    from ..metrics import top1_agreement, wilson_interval

    t = get_task(task)
    p = t.parity_metrics(ref, got)
    if p["top1_agreement"] is None:
        # No classes (an embedding): the argmax agreement is reported and ranked on, never gated (min_agreement 0).
        p["top1_agreement"] = top1_agreement(ref, got)
    ref, got = np.asarray(ref), np.asarray(got)
    p["cases"] = n = int(len(ref))
    if "mean_dice" in t.gate_metrics and p.get("mean_dice") is not None:
        from ..segmetrics import pooled_dice_interval

        p["mean_dice_ci"] = list(pooled_dice_interval(got.argmax(1), ref.argmax(1), ref.shape[1]))
    elif agreement_over_cases(t) and ref.ndim == 2 and n:
        k = p["top1_agreement"] * n
        if abs(k - round(k)) < 1e-6:  # a share of whole cases (a multi-label agreement per label is not)
            p["top1_agreement_ci"] = list(wilson_interval(round(k), n))
    return p


def gate_confidence(parity: dict[str, Any], cfg: QuantizeConfig, task) -> list[str]:
    """``warning:`` lines for a gate passed on a point value (``--allow-small-holdout``) whose 95% interval reaches
    below the threshold: how many held-out cases judged it, the interval, and (agreement) how many cases could show
    the threshold at all."""
    from ..metrics import wilson_cases_needed

    task = get_task(task)
    out = []
    if not cfg.gate.allow_small_holdout:
        return out  # the gate judged the lower bounds themselves
    n = parity.get("cases")
    for metric, option in (("top1_agreement", "min_agreement"), ("mean_dice", "min_dice")):
        ci, threshold, value = parity.get(f"{metric}_ci"), getattr(cfg.gate, option), parity.get(metric)
        if ci is None or value is None or not threshold or value < threshold or ci[0] >= threshold:
            continue
        words = task.agreement_words if metric == "top1_agreement" else "mean Dice vs fp32's masks"
        need = ""
        if metric == "top1_agreement" and threshold < 1:
            m = wilson_cases_needed(threshold)
            need = (f"; {n} cases cannot show {threshold} at all (it takes {m} that all agree)" if n < m else
                    f"; {m} cases that all agree are the fewest that could")
        out.append(f"the gate passed on its point value (--allow-small-holdout): {n} held-out cases show {words} "
                   f"{value:.4f}, 95% CI [{ci[0]:.4f}, {ci[1]:.4f}], whose lower bound is under the gate's "
                   f"{threshold}{need}; judge on more held-out images (--num-holdout, a larger --calib-data)")
    return out


def parity_columns(parity: dict[str, Any]) -> dict[str, float]:
    """The figures a candidate is judged and ranked by, for a table row: top-1 (pixel) agreement, logit cosine, and
    for segmentation the mean Dice vs fp32's masks."""
    cols = {"top1_agreement": parity["top1_agreement"], "cosine": parity["cosine"]}
    for key in ("mean_dice", "pearson_r"):
        if parity.get(key) is not None:
            cols[key] = float(parity[key])
    return cols


# Latencies within this many percent of the fastest are a tie on this timer (two timings of one model differ by
# about that much on a shared machine): among tied candidates the most faithful is picked.
AUTO_TIE_PCT = 5.0


def pick_candidate(options: Sequence[T], ms: Callable[[T], float], fidelity: Callable[[T], tuple]) -> tuple[T, T]:
    """``(chosen, fastest)`` of candidates that all pass the gate: the fastest by ``ms``, unless others are within
    :data:`AUTO_TIE_PCT` of it, then the most faithful of those by ``fidelity`` (higher is better; the first of equals).
    The one rule ``--precision auto``, the recovery search and their per-batch choices share."""
    if not options:
        raise ValueError("no candidate to pick from")
    fastest = min(options, key=ms)
    tied = [o for o in options if ms(o) <= ms(fastest) * (1 + AUTO_TIE_PCT / 100)]
    return max(tied, key=fidelity), fastest


def fidelity_key(row: dict[str, Any]) -> tuple[float, float, float]:
    """Most faithful first: mean Dice (segmentation) or Pearson r (regression), then top-1 agreement, then cosine."""
    return row.get("mean_dice", row.get("pearson_r", 1.0)), row["top1_agreement"], row["cosine"]


def agreement_over_cases(task) -> bool:
    """True when a task's top-1 agreement is a share of whole held-out cases (a single-label classifier), judged by
    its Wilson lower bound; pixels (segmentation) and labels (multi-label) are not independent cases."""
    return get_task(task).agreement_per_case


def gate_value(parity: dict[str, Any], metric: str, cfg: QuantizeConfig) -> float | None:
    """The figure the gate judges for ``metric``: the lower bound of its 95% interval where the parity record has one
    (a classifier's top-1 agreement, a segmentation model's mean Dice), the point value otherwise or with
    ``--allow-small-holdout``."""
    ci = parity.get(f"{metric}_ci")
    if ci is not None and not cfg.gate.allow_small_holdout:
        return ci[0]
    return parity.get(metric)


def gate_passes(parity: dict[str, float], cfg: QuantizeConfig) -> bool:
    """The parity gate: every figure of ``parity`` that a gate option sets a threshold for (top-1 or pixel agreement,
    mean Dice vs fp32's masks, Pearson r vs fp32's outputs, cosine when set) on held-out data, by the lower bound of
    its 95% interval where it has one (:func:`gate_value`); a NaN fails."""
    for metric, option in GATE_OPTIONS.items():
        threshold, value = getattr(cfg.gate, option), gate_value(parity, metric, cfg)
        if threshold is not None and value is not None and not value >= threshold:
            return False
    return True


def check_holdout_size(n: int, cfg: QuantizeConfig, task) -> None:
    """Refuse, in one line, a held-out set too small for the 95% lower bound of a classifier's top-1 agreement to
    reach ``--min-agreement`` even if every image agreed: it says how many images it takes, unless
    ``--allow-small-holdout``."""
    from ..metrics import wilson_cases_needed

    threshold = cfg.gate.min_agreement
    if cfg.gate.allow_small_holdout or not threshold or not agreement_over_cases(task):
        return
    if threshold >= 1:
        raise ConfigError(f"--min-agreement {threshold} cannot be shown by the 95% lower bound the gate judges on any "
                          "number of held-out images: give a value below 1, or pass --allow-small-holdout to require "
                          "every held-out image to agree")
    need = wilson_cases_needed(threshold)
    if n < need:
        raise ConfigError(
            f"{n} held-out images cannot show top-1 agreement >= {threshold} (the gate judges its 95% lower bound; it "
            f"takes at least {need} images that all agree): give more held-out images (--num-holdout, a larger "
            f"--calib-data), lower --min-agreement, or pass --allow-small-holdout to judge the point value")
