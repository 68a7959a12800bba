"""Loading weights without executing code from the file.

``.safetensors`` is read with safetensors; ``.pt``/``.pth``/``.bin`` with ``torch.load(weights_only=True)``,
whose unpickler only builds tensors and plain containers and refuses anything that would run code.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

from ..errors import ModelError

__all__ = ["read_state_dict", "load_weights", "save_state_dict", "map_keys_in_order", "first_conv_in_chans", "KEY_MAPS"]

# How a weight file's keys are matched to the architecture's: by name (strict), or in order (same count, same
# shapes, position by position) for files written by another implementation of the same network.
KEY_MAPS = ("name", "order")

_TORCH_SUFFIXES = {".pt", ".pth", ".bin", ".ckpt"}


def weights_file(path: str | Path) -> Path:
    """The file holding the weights: ``path``, or a Hugging Face model directory's ``model.safetensors``."""
    p = Path(path)
    return p / "model.safetensors" if p.is_dir() and (p / "model.safetensors").is_file() else p


def read_state_dict(path: str | Path) -> dict:
    """Read a flat ``name -> tensor`` mapping from a weight file, never executing code from it."""
    import torch

    p = weights_file(path)
    if not p.is_file():
        raise ModelError(f"weight file {p} does not exist; check the --*-weights path")
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            sd = load_file(str(p))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise ModelError(f"{p} is not a valid safetensors file ({e}); re-export the weights") from None
    elif suffix in _TORCH_SUFFIXES:
        try:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelError(
                f"{p} was refused: it contains pickled objects beyond plain tensors (would execute code: {first}); "
                "convert it to .safetensors from a trusted environment"
            ) from None
        except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
            raise ModelError(f"{p} is not a readable torch checkpoint ({type(e).__name__}: {e})") from None
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
                sd = sd[key]
                break
    else:
        raise ModelError(f"unsupported weight file {p.name}; use .safetensors (preferred) or .pt/.pth")
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelError(f"{p} does not hold a flat mapping of parameter names to tensors")
    # DDP and torch.compile prefixes are artefacts of how the model was trained, not of its weights.
    for prefix in ("module.", "_orig_mod."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def map_keys_in_order(sd: dict, own: dict, path: str | Path, what: str) -> dict:
    """Rename the file's tensors to the model's names position by position; counts and shapes must agree.

    Buffers the file does not hold (e.g. BatchNorm's ``num_batches_tracked``, which other implementations omit)
    keep the model's values.
    """
    if Path(path).suffix.lower() == ".safetensors":
        raise ModelError(
            f"{path}: --weights-key-map order needs the tensors in the order the network was written, which a "
            ".safetensors file does not keep; give the original .pt/.pth checkpoint"
        )
    file_items = list(sd.items())
    own_keys = list(own)
    if len(file_items) != len(own_keys):
        optional = [k for k in own_keys if k.endswith("num_batches_tracked")]
        if len(file_items) == len(own_keys) - len(optional):
            own_keys = [k for k in own_keys if not k.endswith("num_batches_tracked")]
        else:
            raise ModelError(
                f"{path} holds {len(file_items)} tensors but the {what} has {len(own_keys)}; --weights-key-map order "
                "needs the same tensors in the same order (check the architecture name)"
            )
    mapped = {}
    for i, ((fk, v), ok) in enumerate(zip(file_items, own_keys, strict=True)):
        if tuple(v.shape) != tuple(own[ok].shape):
            raise ModelError(
                f"{path}: tensor #{i} {fk} {tuple(v.shape)} does not fit {ok} {tuple(own[ok].shape)} of the {what}; "
                "the file is not this architecture in this order (--weights-key-map order)"
            )
        mapped[ok] = v
    for ok in own:
        mapped.setdefault(ok, own[ok])
    return mapped


def first_conv_in_chans(path: str | Path) -> int | None:
    """Input channels of the first 4-D (convolution) tensor of a weight file, or None when it has none."""
    for v in read_state_dict(path).values():
        if v.ndim == 4:
            return int(v.shape[1])
    return None


def load_weights(model, path: str | Path, what: str = "model", key_map: str = "name") -> None:
    """Load ``path`` into ``model`` strictly; a mismatch names the missing, unexpected or mis-shaped keys.

    ``key_map="order"`` maps the file's tensors onto the model's in order (see :func:`map_keys_in_order`).
    """
    import torch

    if key_map not in KEY_MAPS:
        raise ModelError(f"unknown weights key map {key_map!r}; choose from {', '.join(KEY_MAPS)}")
    sd = read_state_dict(path)
    own = model.state_dict()
    if key_map == "order":
        sd = map_keys_in_order(sd, own, path, what)
    else:
        sd = timm_layout(sd, model, own)
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = sorted(k for k in set(own) & set(sd) if tuple(own[k].shape) != tuple(sd[k].shape))
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {_head(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_head(unexpected)}")
        if shapes:
            k = shapes[0]
            parts.append(f"shape mismatch at {_head(shapes)} (e.g. {k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)})")
        hint = "check the architecture name, --in-chans/num_classes, or the weight file"
        if missing and unexpected and len(sd) == len(own) and key_map == "name":
            hint = "the names differ but the counts agree: try --weights-key-map order"
        raise ModelError(f"{path} does not match the {what} architecture: {'; '.join(parts)}; {hint}")
    for k, v in sd.items():
        if v.dtype.is_floating_point != own[k].dtype.is_floating_point and own[k].dtype != torch.bool:
            raise ModelError(f"{path}: tensor {k} has dtype {v.dtype} but the {what} expects {own[k].dtype}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True)


def timm_layout(sd: dict, model, own: dict | None = None) -> dict:
    """``sd`` in a timm model's names when it comes in another layout a foundation model ships in (OpenAI CLIP,
    open_clip, DINOv2, Hugging Face transformers) or with another position grid
    (:func:`medfm_compress.models.layouts.to_timm`); as it is otherwise."""
    from .layouts import detect_layout, to_timm

    if not type(model).__module__.startswith("timm."):
        return sd
    own = model.state_dict() if own is None else own
    grid_differs = "pos_embed" in sd and "pos_embed" in own and tuple(sd["pos_embed"].shape) != tuple(own["pos_embed"].shape)
    if detect_layout(sd) == "timm" and not grid_differs:
        return sd
    return to_timm(dict(sd), model)


def _head(keys: list[str], n: int = 4) -> str:
    shown = ", ".join(keys[:n])
    return f"[{shown}{', ...' if len(keys) > n else ''}] ({len(keys)})"


def save_state_dict(model, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write ``model``'s weights as safetensors, atomically."""
    from safetensors.torch import save_file

    from .._io import atomic_path

    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(sd, str(tmp), metadata=metadata)
    return Path(path)
