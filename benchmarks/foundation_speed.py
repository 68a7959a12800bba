"""What distilling a ViT-B/16 foundation teacher buys at deployment: the INT8 student against the teacher in eager
fp32 and against the teacher's own fastest engine (the ViT-B quantized by ``quantize --precision auto``: what a user
would do instead of distilling), at batch 1, 224 px, on the head-CT slices.

Steps (each cached in ``--work``): the OpenAI CLIP ViT-B/16 tower (``python -m medfm_compress.models.examples
clip-vit-b16``) linear-probed on the slices (``adapt``); the default student distilled from it at full labels
(``--teacher-views 2``); the student exported and quantized to INT8 (``--target cpu``); the teacher exported and
quantized with ``--precision auto``; then one ``bench`` run times all of them side by side (interleaved rounds) and
judges the student against the teacher: the upper 95% CI bound of its macro-AUC drop (paired bootstrap over the
test slices) and its speed-up at batch 1.

    python benchmarks/foundation_speed.py [--work DIR] [--epochs 40] [--out benchmarks/results/foundation_speed.json]
    python benchmarks/foundation_speed.py --student-input-size 128 --out benchmarks/results/foundation_speed_s128.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from _foundation import cli as run  # noqa: E402
from _foundation import work_and_slices  # noqa: E402

from medfm_compress._env import fingerprint  # noqa: E402
from medfm_compress._io import atomic_write_json  # noqa: E402

ARCH = "timm:vit_base_patch16_clip_quickgelu_224"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="runs/bench-foundation-speed")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--iterations", type=int, default=40)
    ap.add_argument("--student-input-size", type=int, default=None,
                    help="distil into a student that sees N px (the teacher still sees 224)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "foundation_speed.json"))
    a, work, data = work_and_slices(ap)
    from medfm_compress.models.examples import fetch_example

    weights = fetch_example("clip-vit-b16", work / "weights")
    size = a.student_input_size
    teacher, student = work / "teacher", work / (f"student-{size}px" if size else "student")
    seconds: dict[str, float] = {}
    if not (teacher / "teacher.json").is_file():
        _, seconds["adapt"] = run(["adapt", "--teacher", ARCH, "--teacher-weights", str(weights), "--data", data,
                                   "--method", "linear", "--out", str(teacher), "--quiet"], "adapt (linear probe)")
    if not (student / "student.json").is_file():
        _, seconds["distill"] = run(["distill", "--data", data, "--teacher", str(teacher / "teacher"), "--teacher-views",
                                     "2", "--epochs", str(a.epochs), "--cache", str(work / "cache"), "--out",
                                     str(student), "--quiet", *(["--student-input-size", str(size)] if size else [])],
                                    f"distill ({a.epochs} epochs)")
    s_onnx, s_int8 = student / "student.onnx", student / "student.int8.onnx"
    if not s_int8.is_file():
        run(["export", str(student), "--out", str(s_onnx)], "export the student")
        _, seconds["quantize_student"] = run(["quantize", str(s_onnx), "--calib-data", data, "--target", "cpu",
                                              "--out", str(s_int8), "--quiet"], "quantize the student (int8)")
    t_onnx, t_auto = work / "teacher.onnx", work / "teacher.auto.onnx"
    if not t_auto.is_file():
        run(["export", str(teacher), "--model", "teacher", "--out", str(t_onnx)], "export the teacher")
        _, seconds["quantize_teacher_auto"] = run(["quantize", str(t_onnx), "--calib-data", data, "--precision", "auto",
                                                   "--out", str(t_auto), "--quiet"], "quantize the teacher (auto)")
    out, seconds["bench"] = run(
        ["bench", f"teacher={teacher}?name=teacher", f"teacher_auto={t_auto}", f"student_int8={s_int8}",
         "--reference", "teacher", "--data", data, "--batch-sizes", "1", "--iterations", str(a.iterations),
         "--warmup", "3", "--max-auc-drop", "1.0", "--min-speedup", "200", "--gate-on", "student_int8", "--json",
         "--quiet", "--out", str(work / "report")], "bench", ok=(0, 3))
    report = json.loads(out)
    arts = {e["name"]: e for e in report["artifacts"]}
    p50 = {n: e["latency"]["1"]["engine"]["p50_ms"] for n, e in arts.items() if "engine" in e["latency"].get("1", {})}
    result = {
        "fingerprint": fingerprint(), "data": "head-CT slices, 224 px", "epochs": a.epochs,
        "student_input_size": size or 224,
        "p50_ms_batch1": {n: round(v, 3) for n, v in p50.items()},
        "student_int8_vs_teacher_eager": round(p50["teacher"] / p50["student_int8"], 1),
        "student_int8_vs_teacher_auto": round(p50["teacher_auto"] / p50["student_int8"], 1),
        "teacher_auto_vs_teacher_eager": round(p50["teacher"] / p50["teacher_auto"], 2),
        "metrics": {n: {k: e.get("metrics", {}).get(k) for k in ("accuracy", "macro_auc")} for n, e in arts.items()},
        "gates": [{k: g[k] for k in ("name", "value", "threshold", "passed")} for g in report.get("gates", [])],
        "auto_precision": arts["teacher_auto"].get("precision"),
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }
    atomic_write_json(a.out, result)
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
