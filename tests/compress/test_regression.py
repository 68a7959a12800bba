"""Regression, the task that proves a task is one module: a continuous target per image through distill, export,
quantize, bench and predict, with the tiny regression task (the lesion's area in percent of the image)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner
from support.tiny import TINY_REG_DATA

from medfm_compress.cli import cli
from medfm_compress.errors import ConfigError, DataError
from medfm_compress.runtime.tasks import get_task


def test_distill_writes_a_model_in_the_targets_units(reg_run):
    import torch

    from medfm_compress.data import load_data
    from medfm_compress.models import load_model

    m = json.loads((reg_run / "metrics.json").read_text())
    assert m["task"] == "regression" and m["label_names"] == ["lesion_area_pct"]
    for role in ("teacher", "student", "baseline"):
        assert {"mae", "rmse", "pearson_r"} <= set(m[role]) and m[role]["mae"] >= 0
    lo, hi = m["distill_gain_mae_ci"]
    assert lo <= m["distill_gain_mae"] <= hi and -1 <= m["student_teacher_agreement"] <= 1
    # Trained on standardised values, saved in the target's own units: the mean output sits in the values' range, and
    # the reported MAE is that of the saved model.
    test = load_data(TINY_REG_DATA).split("test")
    model, card = load_model(reg_run)
    with torch.no_grad():
        out = model(torch.from_numpy(card.preprocess(test.images))).numpy()
    assert out.shape == (len(test), 1) and card.task == "regression"
    assert test.labels.min() - 1 < out.mean() < test.labels.max() + 1
    assert get_task("regression").scores(out, test.labels)["mae"] == pytest.approx(m["student"]["mae"], rel=1e-4)


def test_quantize_is_gated_on_the_pearson_r_with_fp32(reg_run, tmp_path):
    out = tmp_path / "s.int8.onnx"
    r = CliRunner().invoke(cli, ["quantize", str(reg_run / "student.onnx"), "--calib-data", TINY_REG_DATA, "--target",
                                 "cpu", "--no-search", "--num-calib", "32", "--num-holdout", "32", "--allow-small-holdout", "--out", str(out)])
    assert "regression model: parity gate is Pearson r vs fp32's outputs >= 0.99" in r.output
    # Written with its figures on the held-out images, or refused naming them.
    line = next(ln for ln in r.output.splitlines() if ln.startswith(("held-out parity vs fp32", "error:")))
    r_value = float(line.split(": Pearson r ")[1].split(",")[0])
    assert (r.exit_code == 0 and r_value >= 0.99 and out.is_file()) or (r.exit_code == 3 and not out.exists()), \
        r.output
    strict = CliRunner().invoke(cli, ["quantize", str(reg_run / "student.onnx"), "--calib-data", TINY_REG_DATA,
                                      "--target", "cpu", "--no-search", "--min-pearson", "1.0", "--num-calib", "32",
                                      "--num-holdout", "32", "--allow-small-holdout", "--out", str(tmp_path / "strict.onnx")])
    assert strict.exit_code == 3 and "--min-pearson" in strict.output.strip().splitlines()[-1]
    assert not (tmp_path / "strict.onnx").exists()
    dice = CliRunner().invoke(cli, ["quantize", str(reg_run / "student.onnx"), "--calib-data", TINY_REG_DATA,
                                    "--min-dice", "0.5", "--out", str(tmp_path / "d.onnx")])
    assert dice.exit_code == 1 and "--min-dice gates segmentation models" in dice.output


def test_bench_gates_the_mae_increase_and_reports_the_scores(reg_run, tmp_path):
    args = ["bench", f"teacher={reg_run}?name=teacher", f"fp32={reg_run / 'student.onnx'}", "--data", TINY_REG_DATA,
            "--iterations", "3", "--warmup", "1", "--threads", "1"]
    r = CliRunner().invoke(cli, [*args, "--max-mae-increase", "100", "--out", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    fp32 = next(a for a in report["artifacts"] if a["name"] == "fp32")
    d = fp32["parity"]["deltas"]["mae"]
    gate = next(g for g in report["gates"] if g["gate"] == "max_mae_increase")
    assert gate["value"] == pytest.approx(d["ci_high"]) and gate["passed"]
    assert fp32["metrics"]["mae_ci"][0] <= fp32["metrics"]["mae"] <= fp32["metrics"]["mae_ci"][1]
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| MAE [95% CI] | RMSE | Pearson r | ΔMAE vs ref [95% CI]" in md and "Per-target MAE / Pearson r" in md
    # An increase the student cannot stay under fails; a classifier's margin is refused on regression data.
    r = CliRunner().invoke(cli, [*args, "--max-mae-increase", "-100"])
    assert r.exit_code == 3 and "max_mae_increase[fp32]" in r.output.strip().splitlines()[-1]
    r = CliRunner().invoke(cli, [*args, "--max-auc-drop", "1"])
    assert r.exit_code == 2 and "--max-auc-drop judges classifiers, but" in r.output and "--max-mae-increase" in r.output


def test_predict_writes_the_value(reg_run, tmp_path):
    from PIL import Image

    from medfm_compress.data import load_data

    test = load_data(TINY_REG_DATA).split("test")
    for i in range(3):
        Image.fromarray(test.images[i]).save(tmp_path / f"c{i}.png")
    r = CliRunner().invoke(cli, ["predict", str(reg_run / "student.onnx"), str(tmp_path / "c0.png"),
                                 str(tmp_path / "c1.png"), str(tmp_path / "c2.png"), "--out", str(tmp_path / "p")])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(open(tmp_path / "p" / "predictions.csv")))
    assert list(rows[0]) == ["file", "lesion_area_pct", "error"]
    doc = json.loads((tmp_path / "p" / "predictions.json").read_text())
    assert doc["task"] == "regression"
    assert [c["values"]["lesion_area_pct"] for c in doc["cases"]] == [float(r["lesion_area_pct"]) for r in rows]


def test_regression_metrics_and_bootstrap():
    t = get_task("regression")
    y = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert t.scores(y + 0.5, y) == pytest.approx({"mae": 0.5, "rmse": 0.5, "pearson_r": 1.0})
    same = t.label_deltas(y[:, None], y[:, None], y, None, 200, 0)
    assert same["mae"]["delta"] == 0.0 and same["mae"]["ci_low"] == same["mae"]["ci_high"] == 0.0
    worse = t.label_deltas(y[:, None], (y + 1)[:, None], y, None, 200, 0)
    assert worse["mae"]["delta"] == pytest.approx(1.0) and worse["pearson_r"]["delta"] == pytest.approx(0.0)
    # Quintile strata keep the spread of values in a label fraction.
    assert sorted(set(t.strata(np.arange(100.0)).tolist())) == [0, 1, 2, 3, 4]


def test_a_folder_with_a_value_column_is_a_regression_task(tmp_path):
    from PIL import Image

    from medfm_compress.data import load_data

    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    rows = ["file,value,group"]
    for i in range(40):
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
        rows.append(f"imgs/{i}.png,{-10 + i * 0.5},p{i // 2}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    task = load_data(f"folder:{tmp_path}")
    assert task.task == "regression" and task.label_names == ["value"]
    values = np.concatenate([task.splits[s].labels for s in ("train", "val", "test")])
    assert values.dtype == np.float32 and sorted(values.tolist()) == [-10 + i * 0.5 for i in range(40)]
    (tmp_path / "labels.csv").write_text("file,value\nimgs/0.png,12\nimgs/1.png,twelve\n")
    with pytest.raises(DataError, match="line 3: value 'twelve' of imgs/1.png is not a number"):
        load_data(f"folder:{tmp_path}")


def test_a_medmnist_archive_with_values(tmp_path):
    from medfm_compress.data import load_data

    rng = np.random.default_rng(0)
    arrays = {f"{s}_images": rng.integers(0, 255, (n, 8, 8), dtype=np.uint8) for s, n in (("train", 30), ("test", 10))}
    arrays |= {"train_values": rng.normal(size=30), "test_values": rng.normal(size=10),
               "label_names": np.array(["ef_percent"])}
    np.savez(tmp_path / "r.npz", **arrays)
    task = load_data(f"medmnist:{tmp_path / 'r.npz'}")
    assert task.task == "regression" and task.label_names == ["ef_percent"] and "val" in task.splits
    arrays["test_values"] = np.array([np.nan] + [0.0] * 9)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match="test_values has NaN/Inf"):
        load_data(f"medmnist:{tmp_path / 'bad.npz'}")


def test_flags_that_do_not_apply_to_regression_are_refused(tmp_path):
    from medfm_compress.compress.distill import DistillConfig, distill

    with pytest.raises(ConfigError, match="--temperature does not apply"):
        distill(DistillConfig.from_options(data=TINY_REG_DATA, out=str(tmp_path / "r"), temperature=2.0, teacher_epochs=1,
                              progress=False))
    assert not (tmp_path / "r").exists()
