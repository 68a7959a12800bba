"""The metadata every exported model carries, so a runtime needs nothing else to use it correctly.

Stored as ONNX ``metadata_props`` (string key/value pairs); flat keys so that the C++ runtime reads them
without a JSON parser for the numbers:

=====================  ==================================================================
key                    value
=====================  ==================================================================
medfm.format           ``medfm-compress/onnx``
medfm.version          metadata version (``1``)
medfm.task             ``multiclass`` | ``binary`` | ``multilabel``
medfm.label_names      JSON array of strings
medfm.input_size       ``H,W`` (images) or ``X,Y,Z`` (volumes)
medfm.channels         ``1`` or ``3``
medfm.mean             comma-separated floats, one per channel (applied after scaling to [0, 1])
medfm.std              comma-separated floats, one per channel
medfm.window           ``LOW,HIGH`` intensity window applied to raw values, or empty
medfm.arch             model spec the weights belong to (e.g. ``timm:resnet18``)
medfm.precision        ``fp32`` | ``fp16`` | ``int8`` | ...
medfm.provenance       JSON object: source file hashes, tool version, calibration info, ...
=====================  ==================================================================
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import ModelError
from .preprocess import PreprocessSpec

__all__ = ["ModelMeta", "encode_metadata", "decode_metadata", "META_FORMAT", "META_VERSION"]

META_FORMAT = "medfm-compress/onnx"
META_VERSION = 1


@dataclass
class ModelMeta:
    """What a deployed model needs to be fed and read correctly."""

    preprocess: PreprocessSpec
    task: str
    label_names: list[str]
    arch: str = ""
    precision: str = "fp32"
    provenance: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_card(cls, card, precision: str = "fp32", provenance: dict[str, Any] | None = None) -> ModelMeta:
        return cls(card.preprocess, card.task, list(card.label_names), card.arch, precision,
                   {**card.provenance, **(provenance or {})})


def _floats(values) -> str:
    return ",".join(repr(float(v)) for v in values)


def encode_metadata(meta: ModelMeta) -> dict[str, str]:
    """The ``metadata_props`` entries for ``meta``."""
    pre = meta.preprocess
    return {
        "medfm.format": META_FORMAT,
        "medfm.version": str(META_VERSION),
        "medfm.task": meta.task,
        "medfm.label_names": json.dumps(list(meta.label_names)),
        "medfm.input_size": ",".join(str(int(v)) for v in pre.input_size),
        "medfm.channels": str(pre.channels),
        "medfm.mean": _floats(pre.mean),
        "medfm.std": _floats(pre.std),
        "medfm.window": _floats(pre.window) if pre.window else "",
        "medfm.arch": meta.arch,
        "medfm.precision": meta.precision,
        "medfm.provenance": json.dumps(meta.provenance, sort_keys=True, default=str),
    }


def decode_metadata(props: dict[str, str], source: str = "model") -> ModelMeta:
    """Read :class:`ModelMeta` back from ``metadata_props``; a model without our metadata is an error that
    names the flags which supply the preprocessing instead."""
    if props.get("medfm.format") != META_FORMAT:
        raise ModelError(
            f"{source} carries no medfm-compress metadata; give its preprocessing with "
            "--input-size, --channels, --mean and --std"
        )
    if props.get("medfm.version") != str(META_VERSION):
        raise ModelError(f"{source} has metadata version {props.get('medfm.version')!r}; this tool reads {META_VERSION}")
    try:
        size = tuple(int(v) for v in props["medfm.input_size"].split(","))
        mean = tuple(float(v) for v in props["medfm.mean"].split(","))
        std = tuple(float(v) for v in props["medfm.std"].split(","))
        window = tuple(float(v) for v in props["medfm.window"].split(",")) if props.get("medfm.window") else None
        pre = PreprocessSpec(input_size=size, channels=int(props["medfm.channels"]), mean=mean, std=std, window=window)
        return ModelMeta(
            preprocess=pre,
            task=props["medfm.task"],
            label_names=list(json.loads(props["medfm.label_names"])),
            arch=props.get("medfm.arch", ""),
            precision=props.get("medfm.precision", "fp32"),
            provenance=json.loads(props.get("medfm.provenance") or "{}"),
        )
    except (KeyError, ValueError, TypeError) as e:
        raise ModelError(f"{source} has malformed medfm metadata ({type(e).__name__}: {e}); re-export it") from None
