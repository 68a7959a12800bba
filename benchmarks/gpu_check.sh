#!/usr/bin/env bash
# GPU validation of the TensorRT path, for a machine with an NVIDIA GPU and possibly no package registry.
#
#   benchmarks/gpu_check.sh [WHEEL_DIR]
#
# 1. installs what is missing from wheels in WHEEL_DIR (pip --no-index --find-links), into .venv if present;
# 2. runs the gpu/trt tests;
# 3. builds engines (FP16 and INT8) for the teacher and student of a tiny distill run and benches them
#    against torch fp32 eager on the same GPU (bench: p50 latency, parity);
# 4. writes results under benchmarks/results/gpu_check-<card>/ (and $OUT/ if set).
# TensorRT-RTX targets RTX-class GPUs (sm75/80/86/89/120): where its engines do not run on this card, the
# script says so and falls back to classic TensorRT if installed, else to the ORT / torch paths.
set -u -o pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
WHEELS=${1:-}
if [ -n "$WHEELS" ]; then
  echo "== installing from $WHEELS (no index)"
  "$PY" -m pip install --no-index --find-links "$WHEELS" -e '.[dev,trt,modelopt]' || \
    echo "warning: not everything installed from $WHEELS; continuing with what is there"
fi
CARD=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')" 2>/dev/null || echo none)
if [ "$CARD" = "none" ]; then echo "error: no CUDA GPU visible to torch; nothing to check"; exit 1; fi
SLUG=$(echo "$CARD" | tr -c 'A-Za-z0-9' '_' | sed 's/_*$//')
RES=benchmarks/results/gpu_check-$SLUG
mkdir -p "$RES"
echo "== card: $CARD -> $RES"
nvidia-smi > "$RES/nvidia-smi.txt" 2>&1 || true

echo "== pytest -m 'gpu or trt'"
"$PY" -m pytest -m "gpu or trt" -q -rs tests 2>&1 | tee "$RES/pytest.txt"

RUN=$(mktemp -d)/run
echo "== tiny distill run in $RUN"
DATA='synthetic?size=64&n_train=512&n_test=256'
"$PY" -m medfm_compress distill --data "$DATA" --out "$RUN" \
   --teacher timm:resnet50 --student timm:medfm_resnet10_w24 --teacher-epochs 1 --epochs 1 2>&1 | tail -3 || {
  echo "error: distill failed"; exit 1; }

FLAVOUR=rtx
if ! "$PY" - "$RUN" <<'PYEOF'
import sys
from medfm_compress.export.tensorrt import export_tensorrt, check_engine
r = export_tensorrt(sys.argv[1], out=sys.argv[1] + "/probe.engine", precision="fp32", targets=("current",))
check_engine(r.path)
PYEOF
then
  echo "note: TensorRT-RTX engines do not run on $CARD (it targets RTX-class GPUs)"
  if "$PY" -c "import tensorrt" 2>/dev/null; then FLAVOUR=classic; else FLAVOUR=none; fi
fi
echo "== engine flavour: $FLAVOUR" | tee "$RES/flavour.txt"

ARTS=("torch_fp32=$RUN/teacher")
for m in teacher student; do
  if [ "$FLAVOUR" != none ]; then
    TG=""; [ "$FLAVOUR" = rtx ] && TG="--targets current"
    for p in fp16 int8; do
      "$PY" -m medfm_compress export "$RUN" --model $m --format tensorrt --flavour $FLAVOUR $TG --precision $p \
        --batch-sizes 1,8,32 --out "$RUN/$m.$p.engine" 2>&1 | tail -2 && ARTS+=("${m}_$p=$RUN/$m.$p.engine")
    done
  else
    # ORT TensorRT EP / CUDA EP path on the exported ONNX.
    "$PY" -m medfm_compress export "$RUN" --model $m --out "$RUN/$m.onnx" 2>&1 | tail -1
    ARTS+=("${m}_ort=$RUN/$m.onnx")
  fi
done
ARTS+=("student_torch_fp32=$RUN/student")

echo "== bench ${ARTS[*]}"
"$PY" -m medfm_compress bench "${ARTS[@]}" --reference torch_fp32 --data "$DATA" --device cuda --batch-sizes 1,8 \
  --out "$RES/bench" 2>&1 | tee "$RES/bench.txt" || echo "warning: bench failed; see $RES/bench.txt"
"$PY" -c "import json,sys; from medfm_compress._env import fingerprint; json.dump({'card': sys.argv[1], 'flavour': sys.argv[2], 'env': fingerprint()}, open(sys.argv[3],'w'), indent=2, default=str)" \
  "$CARD" "$FLAVOUR" "$RES/env.json"
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT" && cp -r "$RES" "$OUT/"; fi
echo "== results in $RES"
