"""Distance to the hardware's limit: this CPU's int8 and fp32 matrix-multiply peak through ONNX Runtime, and the
multiply-accumulates per second a student achieves at batch 1 and 32, each as a fraction of its peak.

Peak: one large GEMM (M = N = K = 1024 by default; 1.07 G multiply-accumulates) as an ONNX model in ONNX Runtime
on ``--threads`` threads: ``MatMul`` in fp32, ``MatMulInteger`` (uint8 x int8 -> int32, MLAS's quantized kernel,
the one QDQ convolutions and matmuls fuse into) for int8. Achieved: the student's multiply-accumulates per image
(weights times output positions over every Conv/Gemm/MatMul, from ONNX shape inference on the fp32 graph; the int8
model does the same arithmetic) times the batch, over its p50 latency in the same ONNX Runtime settings. All
timings run in one interleaved loop, so drifting machine load hits all of them alike.

Usage:
    python benchmarks/roofline.py --fp32 runs/demo/student.onnx [--int8 runs/demo/student.int8.onnx]
        [--batches 1,32] [--threads 2] [--size 1024] [--runs 40]
Without --int8 the fp32 model is quantized here (--target cpu --precision int8, calibrated on the data it was
trained on if its metadata names it, else on the embedded default). Writes benchmarks/results/roofline.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from medfm_compress._env import fingerprint
from medfm_compress._io import atomic_write_json
from medfm_compress.compress.sensitivity import node_macs
from medfm_compress.runtime.onnx_loader import load_onnx_checked, ort_session, read_meta
from medfm_compress.runtime.timing import interleaved_times

RESULTS = Path(__file__).resolve().parent / "results" / "roofline.json"


def gemm_model(size: int, kind: str):
    """An ONNX model computing one ``size``-cubed matrix product in fp32 (MatMul) or int8 (MatMulInteger)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if kind == "fp32":
        w = numpy_helper.from_array(rng.standard_normal((size, size)).astype(np.float32), "W")
        node = helper.make_node("MatMul", ["A", "W"], ["Y"])
        a_type, y_type = TensorProto.FLOAT, TensorProto.FLOAT
    else:
        w = numpy_helper.from_array(rng.integers(-127, 128, (size, size), dtype=np.int8), "W")
        node = helper.make_node("MatMulInteger", ["A", "W"], ["Y"])
        a_type, y_type = TensorProto.UINT8, TensorProto.INT32
    graph = helper.make_graph([node], f"gemm_{kind}", [helper.make_tensor_value_info("A", a_type, [size, size])],
                              [helper.make_tensor_value_info("Y", y_type, [size, size])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def call(session, x: np.ndarray):
    feed = {session.get_inputs()[0].name: x}
    return lambda: session.run(None, feed)


def student_int8(fp32: Path, workdir: Path) -> Path:
    from medfm_compress.compress.quantize import QuantizeConfig, quantize

    data = read_meta(fp32).provenance.get("data") or "synthetic"
    out = workdir / "student.int8.onnx"
    quantize(QuantizeConfig.from_options(input=str(fp32), out=str(out), calib_data=data, target="cpu", precision="int8",
                            min_agreement=0.0, progress=False))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fp32", required=True, type=Path, help="the student's fp32 ONNX (exported by medfm-compress)")
    ap.add_argument("--int8", type=Path, default=None, help="its INT8 model (default: quantized here)")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=1024, help="GEMM size for the peak")
    ap.add_argument("--runs", type=int, default=40, help="timed calls per item (over 5 interleaved rounds)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    t0 = time.time()
    batches = [int(b) for b in args.batches.split(",")]
    with tempfile.TemporaryDirectory(prefix="roofline-") as tmp:
        int8 = args.int8 or student_int8(args.fp32, Path(tmp))
        meta = read_meta(args.fp32)
        macs_per_image = int(sum(node_macs(load_onnx_checked(args.fp32)).values()))
        shape = (meta.preprocess.channels, *meta.preprocess.input_size)
        rng = np.random.default_rng(0)
        calls, work = {}, {}
        for kind in ("fp32", "int8"):
            sess = ort_session(gemm_model(args.size, kind), threads=args.threads)
            x = (rng.standard_normal((args.size, args.size)).astype(np.float32) if kind == "fp32"
                 else rng.integers(0, 256, (args.size, args.size), dtype=np.uint8))
            calls[f"peak-{kind}"], work[f"peak-{kind}"] = call(sess, x), args.size**3
        for kind, path in (("fp32", args.fp32), ("int8", int8)):
            sess = ort_session(path, threads=args.threads)
            for b in batches:
                x = rng.standard_normal((b, *shape)).astype(np.float32)
                calls[f"{kind}-b{b}"], work[f"{kind}-b{b}"] = call(sess, x), macs_per_image * b
        times = interleaved_times(calls, runs=args.runs, rounds=5, warmup=3)
    p50 = {k: float(np.percentile(v, 50)) for k, v in times.items()}
    gmacs = {k: work[k] / p50[k] / 1e9 for k in calls}
    rows = []
    for kind in ("fp32", "int8"):
        for b in batches:
            k = f"{kind}-b{b}"
            rows.append({"model": kind, "batch": b, "p50_ms": p50[k] * 1e3, "gmac_per_s": gmacs[k],
                         "fraction_of_peak": gmacs[k] / gmacs[f"peak-{kind}"]})
    record = {
        "benchmark": "roofline",
        "fingerprint": fingerprint(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "student": {"fp32": str(args.fp32), "int8": str(args.int8 or "quantized here"),
                    "macs_per_image": macs_per_image, "input": list(shape)},
        "peak_gmac_per_s": {"fp32": gmacs["peak-fp32"], "int8": gmacs["peak-int8"]},
        "rows": rows,
        "seconds": round(time.time() - t0, 1),
    }
    atomic_write_json(args.out, record)
    fp = record["fingerprint"]
    print(f"CPU: {fp.get('cpu')}; flags: {', '.join(fp.get('cpu_features') or []) or 'none reported'}; "
          f"{args.threads} threads")
    print(f"peak ({args.size}^3 GEMM in ONNX Runtime): fp32 {gmacs['peak-fp32']:.1f} GMAC/s, int8 "
          f"{gmacs['peak-int8']:.1f} GMAC/s (int8/fp32 {gmacs['peak-int8'] / gmacs['peak-fp32']:.2f}x)")
    print(f"student: {macs_per_image / 1e6:.1f} M multiply-accumulates per image, input {shape}")
    print("| model | batch | p50 ms | GMAC/s | fraction of its peak |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['batch']} | {r['p50_ms']:.3f} | {r['gmac_per_s']:.2f} | "
              f"{r['fraction_of_peak']:.1%} |")
    print(f"wrote {args.out} ({record['seconds']} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
