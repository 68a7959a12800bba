"""``medfm-compress predict`` as an edge box runs it: memory flat in the number of files, and its throughput
against bench's end-to-end rate for the same model, in one run.

1. Memory: ``predict`` on 200 and on 2,000 PNG files, each in a fresh process whose import system refuses
   torch, torchvision, timm, onnx, onnxslim, openvino, nncf, modelopt and tensorrt (what the edge install lacks);
   the peak RSS of that process (``os.wait4``). Target: the 2,000-file run within 10% of the 200-file one
   (cases are streamed in batches; nothing per case is kept but the output rows on disk).
2. Throughput: ``predict``'s images/s (the loop of PNG decode, the model's preprocessing, batched engine run,
   probabilities, CSV/JSON rows; model loading and process start excluded) vs bench's end-to-end rate for the
   same model and threads (``medfm_compress.bench.latency.measure_end_to_end``: an in-memory raw image ->
   preprocessing -> engine -> probabilities at batch 1; images/s = 1000 / p50 ms). predict decodes files (a cost
   end-to-end does not pay) and runs batches (which end-to-end does not get), so the ratio says which wins here.

The model is ``--model PATH`` (an exported student .onnx, say) or, by default, a small conv net built with
onnx.helper (64x64, one channel, 4 classes, our metadata). Cases are the embedded synthetic task's 64 px test
images written as PNG files (cycled to 2,000). The runs alternate ``--repeats`` times (e2e, 200, 2,000) and the
median is kept, so that load from other processes hits each alike. Writes benchmarks/results/predict_edge.json.
Usage:
    python benchmarks/predict_edge.py [--model PATH] [--threads 2] [--repeats 3] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

from medfm_compress._env import fingerprint
from medfm_compress._io import atomic_write_json

DATA = "synthetic?size=64&n_train=16&n_val=8&n_test=200&seed=11"
COUNTS = (200, 2000)
HEAVY = (
    "torch",
    "torchvision",
    "timm",
    "onnx",
    "onnxslim",
    "openvino",
    "nncf",
    "modelopt",
    "tensorrt",
    "tensorrt_rtx",
)
# The CLI in a process that cannot import what the edge install lacks (as tests/runtime/test_predict.py does).
EDGE_CLI = textwrap.dedent(f"""
    import sys
    HEAVY = {HEAVY!r}

    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in HEAVY:
                raise ImportError(f"No module named {{name!r}} (blocked: edge install)", name=name)
            return None

    sys.meta_path.insert(0, _Block())
    from medfm_compress.cli import main
    main(sys.argv[1:])
""")


def default_model(path: Path) -> Path:
    """Conv(1->16, s2) -> ReLU -> Conv(16->32, s2) -> ReLU -> GAP -> Gemm(32->4) at 64x64, with our metadata."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from medfm_compress.data.synthetic import LABEL_NAMES
    from medfm_compress.runtime.metadata import ModelMeta, encode_metadata
    from medfm_compress.runtime.preprocess import PreprocessSpec

    rng = np.random.default_rng(0)

    def init(name, *shape, scale=0.3):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [
        init("w1", 16, 1, 3, 3),
        init("b1", 16),
        init("w2", 32, 16, 3, 3, scale=0.1),
        init("b2", 32),
        init("w3", len(LABEL_NAMES), 32),
        init("b3", len(LABEL_NAMES)),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "predict_edge",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 64, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(LABEL_NAMES)])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = ModelMeta(
        PreprocessSpec((64, 64), 1, (0.5,), (0.25,)),
        "multiclass",
        list(LABEL_NAMES),
        arch="onnx.helper:predict_edge",
    )
    for k, v in encode_metadata(meta).items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))
    return path


def case_images(model: Path) -> np.ndarray:
    """Raw test images of the synthetic task at the model's input size and channels."""
    from medfm_compress.data import load_data
    from medfm_compress.runtime.onnx_loader import read_meta

    pre = read_meta(model).preprocess
    h, w = pre.input_size
    images = np.asarray(load_data(DATA).split("test").images)  # (N, 64, 64) uint8
    if images.shape[1:3] != (h, w):
        from PIL import Image

        images = np.stack([np.asarray(Image.fromarray(im).resize((w, h), Image.BILINEAR)) for im in images])
    if pre.channels == 3:
        images = np.repeat(images[..., None], 3, axis=-1)
    return images


def write_pngs(images: np.ndarray, folder: Path, n: int) -> Path:
    from PIL import Image

    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(images[i % len(images)]).save(folder / f"case_{i:05d}.png")
    return folder


def run_predict(model: Path, folder: Path, out: Path, threads: int, batch: int) -> dict:
    """One ``predict`` in a fresh edge process: its JSON result, wall seconds and peak RSS (os.wait4)."""
    cmd = [
        sys.executable,
        "-c",
        EDGE_CLI,
        "predict",
        str(model),
        str(folder),
        "--out",
        str(out),
        "--json",
        "--threads",
        str(threads),
        "--batch-size",
        str(batch),
    ]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as so, tempfile.TemporaryFile() as se:
        proc = subprocess.Popen(cmd, stdout=so, stderr=se)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        so.seek(0)
        se.seek(0)
        stdout, stderr = so.read().decode(), se.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"predict failed ({proc.returncode}): {stderr[-2000:]}")
    res = json.loads(stdout)
    rss_kib = usage.ru_maxrss if sys.platform != "darwin" else usage.ru_maxrss / 1024
    return {
        "images_per_s": res["images_per_s"],
        "seconds": res["seconds"],
        "wall_s": wall,
        "peak_rss_mib": rss_kib / 1024,
        "predicted": res["predicted"],
        "csv_bytes": (out / "predictions.csv").stat().st_size,
    }


def end_to_end(model: Path, images: np.ndarray, threads: int, iterations: int) -> float:
    """bench's end-to-end p50 (ms) for the model, same threads."""
    from medfm_compress.bench.latency import LatencyConfig, measure_end_to_end
    from medfm_compress.runtime import Engine

    with Engine.load(model, threads=threads) as eng:
        stats = measure_end_to_end(eng, images, LatencyConfig(iterations=iterations, warmup=20, warmup_s=0.5))
    return float(stats["p50_ms"])


def decode_p50_ms(folder: Path) -> float:
    """p50 of reading one PNG file as predict does (``runtime.images.read_any``): the cost end-to-end skips."""
    from medfm_compress.runtime.images import read_any

    files = sorted(folder.iterdir())
    times = []
    for _ in range(3):
        for f in files:
            t0 = time.perf_counter()
            read_any(f)
            times.append(time.perf_counter() - t0)
    return float(np.percentile(times, 50) * 1e3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model", default=None, help="An .onnx with medfm metadata (default: a small onnx.helper net)."
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=500, help="Timed end-to-end calls per repeat.")
    ap.add_argument(
        "--out", default=None, help="Result JSON (default: benchmarks/results/predict_edge[-NAME].json)."
    )
    args = ap.parse_args()
    t_start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = Path(args.model) if args.model else default_model(tmp / "predict_edge.onnx")
        images = case_images(model)
        folders = {n: write_pngs(images, tmp / f"in{n}", n) for n in COUNTS}
        runs: dict[str, list] = {
            "e2e_p50_ms": [],
            "decode_p50_ms": [],
            **{f"predict_{n}": [] for n in COUNTS},
        }
        for r in range(args.repeats):
            runs["e2e_p50_ms"].append(end_to_end(model, images, args.threads, args.iterations))
            runs["decode_p50_ms"].append(decode_p50_ms(folders[COUNTS[0]]))
            for n in COUNTS:
                runs[f"predict_{n}"].append(
                    run_predict(model, folders[n], tmp / f"out{n}-{r}", args.threads, args.batch_size)
                )
            print(
                f"repeat {r + 1}/{args.repeats}: e2e p50 {runs['e2e_p50_ms'][-1]:.3f} ms; "
                + "; ".join(
                    f"{n} files {runs[f'predict_{n}'][-1]['images_per_s']:.0f} img/s, "
                    f"{runs[f'predict_{n}'][-1]['peak_rss_mib']:.1f} MiB"
                    for n in COUNTS
                )
            )

    def med(n: int, key: str) -> float:
        return statistics.median(x[key] for x in runs[f"predict_{n}"])

    e2e_p50 = statistics.median(runs["e2e_p50_ms"])
    e2e_rate = 1000.0 / e2e_p50
    decode = statistics.median(runs["decode_p50_ms"])
    e2e_file_rate = 1000.0 / (e2e_p50 + decode)
    small, large = COUNTS
    rss_ratio = med(large, "peak_rss_mib") / med(small, "peak_rss_mib")
    rate_ratio = med(large, "images_per_s") / e2e_rate
    fp = fingerprint()
    summary = {
        "peak_rss_mib": {n: med(n, "peak_rss_mib") for n in COUNTS},
        "peak_rss_ratio_2000_over_200": rss_ratio,
        "predict_images_per_s": {n: med(n, "images_per_s") for n in COUNTS},
        "predict_wall_images_per_s": {n: n / med(n, "wall_s") for n in COUNTS},
        "e2e_p50_ms": e2e_p50,
        "e2e_images_per_s": e2e_rate,
        "predict_over_e2e_images_per_s": rate_ratio,
        "png_decode_p50_ms": decode,
        "e2e_plus_decode_images_per_s": e2e_file_rate,
        "predict_over_e2e_plus_decode": med(large, "images_per_s") / e2e_file_rate,
    }
    checks = {"peak RSS at 2,000 files within 10% of 200 files": rss_ratio <= 1.10}
    print(
        f"\nmodel {model.name if args.model else 'onnx.helper 64x64x1, 4 classes'}; threads {args.threads}, "
        f"predict batch {args.batch_size}; median of {args.repeats} alternating repeats"
    )
    print(
        f"CPU: {fp['cpu']} ({fp['cores']} cores); flags: {', '.join(fp['cpu_features']) or 'none recorded'}"
    )
    print(
        f"peak RSS (fresh edge process, no torch/onnx/openvino): {summary['peak_rss_mib'][small]:.1f} MiB at "
        f"{small} files vs {summary['peak_rss_mib'][large]:.1f} MiB at {large} files: ratio {rss_ratio:.3f}"
    )
    print(
        f"predict {summary['predict_images_per_s'][large]:.0f} images/s ({large} PNG files: decode + preprocess + "
        f"batched run + rows; {summary['predict_wall_images_per_s'][large]:.0f}/s counting process start and "
        f"model load) vs bench end-to-end {e2e_rate:.0f} images/s (p50 {e2e_p50:.3f} ms, in memory, batch 1): "
        f"ratio {rate_ratio:.2f}"
    )
    print(
        f"  end-to-end plus one PNG decode per case ({decode:.3f} ms p50, which predict pays and end-to-end does "
        f"not): {e2e_file_rate:.0f} images/s; predict / that: {summary['predict_over_e2e_plus_decode']:.2f}"
    )
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    name = f"predict_edge-{Path(args.model).stem}" if args.model else "predict_edge"
    dest = Path(args.out) if args.out else Path(__file__).parent / "results" / f"{name}.json"
    record = {
        "benchmark": "predict_edge",
        "model": str(args.model)
        if args.model
        else "onnx.helper conv net, 64x64x1, 4 classes (default_model)",
        "args": vars(args),
        "summary": summary,
        "runs": runs,
        "checks": checks,
        "fingerprint": fp,
        "seconds": round(time.time() - t_start, 1),
        "note": "2 shared CPU cores; other processes may add noise; ratios from alternating runs are what count",
    }
    atomic_write_json(dest, record)
    print(f"wrote {dest} ({record['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
