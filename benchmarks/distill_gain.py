"""Distillation figures on the embedded default, measured side by side in one run.

1. Full labels: teacher vs distilled student (params ratio, macro-AUC retention).
2. 10% labels: distilled student (KD on all images + CE on the labeled 10%) vs the label-only baseline of the
   same architecture and step budget.

Writes benchmarks/results/distill_gain.json and prints a table. Usage:
    python benchmarks/distill_gain.py [--epochs 6] [--data synthetic] [--out runs/bench-distill]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from medfm_compress._env import fingerprint
from medfm_compress._io import atomic_write_json
from medfm_compress.compress.distill import DistillConfig, distill


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="synthetic")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--label-fraction", type=float, default=0.1)
    ap.add_argument("--out", default="runs/bench-distill")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    t0 = time.time()
    full = distill(DistillConfig.from_options(data=args.data, out=f"{args.out}/full", epochs=args.epochs, seed=args.seed))
    few = distill(DistillConfig.from_options(data=args.data, out=f"{args.out}/frac", epochs=args.epochs, seed=args.seed,
                                label_fraction=args.label_fraction, baseline=True))
    m, f = full.metrics, few.metrics
    ratio = m["param_ratio"]
    retention = m["auc_retention"]
    rows = [
        ("teacher (full labels)", m["teacher"]["arch"], m["teacher"]["params"], m["teacher"]["macro_auc"], m["teacher"]["accuracy"]),
        ("student, distilled (full labels)", m["student"]["arch"], m["student"]["params"], m["student"]["macro_auc"], m["student"]["accuracy"]),
        (f"student, distilled ({args.label_fraction:.0%} labels)", f["student"]["arch"], f["student"]["params"], f["student"]["macro_auc"], f["student"]["accuracy"]),
        (f"student, labels only ({args.label_fraction:.0%} labels)", f["baseline"]["arch"], f["baseline"]["params"], f["baseline"]["macro_auc"], f["baseline"]["accuracy"]),
    ]
    print("\n| model | arch | params | macro AUC | accuracy |\n|---|---|---|---|---|")
    for name, arch, params, auc, acc in rows:
        print(f"| {name} | {arch} | {params / 1e6:.2f}M | {auc:.4f} | {acc:.4f} |")
    checks = {
        "params_ratio >= 10": (ratio, ratio >= 10),
        "auc_retention >= 0.98": (retention, retention >= 0.98),
        "distilled beats baseline at label fraction": (f["distill_gain_auc"], f["distill_gain_auc"] > 0),
    }
    print()
    for name, (value, ok) in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {value:.4f}")
    record = {
        "benchmark": "distill_gain",
        "args": vars(args),
        "fingerprint": fingerprint(),
        "seconds": round(time.time() - t0, 1),
        "full_labels": {k: v for k, v in m.items() if k != "history"},
        "label_fraction": {k: v for k, v in f.items() if k != "history"},
        "checks": {k: {"value": v, "passed": ok} for k, (v, ok) in checks.items()},
    }
    out = Path(__file__).parent / "results" / "distill_gain.json"
    atomic_write_json(out, record)
    print(f"\nwritten {out} ({record['seconds']} s)")


if __name__ == "__main__":
    main()
