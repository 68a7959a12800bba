"""The edge install, measured: `pip install .` (no extras, with constraints.txt) in a fresh virtual environment,
site-packages size against the full install of this checkout's .venv, which heavy packages import there (none
should), and `bench` + `predict` on an exported ONNX model run with that venv's CLI.

Usage:
    python benchmarks/edge_install.py --model student.onnx [--venv /tmp/medfm-edge]
Writes benchmarks/results/edge_install.json.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from medfm_compress._env import fingerprint
from medfm_compress._io import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "edge_install.json"
HEAVY = ("torch", "torchvision", "timm", "onnx", "onnxslim", "openvino", "nncf", "modelopt", "tensorrt_rtx",
         "matplotlib")
DATA = "synthetic?size=64&n_train=16&n_val=8&n_test=64&seed=11"


def tree_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, type=Path, help="an exported .onnx with medfm metadata")
    ap.add_argument("--venv", type=Path, default=Path("/tmp/medfm-edge-venv"))
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(args.venv)], check=True)
    py = args.venv / "bin" / "python"
    t0 = time.time()
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-c",
                    str(ROOT / "constraints.txt"), str(ROOT)], check=True)
    install_s = time.time() - t0
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    edge_mb, full_mb = tree_mb(site), tree_mb(Path(sysconfig.get_paths()["purelib"]))
    imports = {m: subprocess.run([str(py), "-c", f"import {m}"], capture_output=True).returncode == 0 for m in HEAVY}
    cli = args.venv / "bin" / "medfm-compress"
    runs = {}
    for name, cmd in (("bench", ["bench", f"s={args.model}", "--data", DATA, "--iterations", "20", "--quiet",
                                 "--out", str(args.venv / "rep")]),
                      ("predict", ["predict", str(args.model), DATA, "--out", str(args.venv / "pred"), "--quiet"])):
        res = subprocess.run([str(cli), *cmd], capture_output=True, text=True)
        runs[name] = {"exit": res.returncode, "last_line": (res.stdout or res.stderr).strip().splitlines()[-1:]}
    record = {"benchmark": "edge_install", "fingerprint": fingerprint(), "install_seconds": round(install_s, 1),
              "edge_site_packages_mb": round(edge_mb, 1), "full_site_packages_mb": round(full_mb, 1),
              "heavy_imports": imports, "runs": runs}
    atomic_write_json(args.out, record)
    print(f"edge install: {edge_mb:.0f} MB site-packages ({install_s:.0f} s) vs this checkout's full install "
          f"{full_mb:.0f} MB: {edge_mb / full_mb:.3f} of it; goal <= 250 MB: {'PASS' if edge_mb <= 250 else 'FAIL'}")
    print("heavy packages importable there: " + (", ".join(m for m, ok in imports.items() if ok) or "none"))
    for name, r in runs.items():
        print(f"{name} in the edge venv: exit {r['exit']}; {' '.join(r['last_line'])}")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
