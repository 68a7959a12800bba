"""Ours (``quantize --target cpu --precision auto``) vs the CPU tools a user would pick by hand, side by side.

For each student (a timm architecture at the embedded synthetic data's 64x64 size: random backbone with BN
parameters randomised plus a ridge-fitted linear head, see ``_student``) and the same calibration and test
images, one process measures:

* ours: ``QuantizeConfig.from_options(target="cpu", precision="auto")``, the artifact it writes (ONNX or OpenVINO IR), run
  through our ``Engine`` (the path our users take);
* ``ort-static-defaults``: ``onnxruntime.quantization.quantize_static`` with its defaults (QDQ, S8S8, MinMax)
  on the same calibration images, run in a default ``InferenceSession``;
* ``ort-fp32``: the fp32 ONNX in a default ``InferenceSession``;
* ``openvino-nncf-defaults``: ``openvino.convert_model`` + ``nncf.quantize`` with defaults, default
  ``compile_model(..., "CPU")``;
* ``openvino-fp32``: the converted fp32 model, default ``compile_model``;
* ``torch-eager-fp32``: the trained torch model under ``torch.inference_mode``;
* ``torch-ao-dynamic-int8``: ``torch.ao.quantization.quantize_dynamic`` on ``nn.Linear`` (torchao itself is not
  installed here; its int8 paths target GPUs).

Each student is measured in a process of its own. Latency is p50 over interleaved rounds (every artifact timed
in each round, so background load hits all of them alike; each block opens with untimed calls), at batch 1 and
8, with every runtime at its default thread count. Agreement is top-1 agreement with the fp32 model's logits on the test split; AUC is macro AUC against the labels. Writes
``benchmarks/results/peers_cpu.json`` and ``.md``. Usage::

    python benchmarks/peers_cpu.py [--students resnet18,mobilenetv3_small_100,vit_tiny_patch16_224] [--runs 60]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from medfm_compress._env import fingerprint
from medfm_compress._io import atomic_write_json, atomic_write_text
from medfm_compress.runtime.timing import interleaved_times

ROOT = Path(__file__).resolve().parent
OURS = "ours-auto"


def _student(student: str, task, n_fit: int, out_dir: Path):
    """(torch model, ModelMeta, fp32 ONNX path): a timm student with a random backbone (BN parameters randomised,
    so no residual branch is dead) and a linear head fitted by ridge regression on ``n_fit`` training images.

    Distilling three students on this shared 2-core machine took > 15 min per student, so the backbone stays
    random and only the head is fitted (one forward pass); the classifier is real (test AUC well above 0.5),
    so top-1 agreement and AUC of the quantized copies are meaningful.
    """
    import torch

    from medfm_compress.compress.calibration import stratified_indices
    from medfm_compress.export.onnx_build import export_model_to_onnx
    from medfm_compress.models import create_model
    from medfm_compress.runtime.metadata import ModelMeta
    from medfm_compress.runtime.preprocess import PreprocessSpec
    from medfm_compress.runtime.tasks import get_task

    torch.manual_seed(0)
    train = task.split("train")
    size = tuple(train.images.shape[-2:])
    unit = train.images.astype(np.float32) / (255.0 if train.images.dtype == np.uint8 else 1.0)
    pre = PreprocessSpec(input_size=size, channels=task.channels, mean=(float(unit.mean()),) * task.channels,
                         std=(float(unit.std()),) * task.channels)
    model = create_model(f"timm:{student}", len(task.label_names), task.channels, size[0]).eval()
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d | torch.nn.LayerNorm) and m.weight is not None:
            with torch.no_grad():
                m.weight.copy_(1.0 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    idx = stratified_indices(train.labels, n_fit, 0, task.task)
    x = torch.from_numpy(pre(train.images[idx]))
    with torch.inference_mode():
        feats = torch.cat([model.forward_head(model.forward_features(x[i : i + 64]), pre_logits=True)
                           for i in range(0, len(x), 64)]).double()
    y = torch.nn.functional.one_hot(torch.from_numpy(np.asarray(train.labels[idx]).reshape(-1)).long(),
                                    len(task.label_names)).double()
    # Ridge on centred raw features, regularised relative to their total variance: no per-feature
    # standardisation, which would amplify near-constant features (and any rounding in them) into the logits.
    mu = feats.mean(0)
    z = feats - mu
    gram = z.T @ z
    lam = 0.05 * torch.trace(gram) / gram.shape[0]
    w = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=z.dtype), z.T @ (2 * y - 1))
    head = model.get_classifier()
    with torch.no_grad():
        head.weight.copy_(w.T.float())
        head.bias.copy_((-(mu @ w) + (2 * y - 1).mean(0)).float())
    meta = ModelMeta(pre, task.task, list(task.label_names), f"timm:{student}", "fp32",
                     {"note": "random backbone (BN randomised) + ridge-fitted linear head", "n_fit": len(idx)})
    onnx_path = out_dir / f"{student}.onnx"
    export_model_to_onnx(model, meta, onnx_path, x[:2])
    test = task.split("test")
    with torch.inference_mode():
        logits = model(torch.from_numpy(pre(test.images[:256]))).numpy()
    return model, meta, onnx_path, get_task(task.task).macro_auc(logits, test.labels[:256])


def _distilled_student(run_dir: Path, task, out_dir: Path):
    """(torch model, ModelMeta, fp32 ONNX path, test AUC) of a student distilled by ``medfm-compress distill``."""
    import torch

    from medfm_compress.export.onnx import ExportConfig, export_onnx
    from medfm_compress.models import load_model
    from medfm_compress.runtime.tasks import get_task

    model, _card = load_model(run_dir, name="student")
    exported = export_onnx(ExportConfig(source=str(run_dir), out=str(out_dir / "student.onnx")))
    test = exported.meta.preprocess(task.split("test").images[:256])
    with torch.inference_mode():
        logits = model(torch.from_numpy(test)).numpy()
    return model, exported.meta, exported.path, get_task(task.task).macro_auc(logits, task.split("test").labels[:256])


def _p50_interleaved(fns: dict[str, callable], x: np.ndarray, runs: int, rounds: int = 5, warmup: int = 5):
    """p50 ms of each tool's call on ``x``, all timed in the library's interleaved loop (the same one quantize's
    --precision auto decides with)."""
    times = interleaved_times({k: (lambda f=fn: f(x)) for k, fn in fns.items()}, runs=runs, rounds=rounds,
                              warmup=warmup)
    return {k: float(np.percentile(v, 50) * 1000.0) for k, v in times.items()}


def _batched(fn, x: np.ndarray, bs: int = 32) -> np.ndarray:
    return np.concatenate([np.asarray(fn(x[i : i + bs]), dtype=np.float32) for i in range(0, len(x), bs)])


def bench_student(student: str, args) -> dict:
    import nncf
    import onnxruntime as ort
    import openvino as ov
    import torch
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    from medfm_compress.compress.calibration import stratified_indices
    from medfm_compress.compress.quantize import QuantizeConfig, quantize
    from medfm_compress.data import load_data
    from medfm_compress.runtime import Engine
    from medfm_compress.runtime.tasks import get_task

    t0 = time.time()
    task = load_data(args.data, seed=0)
    work = Path(tempfile.mkdtemp(prefix=f"peers-{student}-"))
    if student in args.student_runs:
        model, meta, onnx_path, fit_auc = _distilled_student(Path(args.student_runs[student]), task, work)
        origin = f"distilled student from {args.student_runs[student]}"
    else:
        model, meta, onnx_path, fit_auc = _student(student, task, args.num_fit, work)
        origin = "random backbone (BN randomised) + ridge-fitted linear head"
    print(f"   {student}: {origin}, fp32 test AUC {fit_auc:.3f} ({time.time() - t0:.0f} s)", file=sys.stderr,
          flush=True)
    pre = meta.preprocess
    test = task.split("test")
    x_test = pre(test.images[: args.num_test])
    test_labels = test.labels[: args.num_test]
    train = task.split("train")
    calib = pre(train.images[stratified_indices(train.labels, args.num_calib, 0, task.task)])

    # --- ours -------------------------------------------------------------------------------------------
    tq = time.time()
    res = quantize(QuantizeConfig.from_options(input=str(onnx_path), calib_data=args.data, target="cpu", precision="auto",
                                  num_calib=args.num_calib, latency_runs=args.runs, progress=False,
                                  auto_exclude=args.auto_exclude, out=None))
    ours_seconds = time.time() - tq
    ours_eng = Engine.load(res.path)

    # --- peers, as users run them by hand -------------------------------------------------------------------
    sess_fp32 = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    in_name = sess_fp32.get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {in_name: x[None]}

    ort_q = work / "ort_static.onnx"
    quantize_static(str(onnx_path), str(ort_q), Reader())
    sess_q = ort.InferenceSession(str(ort_q), providers=["CPUExecutionProvider"])

    core = ov.Core()
    ov_fp32 = ov.convert_model(str(onnx_path))
    ov_q = nncf.quantize(ov_fp32, nncf.Dataset(list(calib), lambda x: x[None]))
    ov.save_model(ov_q, str(work / "ov_nncf.xml"))
    ov.save_model(ov_fp32, str(work / "ov_fp32.xml"))
    c_fp32, c_q = core.compile_model(ov_fp32, "CPU"), core.compile_model(ov_q, "CPU")
    r_fp32, r_q = c_fp32.create_infer_request(), c_q.create_infer_request()

    torch_dyn = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)

    def torch_fn(m):
        def f(x):
            with torch.inference_mode():
                return m(torch.from_numpy(x)).numpy()

        return f

    def ov_fn(req):
        def f(x):
            req.infer(x)
            return req.get_output_tensor(0).data.copy()

        return f

    fns = {
        OURS: ours_eng.run,
        "ort-fp32": lambda x: sess_fp32.run(None, {in_name: x})[0],
        "ort-static-defaults": lambda x: sess_q.run(None, {in_name: x})[0],
        "openvino-fp32": ov_fn(r_fp32),
        "openvino-nncf-defaults": ov_fn(r_q),
        "torch-eager-fp32": torch_fn(model),
        "torch-ao-dynamic-int8": torch_fn(torch_dyn),
    }
    buf = io.BytesIO()
    torch.save(torch_dyn.state_dict(), buf)
    sizes = {
        OURS: res.size_bytes,
        "ort-fp32": onnx_path.stat().st_size,
        "ort-static-defaults": ort_q.stat().st_size,
        "openvino-fp32": sum((work / f"ov_fp32.{s}").stat().st_size for s in ("xml", "bin")),
        "openvino-nncf-defaults": sum((work / f"ov_nncf.{s}").stat().st_size for s in ("xml", "bin")),
        "torch-eager-fp32": sum(p.numel() * p.element_size() for p in model.state_dict().values()),
        "torch-ao-dynamic-int8": buf.tell(),
    }
    ref = _batched(fns["torch-eager-fp32"], x_test)
    rows = {}
    for name, fn in fns.items():
        logits = _batched(fn, x_test, 32 if name != OURS else 32)
        rows[name] = {
            "top1_agreement": get_task(task.task).agreement(ref, logits),
            "macro_auc": get_task(task.task).macro_auc(logits, test_labels),
            "size_bytes": sizes[name],
        }
    shape = x_test.shape[1:]
    for bs in (1, 8):
        x = np.random.default_rng(bs).standard_normal((bs, *shape)).astype(np.float32)
        for name, ms in _p50_interleaved(fns, x, args.runs).items():
            rows[name][f"p50_ms_bs{bs}"] = ms
    ours_eng.close()
    return {
        "student": student,
        "origin": origin,
        "fp32_test_auc": fit_auc,
        "input_shape": list(shape),
        "params": int(sum(p.numel() for p in model.parameters())),
        "n_test": len(x_test),
        "n_calib": len(calib),
        "ours": {"path": str(res.path), "precision": res.precision, "chosen": res.report.get("chosen"),
                 "reason": res.report.get("auto_reason"), "auto_table": res.report.get("auto_table"),
                 "quantize_seconds": round(ours_seconds, 1)},
        "rows": rows,
        "seconds": round(time.time() - t0, 1),
    }


def figure(rec: dict) -> dict:
    """The issue's figure for one student: ours vs the fastest peer at batch 1."""
    rows = rec["rows"]
    ours = rows[OURS]
    peers = {k: v for k, v in rows.items() if k != OURS}
    fastest = min(peers, key=lambda k: peers[k]["p50_ms_bs1"])
    f = peers[fastest]
    gated = {k: v for k, v in peers.items() if v["top1_agreement"] >= 0.99}
    fastest_gated = min(gated, key=lambda k: gated[k]["p50_ms_bs1"]) if gated else None
    return {
        "fastest_peer_at_agreement_0.99": fastest_gated,
        "ratio_vs_fastest_peer_at_agreement_0.99": (
            ours["p50_ms_bs1"] / gated[fastest_gated]["p50_ms_bs1"] if gated else None),
        "fastest_peer": fastest,
        "peer_p50_ms_bs1": f["p50_ms_bs1"],
        "ours_p50_ms_bs1": ours["p50_ms_bs1"],
        "ratio": ours["p50_ms_bs1"] / f["p50_ms_bs1"],
        "within_5pct": ours["p50_ms_bs1"] <= 1.05 * f["p50_ms_bs1"],
        "agreement_not_lower": ours["top1_agreement"] >= f["top1_agreement"],
        "faster": ours["p50_ms_bs1"] < f["p50_ms_bs1"],
    }


def markdown(records: list[dict], fp: dict) -> str:
    out = [f"# CPU peers benchmark\n\nMachine: {fp.get('cpu', '?')} ({', '.join(fp.get('cpu_features') or []) or '?'}), "
           f"{fp.get('cores', '?')} cores; "
           "every runtime at its default thread count. p50 latency in ms over interleaved rounds. The openvino-* peers "
           "use compile_model's defaults: on a CPU with native bf16 their non-quantized ops run in bf16.\n"]
    for rec in records:
        o = rec["ours"]
        out.append(f"\n## {rec['student']} ({rec['params'] / 1e6:.2f}M params, input {rec['input_shape']}, "
                   f"{rec['n_test']} test images)\n")
        out.append(f"ours chose **{o['chosen']}** ({o['precision']}): {o['reason']}\n")
        out.append("| tool | p50 bs1 | p50 bs8 | size MB | top-1 agreement | macro AUC |\n|---|---|---|---|---|---|")
        for name, r in rec["rows"].items():
            out.append(f"| {name} | {r['p50_ms_bs1']:.3f} | {r['p50_ms_bs8']:.3f} | {r['size_bytes'] / 1e6:.2f} | "
                       f"{r['top1_agreement']:.4f} | {r['macro_auc']:.4f} |")
        f = rec["figure"]
        out.append(f"\nfastest peer at bs1: {f['fastest_peer']} {f['peer_p50_ms_bs1']:.3f} ms; ours "
                   f"{f['ours_p50_ms_bs1']:.3f} ms (x{f['ratio']:.2f}); within 5%: {f['within_5pct']}, agreement "
                   f"not lower: {f['agreement_not_lower']}, faster: {f['faster']}; fastest peer with agreement >= 0.99: "
                   f"{f['fastest_peer_at_agreement_0.99']} (ours x{f['ratio_vs_fastest_peer_at_agreement_0.99'] or 0:.2f})\n")
        out.append("\nauto candidates (ours):\n\n| engine | candidate | p50 ms | agreement | passes | chosen |\n"
                   "|---|---|---|---|---|---|")
        for r in o["auto_table"] or []:
            if "latency_ms" in r:
                out.append(f"| {r.get('engine')} | {r['precision']} | {r['latency_ms']:.3f} | "
                           f"{r['top1_agreement']:.4f} | {r['passes']} | {r.get('chosen', False)} |")
            else:
                out.append(f"| {r.get('engine')} | {r['precision']} | - | - | error: {r.get('error', '')[:80]} | |")
    return "\n".join(out) + "\n"


def _bench_in_fresh_process(student: str) -> dict:
    """:func:`bench_student` in a child process of its own. In one process, the students timed after the first
    ran slower than alone (vit_tiny's ORT int8-dynamic: 1.28 ms after resnet18 and mobilenetv3, 0.59 ms alone), from
    the thread pools and arenas that the earlier quantizations and runtimes leave behind; a scanner runs one model
    in a fresh process."""
    import subprocess

    with tempfile.TemporaryDirectory(prefix="peers-one-") as tmp:
        out = Path(tmp) / "one.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:], "--students", student, "--one", str(out)]
        res = subprocess.run(cmd, check=False)
        if res.returncode != 0 or not out.is_file():
            raise SystemExit(f"peers_cpu: benchmarking {student} failed (exit status {res.returncode})")
        return json.loads(out.read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--students", default="resnet18,mobilenetv3_small_100,vit_tiny_patch16_224")
    ap.add_argument("--data", default="synthetic")
    ap.add_argument("--num-fit", type=int, default=1200, help="training images the linear head is fitted on")
    ap.add_argument("--num-test", type=int, default=500, help="test images for agreement and AUC")
    ap.add_argument("--num-calib", type=int, default=256)
    ap.add_argument("--runs", type=int, default=60, help="timed calls per artifact and batch size")
    ap.add_argument("--run", action="append", default=[], metavar="STUDENT=RUN_DIR",
                    help="use the student distilled in RUN_DIR (medfm-compress distill --student timm:STUDENT) "
                         "instead of a random backbone with a fitted head; repeatable")
    ap.add_argument("--auto-exclude", action="store_true",
                    help="ours: --precision auto --auto-exclude (INT8 candidates keep the most damaging layers "
                         "in fp32, NNCF accuracy control for OpenVINO, until the parity gate holds)")
    ap.add_argument("--out", default=str(ROOT / "results" / "peers_cpu"))
    ap.add_argument("--one", metavar="JSON", help=argparse.SUPPRESS)  # internal: bench one student, write JSON
    args = ap.parse_args()
    args.student_runs = {}
    for item in args.run:
        name, sep, path = item.partition("=")
        if not sep or not Path(path, "student.json").is_file():
            ap.error(f"--run {item!r}: give STUDENT=RUN_DIR with a distilled student in RUN_DIR")
        args.student_runs[name] = path
    if args.one:
        atomic_write_json(Path(args.one), bench_student(args.students, args))
        return 0
    t0 = time.time()
    records = []
    for s in args.students.split(","):
        print(f"== {s}", file=sys.stderr, flush=True)
        rec = _bench_in_fresh_process(s.strip())
        rec["figure"] = figure(rec)
        records.append(rec)
    fp = fingerprint()
    summary = {
        "all_within_5pct_at_no_lower_agreement": all(
            r["figure"]["within_5pct"] and r["figure"]["agreement_not_lower"] for r in records),
        "faster_on_at_least_one": any(r["figure"]["faster"] for r in records),
    }
    record = {"benchmark": "peers_cpu", "args": vars(args), "fingerprint": fp, "started_utc":
              time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0)), "seconds": round(time.time() - t0, 1),
              "summary": summary, "students": records}
    md = markdown(records, fp) + f"\nsummary: {json.dumps(summary)}\n"
    atomic_write_json(Path(args.out + ".json"), record)
    atomic_write_text(Path(args.out + ".md"), md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
