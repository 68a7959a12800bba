"""Export and quantize segmentation students: dense ONNX with its metadata, parity judged by Dice of the masks."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from support.tiny import TINY_SEG_DATA

from medfm_compress.cli import cli

pytest.importorskip("torch")
pytest.importorskip("segmentation_models_pytorch")
pytest.importorskip("monai")
onnx = pytest.importorskip("onnx")

SEG = TINY_SEG_DATA


@pytest.fixture(scope="module")
def seg_onnx(seg_run):
    return seg_run / "student.onnx"


def test_export_cli_reports_the_masks_agreement(seg_run, tmp_path):
    r = CliRunner().invoke(cli, ["export", str(seg_run), "--out", str(tmp_path / "s.onnx")])
    assert r.exit_code == 0, r.output
    assert "mask agreement on the real images 1.000000" in r.output


def test_export_writes_a_dense_model_with_its_postprocessing(seg_onnx):
    from medfm_compress.runtime import Engine

    proto = onnx.load(seg_onnx)
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["medfm.task"] == "segmentation" and props["medfm.postprocess"] == "softmax-argmax"
    assert json.loads(props["medfm.label_names"])[0] == "background"
    eng = Engine.load(str(seg_onnx))
    try:
        out = eng.run(np.zeros((3, 1, 32, 32), np.float32))
    finally:
        eng.close()
    assert out.shape == (3, 6, 32, 32)


@pytest.mark.parametrize("target", ["cpu", "openvino"])
def test_int8_segmentation_model_is_judged_by_its_dice(seg_onnx, tmp_path, target):
    if target == "openvino":
        pytest.importorskip("openvino")
        pytest.importorskip("nncf")
    out = tmp_path / ("m.onnx" if target == "cpu" else "m.xml")
    # A 0.02 M-parameter net trained for seconds on 32x32 images: its rare classes cover a few pixels, where one
    # flipped pixel moves their Dice a lot (a fresh-clone CI run on an AVX512-VNNI CPU trained a student whose int8
    # masks lost a class of a few pixels: mean Dice 0.49 at pixel agreement 0.988; here 0.994). Whichever model
    # training gives, the gate must judge it by the Dice it reports: shipped at >= 0.5, refused below with that
    # Dice named and nothing written.
    r = CliRunner().invoke(cli, ["quantize", str(seg_onnx), "--calib-data", SEG, "--target", target, "--no-search",
                                 "--min-dice", "0.5", "--min-agreement", "0.9", "--num-calib", "32",
                                 "--num-holdout", "32", "--allow-small-holdout", "--out", str(out)])
    assert "segmentation model: parity gate is mean Dice vs fp32's masks >= 0.5, pixel agreement >= 0.9" in r.output
    if r.exit_code == 0:
        line = next(ln for ln in r.output.splitlines() if ln.startswith("held-out parity vs fp32"))
        dice = float(line.split("mean Dice ")[1].split()[0].rstrip(","))
        assert 0.5 <= dice <= 1.0 and out.is_file()
    else:
        assert r.exit_code == 3, r.output
        err = r.output.strip().splitlines()[-1]
        dice = float(err.split("held-out images: mean Dice ")[1].split(",")[0])
        agreement = float(err.split("pixel agreement ")[-1].split(",")[0])
        assert (dice < 0.5 or agreement < 0.9) and not out.exists(), err


def test_a_missed_dice_gate_names_the_dice_and_writes_nothing(seg_onnx, tmp_path):
    out = tmp_path / "m.onnx"
    r = CliRunner().invoke(cli, ["quantize", str(seg_onnx), "--calib-data", SEG, "--target", "cpu", "--no-search",
                                 "--num-calib", "32", "--num-holdout", "32", "--allow-small-holdout", "--min-dice", "1.0",
                                 "--min-agreement", "1.0", "--out", str(out)])
    assert r.exit_code == 3, r.output
    err = r.output.strip().splitlines()[-1]
    assert "fails the parity gate (mean Dice vs fp32's masks >= 1.0, pixel agreement >= 1.0)" in err
    assert "held-out images: mean Dice 0." in err and "--min-dice" in err and not out.exists()


def test_min_dice_on_a_classifier_is_refused(tmp_path):
    from support.onnx_fixtures import tiny_onnx

    model = tiny_onnx(tmp_path / "c.onnx")
    r = CliRunner().invoke(cli, ["quantize", str(model), "--calib-data", "synthetic?size=32&n_train=64&n_val=8&n_test=16",
                                 "--target", "cpu", "--min-dice", "0.95", "--out", str(tmp_path / "q.onnx")])
    assert r.exit_code == 1 and "--min-dice gates segmentation models" in r.output


def test_auto_precision_judges_candidates_by_dice(seg_onnx, tmp_path, monkeypatch):
    """--precision auto on a dense model: every candidate row carries its mean Dice vs fp32's masks, the gate is the
    Dice gate (a Dice below --min-dice fails however many pixels agree), and the pick passes it."""
    from medfm_compress.compress import auto_precision
    from medfm_compress.compress.quantize import QuantizeConfig, quantize

    monkeypatch.setattr(auto_precision, "AUTO_CANDIDATE_PROVIDERS", [])  # the ONNX Runtime candidates only
    res = quantize(QuantizeConfig.from_options(input=str(seg_onnx), out=str(tmp_path / "a.onnx"), calib_data=SEG, precision="auto",
                                  min_dice=0.9, min_agreement=0.5, num_calib=32, num_holdout=32, allow_small_holdout=True, latency_runs=5,
                                  progress=False))
    table = {r["precision"]: r for r in res.report["auto_table"]}
    assert table["fp32"]["mean_dice"] == 1.0
    built = [r for r in table.values() if "latency_ms" in r]
    assert len(built) >= 3 and all(0.0 <= r["mean_dice"] <= 1.0 for r in built)
    for r in built:
        assert r["passes"] == (r["mean_dice"] >= 0.9 and r["top1_agreement"] >= 0.5), r
    chosen = next(r for r in built if r["chosen"])
    assert chosen["passes"] and res.precision == chosen["precision"]
    assert "mean Dice vs fp32's masks >= 0.9" in res.report["auto_reason"]
