"""Quantization for the TensorRT target with NVIDIA ModelOpt: PTQ and quantization-aware distillation.

TensorRT wants explicit, *symmetric* QDQ (int8 zero points of 0, or FP8): ONNX Runtime's U8S8 QDQ is refused
by its parser. ModelOpt inserts fake quantizers into the torch model (``mtq.quantize`` with a calibration
forward loop), and the classic torch exporter (``dynamo=False``: the only one that handles them) writes them
as ``QuantizeLinear``/``DequantizeLinear`` pairs with int8 zero points, which both TensorRT flavours accept.

``method="qat"`` fine-tunes the fake-quant student against the teacher's logits (the distillation KD loss)
for a few epochs, so the student learns weights that survive quantization.

nvidia-modelopt is optional (``pip install 'medfm-compress[modelopt]'``) and imported lazily.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendMissingError, ConfigError, DataError
from ..runtime.onnx_loader import run_onnx
from .quantize import (
    QATConfig,
    QuantizeContext,
    QuantizedModel,
    check_gate,
    parity_report,
    parity_text,
    register_target,
)
from .quantize_config import ModelOptConfig

__all__ = [
    "TRT_QUANT_PRECISIONS",
    "QATConfig",
    "import_mtq",
    "preset_config",
    "quantize_torch",
    "qat_distill",
    "export_quantized_onnx",
    "forward_logits",
]

# precision -> ModelOpt preset name (constants in modelopt.torch.quantization).
_PRESETS = {"int8": "INT8_DEFAULT_CFG", "fp8": "FP8_DEFAULT_CFG"}
TRT_QUANT_PRECISIONS = tuple(_PRESETS)


def import_mtq():
    """``modelopt.torch.quantization``; missing -> BackendMissingError naming the ``modelopt`` extra."""
    try:
        import modelopt.torch.quantization as mtq
    except ImportError as e:
        raise BackendMissingError(
            "nvidia-modelopt", "modelopt", detail=f"import modelopt failed: {e}"
        ) from None
    return mtq


def preset_config(precision: str, weight_bits: int | None = None, act_bits: int | None = None) -> dict:
    """The ModelOpt quantization config for ``precision`` (a deep copy of its preset).

    ``weight_bits``/``act_bits`` override the integer bit widths (e.g. 4) for studies of harder settings;
    such models are fake-quant only: TensorRT deploys int8 and fp8.
    """
    mtq = import_mtq()
    if precision not in _PRESETS:
        raise ConfigError(
            f"--precision for --target tensorrt quantization must be one of "
            f"{', '.join(_PRESETS)} (fp16 needs no quantization: build the fp32 ONNX with "
            "--precision fp16), got {precision!r}"
        )
    cfg = copy.deepcopy(getattr(mtq, _PRESETS[precision]))
    if weight_bits is not None or act_bits is not None:
        if precision != "int8":
            raise ConfigError("bit-width overrides apply to int8 only")
        qc = cfg["quant_cfg"]
        for key, bits in (("*weight_quantizer", weight_bits), ("*input_quantizer", act_bits)):
            if bits is None:
                continue
            if not 2 <= bits <= 8:
                raise ConfigError(f"bit width must be 2..8, got {bits}")
            # ModelOpt >= 0.4x holds a list of {"quantizer_name", "cfg"} entries; older ones a dict by pattern.
            if isinstance(qc, dict):
                qc[key] = {**qc[key], "num_bits": int(bits)}
            else:
                for entry in qc:
                    if entry.get("quantizer_name") == key and "cfg" in entry:
                        entry["cfg"] = {**entry["cfg"], "num_bits": int(bits)}
    return cfg


def quantize_torch(
    model,
    calibration: np.ndarray,
    precision: str = "int8",
    batch_size: int = 32,
    quant_cfg: dict | None = None,
):
    """Fake-quantize a copy of ``model`` with ModelOpt, calibrated on preprocessed ``calibration`` images.

    Args:
        model: torch model (not modified).
        calibration: ``(N, C, H, W)`` float32 preprocessed images (never random unless the caller says so), an
            array or lazy images read one batch at a time.
        precision: ``int8`` or ``fp8``.
        batch_size: calibration batch size.
        quant_cfg: a full ModelOpt config instead of the ``precision`` preset.

    Returns:
        The fake-quant model in eval mode.
    """
    import torch

    from ..data.lazy import is_lazy, iter_batches

    mtq = import_mtq()
    if calibration is None or len(calibration) == 0:
        raise DataError("no calibration images: give --calib-data")
    # A lazy (streamed) set checks each batch for NaN/Inf as it is read; an array is checked here, up front.
    if not is_lazy(calibration) and not np.isfinite(calibration).all():
        raise DataError("calibration images contain NaN/Inf")
    cfg = quant_cfg if quant_cfg is not None else preset_config(precision)
    qmodel = copy.deepcopy(model).eval()

    def forward_loop(m) -> None:
        with torch.no_grad():
            for batch in iter_batches(calibration, batch_size):
                m(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))

    with _quiet():
        qmodel = mtq.quantize(qmodel, cfg, forward_loop)
    return qmodel.eval()


@dataclass
class QATResult:
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def qat_distill(
    qmodel,
    teacher_logits: np.ndarray,
    train_images: np.ndarray,
    task: str,
    cfg: QATConfig,
    labels: np.ndarray | None = None,
    checkpoint: Path | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> QATResult:
    """Fine-tune fake-quant ``qmodel`` in place on the teacher's logits (KD loss, quantizers active).

    Args:
        qmodel: model returned by :func:`quantize_torch`.
        teacher_logits: teacher logits for ``train_images`` (precomputed once: the teacher is frozen).
        train_images: ``(N, C, H, W)`` float32 preprocessed training images.
        task: ``multiclass`` | ``binary`` | ``multilabel`` (selects the KD form).
        cfg: the fine-tuning schedule.
        labels: hard labels, used only when ``cfg.ce_weight > 0``.
        checkpoint: where the training loop writes its per-epoch checkpoint (default: a temp file).
    """
    import tempfile

    import torch

    from .tasks import distill_task
    from .train import LoopConfig, augment_batch, run_loop

    if len(train_images) != len(teacher_logits):
        raise DataError(f"{len(train_images)} training images but {len(teacher_logits)} teacher logits")
    if cfg.ce_weight > 0 and labels is None:
        raise DataError("ce_weight > 0 needs labels")
    dtask = distill_task(task)
    x_all = torch.from_numpy(np.ascontiguousarray(train_images, dtype=np.float32))
    t_all = torch.from_numpy(np.ascontiguousarray(teacher_logits, dtype=np.float32))
    y_all = torch.from_numpy(np.asarray(labels)) if labels is not None else None
    loop = LoopConfig(
        name="qat",
        steps_per_epoch=max(1, len(x_all) // cfg.batch_size),
        epochs=cfg.epochs,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        augment=cfg.augment,
    )

    def step(idx: np.ndarray, epoch: int):
        xb = x_all[idx]
        if cfg.augment:
            xb = augment_batch(xb, idx, cfg.seed, epoch)
        out = qmodel(xb)
        loss = dtask.kd_loss(out, t_all[idx], cfg.temperature)
        shown = {"kd": float(loss.detach())}
        if cfg.ce_weight > 0:
            ce = dtask.hard_loss(out, y_all[idx])
            loss = loss + cfg.ce_weight * ce
            shown["ce"] = float(ce.detach())
        return loss, shown

    with tempfile.TemporaryDirectory() as td:
        ckpt = checkpoint or Path(td) / "qat.pt"
        res = run_loop(
            loop,
            {"student": qmodel},
            step,
            np.arange(len(x_all)),
            ckpt,
            resume=False,
            log=log,
            progress=progress,
        )
    qmodel.eval()
    return QATResult(res["history"], res["seconds"])


def export_quantized_onnx(qmodel, meta, path, example, opset: int = 17) -> Path:
    """Export a fake-quant model to symmetric QDQ ONNX (classic exporter) with ``meta`` inside; returns ``path``.

    onnxslim is skipped: its constant folding may fold the weight QDQ pairs TensorRT needs explicitly.
    """
    from ..errors import ExportError
    from ..export.onnx_build import export_model_to_onnx
    from ..export.tensorrt import qdq_kind

    with _quiet():
        out = export_model_to_onnx(qmodel, meta, path, example, opset=opset, dynamo=False, simplify=False)
    import onnx

    kind = qdq_kind(onnx.load(str(out), load_external_data=False))
    if kind not in ("int8", "fp8") and not str(meta.precision).startswith("w"):
        out.unlink(missing_ok=True)
        raise ExportError(
            f"the quantized export holds {kind or 'no'} QDQ nodes, not symmetric int8/fp8; "
            "TensorRT cannot use it"
        )
    return out


def forward_logits(model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    import torch

    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            outs.append(model(torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size]))).float().numpy())
    return np.concatenate(outs)


class _quiet:
    """Silence ModelOpt's prints/warnings (quantizer counts, missing transformers) while it works."""

    def __enter__(self):
        import contextlib
        import io
        import warnings

        self._stack = contextlib.ExitStack()
        self._stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
        self._w = self._stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")
        return self

    def __exit__(self, *exc):
        self._stack.close()



# --------------------------------------------------------------------------------------------------------------
# ``medfm-compress quantize --target tensorrt`` (the quantize stage's registry)



@register_target(ModelOptConfig, precisions=("int8", "fp8", "fp16"), methods=("ptq", "qat"))
def quantize_tensorrt(ctx: QuantizeContext) -> QuantizedModel:
    """Symmetric QDQ ONNX for TensorRT.

    From a run directory: ModelOpt on the torch model (PTQ, or QAT distilled from the teacher), exported with
    the classic exporter. From a bare ONNX file: ModelOpt's ONNX PTQ (``modelopt.onnx.quantization``).
    ``fp16``: the ONNX converted to fp16 weights/activations with fp32 I/O (the engine builder's fp16 path
    does the same; TensorRT-RTX builds it as is).
    """
    cfg = ctx.cfg
    ref = run_onnx(ctx.fp32_proto, ctx.calib.holdout) if len(ctx.calib.holdout) else None
    if cfg.precision == "fp16":
        from ..export.onnx_build import to_fp16

        proto = to_fp16(ctx.fp32_proto, keep_io_types=True)
        prov = {"backend": "onnxruntime.transformers.float16", "io": "fp32"}
    elif Path(cfg.input).is_dir() and ctx.run_dir is not None:
        # A run directory: quantize its torch model (ModelOpt's torch path, the only one that can do QAT).
        proto, prov = _torch_path(ctx)
    else:
        if cfg.method == "qat":
            raise ConfigError("--method qat trains the torch model: give the run directory, not an ONNX file")
        # A bare ONNX file (ours or not): ModelOpt's ONNX PTQ.
        proto, prov = _onnx_path(ctx)
    report: dict[str, Any] = {}
    if ref is not None:
        report["parity"] = parity_report(ref, run_onnx(proto, ctx.calib.holdout), ctx.meta.task)
        ctx.log(
            f"parity vs fp32 on held-out images: {parity_text(report['parity'])}, "
            + ", ".join(f"{k} {v:.4g}" for k, v in report["parity"].items()
                        if isinstance(v, float) and k not in ("top1_agreement", "cosine", "mean_dice"))
        )
        check_gate(report["parity"], ctx, f"{cfg.precision} model")
    report["engine_hint"] = f"medfm-compress export OUT.onnx --format tensorrt --precision {cfg.precision}"
    return QuantizedModel(proto, cfg.precision, prov, report)


def _torch_path(ctx: QuantizeContext):
    import torch

    from ..data import load_data
    from ..export.onnx_build import build_onnx
    from ..models.card import load_model

    cfg = ctx.cfg
    model, card = load_model(ctx.run_dir, cfg.model)
    ctx.log(
        f"ModelOpt {cfg.precision} PTQ on the torch {cfg.model} ({len(ctx.calib.images)} calibration images)"
    )
    qmodel = quantize_torch(model, ctx.calib.images, cfg.precision)
    prov: dict[str, Any] = {"backend": "nvidia-modelopt (torch)", "preset": _PRESETS[cfg.precision]}
    if cfg.method == "qat":
        spec = cfg.calibration.calib_data or card.provenance.get("data")
        train = load_data(spec, require_labels=True, seed=cfg.seed).splits.get("train")
        if train is None or len(train) == 0:
            raise DataError(f"{spec} has no train split for QAT")
        x_train = card.preprocess(train.images)
        teacher, _ = load_model(cfg.backend.teacher or ctx.run_dir, "teacher")
        qcfg = cfg.backend.qat or QATConfig(seed=cfg.seed)
        ctx.log(f"QAT: {qcfg.epochs} epochs of KD from the teacher on {len(x_train)} images")
        hist = qat_distill(
            qmodel,
            forward_logits(teacher.eval(), x_train),
            x_train,
            card.task,
            qcfg,
            labels=train.labels,
            log=ctx.log,
            progress=cfg.progress,
        ).history
        prov["qat"] = {**qcfg.to_dict(), "history": hist}
    with _quiet():
        proto = build_onnx(
            qmodel, ctx.meta, torch.from_numpy(ctx.calib.images[:1].copy()), dynamo=False, simplify=False
        )
    return proto, prov


# ModelOpt's ONNX PTQ monkey-patches ONNX Runtime's calibrators and quantizers for the whole process
# (modelopt/onnx/quantization/ort_patching.py) and never undoes it; ORT's own static quantization run later in
# the same process (the cpu target, a recipe with several variants) then fails. Save and restore them.
_ORT_PATCHED = {
    "onnxruntime.quantization.calibrate": {
        None: ("create_calibrator",),
        "CalibraterBase": ("__init__", "create_inference_session", "select_tensors_to_calibrate"),
        "MinMaxCalibrater": ("augment_graph", "collect_data", "compute_data", "merge_range"),
        "HistogramCalibrater": ("augment_graph", "collect_data"),
        "HistogramCollector": ("collect", "collect_value", "collect_absolute_value"),
    },
    "onnxruntime.quantization.qdq_quantizer": {"QDQQuantizer": ("check_opset_version",)},
    "onnxruntime.quantization.base_quantizer": {"BaseQuantizer": ("adjust_tensor_ranges",)},
}


@contextlib.contextmanager
def _ort_patches_undone():
    import importlib

    saved = []
    for mod_name, owners in _ORT_PATCHED.items():
        mod = importlib.import_module(mod_name)
        for owner_name, attrs in owners.items():
            owner = mod if owner_name is None else getattr(mod, owner_name)
            for attr in attrs:
                own = vars(owner)
                saved.append((owner, attr, attr in own, own.get(attr)))
    try:
        yield
    finally:
        for owner, attr, had, value in saved:
            if had:
                setattr(owner, attr, value)
            elif attr in vars(owner):
                delattr(owner, attr)


def _onnx_path(ctx: QuantizeContext):
    import onnx

    try:
        from modelopt.onnx.quantization import quantize as mo_quantize
    except ImportError as e:
        raise BackendMissingError("nvidia-modelopt ONNX quantization", "modelopt", detail=str(e)) from None
    src = ctx.workdir / "fp32_for_modelopt.onnx"
    onnx.save(ctx.fp32_proto, str(src))
    out = ctx.workdir / "modelopt_qdq.onnx"
    ctx.log(f"ModelOpt ONNX {ctx.cfg.precision} PTQ ({len(ctx.calib.images)} calibration images)")
    from ..data.lazy import is_lazy
    from .calibration import CalibrationReader

    # A streamed set goes through a reader (one batch read at a time); an array is handed over as before.
    data = {"calibration_data_reader": CalibrationReader(ctx.fp32_proto.graph.input[0].name, ctx.calib.images)} \
        if is_lazy(ctx.calib.images) else {"calibration_data": ctx.calib.images}
    with _quiet(), _ort_patches_undone():
        mo_quantize(
            str(src),
            quantize_mode=ctx.cfg.precision,
            calibration_method="max",
            output_path=str(out),
            **data,
        )
    if not out.is_file():
        raise DataError("ModelOpt ONNX quantization wrote no model")
    return onnx.load(str(out)), {"backend": "nvidia-modelopt (onnx)", "calibration_method": "max"}


