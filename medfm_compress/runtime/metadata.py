"""The metadata every exported model carries, so a runtime needs nothing else to use it correctly.

Stored as ONNX ``metadata_props`` (string key/value pairs); flat keys so that the C++ runtime reads them
without a JSON parser for the numbers:

=====================  ==================================================================
key                    value
=====================  ==================================================================
medfm.format           ``medfm-compress/onnx``
medfm.version          metadata version (``1``)
medfm.task             ``multiclass`` | ``binary`` | ``multilabel`` | ``embedding`` | ``segmentation``
medfm.label_names      JSON array of strings (segmentation: the classes from the background up)
medfm.postprocess      how outputs become a result, from the task: ``softmax`` (one class per image),
                       ``sigmoid`` (multi-label), ``softmax-argmax`` (segmentation: ``(N, K, H, W)`` maps,
                       a label map by argmax over K), ``none`` (embeddings)
medfm.input_size       ``H,W`` (images) or ``X,Y,Z`` (volumes)
medfm.channels         ``1`` or ``3``
medfm.mean             comma-separated floats, one per channel (applied after scaling to [0, 1])
medfm.std              comma-separated floats, one per channel
medfm.window           ``LOW,HIGH`` intensity window applied to raw values, or empty
medfm.spacing          volumes only, optional: ``SX,SY,SZ`` voxel spacing (mm) the model was trained at
medfm.tiles            2-D segmentation only, optional: ``1`` when the model was trained on patches at the images'
                       own resolution (whole images are run by sliding windows of ``input_size``, never resized)
medfm.arch             model spec the weights belong to (e.g. ``timm:resnet18``)
medfm.precision        ``fp32`` | ``fp16`` | ``int8`` | ...
medfm.provenance       JSON object: source file hashes, tool version, calibration info, ...
=====================  ==================================================================
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ModelError
from .preprocess import PreprocessSpec
from .tasks import get_task

__all__ = [
    "ModelMeta",
    "encode_metadata",
    "decode_metadata",
    "meta_from_flags",
    "resolve_metadata",
    "check_supplied_shape",
    "META_FORMAT",
    "META_VERSION",
]

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

    @property
    def postprocess(self) -> str:
        """How the model's outputs become a result (``medfm.postprocess``): its task's (see the module docstring)."""
        return get_task(self.task).postprocess

    @classmethod
    def from_card(cls, card, precision: str = "fp32", provenance: dict[str, Any] | None = None) -> ModelMeta:
        return cls(
            card.preprocess,
            card.task,
            list(card.label_names),
            card.arch,
            precision,
            {**card.provenance, **(provenance or {})},
        )


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
        "medfm.postprocess": meta.postprocess,
        "medfm.input_size": ",".join(str(int(v)) for v in pre.input_size),
        "medfm.channels": str(pre.channels),
        "medfm.mean": _floats(pre.mean),
        "medfm.std": _floats(pre.std),
        "medfm.window": _floats(pre.window) if pre.window else "",
        **({"medfm.spacing": _floats(pre.spacing)} if pre.spacing else {}),
        **({"medfm.tiles": "1"} if pre.tiles else {}),
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
        raise ModelError(
            f"{source} has metadata version {props.get('medfm.version')!r}; this tool reads {META_VERSION}"
        )
    try:
        size = tuple(int(v) for v in props["medfm.input_size"].split(","))
        mean = tuple(float(v) for v in props["medfm.mean"].split(","))
        std = tuple(float(v) for v in props["medfm.std"].split(","))
        window = (
            tuple(float(v) for v in props["medfm.window"].split(",")) if props.get("medfm.window") else None
        )
        spacing = (
            tuple(float(v) for v in props["medfm.spacing"].split(",")) if props.get("medfm.spacing") else None
        )
        pre = PreprocessSpec(
            input_size=size, channels=int(props["medfm.channels"]), mean=mean, std=std, window=window,
            spacing=spacing, tiles=props.get("medfm.tiles", "") == "1",
        )
        task = get_task(props["medfm.task"], source).name
        return ModelMeta(
            preprocess=pre,
            task=task,
            label_names=list(json.loads(props["medfm.label_names"])),
            arch=props.get("medfm.arch", ""),
            precision=props.get("medfm.precision", "fp32"),
            provenance=json.loads(props.get("medfm.provenance") or "{}"),
        )
    except (KeyError, ValueError, TypeError) as e:
        raise ModelError(
            f"{source} has malformed medfm metadata ({type(e).__name__}: {e}); re-export it"
        ) from None


def meta_from_flags(
    source: str,
    input_size: int | None,
    channels: int | None,
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
) -> ModelMeta:
    """The metadata of a model that carries none (a foreign ONNX), from the ``--input-size``, ``--channels``,
    ``--mean`` and ``--std`` flags: a square multi-class image model without label names (whoever reads its
    outputs names them ``class_0..``). A missing flag is a one-line error naming it."""
    missing = [
        flag
        for flag, v in (
            ("--input-size", input_size),
            ("--channels", channels),
            ("--mean", mean),
            ("--std", std),
        )
        if v is None
    ]
    if missing:
        raise ConfigError(
            f"{source} carries no medfm-compress metadata; give its preprocessing with "
            f"{', '.join(missing)} (missing)"
        )
    pre = PreprocessSpec(
        input_size=(int(input_size), int(input_size)),
        channels=int(channels),
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
    )
    return ModelMeta(
        preprocess=pre,
        task="multiclass",
        label_names=[],
        arch="",
        precision="fp32",
        provenance={"source": Path(source).name},
    )


def resolve_metadata(props: dict[str, str], source: str, supplied: ModelMeta | None = None) -> ModelMeta:
    """The model's own metadata when ``props`` carry it, else ``supplied`` (the backends' ``metadata=`` option,
    for a foreign model), else the error :func:`decode_metadata` raises (naming the flags that supply it)."""
    if supplied is not None and not isinstance(supplied, ModelMeta):
        raise ConfigError(f"the metadata option must be a ModelMeta, got {type(supplied).__name__}")
    if props.get("medfm.format") is None and supplied is not None:
        return supplied
    return decode_metadata(props, source)


def check_supplied_shape(meta: ModelMeta, dims, source: str) -> None:
    """Refuse supplied metadata whose channels and size contradict the model's input dims after the batch axis
    (ints where static; anything else, e.g. a symbolic name or None, matches any value)."""
    pre = meta.preprocess
    want = tuple([pre.channels, *(int(v) for v in pre.input_size)])
    dims = list(dims)
    static = [d if isinstance(d, int) and d > 0 else None for d in dims]
    if len(static) != len(want) or any(d is not None and d != w for d, w in zip(static, want, strict=True)):
        shown = "x".join("?" if d is None else str(d) for d in static)
        raise ConfigError(
            f"{source} takes input {shown} (channels x size) but the preprocessing given for it says "
            f"{'x'.join(map(str, want))}; fix --channels / --input-size"
        )
