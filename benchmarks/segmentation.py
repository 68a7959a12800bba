"""Segmentation figures, one run on this machine: the distilled INT8 student against its teacher and its fp32 self,
distillation against label-only training at a tenth of the masks, and a 512x512 case end to end.

    python benchmarks/segmentation.py [--run runs/seg-bench] [--label-fraction 0.1] [--epochs 8] [--teacher-epochs 4]
                                      [--ship-label-fraction 1.0] [--ship-epochs 16]

Two students, because the figures ask two questions:

- *Does distillation pay when masks are scarce?* ``RUN/`` distills with a tenth of the masks (``--label-fraction``)
  beside the label-only baseline of the same steps (``metrics.json``: distilled minus label-only mean Dice, paired
  bootstrap CI over test cases).
- *Is the compressed model as good as the one it replaces?* ``RUN/ship/`` is the student a user ships: distilled
  from the same teacher with the masks that teacher was trained on (``--ship-label-fraction``, default all of
  them), for ``--ship-epochs``. The speed, size and non-inferiority figures are this student's. (With a tenth of the
  masks the student has little but the teacher's maps to learn from: it lands 0.7-1.9 points below the teacher.)

Steps (a finished run directory is reused):
  1. both distillations on ``synthetic?task=segmentation`` with the default dense teacher (trained on all the masks
     for ``--teacher-epochs``, cached) and student;
  2. export the shipped student, quantize it to INT8 for the CPU (the default quantize, calibrated on the training
     split, gated on held-out images);
  3. ``bench`` teacher (torch eager, fp32), student fp32 and INT8 (ONNX Runtime), one thread each, batch 1, all in
     one interleaved loop: p50 ratios, mean Dice and its drop vs the teacher and vs fp32 with paired 95% CIs;
  4. end to end per 512x512 case with the INT8 student on 2 threads: PNG read, preprocessing, segmentation, the label
     map resized to 512x512 and written as PNG (``medfm-compress predict`` on 64 files; p50 of per-case times).

Writes benchmarks/results/segmentation.json and prints each figure beside its target. Ratios only: the machine is
noisy, absolute times are not comparable between runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from medfm_compress._env import fingerprint  # noqa: E402
from medfm_compress._io import atomic_write_json  # noqa: E402

CLI = [sys.executable, "-m", "medfm_compress"]
DATA = "synthetic?task=segmentation"


def sh(args: list[str], what: str) -> str:
    print(f"== {what}", flush=True)
    p = subprocess.run(CLI + args, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if p.returncode not in (0, 3):
        sys.exit(f"error: {what} failed: {(p.stderr or p.stdout).strip().splitlines()[-1:]}")
    return p.stdout + p.stderr


def write_figures(name: str, figures: dict, targets: list[tuple[str, float, str]], **extra) -> Path:
    """Print each figure beside its target and write ``benchmarks/results/<name>.json`` (figures, targets, this
    machine's fingerprint and ``extra``)."""
    for what, value, target in targets:
        print(f"{what}: {value:.3f} (target {target})")
    out = REPO / "benchmarks" / "results" / f"{name}.json"
    atomic_write_json(out, {"figures": figures, "targets": [{"figure": w, "value": v, "target": t}
                                                            for w, v, t in targets],
                            "fingerprint": fingerprint(), **extra})
    print(f"wrote {out}")
    return out


def end_to_end(model: Path, work: Path, n: int = 64, size: int = 512) -> dict:
    """Per-case seconds of read -> preprocess -> segment -> 512x512 mask PNG written, with the runtime's own code."""
    import numpy as np
    from PIL import Image

    from medfm_compress.data import load_data
    from medfm_compress.runtime import Engine
    from medfm_compress.runtime.images import read_image_file, resize_mask

    cases = work / "e2e-in"
    cases.mkdir(parents=True, exist_ok=True)
    test = load_data(DATA).split("test")
    for i in range(n):
        Image.fromarray(test.images[i]).resize((size, size), Image.BILINEAR).save(cases / f"c{i:03d}.png")
    out = work / "e2e-out"
    out.mkdir(exist_ok=True)
    eng = Engine.load(str(model), threads=2)
    times = []
    try:
        for rep in range(3):
            for i in range(n):
                t0 = time.perf_counter()
                raw = read_image_file(cases / f"c{i:03d}.png", None)
                logits = eng.run(eng.preprocess(raw[None]))
                mask = resize_mask(logits.argmax(1)[0].astype(np.uint8), raw.shape[:2])
                Image.fromarray(mask, mode="L").save(out / f"c{i:03d}.png")
                if rep:  # the first pass warms caches and the engine
                    times.append(time.perf_counter() - t0)
    finally:
        eng.close()
    t = np.array(times) * 1000.0
    return {"cases": n, "size": size, "threads": 2, "p50_ms": float(np.percentile(t, 50)),
            "p90_ms": float(np.percentile(t, 90)), "mask_shape": list(mask.shape)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default=str(REPO / "runs" / "seg-bench"))
    ap.add_argument("--label-fraction", type=float, default=0.1)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--teacher-epochs", type=int, default=4,
                    help="epochs of the default teacher on all the masks, batch 16 (cached by config)")
    ap.add_argument("--ship-label-fraction", type=float, default=1.0,
                    help="masks the shipped student is distilled with (default: all, as its teacher)")
    ap.add_argument("--ship-epochs", type=int, default=16)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "segmentation.json"))
    args = ap.parse_args()
    run = Path(args.run)
    ship = run / "ship"
    t0 = time.time()
    common = ["distill", "--data", DATA, "--teacher-epochs", str(args.teacher_epochs), "--no-augment", "--quiet"]
    if not (run / "metrics.json").is_file():
        sh(common + ["--label-fraction", str(args.label_fraction), "--epochs", str(args.epochs), "--baseline",
                     "--out", str(run)], "distill (teacher, student and label-only baseline at the label fraction)")
    if not (ship / "metrics.json").is_file():
        sh(common + ["--label-fraction", str(args.ship_label_fraction), "--epochs", str(args.ship_epochs),
                     "--out", str(ship)], "distill (the shipped student)")
    distill_s = time.time() - t0
    m = json.loads((run / "metrics.json").read_text())
    shipped = json.loads((ship / "metrics.json").read_text())
    if m["teacher"]["mean_dice"] != shipped["teacher"]["mean_dice"]:
        sys.exit(f"error: {run} and {ship} were distilled from different teachers (test mean Dice "
                 f"{m['teacher']['mean_dice']:.4f} vs {shipped['teacher']['mean_dice']:.4f}); remove one and rerun")
    onnx, int8 = ship / "student.onnx", ship / "student.int8.onnx"
    if not onnx.is_file():
        sh(["export", str(ship), "--out", str(onnx)], "export")
    q = ""
    if not int8.is_file():
        q = sh(["quantize", str(onnx), "--calib-data", DATA, "--target", "cpu", "--out", str(int8)], "quantize")
    report_dir = ship / "report"
    sh(["bench", f"teacher={ship}?name=teacher", f"fp32={onnx}", f"int8={int8}", "--data", DATA, "--threads", "1",
        "--iterations", "200", "--warmup", "20", "--out", str(report_dir), "--quiet"], "bench")
    report = json.loads((report_dir / "report.json").read_text())
    by = {a["name"]: a for a in report["artifacts"]}

    def p50(name):
        return by[name]["latency"]["1"]["engine"]["p50_ms"]

    d_teacher = by["int8"]["parity"]["deltas"]["mean_dice"]
    # INT8 vs fp32 on the same cases: the difference of their deltas against the teacher is paired too, but the
    # bootstrap is against the reference; compute it directly.
    from medfm_compress.data import load_data
    from medfm_compress.runtime import Engine
    from medfm_compress.segmetrics import dice_per_case, paired_dice_bootstrap

    test = load_data(DATA).split("test")
    per = {}
    for name, path in (("fp32", onnx), ("int8", int8)):
        with Engine.load(str(path)) as eng:
            import numpy as np

            pred = np.concatenate([eng.run(eng.preprocess(test.images[i:i + 64])).argmax(1)
                                   for i in range(0, len(test), 64)])
        per[name] = dice_per_case(pred, test.labels, len(shipped["label_names"]))
    int8_vs_fp32 = paired_dice_bootstrap(per["fp32"], per["int8"])
    e2e = end_to_end(int8, ship)
    gain, gain_ci = m.get("distill_gain_dice"), m.get("distill_gain_dice_ci")
    figures = {
        "int8_vs_teacher_p50_speedup": p50("teacher") / p50("int8"),
        "param_ratio": shipped["param_ratio"],
        "int8_dice_drop_vs_teacher_points": -100 * d_teacher["delta"],
        "int8_dice_drop_vs_teacher_upper_ci_points": -100 * d_teacher["ci_low"],
        "int8_vs_fp32_dice_delta_points": 100 * int8_vs_fp32["delta"],
        "int8_vs_fp32_dice_delta_ci_points": [100 * int8_vs_fp32["ci_low"], 100 * int8_vs_fp32["ci_high"]],
        "distilled_minus_label_only_dice_points": 100 * gain if gain is not None else None,
        "distilled_minus_label_only_dice_ci_points": [100 * v for v in gain_ci] if gain_ci else None,
        "end_to_end_512_p50_ms": e2e["p50_ms"],
    }
    targets = {
        "int8_vs_teacher_p50_speedup": (">=", 30.0), "param_ratio": (">=", 20.0),
        "int8_dice_drop_vs_teacher_upper_ci_points": ("<=", 1.0),
        "int8_vs_fp32_dice_delta_points": ("abs<=", 0.6),
        "distilled_minus_label_only_dice_points": (">=", 2.0),
        "end_to_end_512_p50_ms": ("<=", 50.0),
    }
    record = {
        "fingerprint": fingerprint(), "run": str(run), "label_fraction": args.label_fraction, "epochs": args.epochs,
        "ship_label_fraction": args.ship_label_fraction, "ship_epochs": args.ship_epochs,
        "distill_seconds": round(distill_s, 1), "figures": figures, "targets": {k: list(v) for k, v in targets.items()},
        "mean_dice": {"teacher": by["teacher"]["metrics"]["mean_dice"], "fp32": by["fp32"]["metrics"]["mean_dice"],
                      "int8": by["int8"]["metrics"]["mean_dice"],
                      "distilled_at_label_fraction": m["student"]["mean_dice"],
                      "baseline_at_label_fraction": m.get("baseline", {}).get("mean_dice")},
        "dice_per_class": {k: {c["label"]: c["dice"] for c in by[k]["metrics"]["per_class"]} for k in by},
        "p50_ms_bs1_1thread": {k: p50(k) for k in by},
        "params": {"teacher": shipped["teacher"]["params"], "student": shipped["student"]["params"]},
        "end_to_end": e2e,
        "quantize_output": [ln for ln in q.strip().splitlines() if not ln.startswith("search: #")][-4:],
    }
    atomic_write_json(Path(args.out), record)
    for k, v in figures.items():
        tgt = targets.get(k)
        if tgt is None:
            continue
        op, t = tgt
        ok = (v >= t if op == ">=" else v <= t if op == "<=" else abs(v) <= t) if v is not None else False
        print(f"{k:48s} {v if v is None else round(v, 3)!s:>10s}  target {op} {t:g}  {'ok' if ok else 'MISSED'}")
    ci = figures["distilled_minus_label_only_dice_ci_points"]
    if ci:
        print(f"{'distilled_minus_label_only 95% CI (points)':48s} [{ci[0]:+.2f}, {ci[1]:+.2f}]  target: above 0")


if __name__ == "__main__":
    main()
