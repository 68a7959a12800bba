"""Volumetric segmentation figures on ``synthetic3d``, one run on this machine: the shipped INT8 (or ``--precision
auto``) student against its fp32 teacher and its fp32 self on whole held-out volumes, and the sliding-window throughput
of the artifact ``auto`` picks against ONNX Runtime fp32.

    python benchmarks/segmentation_3d.py [--run runs/seg3d-bench] [--teacher-epochs 4] [--epochs 16]

Steps (a finished step's outputs are reused):
  1. ``distill`` on ``synthetic3d`` (patches of ``--patch``) with the default MONAI U-Net teacher (trained on all the
     masks for ``--teacher-epochs``, cached) and student, all masks, ``--epochs``;
  2. ``export`` the student; ``quantize``: ONNX Runtime INT8 (``--target cpu``) and OpenVINO INT8 (``--target
     openvino``), each with a loose gate (``--min-dice 0.95``, no search) so that their cost is measured whatever it is,
     and ``--target cpu --precision auto --out student.auto`` (a stem: every ONNX Runtime and OpenVINO candidate,
     bf16 where the CPU has it, timed at batch 4, the sliding window's windows per call; the fastest that passes the
     default Dice gate on held-out patches, written as .onnx or .xml: what a user ships);
  3. ``bench`` teacher (torch, fp32), student fp32, both INT8s and auto on the test volumes, one thread each: whole volumes
     segmented by sliding windows (overlap 0.25, 4 windows per call), mean Dice with paired 95% CIs over cases; engine
     p50 at batch 4; a volume end to end.

  4. sliding-window throughput on every core of this machine, as ``predict`` runs: the runtime's ``segment_volume``
     over all whole test volumes, ONNX Runtime fp32 (plain, and as one single-threaded stream per core: its faster
     way counts) against auto's artifact, in interleaved rounds.

Targets (issue 20): INT8 student vs fp32 teacher mean-Dice drop <= 1 point (upper 95% CI bound); INT8 and auto vs
the fp32 student |delta| <= 0.6 points; auto's sliding-window throughput >= 1.5x ORT fp32's (step 4; bench's
one-thread engine ratio at batch 4 is printed beside it). The real
head CT figures (Cranium.inv3 end to end <= 7 s, teacher >= 20x slower, C++ masks) are benchmarks/headct_3d.py's.

Writes benchmarks/results/segmentation_3d.json and prints each figure beside its target. Ratios only: the machine is
noisy, absolute times are not comparable between runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from segmentation import sh, write_figures  # noqa: E402  (benchmarks/segmentation.py: CLI steps, results)


def window_throughput(models: dict[str, tuple[Path, dict]], data: str, threads: int, rounds: int = 5) -> dict:
    """Windows per second of the runtime's sliding window (``segment_volume``: overlap 0.25, 4 windows per call) over
    every whole test volume, each engine on ``threads`` threads: the rate a ``predict`` process gets. Rounds visit
    the engines in turn, each loaded for its turn only (an idle engine's thread pool, ONNX Runtime's spinning one
    above all, would take cores from the next) and warmed up on one untimed volume; per engine the median round."""
    import time

    import numpy as np

    from medfm_compress.data import load_data
    from medfm_compress.data.volume_seg import case_shapes
    from medfm_compress.runtime import Engine
    from medfm_compress.runtime.sliding_window import segment_volume, window_starts

    task = load_data(data)
    split = task.split("test")
    volumes = [np.asarray(split.images[i])[tuple(slice(0, n) for n in shape)]
               for i, shape in enumerate(case_shapes(task, "test"))]
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, (path, opts) in models.items():
            with Engine.load(path, threads=threads, **opts) as eng:
                roi = eng.meta.preprocess.input_size
                segment_volume(eng, volumes[0])
                t0 = time.perf_counter()
                for v in volumes:
                    segment_volume(eng, v)
                times[name].append(time.perf_counter() - t0)
    windows = sum(int(np.prod([len(window_starts(max(n, r), r, 0.25)) for n, r in zip(v.shape, roi, strict=True)]))
                  for v in volumes)
    return {"threads": threads, "volumes": len(volumes), "windows": windows,
            "windows_per_s": {name: windows / float(np.median(t)) for name, t in times.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="runs/seg3d-bench")
    ap.add_argument("--teacher-epochs", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=16)
    ap.add_argument("--patch", default="32,32,32")
    ap.add_argument("--student", default=None, help="student spec (default: distill's default volume student)")
    args = ap.parse_args()
    run = Path(args.run)
    data = f"synthetic3d?patch={args.patch}"
    if not (run / "student.safetensors").exists():
        sh(["distill", "--data", data, "--teacher-epochs", str(args.teacher_epochs), "--epochs", str(args.epochs),
            "--no-augment", "--quiet", *(["--student", args.student] if args.student else []), "--out", str(run)],
           "distill")
    if not (run / "student.onnx").exists():
        sh(["export", str(run), "--out", str(run / "student.onnx")], "export")
    # INT8 artifacts are made whatever the quantize gate says (--min-dice 0.95, --no-search): the figures measure
    # what they cost on whole volumes. auto keeps its default gate: it is what a user ships.
    # auto gets a stem (student.auto): ONNX Runtime and OpenVINO candidates compete, the winner's suffix completes it.
    q = {"int8": run / "student.int8.onnx", "ov-int8": run / "student.ov-int8.xml", "auto": run / "student.auto"}
    for name, path in q.items():
        done = [p for p in (path, path.with_name(path.name + ".xml"), path.with_name(path.name + ".onnx"))
                if p.suffix in (".onnx", ".xml") and p.is_file()]
        if done:
            q[name] = done[0]
            continue
        target = "openvino" if name == "ov-int8" else "cpu"
        precision = "auto" if name == "auto" else "int8"
        extra = [] if name == "auto" else ["--min-dice", "0.95", "--min-agreement", "0.95", "--no-search"]
        sh(["quantize", str(run / "student.onnx"), "--calib-data", data, "--target", target, "--precision", precision,
            "--num-calib", "64", "--num-holdout", "64", "--out", str(path), *extra, "--quiet"], f"quantize {name}")
        if name == "auto":
            q[name] = next(path.with_name(path.name + sfx) for sfx in (".xml", ".onnx")
                           if path.with_name(path.name + sfx).is_file())
    auto = q["auto"]
    report_dir = run / "bench"
    sh(["bench", f"teacher={run}?name=teacher", f"fp32={run / 'student.onnx'}", f"int8={q['int8']}",
        f"ov-int8={q['ov-int8']}", f"auto={auto}",
        "--data", data, "--batch-sizes", "4", "--threads", "1", "--iterations", "30", "--warmup", "3",
        "--out", str(report_dir), "--quiet"], "bench")
    report = json.loads((report_dir / "report.json").read_text())
    arts = {a["name"]: a for a in report["artifacts"]}
    # The same artifacts against the fp32 student (paired over the same volumes): what quantization alone costs.
    sh(["bench", f"fp32={run / 'student.onnx'}", f"int8={q['int8']}", f"ov-int8={q['ov-int8']}", f"auto={auto}",
        "--reference", "fp32",
        "--data", data, "--batch-sizes", "4", "--threads", "1", "--iterations", "5", "--warmup", "1",
        "--out", str(run / "bench-vs-fp32"), "--quiet"], "bench vs the fp32 student")
    vs_fp32_arts = {a["name"]: a for a in json.loads((run / "bench-vs-fp32" / "report.json").read_text())["artifacts"]}

    def delta(name: str) -> dict:
        return arts[name]["parity"]["deltas"]["mean_dice"]

    fp32_vs_teacher = {n: delta(n) for n in ("fp32", "int8", "ov-int8", "auto")}

    def p50(name: str) -> float:
        return arts[name]["latency"]["4"]["engine"]["p50_ms"]

    def vs_fp32(name: str) -> dict:
        return vs_fp32_arts[name]["parity"]["deltas"]["mean_dice"]

    # The same, on every core of this machine, as predict runs: ONNX Runtime fp32 the plain way and as concurrent
    # single-threaded sub-batches (streams, one per core), whichever is faster, against auto's artifact.
    import os

    cores = os.cpu_count() or 1
    fp32 = run / "student.onnx"
    sw = window_throughput({"ort-fp32": (fp32, {}), **({"ort-fp32-streams": (fp32, {"streams": cores})} if cores > 1
                                                       else {}), "auto": (auto, {})}, data, cores)
    rate = sw["windows_per_s"]
    best_ort = max((n for n in rate if n.startswith("ort-fp32")), key=rate.get)
    figures = {
        "teacher_mean_dice": arts["teacher"]["metrics"]["mean_dice"],
        "fp32_mean_dice": arts["fp32"]["metrics"]["mean_dice"],
        "int8_mean_dice": arts["int8"]["metrics"]["mean_dice"],
        "ov_int8_mean_dice": arts["ov-int8"]["metrics"]["mean_dice"],
        "ov_int8_vs_teacher_drop_upper_ci": -100 * fp32_vs_teacher["ov-int8"]["ci_low"],
        "ov_int8_vs_fp32_points": 100 * vs_fp32("ov-int8")["delta"],
        "ov_int8_vs_ort_fp32_throughput_batch4": p50("fp32") / p50("ov-int8"),
        "auto_mean_dice": arts["auto"]["metrics"]["mean_dice"],
        "int8_vs_teacher_drop_points": -100 * fp32_vs_teacher["int8"]["delta"],
        "int8_vs_teacher_drop_upper_ci": -100 * fp32_vs_teacher["int8"]["ci_low"],
        "int8_vs_fp32_points": 100 * vs_fp32("int8")["delta"],
        "int8_vs_fp32_ci_points": [100 * vs_fp32("int8")["ci_low"], 100 * vs_fp32("int8")["ci_high"]],
        "auto_vs_fp32_points": 100 * vs_fp32("auto")["delta"],
        "auto_vs_fp32_ci_points": [100 * vs_fp32("auto")["ci_low"], 100 * vs_fp32("auto")["ci_high"]],
        "auto_backend": arts["auto"]["backend"], "auto_precision": arts["auto"]["precision"],
        "auto_vs_ort_fp32_throughput_batch4": p50("fp32") / p50("auto"),
        "int8_vs_ort_fp32_throughput_batch4": p50("fp32") / p50("int8"),
        "teacher_vs_int8_window_batch4": p50("teacher") / p50("int8"),
        "sliding_window_all_cores": {**sw, "ort_fp32_best": best_ort},
        "auto_vs_ort_fp32_sliding_window_all_cores": rate["auto"] / rate[best_ort],
        "volume_end_to_end_s": {n: arts[n]["end_to_end"]["p50_ms"] / 1e3 for n in arts},
        "peak_rss_mb": max(arts[n]["end_to_end"].get("peak_rss_bytes", 0) for n in arts) / 1e6,
    }
    targets = [
        ("ORT INT8 vs teacher mean-Dice drop, upper 95% CI (points)", figures["int8_vs_teacher_drop_upper_ci"],
         "<= 1.0"),
        ("OpenVINO INT8 vs teacher mean-Dice drop, upper 95% CI (points)", figures["ov_int8_vs_teacher_drop_upper_ci"],
         "<= 1.0"),
        ("|ORT INT8 - fp32 student| (points)", abs(figures["int8_vs_fp32_points"]), "<= 0.6"),
        ("|OpenVINO INT8 - fp32 student| (points)", abs(figures["ov_int8_vs_fp32_points"]), "<= 0.6"),
        ("|auto - fp32 student| (points)", abs(figures["auto_vs_fp32_points"]), "<= 0.6"),
        (f"auto / ORT fp32 sliding-window throughput, whole test volumes on {cores} cores (ORT fp32 its faster way, "
         f"{best_ort})", figures["auto_vs_ort_fp32_sliding_window_all_cores"], ">= 1.5"),
        ("auto / ORT fp32 engine throughput at batch 4, one thread each (bench)",
         figures["auto_vs_ort_fp32_throughput_batch4"], "(for reference)"),
        ("OpenVINO INT8 / ORT fp32 engine throughput at batch 4, one thread each (bench; not shipped by auto unless "
         "it passes the gate)",
         figures["ov_int8_vs_ort_fp32_throughput_batch4"], "(for reference)"),
    ]
    print(f"auto shipped {figures['auto_backend']} {figures['auto_precision']}; a volume end to end (s): "
          + ", ".join(f"{k} {v:.2f}" for k, v in figures["volume_end_to_end_s"].items()))
    student = json.loads((run / "student.json").read_text()).get("arch") if (run / "student.json").is_file() else None
    write_figures("segmentation_3d", figures, targets, run=str(run), data=data, epochs=args.epochs,
                  teacher_epochs=args.teacher_epochs, student=student or args.student)


if __name__ == "__main__":
    main()
