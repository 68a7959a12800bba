"""What the foundation-teacher benchmarks share: a work folder with the head-CT slices at 224 px, and running the CLI
as a user would (one step, its wall time, its output)."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["CLI", "cli", "work_and_slices"]

CLI = [sys.executable, "-m", "medfm_compress"]


def cli(args: list[str], what: str, ok: tuple[int, ...] = (0,)) -> tuple[str, float]:
    """Run ``medfm-compress ARGS``; its stdout and wall time (an exit status outside ``ok`` ends the benchmark)."""
    print(f"== {what}: {' '.join(args)}", flush=True)
    t0 = time.perf_counter()
    res = subprocess.run(CLI + args, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if res.returncode not in ok:
        sys.exit(f"{what} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    print(f"   {dt:.1f} s", flush=True)
    return res.stdout, dt


def work_and_slices(ap: argparse.ArgumentParser) -> tuple[argparse.Namespace, Path, str]:
    """Parse the arguments; make ``--work`` and the InVesalius head-CT slices in it; ``(args, work, data spec)``."""
    from medfm_compress.data.examples import head_ct_slices

    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    slices = work / "headct"
    if not (slices / "labels.csv").is_file():
        head_ct_slices(slices, copies=2)
    return a, work, f"folder:{slices}?size=224"
