"""PTQ vs QAT (quantization-aware distillation) macro-AUC drop, side by side, for the TensorRT target.

    .venv/bin/python benchmarks/qat_recovery.py RUN_DIR [--bits 8 4]

For each bit width (8: the deployable INT8 preset; 4: a harder fake-quant setting where PTQ loses more),
quantize the run's student with ModelOpt (PTQ), then QAT-distill a copy from the teacher, and report the AUC
drop of each vs fp32 on the test split and the fraction of the PTQ loss QAT recovered. The criterion (QAT
recovers >= half) applies only where PTQ lost > 0.5 point; the record says when it is vacuous.
Writes benchmarks/results/qat_recovery.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medfm_compress.compress.calibration import stratified_indices
from medfm_compress.compress.quantize_trt import (
    QATConfig,
    forward_logits,
    preset_config,
    qat_distill,
    quantize_torch,
)
from medfm_compress.data import load_data
from medfm_compress.models.card import load_model
from medfm_compress.runtime.tasks import get_task


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--bits", type=int, nargs="+", default=[8, 4])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--ce-weight", type=float, default=0.0, help="add hard-label CE to the KD loss")
    ap.add_argument("--tag", default="", help="suffix of the results file name")
    a = ap.parse_args()
    student, card = load_model(a.run_dir, "student")
    teacher, _ = load_model(a.run_dir, "teacher")
    data = load_data(card.provenance["data"], require_labels=True, seed=0)
    train, test = data.splits["train"], data.splits["test"]
    x_train, x_test = card.preprocess(train.images), card.preprocess(test.images)
    calib = x_train[stratified_indices(train.labels, 256, 0, card.task)]
    t_logits = forward_logits(teacher.eval(), x_train)
    fp32_auc = get_task(card.task).macro_auc(forward_logits(student, x_test), test.labels)
    rows = []
    for bits in a.bits:
        qcfg = preset_config("int8", weight_bits=bits, act_bits=bits)
        ptq = quantize_torch(student, calib, quant_cfg=qcfg)
        ptq_auc = get_task(card.task).macro_auc(forward_logits(ptq, x_test), test.labels)
        qat = quantize_torch(student, calib, quant_cfg=qcfg)
        qat_distill(
            qat,
            t_logits,
            x_train,
            card.task,
            QATConfig(epochs=a.epochs, lr=a.lr, ce_weight=a.ce_weight),
            labels=train.labels,
            progress=False,
        )
        qat_auc = get_task(card.task).macro_auc(forward_logits(qat, x_test), test.labels)
        ptq_drop, qat_drop = 100 * (fp32_auc - ptq_auc), 100 * (fp32_auc - qat_auc)
        applies = ptq_drop > 0.5
        recovered = (ptq_drop - qat_drop) / ptq_drop if ptq_drop > 0 else None
        row = {
            "bits": bits,
            "fp32_auc": fp32_auc,
            "ptq_auc": ptq_auc,
            "qat_auc": qat_auc,
            "ptq_drop_pt": ptq_drop,
            "qat_drop_pt": qat_drop,
            "recovered_fraction": recovered,
            "criterion_applies": applies,
            "criterion_met": (recovered is not None and recovered >= 0.5) if applies else None,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = Path(__file__).parent / "results"
    out.mkdir(parents=True, exist_ok=True)
    name = f"qat_recovery{'-' + a.tag if a.tag else ''}.json"
    settings = {"epochs": a.epochs, "lr": a.lr, "ce_weight": a.ce_weight, "data": card.provenance["data"]}
    (out / name).write_text(json.dumps({"run_dir": a.run_dir, "settings": settings, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
