"""Volume distillation end to end on 5-D inputs: distill (tiny CT teacher) -> export -> quantize -> bench."""

from __future__ import annotations

import json

import numpy as np
import pytest
from support.volume_fixtures import TINY, crop_specs

pytestmark = pytest.mark.slow  # volume distillation with the CT teacher


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    return crop_specs(tmp_path_factory.mktemp("ct"))


@pytest.fixture(scope="module")
def run(specs, tmp_path_factory):
    from medfm_compress.compress.distill import DistillConfig, distill

    out = tmp_path_factory.mktemp("run")
    return distill(DistillConfig.from_options(data=specs["train"], eval_data=specs["eval"], out=str(out), epochs=1, progress=False,
                                 **TINY))


def test_distill_writes_a_loadable_5d_student(run):
    import torch

    from medfm_compress.models import load_model

    m = run.metrics
    assert m["task"] == "embedding" and m["eval"]["n"] == 4 and m["eval"]["z_range"] == [22, 40]
    assert m["train"]["z_range"] == [0, 18] and len(m["history"]["history"]) == 1
    # One epoch from a random-weight teacher teaches little (the cosine is about 0.08 here); what must hold is that
    # the reported held-out cosine is the final student's, the one the last epoch logged.
    assert m["history"]["history"][-1]["eval_cos"] == round(m["eval"]["cosine"], 4)
    assert m["cache"]["computed"] == 12
    model, card = load_model(run.out)
    assert card.task == "embedding" and card.preprocess.input_size == (32, 32, 16)
    assert card.preprocess.window == (-1000.0, 200.0) and card.embedding_dim == 2048
    assert model(torch.zeros(2, 1, 32, 32, 16)).shape == (2, 2048)
    manifest = json.loads((run.out / "manifest.json").read_text())
    rec = manifest["stages"][-1]
    assert rec["stage"] == "distill" and set(rec["inputs"]) == {"data", "eval_data"}
    # The defaults of volume crops (30 epochs at lr 2e-3, no augmentation) are the task's, recorded as used.
    loop = rec["config"]["loop"]
    assert loop["lr"] == 0.002 and loop["augment"] is False and loop["epochs"] == 1
    # A packaged foundation encoder is not copied into the run.
    assert not (run.out / "teacher.json").exists() and not (run.out / "teacher.safetensors").exists()


def test_export_quantize_bench_on_5d(run, specs, tmp_path):
    import onnx

    from medfm_compress.bench.harness import BenchConfig, run_bench
    from medfm_compress.compress.quantize import QuantizeConfig, quantize
    from medfm_compress.export.onnx import ExportConfig, export_onnx
    from medfm_compress.runtime import Engine
    from medfm_compress.runtime.onnx_loader import read_meta

    exp = export_onnx(ExportConfig(source=str(run.out), out=str(tmp_path / "s.onnx"), num_check=4))
    dims = [d.dim_value or d.dim_param for d in onnx.load(exp.path).graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [1, 32, 32, 16] and exp.check["max_abs"] < 1e-4
    assert read_meta(exp.path).preprocess.input_size == (32, 32, 16)
    q = quantize(
        QuantizeConfig.from_options(
            input=str(exp.path),
            calib_data=specs["train"],
            num_calib=8,
            num_holdout=8, allow_small_holdout=True,
            latency_runs=2,
            progress=False,
        )
    )
    assert q.precision == "int8" and q.report["parity"]["cosine"] >= 0.99  # the embedding gate (cosine) held
    report = run_bench(
        BenchConfig(
            artifacts=(("fp32", str(exp.path)), ("int8", str(q.path))),
            data=specs["eval"],
            iterations=3,
            warmup=1,
            threads=1,
            progress=False,
            out=str(tmp_path / "report"),
        )
    )
    int8 = next(a for a in report["artifacts"] if a["name"] == "int8")
    assert report["data"]["task"] == "embedding" and report["passed"]
    assert int8["parity"]["cosine"] > 0.95 and int8["latency"]["1"]["engine"]["p50_ms"] > 0
    assert (tmp_path / "report" / "report.md").is_file()
    with Engine.load(q.path) as eng:
        from medfm_compress.data import load_data

        crops = load_data(specs["eval"]).split("test").images
        emb, same = eng.predict(crops[:2])
        assert emb.shape == (2, 2048) and np.array_equal(emb, same)


def test_quantize_gate_refuses_a_bad_int8_embedding(run, specs, tmp_path):
    from medfm_compress.compress.quantize import QuantizeConfig, quantize
    from medfm_compress.errors import MedfmError
    from medfm_compress.export.onnx import ExportConfig, export_onnx

    exp = export_onnx(ExportConfig(source=str(run.out), out=str(tmp_path / "s.onnx"), num_check=2))
    with pytest.raises(MedfmError, match="cosine"):
        quantize(
            QuantizeConfig.from_options(
                input=str(exp.path),
                calib_data=specs["train"],
                num_calib=4,
                num_holdout=4, allow_small_holdout=True,
                min_cosine=1.0,
                search=False,
                latency_runs=1,
                progress=False,
            )
        )
    assert not (tmp_path / "s.int8.onnx").exists()
