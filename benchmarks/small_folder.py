"""A user's own small segmentation folder, trained with the default budget: the real head CT's 108 axial slices and
the two masks its author drew in InVesalius (bone; head, so soft tissue = head minus bone), side by side with the
epoch flags a new user would have passed before budgets were counted in steps.

    python benchmarks/small_folder.py [--work runs/small-folder] [--size 128 | --patch 128,128] [--variants defaults,epochs]

Data: the slices resized (``--size N``: ``?size=N``), or at their own 256x256 with training patches (``--patch H,W``:
``?patch=H,W``, scored on whole slices by sliding windows).

Variants (each a run directory under ``--work``, reused when finished):
  defaults  ``distill --data folder:DIR[?size=N|?patch=H,W] --teacher-steps 600`` and nothing else (real data needs
            the teacher named: here the default one, ``smp:FPN:tu-resnet34``, trained from scratch, 600 steps at
            most, the budget the synthetic default's teacher gets, stopping
            early on validation Dice), the default student with the default budget (as many steps as the embedded
            default gets);
  epochs    ``--teacher-epochs 6 --epochs 8``: the flags tuned for 2,400 images, on 76.

Every run's student is exported and quantized to INT8 for the CPU (calibrated on the folder); teacher, fp32 and INT8
student masks are scored against the author's masks at the slices' own 256x256 (a run at ``?size=N`` has its masks
brought back to 256 by nearest neighbour, as ``predict`` writes them) on the test slices.

Writes benchmarks/results/small_folder[_sN|_pN].json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from medfm_compress._env import fingerprint  # noqa: E402
from medfm_compress._io import atomic_write_json  # noqa: E402

CLI = [sys.executable, "-m", "medfm_compress"]
VARIANTS = {"defaults": ["--teacher-steps", "600"], "epochs": ["--teacher-epochs", "6", "--epochs", "8"]}


def sh(args: list[str], what: str, refusal_ok: bool = False) -> float | str:
    """Run a command; its wall seconds, or (``refusal_ok``) the last line of a gate's refusal (exit 3)."""
    print(f"== {what}", flush=True)
    t0 = time.time()
    p = subprocess.run(CLI + args, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if p.returncode == 3 and refusal_ok:
        return (p.stderr or p.stdout).strip().splitlines()[-1]
    if p.returncode != 0:
        sys.exit(f"error: {what} failed: {(p.stderr or p.stdout).strip().splitlines()[-3:]}")
    return time.time() - t0


def dice_at_native(pred_masks: list[np.ndarray], ref: np.ndarray, classes: int) -> dict:
    """Mean Dice (and per class) of label maps brought to the reference's size, against the reference."""
    from medfm_compress.runtime.images import resize_mask
    from medfm_compress.segmetrics import dice_per_case, mean_dice

    pred = np.stack([resize_mask(p.astype(np.uint8), ref.shape[1:]) for p in pred_masks])
    per = dice_per_case(pred, ref, classes)
    return {"mean_dice": round(float(mean_dice(per)), 4),
            "dice": [round(float(np.nanmean(per[:, k - 1])), 4) for k in range(1, classes)]}


def score_run(run: Path, data_spec: str, native_spec: str) -> dict:
    import torch

    from medfm_compress.bench.parity import predict_whole_logits
    from medfm_compress.compress.tasks.segmentation import predict_masks
    from medfm_compress.data import load_data
    from medfm_compress.data.patches import case_shapes
    from medfm_compress.models.card import load_model
    from medfm_compress.runtime import Engine

    task = load_data(data_spec)
    test = task.split("test")
    ref = np.asarray(load_data(native_spec).split("test").labels)
    classes = int(ref.max()) + 1
    teacher, card = load_model(run, "teacher")
    if task.whole_cases:  # patches: whole slices by sliding windows, as predict runs the model
        shapes = case_shapes(task, "test")
        x = torch.from_numpy(card.preprocess.whole(test.images))
        t_pred = predict_masks(teacher, x, roi=tuple(card.preprocess.input_size), shapes=shapes)
    else:
        with torch.no_grad():
            x = torch.from_numpy(card.preprocess(test.images))
            t_pred = list(np.concatenate([teacher(x[i:i + 8]).argmax(1).numpy() for i in range(0, len(x), 8)]))
    out = {"test_slices": len(test), "teacher": dice_at_native(t_pred, ref, classes)}
    for name in ("student.onnx", "student.int8.onnx"):
        if not (run / name).is_file():
            out["int8"] = None  # quantize refused: no INT8 model passed the gate and beat fp32
            continue
        with Engine.load(str(run / name)) as eng:
            if task.whole_cases:
                pred = predict_whole_logits(eng, test.images, shapes).argmax(1)
            else:
                pred = np.concatenate([eng.run(eng.preprocess(test.images[i:i + 8])).argmax(1)
                                       for i in range(0, len(test), 8)])
        out["fp32" if name == "student.onnx" else "int8"] = dice_at_native(list(pred), ref, classes)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default=str(REPO / "runs" / "small-folder"))
    ap.add_argument("--size", type=int, default=None, help="train at ?size=N (default: the slices' own 256)")
    ap.add_argument("--patch", default=None, help="train on patches H,W of the slices at their own 256 (?patch=H,W)")
    ap.add_argument("--variants", default="defaults,epochs")
    args = ap.parse_args()
    work = Path(args.work)
    folder = work / "headct-masks"
    if not (folder / "labels.csv").is_file():
        from medfm_compress.data.examples import head_ct_masks

        head_ct_masks(folder)
    native = f"folder:{folder}"
    if args.size and args.patch:
        sys.exit("error: --size resizes the slices, --patch trains at their own size: give one")
    data = native + (f"?size={args.size}" if args.size else f"?patch={args.patch}" if args.patch else "")
    tag = f"s{args.size}" if args.size else f"p{args.patch.split(',')[0]}" if args.patch else "native"
    record: dict = {"data": data, "fingerprint": fingerprint(), "variants": {}}
    for variant in args.variants.split(","):
        run = work / f"{variant}-{tag}"
        seconds = {}
        if not (run / "metrics.json").is_file():
            seconds["distill"] = round(sh(["distill", "--data", data, *VARIANTS[variant], "--quiet", "--out",
                                           str(run)], f"distill {variant} at {tag}"), 1)
        refused = None
        if not (run / "student.onnx").is_file():
            seconds["export"] = round(sh(["export", str(run), "--out", str(run / "student.onnx")], "export"), 1)
        if not (run / "student.int8.onnx").is_file():
            q = sh(["quantize", str(run / "student.onnx"), "--calib-data", data, "--target", "cpu", "--out",
                    str(run / "student.int8.onnx")], "quantize", refusal_ok=True)
            refused = q if isinstance(q, str) else None
            if not refused:
                seconds["quantize"] = round(q, 1)
        m = json.loads((run / "metrics.json").read_text())
        scores = score_run(run, data, native)
        record["variants"][variant] = {
            "flags": VARIANTS[variant], "seconds": seconds, "budget": m.get("budget"),
            "metrics_teacher_mean_dice": m["teacher"]["mean_dice"], "metrics_student_mean_dice": m["student"]["mean_dice"],
            "warnings": m.get("warnings", []), "at_256": scores, "distill_seconds_metrics": m.get("seconds"),
            "quantize_refused": refused,
            "teacher": m["teacher"]["arch"], "student": m["student"]["arch"],
        }
        s = scores
        int8 = f"{s['int8']['mean_dice']:.3f} {s['int8']['dice']}" if s["int8"] else f"refused ({refused})"
        print(f"{variant:9s} {tag}: teacher {s['teacher']['mean_dice']:.3f} {s['teacher']['dice']}  student fp32 "
              f"{s['fp32']['mean_dice']:.3f}  INT8 {int8} (mean Dice at the slices' own 256, {s['test_slices']} test "
              f"slices); distill {m.get('seconds')} s")
    out = REPO / "benchmarks" / "results" / f"small_folder{'' if tag == 'native' else '_' + tag}.json"
    atomic_write_json(out, record)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
