"""Model specs, by kind (a registry: :func:`register_model_kind`): ``timm:NAME`` (any timm architecture),
``smp:ARCH:ENCODER`` (a segmentation-models-pytorch network, e.g. ``smp:Unet:tu-mobilenetv3_small_100`` or
``smp:FPN:tu-resnet50``: the ``tu-`` encoders are timm's), ``monai:NET?KEY=VALUE&...`` (a MONAI network, 2-D or 3-D,
see :mod:`medfm_compress.models.monai_nets`) or ``python:pkg.module:factory`` (a user's own).

A timm model gets ``in_chans`` and ``num_classes`` from the data, and ``img_size`` when the architecture
takes one (ViTs). An smp model gets ``in_channels`` and ``classes`` (one output channel per class, the background
included) with random encoder weights: never a hub download; load weights with ``--*-weights``. A ``python:`` factory is called with whichever of ``num_classes``, ``in_chans`` and
``img_size`` it accepts and must return a ``torch.nn.Module``; it may load its own weights.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from ..errors import ModelError
from .kinds import ModelKind, get_kind, is_dense_kind, model_kinds, register_model_kind

__all__ = ["check_model_spec", "create_model", "parse_model_spec", "count_params", "register_model_kind",
           "model_kinds", "is_dense_kind", "ModelKind", "MODEL_KINDS", "DENSE_KINDS"]


def parse_model_spec(spec: str) -> tuple[str, str]:
    """Split ``KIND:NAME``; unknown kinds are errors."""
    kind, sep, name = (spec or "").partition(":")
    if not sep or not name:
        raise ModelError(f"model spec {spec!r} must be KIND:NAME, e.g. timm:resnet18, smp:Unet:tu-resnet18 or "
                         "python:pkg.module:factory")
    if get_kind(kind) is None:
        examples = [get_kind(k).example for k in model_kinds() if get_kind(k).example]
        raise ModelError(f"unknown model kind {kind!r} in {spec!r}; use one of {', '.join(model_kinds())} (e.g. "
                         f"{', '.join(examples)})")
    return kind, name


def _require_timm_name(name: str) -> None:
    import timm

    from . import zoo  # noqa: F401  (registers the medfm_* architectures)

    if not timm.is_model(name.split(".")[0]):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:5]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise ModelError(f"unknown timm architecture {name!r}{hint}; see timm.list_models()")


def _smp():
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        from ..errors import BackendMissingError

        raise BackendMissingError("segmentation-models-pytorch (smp: models)", "seg") from None
    return smp


def _smp_parts(name: str) -> tuple[str, str]:
    """``ARCH:ENCODER`` of an ``smp:`` spec, checked against smp's architectures and encoders (timm's for ``tu-``)."""
    arch, sep, encoder = name.partition(":")
    if not sep or not arch or not encoder:
        raise ModelError(f"smp model spec 'smp:{name}' must be smp:ARCH:ENCODER, e.g. smp:Unet:tu-mobilenetv3_small_100")
    smp = _smp()
    archs = {k.lower(): k for k in smp.MODEL_ARCHITECTURES_MAPPING}
    if arch.lower() not in archs:
        raise ModelError(f"unknown smp architecture {arch!r}; one of {', '.join(sorted(archs))}")
    if encoder.startswith("tu-"):
        _require_timm_name(encoder[3:])
    elif encoder not in smp.encoders.get_encoder_names():
        raise ModelError(f"unknown smp encoder {encoder!r}; use a timm encoder as tu-NAME (e.g. tu-resnet18) or one "
                         "of segmentation_models_pytorch.encoders.get_encoder_names()")
    return arch, encoder


def check_model_spec(spec: str) -> None:
    """Refuse a malformed spec or an unknown timm / smp architecture without building anything (a run checks its
    student before it spends minutes on a teacher)."""
    kind, name = parse_model_spec(spec)
    check = get_kind(kind).check
    if check is not None:
        check(name)


def _timm_accepts_img_size(name: str) -> bool:
    import timm

    cfg = timm.get_pretrained_cfg(name, allow_unregistered=True) if hasattr(timm, "get_pretrained_cfg") else None
    arch = name.split(".")[0]
    # Transformers with a patch embedding take img_size; conv nets would reject the keyword.
    return any(t in arch for t in ("vit", "deit", "beit", "eva", "swin", "dino", "cait", "xcit")) or bool(
        cfg and getattr(cfg, "fixed_input_size", False)
    )


def create_model(spec: str, num_classes: int, in_chans: int, img_size: int | None = None, **kwargs: Any):
    """Build the module named by ``spec`` with random weights (load weights separately)."""
    kind, name = parse_model_spec(spec)
    return get_kind(kind).build(name, num_classes, in_chans, img_size, **kwargs)


def _build_timm(name: str, num_classes: int, in_chans: int, img_size: int | None, **kwargs: Any):
    import timm

    _require_timm_name(name)
    args: dict[str, Any] = {"num_classes": num_classes, "in_chans": in_chans, **kwargs}
    if img_size is not None and _timm_accepts_img_size(name):
        args["img_size"] = img_size
    try:
        return timm.create_model(name, pretrained=False, **args)
    except (TypeError, ValueError, RuntimeError, AssertionError) as e:
        raise ModelError(f"timm could not build {name!r} with {args}: {e}") from None


def _build_smp(name: str, num_classes: int, in_chans: int, img_size: int | None, **kwargs: Any):
    arch, encoder = _smp_parts(name)
    args = {"encoder_name": encoder, "encoder_weights": None, "in_channels": in_chans, "classes": num_classes,
            **kwargs}
    try:
        return _smp().create_model(arch, **args)
    # AttributeError: a timm encoder without features_only support.
    except (TypeError, ValueError, RuntimeError, KeyError, AssertionError, AttributeError) as e:
        raise ModelError(f"segmentation-models-pytorch could not build {arch} on {encoder} with {args}: "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def _build_python(name: str, num_classes: int, in_chans: int, img_size: int | None, **kwargs: Any):
    import torch

    module_name, sep, fn_name = name.rpartition(":")
    if not sep:
        raise ModelError(f"python model spec 'python:{name}' must be python:package.module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ModelError(f"cannot import {module_name!r} for 'python:{name}' ({e}); check PYTHONPATH") from None
    factory = getattr(module, fn_name, None)
    if not callable(factory):
        raise ModelError(f"{module_name} has no callable {fn_name!r}")
    params = inspect.signature(factory).parameters
    offered = {"num_classes": num_classes, "in_chans": in_chans, "img_size": img_size, **kwargs}
    takes_all = any(p.kind == p.VAR_KEYWORD for p in params.values())
    call = {k: v for k, v in offered.items() if v is not None and (takes_all or k in params)}
    model = factory(**call)
    if not isinstance(model, torch.nn.Module):
        raise ModelError(f"python:{name} returned {type(model).__name__}, expected a torch.nn.Module")
    return model


def count_params(model) -> int:
    """Number of parameters (an engine-held teacher's: the weights of its graph)."""
    if getattr(model, "is_engine", False):
        return int(model.num_params)
    return int(sum(p.numel() for p in model.parameters()))


register_model_kind(ModelKind("timm", _build_timm, _require_timm_name, example="timm:resnet18"))
register_model_kind(ModelKind("smp", _build_smp, _smp_parts, dense=True, example="smp:Unet:tu-resnet18"))
register_model_kind(ModelKind("python", _build_python, example="python:pkg.module:factory"))
from . import monai_nets  # noqa: E402,F401  (registers monai:)

# The kinds built in (a snapshot; model_kinds() and is_dense_kind() see later registrations too).
MODEL_KINDS = model_kinds()
DENSE_KINDS = tuple(k for k in MODEL_KINDS if is_dense_kind(k))
