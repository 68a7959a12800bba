"""`quantize` with no flags beyond --calib-data and --target: does it find a model that ships? One run, this machine.

For each student (a 2-epoch and a 4-epoch ``timm:resnet18`` distilled on the embedded default, and the demo's
student when its run directory exists) and each target (cpu, openvino), runs exactly

    medfm-compress quantize STUDENT.onnx --calib-data synthetic --target T

and records: whether a model was written, the gate verdict on the held-out images, whether the search ran and
how long it took, the candidate chosen, and its batch-1 p50 against ORT fp32 measured side by side in one
interleaved loop after the fact (the same loop for every shipped model of that student).

    python benchmarks/quantize_default.py [--work runs/quantize_default] [--demo-run runs/demo]

Writes benchmarks/results/quantize_default.json and prints a table. Figures are ratios from one run: the
machine is noisy, absolute times are not comparable between runs.
"""

from __future__ import annotations

import argparse
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
TARGETS = {"cpu": ".onnx", "openvino": ".xml"}


def sh(args: list[str], what: str) -> subprocess.CompletedProcess:
    print(f"== {what}", flush=True)
    return subprocess.run(CLI + args, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def student(work: Path, epochs: int) -> Path:
    run = work / f"resnet18-{epochs}ep"
    onnx = run / "student.onnx"
    if not onnx.is_file():
        p = sh(["distill", "--student", "timm:resnet18", "--epochs", str(epochs), "--quiet", "--out", str(run)],
               f"distill resnet18, {epochs} epochs")
        if p.returncode:
            sys.exit(f"error: distill failed: {p.stderr.strip().splitlines()[-1:]}")
        p = sh(["export", str(run), "--out", str(onnx)], "export")
        if p.returncode:
            sys.exit(f"error: export failed: {p.stderr.strip().splitlines()[-1:]}")
    return onnx


def quantize_default(onnx: Path, target: str) -> dict:
    stem = f"student.default-{target}"
    for suffix in (".onnx", ".xml", ".bin"):  # --target cpu may ship either runtime's model
        onnx.with_name(stem + suffix).unlink(missing_ok=True)
    # The default output name; moved aside after so both targets' models coexist.
    t0 = time.time()
    p = sh(["quantize", str(onnx), "--calib-data", "synthetic", "--target", target],
           f"quantize {onnx.parent.name} --target {target}")
    seconds = time.time() - t0
    rec: dict = {"target": target, "exit": p.returncode, "seconds": round(seconds, 1)}
    text = p.stdout + p.stderr
    rec["searched"] = "search:" in text
    rec["output_tail"] = [ln for ln in text.strip().splitlines() if not ln.startswith("search: #")][-6:]
    written = [ln.split()[1] for ln in p.stdout.splitlines() if ln.startswith("wrote ")]
    if p.returncode == 0 and written:
        src = Path(written[0])
        out = onnx.with_name(stem + src.suffix)
        src.replace(out)
        if src.suffix == ".xml":
            src.with_suffix(".bin").replace(out.with_suffix(".bin"))
        rec["model"] = str(out)
        meta = _search(out)
        if meta:
            rec["search"] = {k: meta.get(k) for k in ("elapsed_s", "reason", "chosen")}
    return rec


def _search(model: Path) -> dict | None:
    from medfm_compress.runtime.onnx_loader import read_meta

    try:
        meta = read_meta(model)
    except Exception:  # noqa: BLE001 - a model without our metadata simply has no search record
        return None
    return ((meta.provenance or {}).get("quantization") or {}).get("search")


def speedups(onnx: Path, models: list[str], runs: int = 200) -> dict[str, float]:
    """Batch-1 p50 of each shipped model vs ORT fp32, all engines timed in one interleaved loop."""
    import numpy as np

    from medfm_compress.runtime import Engine
    from medfm_compress.runtime.timing import interleaved_times

    paths = [str(onnx)] + models
    engines = [Engine.load(p) for p in paths]
    try:
        shape = (1, engines[0].meta.preprocess.channels, *engines[0].meta.preprocess.input_size)
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        times = interleaved_times({p: (lambda e=e: e.run(x)) for p, e in zip(paths, engines, strict=True)},
                                  runs=runs, rounds=5, warmup=10)
    finally:
        for e in engines:
            e.close()
    p50 = {p: float(np.percentile(t, 50) * 1000.0) for p, t in times.items()}
    return {m: p50[str(onnx)] / p50[m] for m in models} | {"fp32_ms": p50[str(onnx)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default=str(REPO / "runs" / "quantize_default"))
    ap.add_argument("--demo-run", default=str(REPO / "runs" / "demo"))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "quantize_default.json"))
    args = ap.parse_args()
    work = Path(args.work)
    students = {f"resnet18-{e}ep": student(work, e) for e in (2, 4)}
    demo = Path(args.demo_run) / "student.onnx"
    if demo.is_file():
        students["demo"] = demo
    record: dict = {"fingerprint": fingerprint(), "students": {}}
    for name, onnx in students.items():
        rows = [quantize_default(onnx, t) for t in TARGETS]
        shipped = [r["model"] for r in rows if "model" in r]
        sp = speedups(onnx, shipped) if shipped else {}
        for r in rows:
            if "model" in r:
                r["speedup_bs1_vs_ort_fp32"] = round(sp[r["model"]], 2)
        record["students"][name] = {"onnx": str(onnx), "fp32_ms_bs1": sp.get("fp32_ms"), "targets": rows}
    atomic_write_json(Path(args.out), record)
    print(f"{'student':14s} {'target':9s} {'exit':>4s} {'searched':>8s} {'seconds':>7s} {'speedup bs1':>11s}")
    for name, s in record["students"].items():
        for r in s["targets"]:
            sp = r.get("speedup_bs1_vs_ort_fp32")
            print(f"{name:14s} {r['target']:9s} {r['exit']:>4d} {str(r['searched']):>8s} {r['seconds']:>7.1f} "
                  f"{(f'{sp:.2f}x' if sp else '-'):>11s}")


if __name__ == "__main__":
    main()
