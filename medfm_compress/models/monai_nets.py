"""``monai:NET?KEY=VALUE&...``: a network from ``monai.networks.nets`` (``UNet``, ``SegResNet``, ``SwinUNETR``,
``BasicUNet``, ``DynUNet``, ...) with its keyword arguments in the spec, e.g.
``monai:UNet?channels=16,32,64,128&strides=2,2,2&num_res_units=1`` or ``monai:SegResNet?init_filters=8``.

- ``in_channels`` and ``out_channels`` come from the data (one output channel per class, the background included),
  as ``classes`` do for ``smp:``; ``spatial_dims`` is 3 unless the spec says otherwise (``spatial_dims=2``).
- Values: integers, decimals, ``true``/``false`` (or ``yes``/``no``, ``on``/``off``), comma lists (tuples:
  ``2,2,2``; ``2,`` is a one-item tuple), anything else a string (``act=PRELU``). Options the network does not
  take, or required ones the spec lacks, are refused in one line.
- Random weights; load weights with ``--*-weights`` as for every kind. MONAI is imported when a model is built or
  checked, never by ``import medfm_compress``.
"""

from __future__ import annotations

import inspect
from typing import Any

from ..config import option_value
from ..errors import BackendMissingError, ModelError
from .kinds import ModelKind, register_model_kind

__all__ = ["parse_monai_spec"]

# Filled from the data, not from the spec.
_FROM_DATA = ("in_channels", "out_channels")


def _value(text: str) -> Any:
    if "," in text:
        return tuple(option_value(v) for v in text.split(",") if v != "")
    return option_value(text)


def parse_monai_spec(name: str) -> tuple[str, dict[str, Any]]:
    """``(NET, options)`` of the part of a ``monai:`` spec after ``monai:``."""
    net, _, query = name.partition("?")
    options: dict[str, Any] = {}
    for part in filter(None, query.split("&")):
        key, sep, text = part.partition("=")
        if not sep or not key or text == "":
            raise ModelError(f"option {part!r} in 'monai:{name}' must be KEY=VALUE, e.g. "
                             "monai:UNet?channels=16,32,64&strides=2,2")
        if key in _FROM_DATA:
            raise ModelError(f"'monai:{name}' sets {key}; it comes from the data (channels of the images, classes "
                             "of the label maps): leave it out")
        options[key] = _value(text)
    return net, options


def _net_class(net: str):
    try:
        from monai.networks import nets
    except ImportError:
        raise BackendMissingError("MONAI (monai: models)", "seg") from None
    import torch

    cls = getattr(nets, net, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        known = sorted(n for n in dir(nets) if isinstance(getattr(nets, n), type)
                       and issubclass(getattr(nets, n), torch.nn.Module))
        close = [n for n in known if n.lower().startswith(net.lower()[:3])][:6] or known[:6]
        raise ModelError(f"unknown MONAI network {net!r} (monai.networks.nets; e.g. {', '.join(close)})")
    return cls


def _arguments(name: str, num_classes: int, in_chans: int, **kwargs: Any) -> tuple[type, dict[str, Any]]:
    net, options = parse_monai_spec(name)
    cls = _net_class(net)
    params = inspect.signature(cls.__init__).parameters
    args: dict[str, Any] = {}
    if "spatial_dims" in params:
        args["spatial_dims"] = 3
    args.update({"in_channels": in_chans, "out_channels": num_classes, **options, **kwargs})
    takes_all = any(p.kind == p.VAR_KEYWORD for p in params.values())
    unknown = [k for k in args if k not in params and not takes_all]
    if unknown:
        accepted = [k for k in params if k != "self" and k not in _FROM_DATA]
        raise ModelError(f"monai:{net} takes no {', '.join(unknown)}; its options: {', '.join(accepted)}")
    missing = [k for k, p in params.items() if k != "self" and p.default is p.empty
               and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and k not in args]
    if missing:
        raise ModelError(f"monai:{net} needs {', '.join(missing)}: give them in the spec, e.g. "
                         f"monai:{net}?{'&'.join(f'{k}=...' for k in missing)}")
    return cls, args


def _check(name: str) -> None:
    _arguments(name, 2, 1)


def _build(name: str, num_classes: int, in_chans: int, img_size: int | None = None, **kwargs: Any):
    cls, args = _arguments(name, num_classes, in_chans, **kwargs)
    try:
        return cls(**args)
    except (TypeError, ValueError, AssertionError, KeyError, RuntimeError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"MONAI could not build {cls.__name__} with {args}: {first}") from None


register_model_kind(ModelKind("monai", _build, _check, dense=True,
                              example="monai:UNet?channels=16,32,64&strides=2,2"))
