import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from support.tiny import (
    TINY_DATA,
    TINY_SEG_DATA,
    TINY_SEG_STUDENT,
    TINY_SEG_TEACHER,
    TINY_STUDENT,
    TINY_TEACHER,
)

from medfm_compress.cli import cli
from medfm_compress.errors import ConfigError
from medfm_compress.pipeline import RECIPE_DIR as RECIPES
from medfm_compress.pipeline import demo_recipe, load_recipe, resolve_recipe, run_pipeline

DEMO_RECIPE = demo_recipe("classification")
DEMO_SEG_RECIPE = demo_recipe("segmentation")
FAST_BENCH = {"iterations": 5, "warmup": 1, "n_resamples": 100}


def _tiny_recipe(out, **over):
    raw = {
        "version": 1, "name": "tiny", "out": str(out), "data": TINY_DATA,
        "distill": {"teacher": TINY_TEACHER, "student": TINY_STUDENT, "teacher_epochs": 1, "epochs": 1,
                    "batch_size": 32, "baseline": True, "augment": False},
        "export": {"num_check": 8},
        "quantize": [{"name": "int8", "target": "cpu", "precision": "int8", "num_calib": 32, "num_holdout": 32, "allow_small_holdout": True,
                      "min_agreement": 0.0}],
        "tensorrt": [{"name": "trt-fp32", "source": "fp32", "precision": "fp32", "batch_sizes": [1, 4]}],
        "bench": {"reference": "teacher", **FAST_BENCH, "max_size_mb": 100.0},
    }
    raw.update(over)
    return raw


@pytest.mark.slow
def test_recipe_runs_caches_and_reruns_from_a_stage(tmp_path):
    pytest.importorskip("tensorrt_rtx")
    rec = resolve_recipe(_tiny_recipe(tmp_path / "run"))
    r1 = run_pipeline(rec, progress=False)
    assert r1.ran == ["distill", "export", "quantize:int8", "tensorrt:trt-fp32", "bench"] and not r1.cached
    run = tmp_path / "run"
    for name in ("student.onnx", "student.int8.onnx", "student.trt-fp32.engine", "manifest.json", "pipeline.json"):
        assert (run / name).is_file(), name
    report = r1.report
    names = {a["name"] for a in report["artifacts"]}
    assert {"teacher", "baseline", "student-fp32", "student-int8"} <= names
    assert set(r1.report_files) == {"report.json", "report.md", "junit.xml", "pareto.png"}
    r2 = run_pipeline(rec, progress=False)
    assert r2.ran == [] and r2.cached == r1.ran
    r3 = run_pipeline(rec, from_stage="quantize", progress=False)
    assert r3.cached == ["distill", "export"] and r3.ran == ["quantize:int8", "tensorrt:trt-fp32", "bench"]
    # A changed input invalidates the stages that read it, and only those.
    with open(run / "student.int8.onnx", "ab") as fh:
        fh.write(b"\0")
    r4 = run_pipeline(rec, progress=False)
    assert "quantize:int8" in r4.ran and "export" in r4.cached


@pytest.mark.slow
def test_print_config_reproduces_the_run(tmp_path):
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(yaml.safe_dump(_tiny_recipe(tmp_path / "run", tensorrt=[], quantize=[])))
    r = CliRunner().invoke(cli, ["run", str(recipe_file), "--print-config"])
    assert r.exit_code == 0, r.output
    printed = tmp_path / "printed.yaml"
    printed.write_text(r.stdout)
    assert load_recipe(printed) == load_recipe(recipe_file)
    # The recipe's one gate (max_size_mb 100) holds for these ~1.3 MB models: exit 0 (3 is a regression).
    r = CliRunner().invoke(cli, ["run", str(printed), "--quiet"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["run", str(recipe_file), "--quiet"])
    assert r.exit_code == 0 and "cached: distill, export, bench" in r.output, r.output


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r.update(distil={}), "did you mean 'distill'"),
        (lambda r: r["distill"].update(epoch=3), "did you mean 'epochs'"),
        (lambda r: r["quantize"][0].update(precison="int8"), "did you mean 'precision'"),
        (lambda r: r["bench"].update(max_auc_drp=1), "did you mean 'max_auc_drop'"),
        (lambda r: r["distill"].update(epochs="ten"), "must be an integer"),
        (lambda r: r["distill"].update(out="x"), "set by the pipeline"),
        (lambda r: r["tensorrt"][0].update(source="nope"), "neither 'fp32' nor a quantize variant"),
        (lambda r: r.update(version=7), "version"),
        (lambda r: r["quantize"][0].update(format="any"), "format chooses the engines of a target: cpu, precision: "
                                                          "auto variant; target cpu with precision int8 writes .onnx"),
        (lambda r: r["quantize"][0].update(precision="auto", format="tflite"), "format must be one of onnx, openvino, "
                                                                                "any"),
        (lambda r: (r["quantize"][0].update(precision="auto", format="any"),
                    r["tensorrt"][0].update(source="int8")), "is \\(or may be\\) an OpenVINO IR"),
    ],
)
def test_recipe_errors_name_the_key(tmp_path, mutate, message):
    raw = _tiny_recipe(tmp_path)
    mutate(raw)
    with pytest.raises(ConfigError, match=message):
        resolve_recipe(raw)


def test_bad_yaml_and_unknown_stage(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("distill: [unclosed")
    r = CliRunner().invoke(cli, ["run", str(bad)])
    assert r.exit_code == 1 and "not valid YAML" in r.stderr
    bad.write_text("!!python/object/apply:os.system ['touch PWNED']\n")
    r = CliRunner().invoke(cli, ["run", str(bad)])
    assert r.exit_code == 1 and not os.path.exists("PWNED")
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(_tiny_recipe(tmp_path / "run", tensorrt=[], quantize=[])))
    r = CliRunner().invoke(cli, ["run", str(good), "--from", "quantise"])
    assert r.exit_code == 1 and "not a stage" in r.stderr


def test_the_demo_runs_its_shipped_recipe():
    resolve_recipe(DEMO_RECIPE)
    demo = CliRunner().invoke(cli, ["demo", "--print-config"])
    by_name = CliRunner().invoke(cli, ["run", "demo", "--print-config"])
    assert demo.exit_code == by_name.exit_code == 0 and demo.output == by_name.output
    # The demo shows distillation where it pays: scarce labels, against a label-only baseline of the same steps.
    assert DEMO_RECIPE["distill"]["label_fraction"] < 1.0 and DEMO_RECIPE["distill"]["baseline"]


def _demo_report(gain_ci, passed=True):
    def lat(ms):
        return {"1": {"engine": {"p50_ms": ms}}}

    return {
        "reference": "teacher", "passed": passed, "data": {"task": "multiclass"}, "config": {"gate_on": ["student-int8"]},
        "gates": [{"name": "min_speedup[student-int8]", "passed": passed}],
        "artifacts": [
            {"name": "teacher", "backend": "torch", "precision": "fp32", "size_bytes": 44.7e6, "latency": lat(20.0)},
            {"name": "student-int8", "backend": "onnxruntime", "precision": "int8", "threads": 1, "size_bytes": 0.76e6,
             "latency": lat(0.25), "parity": {"deltas": {"macro_auc": {"delta": -0.002, "ci_low": -0.006,
                                                                       "ci_high": 0.001}}}},
        ],
        "training": {"label_fraction": 0.1, "teacher": {"macro_auc": 0.983}, "student": {"macro_auc": 0.983},
                     "baseline": {"macro_auc": 0.898}, "distill_gain_auc": 0.085, "distill_gain_auc_ci": gain_ci},
    }


def test_demo_summary_states_the_gain_and_the_cost_with_their_cis():
    from medfm_compress.pipeline import demo_summary

    text = "\n".join(demo_summary(_demo_report([0.071, 0.103])))
    assert "10% of the training labels" in text
    assert "distilled minus label-only: +0.0850, paired 95% CI [+0.0710, +0.1030]: distillation pays" in text
    assert "80x faster at batch 1" in text and "drop 0.20 points (95% CI upper bound of the drop 0.60)" in text
    assert "gates: all passed" in text
    assert "no significant difference" in "\n".join(demo_summary(_demo_report([-0.01, 0.02])))
    assert "distillation loses" in "\n".join(demo_summary(_demo_report([-0.03, -0.01], passed=False)))
    assert demo_summary(None) == [] and demo_summary({"artifacts": []}) == []
    # Without a baseline: the student against its teacher, and how to get the gain.
    no_baseline = _demo_report([0.071, 0.103])
    for k in ("baseline", "distill_gain_auc", "distill_gain_auc_ci"):
        del no_baseline["training"][k]
    no_baseline["artifacts"][1]["parity"]["deltas"]["macro_auc"].update(delta=0.004, ci_low=-0.002)
    text = "\n".join(demo_summary(no_baseline))
    assert "macro AUC +0.40 points (higher) (95% CI upper bound of the drop 0.20)" in text
    assert "distilled minus label-only" not in text
    assert ("10% of the training labels: distilled student macro AUC 0.9830, teacher 0.9830 (no label-only "
            "baseline: distill's --baseline adds one)") in text and "80x faster at batch 1" in text


def test_demo_print_config_shows_the_scarce_label_recipe():
    r = CliRunner().invoke(cli, ["demo", "--print-config"])
    assert r.exit_code == 0, r.output
    printed = yaml.safe_load(r.output)
    assert printed["distill"]["label_fraction"] == DEMO_RECIPE["distill"]["label_fraction"]
    assert printed["distill"]["epochs"] == DEMO_RECIPE["distill"]["epochs"]


def _shrink(raw, out, data, teacher_weights):
    raw["out"] = str(out)
    raw["data"] = data
    raw["distill"].update(teacher=TINY_TEACHER, teacher_weights=str(teacher_weights), student=TINY_STUDENT, epochs=1,
                          batch_size=8)
    raw["bench"].update(FAST_BENCH)
    raw["bench"].pop("min_speedup", None)
    for q in raw.get("quantize", []):
        q.update(num_calib=16, num_holdout=16, allow_small_holdout=True, min_agreement=0.0)
        if q["precision"] == "auto":
            q.update(latency_runs=3)
    return raw


def _teacher(path, num_classes):
    from medfm_compress.models import create_model, save_state_dict

    save_state_dict(create_model(TINY_TEACHER, num_classes, 1), path)


@pytest.mark.slow
def test_medmnist_example_recipe_on_small_data(tmp_path):
    pytest.importorskip("tensorrt_rtx")
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, (60, 32, 32), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", train_images=imgs[:40], train_labels=(np.arange(40) % 2)[:, None],
             val_images=imgs[40:44], val_labels=(np.arange(4) % 2)[:, None],
             test_images=imgs[44:], test_labels=(np.arange(16) % 2)[:, None])
    _teacher(tmp_path / "t.safetensors", 2)
    raw = _shrink(yaml.safe_load((RECIPES / "pneumonia-medmnist.yaml").read_text()), tmp_path / "run",
                  f"medmnist:{tmp_path / 'd.npz'}", tmp_path / "t.safetensors")
    res = run_pipeline(resolve_recipe(raw), progress=False)
    assert "bench" in res.ran and (tmp_path / "run" / "student.trt-int8.engine").is_file()


@pytest.mark.slow
def test_dicom_example_recipe_on_small_data(tmp_path):
    pytest.importorskip("tensorrt_rtx")
    import pydicom

    ct = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
    if not ct.exists():
        pytest.skip("pydicom's CT_small.dcm is not shipped with this pydicom")
    d = tmp_path / "dcm"
    d.mkdir()
    rows = ["file,label,split"]
    ds = pydicom.dcmread(ct)
    base = ds.pixel_array
    for i in range(24):
        # Distinct images (the real CT shifted): held-out images that repeat a calibration image are not a test.
        ds.PixelData = np.roll(base, 3 * i, axis=1).astype(base.dtype).tobytes()
        ds.save_as(d / f"s{i}.dcm")
        rows.append(f"s{i}.dcm,{i % 2},{'train' if i < 16 else 'test'}")
    (d / "labels.csv").write_text("\n".join(rows))
    _teacher(tmp_path / "t.safetensors", 2)
    raw = _shrink(yaml.safe_load((RECIPES / "chest-dicom.yaml").read_text()), tmp_path / "run",
                  f"dicom:{d}?size=32", tmp_path / "t.safetensors")
    res = run_pipeline(resolve_recipe(raw), progress=False)
    assert "bench" in res.ran and res.report is not None


@pytest.mark.slow
def test_adapt_and_distill_recipe_on_small_data(tmp_path):
    """The recipe's chain with a foreign-named checkpoint mapped in order and adapted inline to the labels."""
    import torch

    from medfm_compress.models import create_model

    torch.manual_seed(0)
    sd = create_model(TINY_TEACHER, 10, 1).state_dict()
    torch.save({f"net{i}.{k.replace('.', '_')}": v for i, (k, v) in enumerate(sd.items())}, tmp_path / "t.pt")
    raw = _shrink(yaml.safe_load((RECIPES / "adapt-and-distill.yaml").read_text()), tmp_path / "run", TINY_DATA,
                  tmp_path / "t.pt")
    assert raw["distill"]["weights_key_map"] == "order" and raw["distill"]["teacher_adapt"] == "linear"
    res = run_pipeline(resolve_recipe(raw), progress=False)
    assert "bench" in res.ran and res.report is not None
    teacher = json.loads((tmp_path / "run" / "teacher.json").read_text())
    assert teacher["num_classes"] == 4 and "adapted" in teacher["provenance"]["source"]
    assert (tmp_path / "run" / "splits.csv").is_file()
    md = (tmp_path / "run" / "report" / "report.md").read_text()
    assert "How the student was trained" in md and "Distilled minus label-only macro AUC" in md


@pytest.mark.slow
def test_vit_foundation_recipe_on_small_data(tmp_path):
    """The recipe's chain (pretrained weights adapted inline, teacher outputs cached for two views) with a tiny
    teacher in its place; the CLIP tower's own loading is covered in tests/models."""
    from medfm_compress.models import create_model, save_state_dict

    save_state_dict(create_model(TINY_TEACHER, 10, 1), tmp_path / "t.safetensors")
    raw = _shrink(yaml.safe_load((RECIPES / "vit-foundation.yaml").read_text()), tmp_path / "run", TINY_DATA,
                  tmp_path / "t.safetensors")
    raw["distill"].update(epochs=3, augment=True, cache=str(tmp_path / "cache"))
    assert raw["distill"]["teacher_views"] == 2 and raw["distill"]["teacher_adapt"] == "linear"
    res = run_pipeline(resolve_recipe(raw), progress=False)
    assert "bench" in res.ran and res.report is not None
    log = (tmp_path / "run" / "train.log").read_text()
    assert "of 2 view(s) x 192 images" in log


@pytest.mark.slow
def test_demo_command_ends_with_the_gain_and_the_cost(tmp_path, monkeypatch):
    """`demo` through the CLI on a shrunk copy of its recipe: the report and the console state what distillation
    bought at the demo's label fraction and what the shipped INT8 student costs against the teacher."""
    pytest.importorskip("tensorrt_rtx")
    import copy

    from medfm_compress import pipeline

    raw = copy.deepcopy(DEMO_RECIPE)
    raw["data"] = TINY_DATA
    raw["distill"].update(teacher=TINY_TEACHER, teacher_epochs=1, student=TINY_STUDENT, epochs=1, batch_size=8)
    raw["bench"].update(FAST_BENCH, min_speedup=0.0, max_auc_drop=100.0)
    for q in raw["quantize"]:
        q.update(num_calib=16, num_holdout=16, allow_small_holdout=True, min_agreement=0.0)
    monkeypatch.setattr(pipeline, "demo_recipe", lambda task: raw)
    r = CliRunner().invoke(cli, ["demo", "--quiet", "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    tail = r.output[r.output.index("Demo summary"):]
    assert f"{100 * DEMO_RECIPE['distill']['label_fraction']:g}% of the training labels" in tail
    assert "distilled minus label-only:" in tail and "paired 95% CI [" in tail
    assert "student-int8 (onnxruntime int8) vs teacher (torch fp32):" in tail and "x faster at batch 1" in tail
    assert "95% CI upper bound" in tail and "gates: all passed" in tail
    md = (tmp_path / "run" / "report" / "report.md").read_text()
    assert "Labelled fraction of the training split: 0.1" in md and "Distilled minus label-only macro AUC" in md


def test_the_segmentation_demo_runs_its_shipped_recipe():
    rec = resolve_recipe(DEMO_SEG_RECIPE)
    assert rec.data.startswith("synthetic?task=segmentation") and DEMO_SEG_RECIPE["distill"]["label_fraction"] < 1.0
    r = CliRunner().invoke(cli, ["demo", "--task", "segmentation", "--print-config"])
    assert r.exit_code == 0 and yaml.safe_load(r.output)["bench"]["max_dice_drop"] == 1.0


@pytest.mark.slow
def test_segmentation_demo_runs_the_chain_and_ends_with_dice(tmp_path, monkeypatch):
    """`demo --task segmentation` on a shrunk copy of its recipe: masks through distill, export, quantize and bench,
    the report in Dice, and the summary's gain in Dice points with its CI."""
    import copy

    from medfm_compress import pipeline

    raw = copy.deepcopy(DEMO_SEG_RECIPE)
    raw["data"] = TINY_SEG_DATA
    # With the baseline the demo's own recipe leaves out for time: the gain's lines in Dice points.
    raw["distill"].update(teacher=TINY_SEG_TEACHER, teacher_epochs=2, student=TINY_SEG_STUDENT, epochs=2,
                          batch_size=16, baseline=True)
    raw["bench"].update(FAST_BENCH, min_speedup=0.0, max_dice_drop=100.0)
    for q in raw["quantize"]:
        q.update(num_calib=16, num_holdout=16, allow_small_holdout=True, min_agreement=0.0, min_dice=0.0)
    monkeypatch.setattr(pipeline, "demo_recipe", lambda task: raw)
    r = CliRunner().invoke(cli, ["demo", "--task", "segmentation", "--quiet", "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    tail = r.output[r.output.index("Demo summary"):]
    assert "10% of the training masks: distilled student mean Dice" in tail
    assert "distilled minus label-only:" in tail and " points, paired 95% CI [" in tail
    assert "student-int8 (onnxruntime int8) vs teacher (torch fp32):" in tail and "95% CI upper bound of the drop" in tail
    md = (tmp_path / "run" / "report" / "report.md").read_text()
    assert "mean Dice [95% CI]" in md and "Distilled minus label-only mean Dice:" in md
    assert "Labelled fraction of the training split (masks): 0.1" in md


def test_the_segmentation_3d_demo_runs_its_shipped_recipe():
    assert resolve_recipe(demo_recipe("segmentation-3d")).data.startswith("synthetic3d")
    r = CliRunner().invoke(cli, ["demo", "--task", "segmentation-3d", "--print-config"])
    assert r.exit_code == 0 and yaml.safe_load(r.output)["bench"]["sw_batch_size"] == 4


@pytest.mark.slow
def test_segmentation_3d_demo_runs_the_chain_on_volumes(tmp_path, monkeypatch):
    """`demo --task segmentation-3d` on a shrunk copy of its recipe: patches through distill, a 5-D export, INT8
    quantization gated on held-out patches, and bench scoring whole volumes by sliding windows, with the time per
    volume end to end."""
    import copy

    from medfm_compress import pipeline

    monkeypatch.setenv("MEDFM_CACHE_DIR", str(tmp_path / "cache"))
    raw = copy.deepcopy(demo_recipe("segmentation-3d"))
    raw["data"] = "synthetic3d?n_train=4&n_val=1&n_test=2&shape=32,32,24&patch=16,16,16&per_case=4"
    raw["distill"].update(teacher="monai:UNet?channels=12,24,48&strides=2,2&num_res_units=1&norm=batch",
                          student="monai:UNet?channels=4,8,16&strides=2,2&num_res_units=0&norm=batch",
                          teacher_epochs=1, epochs=1)
    raw["bench"].update(FAST_BENCH, min_speedup=0.0, max_dice_drop=100.0)
    for q in raw["quantize"]:
        q.update(num_calib=8, num_holdout=8, allow_small_holdout=True, min_agreement=0.0, min_dice=0.0)
    monkeypatch.setattr(pipeline, "demo_recipe", lambda task: raw)
    # format: any writes the winner as .onnx or .xml; files of either kind left by an earlier run must not survive
    # beside it (they would be taken for the variant's model).
    run = tmp_path / "run"
    run.mkdir()
    for name in ("student.auto.onnx", "student.auto.xml", "student.auto.bin"):
        (run / name).write_bytes(b"stale")
    r = CliRunner().invoke(cli, ["demo", "--task", "segmentation-3d", "--quiet", "--out", str(run)])
    assert r.exit_code == 0, r.output
    written = sorted(p.name for p in run.glob("student.auto.*"))
    assert written in (["student.auto.onnx"], ["student.auto.bin", "student.auto.xml"]), written
    assert all((run / n).read_bytes() != b"stale" for n in written)
    engine = "openvino" if written[-1].endswith(".xml") else "onnxruntime"
    from medfm_compress.runtime.onnx_loader import read_meta

    shipped = read_meta(run / written[-1])
    if shipped.precision == "bf16":  # CPUs with bf16: the IR's ConvTransposes were made sub-pixel convolutions
        import onnx

        n_up = sum(nd.op_type == "ConvTranspose" for nd in onnx.load(str(run / "student.onnx")).graph.node)
        assert n_up > 0
        assert shipped.provenance["quantization"]["graph_rewrites"] == {"conv_transpose_as_subpixel_conv": n_up}
    tail = r.output[r.output.index("Demo summary"):]
    assert f"student-auto ({engine} " in tail and "vs teacher (torch fp32):" in tail
    assert "a whole volume end to end (read, resample, sliding window, mask written)" in tail
    md = (tmp_path / "run" / "report" / "report.md").read_text()
    assert "End-to-end per volume" in md and "HD95 mm" in md
    report = json.loads((tmp_path / "run" / "report" / "report.json").read_text())
    assert report["data"]["volumes"] and report["data"]["case_shapes"] == [[32, 32, 24]] * 2
