"""``--target openvino``: OpenVINO IR (``.xml`` + ``.bin``) for Intel CPUs, int8 through NNCF.

* ``--precision fp32``: the ONNX model converted to IR (weights stored as fp16, decompressed at load).
* ``--precision int8``: NNCF post-training quantization on the same stratified calibration images as the other
  targets (``model_type=transformer`` for ViT-style models, so attention keeps NNCF's transformer scheme).
* ``--auto-exclude``: NNCF's accuracy-controlled quantization (``quantize_with_accuracy_control``) with our
  parity metric, top-1 agreement with the fp32 model on the held-out images, as its validation metric and
  ``1 - --min-agreement`` as the allowed drop; NNCF reverts the most damaging layers to fp32.

It also adds OpenVINO fp32 and int8 candidates to ``--target cpu --precision auto`` (see
:func:`openvino_auto_candidates`), measured with the same timing loop length as the ONNX Runtime ones, and stages to
the recovery search (:mod:`medfm_compress.compress.quantize_search`): on ``--target openvino`` NNCF's calibrators,
weight range, granularity and accuracy control; on ``--target cpu`` NNCF int8 and its accuracy control beside the
ONNX Runtime candidates (:func:`openvino_search_stages`).
Measured on this machine (2 threads, batch 1, p50): resnet18 ORT fp32 19.2 ms / U8S8 5.9 ms vs OpenVINO
fp32 7.6 ms / NNCF int8 3.35 ms, so on Intel CPUs OpenVINO usually wins.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..errors import ConfigError, GateFailure, ModelError
from . import latency
from .auto_precision import register_auto_candidates
from .quantize import (
    QuantizeContext,
    QuantizedModel,
    gate_flags,
    gate_passes,
    gate_text,
    parity_columns,
    parity_report,
    parity_text,
    register_target,
)
from .quantize_config import NNCFConfig
from .quantize_search import (
    SearchCandidate,
    SearchStage,
    SearchState,
    base_settings,
    register_search_stages,
    search,
    setting_stages,
    settings_label,
)

__all__ = [
    "quantize_openvino",
    "openvino_auto_candidates",
    "openvino_search_stages",
    "is_transformer",
    "OPENVINO_PRECISIONS",
    "NNCF_CALIBRATORS",
]

OPENVINO_PRECISIONS = ("int8", "fp32", "bf16")
# The --calibrator values NNCF has (minmax: global min/max; percentile: its mean quantile).
NNCF_CALIBRATORS = ("minmax", "percentile")
ENGINE = "openvino"
# Images NNCF's accuracy control ranks layer groups on (its default is 300).
AC_RANKING_IMAGES = 64
_VIT_ARCH = re.compile(r"(vit|deit|swin|beit|eva|dino|cait|xcit|levit|convit|pit_)", re.I)


def _require_nncf():
    from ..runtime.openvino_loader import require_openvino

    require_openvino()
    try:
        import nncf
    except ImportError as e:
        from ..errors import BackendMissingError

        raise BackendMissingError("openvino", "openvino", detail=f"import nncf failed: {e}") from None
    import logging

    logging.getLogger("nncf").setLevel(logging.ERROR)
    return nncf


def is_transformer(proto, arch: str = "") -> bool:
    """Whether NNCF should use its transformer scheme: a ViT-style arch name, or attention ops in the graph."""
    if arch and _VIT_ARCH.search(arch):
        return True
    ops = {n.op_type for n in proto.graph.node}
    return "LayerNormalization" in ops and "MatMul" in ops and "Softmax" in ops


def _run_ov(compiled, x: np.ndarray, batch: int = 32) -> np.ndarray:
    req = compiled.create_infer_request()
    outs = []
    for i in range(0, len(x), batch):
        req.infer(np.ascontiguousarray(x[i : i + batch]))
        outs.append(req.get_output_tensor(0).data.copy())
    return np.concatenate(outs).astype(np.float32)


def _check_openvino(proto, cfg) -> None:
    """Convert before any data is loaded, so an op OpenVINO cannot convert fails first (and by name)."""
    from ..export.openvino import onnx_to_ov

    _require_nncf()
    if cfg.backend.calibrator == "entropy":
        raise ConfigError("--target openvino supports --calibrator minmax or percentile (NNCF has no entropy one)")
    if cfg.out and not str(cfg.out).lower().endswith(".xml"):
        raise ConfigError(f"--target openvino writes an IR: give --out ending in .xml (the .bin goes beside it), "
                          f"got {cfg.out}")
    if cfg.precision == "bf16":
        from ..runtime.openvino_loader import require_ov_precision

        require_ov_precision("bf16", "CPU", "--precision bf16 (an IR run at bf16)")
    onnx_to_ov(proto, "the model")


def _writer(ov_model):
    def save(meta, out):
        from ..export.openvino import save_ir, set_ov_meta

        set_ov_meta(ov_model, meta)
        return save_ir(ov_model, out)

    return save


def _model_bytes(ov_model) -> int:
    """Size of the IR pair ``ov_model`` would be saved as (measured by saving it to a temporary folder)."""
    import tempfile
    from pathlib import Path

    from ..export.openvino import save_ir
    from ..runtime.openvino_loader import ir_size_bytes

    with tempfile.TemporaryDirectory(prefix="medfm-ovsize-") as tmp:
        return ir_size_bytes(save_ir(ov_model, Path(tmp) / "m.xml"))


def _ptq(ctx: QuantizeContext, fp32_model, ref: np.ndarray, worth_restoring=None):
    """(int8 ov.Model, provenance, report) by NNCF PTQ, or accuracy-controlled PTQ with ``--auto-exclude`` when
    plain PTQ misses the gate and ``worth_restoring(plain_model, report)`` (if given) agrees."""
    nncf = _require_nncf()
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

    from ..runtime.openvino_loader import compile_ov
    from ..runtime.tasks import get_task

    cfg = ctx.cfg
    transformer = is_transformer(ctx.fp32_proto, ctx.meta.arch)
    from ..data.lazy import BatchIterable

    # Re-iterable single-image batches read on demand: a streamed set is never materialised for NNCF.
    calib = nncf.Dataset(BatchIterable(ctx.calib.images, 1))
    kwargs: dict[str, Any] = {"subset_size": len(ctx.calib.images)}
    if transformer:
        kwargs["model_type"] = nncf.ModelType.TRANSFORMER
    if cfg.backend.exclude_nodes:
        kwargs["ignored_scope"] = nncf.IgnoredScope(names=list(cfg.backend.exclude_nodes))
    # The same saturation as ORT's U8S8 kernels without VNNI (see Int8SearchConfig.reduce_range): NNCF's default
    # halves the weight range of the first layer only; all layers measured 0.934 -> 0.964 test agreement on a
    # distilled resnet18 here at the same speed. Full bias correction (not NNCF's fast one): 0.964 -> 0.972.
    from nncf.quantization.advanced_parameters import OverflowFix

    overflow_fix = OverflowFix.ENABLE if cfg.backend.reduce_range else OverflowFix.FIRST_LAYER
    adv: dict[str, Any] = {"overflow_fix": overflow_fix}
    kwargs["fast_bias_correction"] = False
    if not cfg.backend.per_channel:
        from nncf.quantization.advanced_parameters import QuantizationParameters

        adv["weights_quantization_params"] = QuantizationParameters(per_channel=False)
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    # minmax means what it means for ONNX Runtime: the global min and max over the calibration set (NNCF's own
    # default for activations averages the per-image minima and maxima, which clips the rarer large values).
    adv["activations_range_estimator_params"] = (
        RangeEstimatorParametersSet.MEAN_QUANTILE if cfg.backend.calibrator == "percentile" else RangeEstimatorParametersSet.MINMAX
    )
    kwargs["advanced_parameters"] = AdvancedQuantizationParameters(**adv)
    prov: dict[str, Any] = {
        "tool": f"nncf {nncf.__version__}",
        "model_type": "transformer" if transformer else "default",
        "calibrator": cfg.backend.calibrator,
        "per_channel": cfg.backend.per_channel,
        "overflow_fix": overflow_fix.value,
        "bias_correction": "full",
        "excluded_nodes": sorted(cfg.backend.exclude_nodes or []),
        **_rewrites(fp32_model),
    }
    report: dict[str, Any] = {}
    # NNCF draws its progress bars on stdout, which must stay clean for --json: send them to stderr (or nowhere).
    quiet = lambda: contextlib.redirect_stdout(sys.stderr if cfg.progress else io.StringIO())  # noqa: E731
    try:
        with quiet():
            q = nncf.quantize(fp32_model, calib, **kwargs)
    except nncf.ValidationError as e:
        raise ConfigError(f"NNCF rejected the quantization settings: {str(e).splitlines()[0][:300]}") from None
    except Exception as e:
        raise ModelError(f"NNCF cannot quantize this model: {str(e).strip().splitlines()[0][:300]}") from None
    parity = parity_report(ref, _run_ov(compile_ov(q, "CPU"), ctx.calib.holdout), ctx.meta.task)
    report["parity_naive"] = parity
    if cfg.backend.auto_exclude and not gate_passes(parity, cfg) and (worth_restoring is None or worth_restoring(q, report)):
        ctx.log("openvino: PTQ misses the gate; NNCF accuracy-controlled quantization on top-1 agreement")
        calls, t0 = [0], time.perf_counter()
        ranking_images = min(AC_RANKING_IMAGES, len(ctx.calib.holdout))

        def validate(compiled, items):
            # The gate's metric is top-1 agreement with fp32. Per image, NNCF picks its ranking subset and scores
            # each layer group by how much reverting it restores these values: a 0/1 agreement per image says
            # nothing until a class flips, so each image reports its logit cosine to fp32 instead (1.0 for fp32).
            got = np.concatenate([compiled(x)[0] for x, _ in items])
            idx = np.concatenate([i for _, i in items])
            r = ref[idx].astype(np.float64)
            g = got.astype(np.float64)
            per_item = ((r * g).sum(1) / np.maximum(np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1), 1e-12))
            agreement = get_task(ctx.meta.task).agreement(ref[idx], got)
            # NNCF validates the fp32 model, the PTQ model, then one model per reverted group on all held-out
            # images: show each (ranking passes on the subset have NNCF's own bar).
            if len(idx) == len(ctx.calib.holdout):
                calls[0] += 1
                ctx.log(f"openvino accuracy control: validation {calls[0]} ({len(idx)} images): top-1 agreement "
                        f"{agreement:.4f} (gate {cfg.gate.min_agreement}), {time.perf_counter() - t0:.0f} s")
            return agreement, [float(v) for v in per_item]

        holdout = BatchIterable(ctx.calib.holdout, 1, lambda i, x: (x, np.array([i])))
        val = nncf.Dataset(holdout, lambda item: item[0])
        # Same settings; accuracy control names the advanced parameters differently.
        ac_kwargs = {("advanced_quantization_parameters" if k == "advanced_parameters" else k): v
                     for k, v in kwargs.items() if k != "subset_size"}
        naive_int8 = _int8_ops(q)
        # Ranking reverts every layer group once on the ranking subset; NNCF's default (300 images, one request
        # per image) took > 10 min for a mobilenetv3 here. The worst images by cosine carry the ranking.
        ac_kwargs["advanced_accuracy_restorer_parameters"] = nncf.AdvancedAccuracyRestorerParameters(
            ranking_subset_size=ranking_images
        )
        try:
            with quiet():
                q = nncf.quantize_with_accuracy_control(
                    fp32_model,
                    calib,
                    val,
                    validate,
                    max_drop=1.0 - cfg.gate.min_agreement,
                    drop_type=nncf.DropType.ABSOLUTE,
                    subset_size=len(ctx.calib.images),
                    **ac_kwargs,
                )
        except Exception as e:
            raise ModelError(
                f"NNCF accuracy-controlled quantization failed: {str(e).strip().splitlines()[0][:300]}"
            ) from None
        parity = parity_report(ref, _run_ov(compile_ov(q, "CPU"), ctx.calib.holdout), ctx.meta.task)
        prov["accuracy_control"] = {"metric": "top1_agreement", "max_drop": round(1.0 - cfg.gate.min_agreement, 6),
                                    "ranking": "per-image logit cosine to fp32",
                                    "ranking_images": ranking_images}
        # What NNCF gave back to fp32: compute ops int8 after plain PTQ that no longer read a FakeQuantize.
        report["auto_exclude"] = {"method": "nncf.quantize_with_accuracy_control", "metric": "top1_agreement",
                                  "excluded": sorted(naive_int8 - _int8_ops(q))}
    report["parity"] = parity
    return q, prov, report


def _int8_ops(ov_model) -> set[str]:
    """Names of the compute ops (convolutions, matmuls) that read a FakeQuantize output: the int8 ones."""
    names = set()
    for op in ov_model.get_ordered_ops():
        if op.get_type_name() in ("Convolution", "GroupConvolution", "MatMul", "ConvolutionBackpropData"):
            srcs = [inp.get_source_output().get_node().get_type_name() for inp in op.inputs()]
            if "FakeQuantize" in srcs:
                names.add(op.get_friendly_name())
    return names


def _rewrites(fp32_model) -> dict[str, Any]:
    """Provenance of the graph rewrites made converting to OpenVINO (none: nothing)."""
    from ..export.openvino import graph_rewrites

    done = graph_rewrites(fp32_model)
    return {"graph_rewrites": done} if done else {}


def _fp32_ov(ctx: QuantizeContext, subpixel: bool = False):
    """The fp32 model as an ``openvino.Model``; ``subpixel``: its upsampling ConvTransposes as sub-pixel convolutions
    (done for bf16 only: see :mod:`~medfm_compress.export.subpixel` for where it pays)."""
    from ..export.openvino import onnx_to_ov

    return onnx_to_ov(ctx.fp32_path, str(ctx.fp32_path), subpixel=subpixel)


def _ref(ctx: QuantizeContext) -> np.ndarray:
    from ..runtime.onnx_loader import ort_session, run_onnx

    return run_onnx(ort_session(ctx.fp32_proto), ctx.calib.holdout)


@register_target(NNCFConfig, precisions=OPENVINO_PRECISIONS, methods=("ptq",), check=_check_openvino, suffix=".xml")
def quantize_openvino(ctx: QuantizeContext) -> QuantizedModel:
    """OpenVINO IR: fp32 or bf16 conversion, or NNCF int8 (accuracy-controlled with ``--auto-exclude``)."""

    cfg = ctx.cfg
    ref = _ref(ctx)
    if cfg.precision == "bf16":
        return _float_ir(ctx, _fp32_ov(ctx, subpixel=True), ref, "bf16", gate=True)
    fp32_model = _fp32_ov(ctx)
    if cfg.precision == "fp32":
        return _float_ir(ctx, fp32_model, ref, "fp32", gate=True)
    q, prov, report = _ptq(ctx, fp32_model, ref)
    p = report["parity"]
    qm = QuantizedModel(q, "int8", {"format": "openvino-ir", **prov}, report, save=_writer(q), suffix=".xml")
    if not gate_passes(p, cfg) and cfg.backend.search:
        settings = {**base_settings(cfg, percentiles=False),
                    "exclusion": "nncf-accuracy-control" if cfg.backend.auto_exclude else None,
                    "fp32_nodes": len(report.get("auto_exclude", {}).get("excluded", []))}
        first = SearchCandidate(ENGINE, settings, settings_label(settings), lambda: qm, lambda: fp32_model)
        return search(ctx, ref, first, cache={"ov_fp32": fp32_model})
    if not gate_passes(p, cfg):
        raise GateFailure(
            f"int8 model fails the parity gate ({gate_text(cfg, ctx.meta.task)}) on {len(ctx.calib.holdout)} "
            f"held-out images: {parity_text(p)}; {'' if cfg.backend.auto_exclude else 'try --auto-exclude, '}or lower "
            f"{gate_flags(ctx.meta.task)}; nothing written"
        )
    return qm


def _float_ir(ctx: QuantizeContext, fp32_model, ref: np.ndarray, precision: str, gate: bool) -> QuantizedModel:
    """The fp32 IR run at ``precision`` (fp32, or bf16: OpenVINO's INFERENCE_PRECISION_HINT, recorded in the
    metadata so every runtime of ours runs it that way), with its parity; bf16 must pass the gate if ``gate``."""
    from ..runtime.openvino_loader import compile_ov, ov_inference_precision

    cfg = ctx.cfg
    inference = ov_inference_precision(precision)
    compiled = compile_ov(fp32_model, "CPU", inference_precision=inference)
    parity = parity_report(ref, _run_ov(compiled, ctx.calib.holdout), ctx.meta.task)
    if gate and precision != "fp32" and not gate_passes(parity, cfg):
        raise GateFailure(
            f"the {precision} IR fails the parity gate ({gate_text(cfg, ctx.meta.task)}) on {len(ctx.calib.holdout)} "
            f"held-out images: {parity_text(parity)}; use --precision fp32 or lower {gate_flags(ctx.meta.task)}; "
            "nothing written"
        )
    prov = {"format": "openvino-ir", "weights": "fp16-compressed", "inference_precision": inference,
            **_rewrites(fp32_model)}
    return QuantizedModel(fp32_model, precision, prov, {"parity": parity}, save=_writer(fp32_model), suffix=".xml")


def _int8_candidate(ctx: QuantizeContext, fp32_model, ref: np.ndarray) -> QuantizedModel:
    """The NNCF int8 candidate of ``--precision auto``. With ``--auto-exclude`` and plain PTQ missing the gate,
    accuracy control runs only where plain int8 is faster than OpenVINO fp32: reverting layers to fp32 only
    moves int8 towards fp32 speed, so otherwise it cannot win (on mobilenetv3 here it took > 10 min for nothing)."""

    def worth_restoring(q, report) -> bool:
        ms = ctx.time_ms({"int8": ("openvino", q), "fp32": ("openvino", fp32_model)}, (1, *ctx.input_shape))
        if ms["int8"] < ms["fp32"]:
            return True
        why = (f"accuracy control skipped: plain int8 ({ms['int8']:.2f} ms) is no faster than OpenVINO fp32 "
               f"({ms['fp32']:.2f} ms) here, so reverting layers to fp32 cannot make it win")
        ctx.log(f"auto: openvino-int8 {why}")
        report["auto_exclude"] = {"method": "nncf.quantize_with_accuracy_control", "skipped": why}
        return False

    q, prov, report = _ptq(ctx, fp32_model, ref, worth_restoring)
    return QuantizedModel(q, "int8", prov, report, save=_writer(q), suffix=".xml")


def openvino_auto_candidates(ctx: QuantizeContext, ref: np.ndarray) -> list[tuple[dict[str, Any], Any]]:
    """OpenVINO fp32 and NNCF int8 rows (and models) for ``--target cpu --precision auto``.

    Skipped (with a row saying why) when OpenVINO/NNCF are not installed, when ``--out`` names an ``.onnx``
    file, or when the model does not convert.
    """
    from ..errors import MedfmError
    from ..runtime.openvino_loader import ov_supports

    cfg = ctx.cfg
    shape = (1, *ctx.input_shape)
    if cfg.out and str(cfg.out).lower().endswith(".onnx"):
        return [({"precision": "openvino", "engine": "openvino", "passes": False,
                  "error": "skipped: --out names an .onnx file (give an .xml, a stem such as student.auto, or "
                           "no --out to consider OpenVINO)"},
                 None)]
    try:
        _require_nncf()
        fp32_model = _fp32_ov(ctx)
    except MedfmError as e:
        return [({"precision": "openvino", "engine": "openvino", "passes": False, "error": str(e)}, None)]
    rows: list[tuple[dict[str, Any], Any]] = []
    builds = {"openvino-fp32": lambda: _float_ir(ctx, fp32_model, ref, "fp32", gate=False),
              "openvino-int8": lambda: _int8_candidate(ctx, fp32_model, ref)}
    if ov_supports("bf16", "CPU"):
        # The CPU plugin's own choice on this CPU for an "fp32" model: a candidate like any other, gated on parity.
        builds["openvino-bf16"] = lambda: _float_ir(ctx, _fp32_ov(ctx, subpixel=True), ref, "bf16", gate=False)
    for name, build in builds.items():
        ctx.log(f"auto: building {name}")
        try:
            qm = build()
        except MedfmError as e:
            rows.append(({"precision": name, "engine": "openvino", "passes": False, "error": str(e)}, None))
            continue
        p = qm.report["parity"]
        row = {
            "precision": name,
            "engine": "openvino",
            "latency_ms": latency.latency_ms(qm.proto, shape, cfg.backend.latency_runs, engine="openvino",
                                             precision=qm.precision),
            **parity_columns(p),
            "passes": gate_passes(p, cfg),
            "size_bytes": _model_bytes(qm.proto),
        }
        if "skipped" in qm.report.get("auto_exclude", {}):
            row["note"] = qm.report["auto_exclude"]["skipped"]
        qm.provenance = {"engine": "openvino", **qm.provenance}
        rows.append((row, qm))
    return rows



register_auto_candidates(openvino_auto_candidates)


# ----- the recovery search's OpenVINO stages --------------------------------------------------------------------


def _search_fp32(state: SearchState):
    """The OpenVINO fp32 model of this search (converted once)."""
    if "ov_fp32" not in state.cache:
        state.cache["ov_fp32"] = _fp32_ov(state.ctx)
    return state.cache["ov_fp32"]


def _ov_candidate(state: SearchState, s: dict[str, Any], accuracy_control: bool = False) -> SearchCandidate:
    """NNCF int8 with settings ``s`` (percentile: NNCF's mean quantile, no value); with ``accuracy_control``, NNCF's
    accuracy-controlled quantization where plain int8 misses the gate and is faster than OpenVINO fp32."""
    ctx, ref = state.ctx, state.ref
    s = {**s, "percentile": None, "exclusion": "nncf-accuracy-control" if accuracy_control else None, "fp32_nodes": 0}

    def build() -> QuantizedModel:
        cfg = ctx.cfg.with_backend(calibrator=s["calibrator"], per_channel=s["per_channel"],
                                   reduce_range=s["reduce_range"], auto_exclude=accuracy_control)
        qm = _int8_candidate(dataclasses.replace(ctx, cfg=cfg), _search_fp32(state), ref)
        ae = qm.report.get("auto_exclude", {})
        s["fp32_nodes"] = len(ae.get("excluded", []))
        if "skipped" in ae:
            qm.report["search_note"] = ae["skipped"]
        qm.provenance = {"engine": ENGINE, "format": "openvino-ir", **qm.provenance}
        return qm

    return SearchCandidate(ENGINE, s, settings_label(s), build, lambda: _search_fp32(state))


def _nncf_settings(state: SearchState, engine: str) -> dict[str, Any]:
    """The most faithful plain settings of ``engine`` so far (else the config's), with a calibrator NNCF has."""
    cfg = state.ctx.cfg
    row = state.best(engine, plain=True)
    s = {k: row[k] for k in ("calibrator", "per_channel", "reduce_range")} if row is not None else base_settings(cfg)
    if s["calibrator"] not in NNCF_CALIBRATORS:
        s["calibrator"] = cfg.backend.calibrator if cfg.backend.calibrator in NNCF_CALIBRATORS else "minmax"
    return s


def _accuracy_control_stage(order: int) -> SearchStage:
    def skip(state: SearchState) -> str | None:
        if state.any_passes(ENGINE):
            return "an OpenVINO candidate already passes (layers reverted to fp32 would only slow it)"
        return None

    def candidates(state: SearchState) -> Iterator[SearchCandidate]:
        yield _ov_candidate(state, _nncf_settings(state, ENGINE), accuracy_control=True)

    return SearchStage("openvino exclusion" if order > 50 else "exclusion", order, candidates, skip)


@register_search_stages("openvino")
def openvino_search_stages(ctx: QuantizeContext, ref: np.ndarray) -> list[SearchStage]:
    """``--target openvino``: NNCF's calibrators, weight range and granularity (greedy), then accuracy control."""
    return [*setting_stages(ENGINE, NNCF_CALIBRATORS, (), _ov_candidate, lambda state: base_settings(ctx.cfg, False)),
            _accuracy_control_stage(50)]


@register_search_stages("cpu")
def openvino_cpu_search_stages(ctx: QuantizeContext, ref: np.ndarray) -> list[SearchStage]:
    """``--target cpu``: NNCF int8 on the best ONNX Runtime settings (then NNCF's other calibrator), after the ONNX
    Runtime setting stages; accuracy control after the ONNX Runtime exclusion. Skipped, saying why, where OpenVINO
    is not installed, the model does not convert, or ``--out`` names an .onnx file."""
    from ..errors import MedfmError

    cfg = ctx.cfg

    def skip(state: SearchState) -> str | None:
        if cfg.out and str(cfg.out).lower().endswith(".onnx"):
            return "--out names an .onnx file (give a .xml or no --out to consider OpenVINO)"
        if "calibrator" in cfg.backend.pinned_options() and cfg.backend.calibrator not in NNCF_CALIBRATORS:
            return f"--calibrator {cfg.backend.calibrator} is pinned and NNCF has no such calibrator"
        try:
            _require_nncf()
            _search_fp32(state)
        except MedfmError as e:
            return str(e)
        return None

    def int8(state: SearchState) -> Iterator[SearchCandidate]:
        s = _nncf_settings(state, "onnxruntime")
        yield _ov_candidate(state, s)
        if "calibrator" not in cfg.backend.pinned_options() and not state.any_passes(ENGINE):
            yield _ov_candidate(state, {**s, "calibrator": next(c for c in NNCF_CALIBRATORS if c != s["calibrator"])})

    ac = _accuracy_control_stage(60)
    return [SearchStage("openvino", 40, int8, skip),
            SearchStage(ac.name, ac.order, ac.candidates, lambda state: skip(state) or ac.skip(state))]
