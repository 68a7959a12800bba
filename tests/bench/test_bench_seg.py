"""bench on segmentation artifacts: Dice and HD95 against the ground truth, Dice deltas with paired CIs, a
non-inferiority gate in Dice points, the report's segmentation tables and JUnit rows."""

import json

import pytest
from click.testing import CliRunner
from support.tiny import TINY_DATA, TINY_SEG_DATA

from medfm_compress.cli import cli

pytest.importorskip("torch")
pytest.importorskip("segmentation_models_pytorch")
pytest.importorskip("monai")

FAST = ["--iterations", "10", "--warmup", "2", "--bootstrap", "200"]


def test_segmentation_bench_scores_dice_and_gates_on_its_drop(seg_run, tmp_path):
    out = tmp_path / "report"
    args = ["bench", f"teacher={seg_run}?name=teacher", f"fp32={seg_run / 'student.onnx'}",
            f"baseline={seg_run}?name=baseline", "--data", TINY_SEG_DATA, *FAST, "--max-dice-drop", "100",
            "--min-agreement", "0.0", "--gate-on", "fp32,baseline", "--out", str(out)]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["task"] == "segmentation"
    metrics = json.loads((seg_run / "metrics.json").read_text())
    by = {a["name"]: a for a in report["artifacts"]}
    # The ONNX student scores what distill measured for it in torch.
    assert by["fp32"]["metrics"]["mean_dice"] == pytest.approx(metrics["student"]["mean_dice"], abs=1e-6)
    assert by["teacher"]["metrics"]["mean_dice"] == pytest.approx(metrics["teacher"]["mean_dice"], abs=1e-6)
    d = by["fp32"]["parity"]["deltas"]["mean_dice"]
    assert d["ci_low"] <= d["delta"] <= d["ci_high"]
    assert d["delta"] == pytest.approx(by["fp32"]["metrics"]["mean_dice"] - by["teacher"]["metrics"]["mean_dice"])
    lo, hi = by["fp32"]["metrics"]["mean_dice_ci"]
    assert lo <= by["fp32"]["metrics"]["mean_dice"] <= hi
    assert [c["label"] for c in by["fp32"]["metrics"]["per_class"]] == ["lung", "heart", "nodule", "consolidation",
                                                                        "effusion"]
    gates = {g["name"]: g for g in report["gates"]}
    assert gates["max_dice_drop[fp32]"]["value"] == pytest.approx(-100 * d["ci_low"])
    md = (out / "report.md").read_text()
    assert "| artifact | backend | precision | mean Dice [95% CI] |" in md and "## Per-class Dice / HD95" in md
    assert "label map at the image's size" in md
    junit = (out / "junit.xml").read_text()
    assert 'name="max_dice_drop[fp32]"' in junit


def test_an_impossible_dice_margin_fails_the_gate(seg_run, tmp_path):
    r = CliRunner().invoke(cli, ["bench", f"teacher={seg_run}?name=teacher", f"fp32={seg_run / 'student.onnx'}",
                                 "--data", TINY_SEG_DATA, *FAST, "--max-dice-drop", "0.0001"])
    # The tiny student is far below its teacher: the upper bound of its Dice drop is well above 0.0001 points.
    assert r.exit_code == 3 and "max_dice_drop[fp32]" in r.output.strip().splitlines()[-1]


@pytest.mark.parametrize("data, flag, match", [
    (TINY_SEG_DATA, "--max-auc-drop", "--max-auc-drop judges classifiers, but .* is a segmentation task: use "
                                      "--max-dice-drop"),
    (TINY_DATA, "--max-dice-drop", "--max-dice-drop judges segmentation models, but .* is a multiclass task"),
])
def test_the_wrong_kind_of_margin_is_a_usage_error(seg_run, tiny_run, data, flag, match):
    import re

    model = seg_run / "student.onnx" if data == TINY_SEG_DATA else f"{tiny_run}?name=student"
    r = CliRunner().invoke(cli, ["bench", f"ref={tiny_run}?name=teacher" if data == TINY_DATA else
                                 f"ref={seg_run}?name=teacher", f"m={model}", "--data", data, *FAST, flag, "1.0"])
    assert r.exit_code == 2 and re.search(match, r.output), r.output


def test_a_segmentation_model_on_classification_data_is_one_line(seg_run, tmp_path):
    r = CliRunner().invoke(cli, ["bench", f"m={seg_run / 'student.onnx'}", "--data", TINY_DATA, *FAST, "--quiet"])
    assert r.exit_code == 1
    assert "artifact 'm' is a segmentation model but the data is a multiclass task" in r.output
    assert len(r.output.strip().splitlines()) == 1
