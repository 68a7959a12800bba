"""TensorRT-RTX ahead-of-time engine build times (no GPU needed) for every timm student used in our tests.

FP32 from the exported ONNX, INT8 from ModelOpt symmetric QDQ ONNX; batch profile 1..16; 32x32 and 224x224
inputs for resnet18. Writes benchmarks/results/trt_build.json (and $OUT/ if set). Wall times on a shared
machine are noisy; CPU seconds of this process are reported beside them.

    .venv/bin/python benchmarks/trt_build.py
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from medfm_compress._env import fingerprint
from medfm_compress.compress.quantize_trt import export_quantized_onnx, quantize_torch
from medfm_compress.export.onnx_build import export_model_to_onnx
from medfm_compress.export.tensorrt import TensorRTConfig, build_engine
from medfm_compress.models import create_model
from medfm_compress.runtime.metadata import ModelMeta
from medfm_compress.runtime.preprocess import PreprocessSpec

CASES = [
    ("timm:medfm_resnet10_w16", 32),
    ("timm:medfm_resnet10_w24", 32),
    ("timm:resnet18", 32),
    ("timm:resnet18", 224),
]


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as td:
        d = Path(td)
        for arch, size in CASES:
            torch.manual_seed(0)
            m = create_model(arch, 4, 3, size).eval()
            pre = PreprocessSpec(input_size=(size, size), channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)
            meta = ModelMeta(pre, "multiclass", list("abcd"), arch)
            calib = np.random.default_rng(0).normal(size=(16, 3, size, size)).astype(np.float32)
            ex = torch.from_numpy(calib[:1])
            fp32 = export_model_to_onnx(m, meta, d / "m.onnx", ex)
            qmeta = ModelMeta(pre, "multiclass", list("abcd"), arch, "int8")
            int8 = export_quantized_onnx(quantize_torch(m, calib, "int8"), qmeta, d / "m.int8.onnx", ex)
            for prec, src in (("fp32", fp32), ("fp16", fp32), ("int8", int8)):
                c0, w0 = time.process_time(), time.time()
                res = build_engine(
                    TensorRTConfig(
                        str(src), str(d / f"{prec}.engine"), precision=prec, batch_sizes=(1, 4, 16)
                    ),
                    progress=False,
                )
                row = {
                    "arch": arch,
                    "input": size,
                    "precision": prec,
                    "wall_s": round(time.time() - w0, 2),
                    "cpu_s": round(time.process_time() - c0, 2),
                    "builder_s": res.build_seconds,
                    "engine_mb": round(res.size_bytes / 1e6, 2),
                    "flavour": res.flavour,
                    "tensorrt_version": res.trt_version,
                    "targets": res.targets,
                }
                rows.append(row)
                print(
                    f"{arch:28s} {size:4d} {prec:5s} wall {row['wall_s']:6.2f} s  cpu {row['cpu_s']:6.2f} s  "
                    f"builder {row['builder_s']:6.2f} s  {row['engine_mb']:6.2f} MB",
                    flush=True,
                )
    record = {
        "benchmark": "trt_build",
        "rows": rows,
        "env": fingerprint(),
        "all_under_10s_wall": all(r["wall_s"] < 10 for r in rows),
    }
    for out in [
        Path(__file__).parent / "results",
        Path(os.environ["OUT"]) if os.environ.get("OUT") else None,
    ]:
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "trt_build.json").write_text(json.dumps(record, indent=2, default=str))
    print(f"all under 10 s (wall): {record['all_under_10s_wall']}")


if __name__ == "__main__":
    main()
