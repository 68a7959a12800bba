"""C++ runtime (medfm-run) vs the Python runtime on the same ONNX model, same threads, one run.

For each model (random weights; timing does not depend on them):

1. engine only: ``medfm-run latency`` (C++ Ort::Session::Run loop) vs the Python latency harness
   (``medfm_compress.bench.latency.measure_engine`` on ``Engine.load(model)``), batch 1, p50 ms.
   Target: C++ within 5% of Python (both call the same ONNX Runtime library, so the engine cost is equal and
   the difference is each side's per-call overhead).
2. end to end per image: read the image file (.npy) + preprocess from the model's metadata + run +
   probabilities + argmax, batch 1, cycling over real images of the synthetic task: ``medfm-run latency
   --images`` vs a Python loop of ``np.load`` + ``Engine.predict``. Target: C++ lower. The Python harness's
   in-memory end-to-end figure (``measure_end_to_end``, no file decode) is reported beside it.

The two sides run alternately ``--repeats`` times and the median of the p50s is kept, so that load from
other processes on the machine hits both alike. Writes benchmarks/results/cpp_vs_python.json. Usage:
    python benchmarks/cpp_vs_python.py [--threads 2] [--iterations 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from medfm_compress._env import fingerprint
from medfm_compress._io import atomic_write_json

REPO = Path(__file__).resolve().parents[1]
# (timm spec, input size, channels): the default student on the default 64 px task, and resnet18 at 224 px.
MODELS = {
    "medfm_resnet10_w24": ("timm:medfm_resnet10_w24", 64, 1),
    "resnet18": ("timm:resnet18", 224, 3),
}


def build_medfm_run(build_dir: Path) -> Path:
    t0 = time.perf_counter()
    subprocess.run(
        ["bash", str(REPO / "scripts" / "build_cpp_runtime.sh"), str(build_dir)],
        check=True,
        capture_output=True,
    )
    print(f"built/updated medfm-run in {time.perf_counter() - t0:.1f} s")
    return build_dir / "medfm-run"


def export(name: str, dest: Path) -> Path:
    import torch

    from medfm_compress.data import PreprocessSpec
    from medfm_compress.data.synthetic import LABEL_NAMES
    from medfm_compress.export.onnx_build import export_model_to_onnx
    from medfm_compress.models import create_model
    from medfm_compress.runtime.metadata import ModelMeta

    spec, size, chans = MODELS[name]
    model = create_model(spec, num_classes=len(LABEL_NAMES), in_chans=chans, img_size=size)
    pre = PreprocessSpec(input_size=(size, size), channels=chans, mean=(0.5,) * chans, std=(0.25,) * chans)
    meta = ModelMeta(pre, "multiclass", list(LABEL_NAMES), arch=spec)
    return export_model_to_onnx(model, meta, dest, torch.zeros(1, chans, size, size))


def real_images(size: int, n: int, folder: Path) -> tuple[np.ndarray, list[Path]]:
    """The synthetic task's test images at ``size`` (grayscale uint8), also written as .npy files."""
    from medfm_compress.data import load_data

    images = load_data(f"synthetic?size={size}&n_train=8&n_val=8&n_test={n}&seed=0").split("test").images[:n]
    files = []
    for i, img in enumerate(images):
        files.append(folder / f"case{i:03d}.npy")
        np.save(files[-1], img)
    return images, files


def cpp_latency(
    medfm_run: Path, model: Path, threads: int, iterations: int, warmup: int, images: list[Path] | None = None
) -> dict:
    cmd = [
        str(medfm_run),
        "latency",
        str(model),
        "--batch",
        "1",
        "--iterations",
        str(iterations),
        "--warmup",
        str(warmup),
        "--threads",
        str(threads),
        "--json",
    ]
    if images:
        cmd += ["--images", *map(str, images)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def python_engine_latency(model: Path, threads: int, iterations: int, warmup: int) -> dict:
    from medfm_compress.bench.latency import LatencyConfig, measure_engine
    from medfm_compress.runtime import Engine

    with Engine.load(model, threads=threads) as eng:
        c, h, w = eng.input_shape
        x = np.random.default_rng(0).uniform(-1, 1, (1, c, h, w)).astype(np.float32)
        return measure_engine(eng, x, LatencyConfig(iterations=iterations, warmup=warmup))


_BARE_LOOP = """
import sys, time, numpy as np, onnxruntime as ort
path, threads, iterations, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
so = ort.SessionOptions(); so.intra_op_num_threads = threads; so.inter_op_num_threads = 1
sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
inp = sess.get_inputs()[0]
x = np.random.default_rng(0).uniform(-1, 1, (1, *inp.shape[1:])).astype(np.float32)
feed, names = {inp.name: x}, [sess.get_outputs()[0].name]
for _ in range(warmup):
    sess.run(names, feed)
times = []
for _ in range(iterations):
    t0 = time.perf_counter(); sess.run(names, feed); times.append(time.perf_counter() - t0)
print(float(np.percentile(np.asarray(times) * 1e3, 50)))
"""


def python_bare_engine_p50(model: Path, threads: int, iterations: int, warmup: int) -> float:
    """p50 ms of a bare InferenceSession.run loop in a fresh interpreter (no torch loaded, no harness)."""
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _BARE_LOOP, str(model), str(threads), str(iterations), str(warmup)],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(out.stdout.strip())


def python_end_to_end(
    model: Path, files: list[Path], images: np.ndarray, threads: int, iterations: int, warmup: int
) -> tuple[dict, dict]:
    """(file decode + Engine.predict + argmax, per image; the harness's in-memory measure_end_to_end)."""
    from medfm_compress.bench.latency import measure_end_to_end
    from medfm_compress.runtime import Engine
    from medfm_compress.runtime.timing import LatencyConfig, summarize, timed_loop

    cfg = LatencyConfig(iterations=iterations, warmup=warmup)
    with Engine.load(model, threads=threads) as eng:
        state = {"i": 0}

        def one_file():
            img = np.load(files[state["i"] % len(files)])
            state["i"] += 1
            _, probs = eng.predict(img[None])
            return probs.argmax(1)

        with_decode = summarize(timed_loop(one_file, cfg), 1)
        in_memory = measure_end_to_end(eng, images, cfg)
    return with_decode, in_memory


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--images", type=int, default=64, help="real test images cycled through end to end")
    ap.add_argument("--build-dir", default=str(REPO / "build" / "cpp"))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "cpp_vs_python.json"))
    args = ap.parse_args()

    t_start = time.time()
    medfm_run = build_medfm_run(Path(args.build_dir))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            folder = Path(tmp) / name
            folder.mkdir()
            model = export(name, folder / f"{name}.onnx")
            size = MODELS[name][1]
            # Grayscale cases feed RGB models too: both runtimes repeat the channel (1 -> 3).
            images, files = real_images(size, args.images, folder)
            runs: dict[str, list[float]] = {
                k: []
                for k in (
                    "cpp_engine",
                    "py_engine",
                    "py_bare_engine",
                    "cpp_e2e",
                    "py_e2e",
                    "py_e2e_in_memory",
                )
            }
            for _ in range(args.repeats):
                py = python_engine_latency(model, args.threads, args.iterations, args.warmup)
                cpp = cpp_latency(medfm_run, model, args.threads, args.iterations, args.warmup)
                runs["py_engine"].append(py["p50_ms"])
                runs["cpp_engine"].append(cpp["p50_ms"])
                runs["py_bare_engine"].append(
                    python_bare_engine_p50(model, args.threads, args.iterations, args.warmup)
                )
                py_file, py_mem = python_end_to_end(
                    model, files, images, args.threads, args.iterations, args.warmup
                )
                cpp_e2e = cpp_latency(medfm_run, model, args.threads, args.iterations, args.warmup, files)
                runs["py_e2e"].append(py_file["p50_ms"])
                runs["py_e2e_in_memory"].append(py_mem["p50_ms"])
                runs["cpp_e2e"].append(cpp_e2e["per_image_p50_ms"])
            med = {k: statistics.median(v) for k, v in runs.items()}
            results.append(
                {
                    "model": name,
                    "arch": MODELS[name][0],
                    "input": [MODELS[name][2], size, size],
                    "p50_ms_median": med,
                    "p50_ms_runs": runs,
                    "engine_cpp_over_python": med["cpp_engine"] / med["py_engine"],
                    "engine_cpp_over_bare_ort_python": med["cpp_engine"] / med["py_bare_engine"],
                    "e2e_cpp_over_python": med["cpp_e2e"] / med["py_e2e"],
                }
            )

    print(
        f"\nthreads {args.threads}, batch 1, {args.iterations} iterations x {args.repeats} alternating repeats, "
        "median of p50 (ms)\n"
    )
    print(
        "| model | engine C++ | engine Python harness | C++/harness | bare ORT Python loop | C++/bare | "
        "e2e C++ (decode+pre+run) | e2e Python (np.load+predict) | C++/Python | Python harness e2e (in memory) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        m = r["p50_ms_median"]
        print(
            f"| {r['model']} {r['input']} | {m['cpp_engine']:.3f} | {m['py_engine']:.3f} | "
            f"{r['engine_cpp_over_python']:.3f} | {m['py_bare_engine']:.3f} | "
            f"{r['engine_cpp_over_bare_ort_python']:.3f} | {m['cpp_e2e']:.3f} | {m['py_e2e']:.3f} | "
            f"{r['e2e_cpp_over_python']:.3f} | {m['py_e2e_in_memory']:.3f} |"
        )
    checks = {}
    for r in results:
        checks[f"{r['model']}: engine p50 within 5% of Python"] = (
            abs(r["engine_cpp_over_python"] - 1) <= 0.05 or r["engine_cpp_over_python"] < 1
        )
        checks[f"{r['model']}: end-to-end C++ lower than Python"] = r["e2e_cpp_over_python"] < 1
    print()
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    record = {
        "benchmark": "cpp_vs_python",
        "python_engine_side": "medfm_compress.bench.latency.measure_engine (Python runtime Engine, onnxruntime)",
        "args": vars(args),
        "results": results,
        "checks": checks,
        "fingerprint": fingerprint(),
        "seconds": round(time.time() - t_start, 1),
        "note": "2 shared CPU cores; other processes may add noise; ratios from alternating runs are what count",
    }
    atomic_write_json(Path(args.out), record)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
