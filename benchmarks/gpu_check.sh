#!/usr/bin/env bash
# GPU validation, for a machine with an NVIDIA GPU and possibly no package registry.
#
#   benchmarks/gpu_check.sh [WHEEL_DIR]
#
# 1. installs what is missing from wheels in WHEEL_DIR (pip --no-index --no-deps into a private folder put on
#    PYTHONPATH; the machine's own torch/onnx/onnxruntime are used);
# 2. runs the gpu/trt tests;
# 3. distils the embedded default task on the GPU (bf16 autocast training path);
# 4. benches teacher and student on the GPU against the teacher in torch fp32 eager (the reference): torch
#    fp32/fp16/bf16, channels-last, CUDA graphs, torch.compile; and TensorRT engines (FP16, INT8) where a
#    TensorRT flavour that runs on this card is importable;
# 5. prints the batch-1 speedups and parity, and writes everything under benchmarks/results/gpu_check-<card>/
#    (flat copies of the key files in $OUT/ when OUT is set: the device tool brings back at most 8 files).
# TensorRT-RTX targets RTX-class GPUs (not the H100/H200's sm90); classic TensorRT's wheels are over a GB.
# Where neither runs, the engine step says so and the torch CUDA paths are what is measured.
set -u -o pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
WHEELS=${1:-}
if [ -n "$WHEELS" ]; then
  SITE=${MEDFM_SITE:-/tmp/medfm-site}
  echo "== installing $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into $SITE (no index, no deps)"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "$WHEELS"/*.whl || {
    echo "error: installing the wheels from $WHEELS failed"; exit 1; }
  export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
CARD=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')" 2>/dev/null || echo none)
if [ "$CARD" = "none" ]; then echo "error: no CUDA GPU visible to torch; nothing to check"; exit 1; fi
SLUG=$(echo "$CARD" | tr -c 'A-Za-z0-9' '_' | sed 's/_*$//')
RES=benchmarks/results/gpu_check-$SLUG
rm -rf "$RES" && mkdir -p "$RES"
echo "== card: $CARD -> $RES"
nvidia-smi > "$RES/nvidia-smi.txt" 2>&1 || true
"$PY" -c "import json,sys; from medfm_compress._env import fingerprint; json.dump({'card': sys.argv[1], 'env': fingerprint()}, open(sys.argv[2],'w'), indent=2, default=str)" \
  "$CARD" "$RES/env.json" || echo "warning: could not write the environment fingerprint"

echo "== pytest -m 'gpu or trt'"
timeout 300 "$PY" -m pytest -m "gpu or trt" -q -rs -p no:cacheprovider \
  tests/runtime/test_engine.py tests/runtime/test_tensorrt_backend.py tests/bench/test_harness.py 2>&1 | tee "$RES/pytest.txt"

RUN=$(mktemp -d)/run
echo "== distill, embedded default task, on cuda -> $RUN"
SECONDS=0
timeout 400 "$PY" -m medfm_compress distill --out "$RUN" --device cuda --quiet > "$RES/distill.txt" 2>&1
rc=$?
echo "distill exit $rc in ${SECONDS}s" | tee -a "$RES/distill.txt"
tail -5 "$RES/distill.txt"
[ $rc -eq 0 ] || { echo "error: distill on cuda failed"; cp "$RES"/*.txt "${OUT:-/nonexistent}/" 2>/dev/null; exit 1; }

# TensorRT engines, where a flavour that runs on this card is importable.
ENGINES=()
for flavour in rtx classic; do
  mod=tensorrt_rtx; [ $flavour = classic ] && mod=tensorrt
  "$PY" -c "import $mod" 2>/dev/null || { echo "note: $mod is not installed; no $flavour engines"; continue; }
  TG=""; [ $flavour = rtx ] && TG="--targets current"
  if "$PY" -m medfm_compress export "$RUN" --model student --format tensorrt --flavour $flavour $TG --precision fp16 \
       --batch-sizes 1,8,64 --out "$RUN/probe.engine" > /dev/null 2>&1 && \
     "$PY" -c "import sys; from medfm_compress.runtime import Engine; Engine.load(sys.argv[1], device='cuda').close()" \
       "$RUN/probe.engine" 2>/dev/null; then
    for p in fp16 int8; do
      "$PY" -m medfm_compress export "$RUN" --model student --format tensorrt --flavour $flavour $TG --precision $p \
        --batch-sizes 1,8,64 --out "$RUN/student.$p.engine" 2>&1 | tail -1 && ENGINES+=("student_trt_$p=$RUN/student.$p.engine")
    done
    break
  fi
  echo "note: $flavour TensorRT engines do not build or run on $CARD"
done

REF="teacher_fp32=$RUN?name=teacher"
FAST16="precision=fp16&channels_last=true"
echo "== bench on cuda: torch eager / fp16 / bf16 / CUDA graphs ${ENGINES[*]:-}"
timeout 400 "$PY" -m medfm_compress bench "$REF" \
  "teacher_fp16_graphs=$RUN?name=teacher&$FAST16&cuda_graphs=true" \
  "student_fp32=$RUN" \
  "student_fp32_graphs=$RUN?cuda_graphs=true" \
  "student_fp16=$RUN?$FAST16" \
  "student_fp16_graphs=$RUN?$FAST16&cuda_graphs=true" \
  "student_bf16_graphs=$RUN?precision=bf16&channels_last=true&cuda_graphs=true" \
  ${ENGINES[@]+"${ENGINES[@]}"} \
  --device cuda --batch-sizes 1,64 --iterations 300 --warmup 30 --quiet --out "$RES/bench" > "$RES/bench.txt" 2>&1
echo "bench exit $?" | tee -a "$RES/bench.txt"
tail -25 "$RES/bench.txt"

echo "== bench on cuda: torch.compile"
timeout 300 "$PY" -m medfm_compress bench "$REF" \
  "student_compiled_fp16_graphs=$RUN?$FAST16&compile=default&cuda_graphs=true" \
  --device cuda --batch-sizes 1,64 --iterations 300 --warmup 30 --quiet --out "$RES/bench_compile" \
  > "$RES/bench_compile.txt" 2>&1
echo "bench (compile) exit $?" | tee -a "$RES/bench_compile.txt"
tail -8 "$RES/bench_compile.txt"

echo "== summary (batch-1 engine-only p50; speedup = teacher fp32 eager p50 / artifact p50)"
"$PY" - "$RES" "$CARD" <<'PYEOF' | tee "$RES/summary.txt"
import json, sys
from pathlib import Path
res, card = Path(sys.argv[1]), sys.argv[2]
rows = {}
for sub in ("bench", "bench_compile"):
    f = res / sub / "report.json"
    if not f.is_file():
        print(f"({sub}: no report)"); continue
    for a in json.loads(f.read_text())["artifacts"]:
        rows[a["name"]] = a
ref = rows.get("teacher_fp32")
def p50(a, b):
    lat = (a.get("latency") or {}).get(b, {}).get("engine") or {}
    return lat.get("p50_ms")
print(f"card: {card}")
print(f"{'artifact':34s} {'params':>9s} {'p50 bs1 ms':>10s} {'speedup':>8s} {'p50 bs64 ms':>11s} {'img/s bs64':>10s} "
      f"{'agree':>6s} {'AUC':>7s}")
out = {"card": card, "artifacts": {}}
for name, a in rows.items():
    b1, b64 = p50(a, "1"), p50(a, "64")
    sp = (p50(ref, "1") / b1) if (ref and b1) else None
    agree = (a.get("parity") or {}).get("top1_agreement", 1.0 if a.get("reference") else None)
    auc = (a.get("metrics") or {}).get("macro_auc")
    ips = 64e3 / b64 if b64 else None
    out["artifacts"][name] = {"params": a.get("params"), "p50_bs1_ms": b1, "speedup_bs1": sp, "p50_bs64_ms": b64,
                              "images_per_s_bs64": ips, "top1_agreement": agree, "macro_auc": auc}
    f = lambda v, fmt: format(v, fmt) if isinstance(v, (int, float)) else "-"
    print(f"{name:34s} {f(a.get('params'), '9d')} {f(b1, '10.3f')} {f(sp, '8.1f')} {f(b64, '11.3f')} {f(ips, '10.0f')} "
          f"{f(agree, '6.3f')} {f(auc, '7.4f')}")
(res / "summary.json").write_text(json.dumps(out, indent=2))
PYEOF
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  cp "$RES/summary.txt" "$RES/summary.json" "$RES/pytest.txt" "$RES/distill.txt" "$RES/env.json" "$OUT/" 2>/dev/null
  [ -f "$RES/bench/report.json" ] && cp "$RES/bench/report.json" "$OUT/bench_report.json"
  [ -f "$RES/bench_compile/report.json" ] && cp "$RES/bench_compile/report.json" "$OUT/bench_compile_report.json"
  cat "$RES/bench.txt" "$RES/bench_compile.txt" "$RES/nvidia-smi.txt" > "$OUT/logs.txt" 2>/dev/null
fi
echo "== results in $RES"
