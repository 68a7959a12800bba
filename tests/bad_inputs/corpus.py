"""The bad-input corpus: every case is generated here (no committed binaries).

Each case names a command line and a ``make(dir)`` that writes the broken input files into ``dir``. The test
(``tests/bad_inputs/test_bad_inputs.py``) materialises each case in a fresh directory, runs the command and
requires: exit status 1 (2 for click usage errors), exactly one line on stderr naming the problem, no
traceback, and no output file left behind.

Run ``PYTHONPATH=tests python tests/bad_inputs/corpus.py --out DIR`` to write the corpus to DIR for manual inspection
(tests/ on the path for the shared ``support`` helpers, as pytest's ``pythonpath`` setting does for the test).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TINY = "synthetic?size=32&n_train=64&n_val=16&n_test=32&seed=3"
W16 = "timm:medfm_resnet10_w16"


@dataclass
class Case:
    name: str
    args: list[str]  # "{d}" is replaced by the case directory
    make: Callable[[Path], None] = lambda d: None
    expect: str = ""  # a fragment the error line must contain (case-insensitive)
    exit_code: int = 1
    outputs: list[str] = field(default_factory=lambda: ["out"])  # paths under {d} that must not appear


CASES: list[Case] = []


def case(name: str, args: list[str], expect: str, exit_code: int = 1, outputs: list[str] | None = None):
    def deco(fn: Callable[[Path], None]):
        CASES.append(Case(name, args, fn, expect, exit_code, outputs if outputs is not None else ["out"]))
        return fn

    return deco


def simple(name: str, args: list[str], expect: str, exit_code: int = 1) -> None:
    CASES.append(Case(name, args, lambda d: None, expect, exit_code))


def _npz(path: Path, **arrays) -> None:
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def _good_arrays(n=40, shape=(16, 16), dtype=np.uint8):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, (n, *shape)).astype(dtype)
    return {"train_images": imgs, "train_labels": (np.arange(n) % 2)[:, None],
            "test_images": imgs[:8], "test_labels": (np.arange(8) % 2)[:, None]}


def _distill(data: str, *extra: str) -> list[str]:
    return ["distill", "--data", data, "--teacher", W16, "--teacher-weights", "{d}/teacher.safetensors",
            "--student", W16, "--epochs", "1", "--batch-size", "8", "--out", "{d}/out", "--quiet", *extra]


def _teacher(d: Path, num_classes=2, in_chans=1) -> None:
    from medfm_compress.models import create_model, save_state_dict

    save_state_dict(create_model(W16, num_classes, in_chans), d / "teacher.safetensors")


# ---------------- data ----------------
@case("npz_missing_file", _distill("medmnist:{d}/nope.npz"), "does not exist")
def _(d):
    _teacher(d)


@case("npz_not_a_zip", _distill("medmnist:{d}/x.npz"), "not a readable .npz")
def _(d):
    _teacher(d)
    (d / "x.npz").write_bytes(b"this is not a zip archive")


@case("npz_empty_file", _distill("medmnist:{d}/x.npz"), "not a readable .npz")
def _(d):
    _teacher(d)
    (d / "x.npz").write_bytes(b"")


@case("npz_truncated", _distill("medmnist:{d}/x.npz"), "npz")
def _(d):
    _teacher(d)
    _npz(d / "full.npz", **_good_arrays())
    data = (d / "full.npz").read_bytes()
    (d / "x.npz").write_bytes(data[: len(data) // 2])


@case("npz_missing_train_labels", _distill("medmnist:{d}/x.npz"), "train_labels")
def _(d):
    _teacher(d)
    a = _good_arrays()
    del a["train_labels"]
    _npz(d / "x.npz", **a)


@case("npz_no_test_split", _distill("medmnist:{d}/x.npz"), "train/test")
def _(d):
    _teacher(d)
    a = _good_arrays()
    _npz(d / "x.npz", train_images=a["train_images"], train_labels=a["train_labels"])


@case("npz_images_wrong_rank", _distill("medmnist:{d}/x.npz"), "shape")
def _(d):
    _teacher(d)
    a = _good_arrays()
    a["train_images"] = a["train_images"].reshape(40, -1)
    _npz(d / "x.npz", **a)


@case("npz_images_5d", _distill("medmnist:{d}/x.npz"), "shape")
def _(d):
    _teacher(d)
    a = _good_arrays()
    a["train_images"] = a["train_images"][:, None, :, :, None]
    _npz(d / "x.npz", **a)


@case("npz_label_count_mismatch", _distill("medmnist:{d}/x.npz"), "labels")
def _(d):
    _teacher(d)
    a = _good_arrays()
    a["train_labels"] = a["train_labels"][:-3]
    _npz(d / "x.npz", **a)


@case("npz_nan_images", _distill("medmnist:{d}/x.npz"), "nan")
def _(d):
    _teacher(d)
    a = _good_arrays(dtype=np.float32)
    a["train_images"] = a["train_images"] / 255.0
    a["train_images"][5, 3, 3] = np.nan
    _npz(d / "x.npz", **a)


@case("npz_inf_images", _distill("medmnist:{d}/x.npz"), "inf")
def _(d):
    _teacher(d)
    a = _good_arrays(dtype=np.float32)
    a["train_images"] = a["train_images"] / 255.0
    a["test_images"] = a["test_images"] / 255.0
    a["test_images"][0, 0, 0] = np.inf
    _npz(d / "x.npz", **a)


@case("npz_negative_labels", _distill("medmnist:{d}/x.npz"), "negative")
def _(d):
    _teacher(d)
    a = _good_arrays()
    a["train_labels"][0] = -1
    _npz(d / "x.npz", **a)


@case("npz_wrong_channel_count", _distill("medmnist:{d}/x.npz"), "channels")
def _(d):
    _teacher(d)
    a = _good_arrays(shape=(16, 16, 5))
    a["test_images"] = a["train_images"][:8]
    _npz(d / "x.npz", **a)


@case("npz_empty_split", _distill("medmnist:{d}/x.npz"), "empty")
def _(d):
    _teacher(d)
    a = _good_arrays()
    a["test_images"], a["test_labels"] = a["test_images"][:0], a["test_labels"][:0]
    _npz(d / "x.npz", **a)


@case("npz_class_count_mismatch_with_teacher", _distill("medmnist:{d}/x.npz"), "does not match")
def _(d):
    _teacher(d, num_classes=5)
    _npz(d / "x.npz", **_good_arrays())


@case("folder_zero_byte_image", _distill("folder:{d}/imgs"), "not a readable image")
def _(d):
    from PIL import Image

    _teacher(d)
    (d / "imgs").mkdir()
    rows = ["file,label"]
    for i in range(12):
        Image.fromarray(np.full((16, 16), i * 10, np.uint8)).save(d / "imgs" / f"{i}.png")
        rows.append(f"{i}.png,{i % 2}")
    (d / "imgs" / "3.png").write_bytes(b"")
    (d / "imgs" / "labels.csv").write_text("\n".join(rows))


@case("folder_csv_unknown_file", _distill("folder:{d}/imgs"), "does not exist")
def _(d):
    from PIL import Image

    _teacher(d)
    (d / "imgs").mkdir()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(d / "imgs" / "a.png")
    (d / "imgs" / "labels.csv").write_text("file,label\na.png,0\nghost.png,1\n")


@case("folder_csv_path_escape", _distill("folder:{d}/imgs"), "outside")
def _(d):
    from PIL import Image

    _teacher(d)
    (d / "imgs").mkdir()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(d / "secret.png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(d / "imgs" / "a.png")
    (d / "imgs" / "labels.csv").write_text("file,label\na.png,0\n../secret.png,1\n")


@case("folder_no_labels_csv", _distill("folder:{d}/imgs"), "labels.csv")
def _(d):
    _teacher(d)
    (d / "imgs").mkdir()


@case("folder_csv_missing_columns", _distill("folder:{d}/imgs"), "columns")
def _(d):
    _teacher(d)
    (d / "imgs").mkdir()
    (d / "imgs" / "labels.csv").write_text("name,class\na.png,0\n")


@case("dicom_not_dicom", _distill("dicom:{d}/dcm"), "not a readable DICOM")
def _(d):
    _teacher(d)
    (d / "dcm").mkdir()
    (d / "dcm" / "a.dcm").write_bytes(b"\x00" * 300)
    (d / "dcm" / "labels.csv").write_text("file,label\na.dcm,0\n")


simple("data_unknown_kind", ["distill", "--data", "hdf5:/x", "--out", "{d}/out", "--quiet"], "unknown data kind")
simple("data_unknown_option", ["distill", "--data", "synthetic?colour=red", "--out", "{d}/out", "--quiet"], "unknown option")
simple("data_synthetic_zero_size", ["distill", "--data", "synthetic?n_train=0", "--out", "{d}/out", "--quiet"], "positive")

def _msd(d: Path, break_labels: bool = False) -> None:
    import nibabel as nib
    from support.volume_fixtures import write_msd_folder

    root = write_msd_folder(d / "ds", n_cases=3)
    if break_labels:
        lab = root / "labelsTr" / "case_001.nii.gz"
        img = nib.load(lab)
        arr = np.asarray(img.dataobj).copy()
        arr[1, 1, 1] = 7
        nib.save(nib.Nifti1Image(arr, img.affine), lab)


@case("volume_label_outside_dataset_json", ["distill", "--data", "nifti:{d}/ds?val=1&test=1&patch=8,8,8",
                                            "--teacher-epochs", "1", "--out", "{d}/out", "--quiet"],
      "not in dataset.json")
def _(d):
    _msd(d, break_labels=True)


@case("volume_2d_student", ["distill", "--data", "synthetic3d?n_train=2&n_val=1&n_test=1&shape=16,16,16&patch=8,8,8",
                            "--student", W16, "--out", "{d}/out", "--quiet"], "monai:UNet")
def _(d):
    pass


@case("predict_volume_with_nan", ["predict", "{d}/seg3d.onnx", "{d}/nan.nii.gz", "--out", "{d}/out", "--quiet"], "NaN")
def _(d):
    import nibabel as nib
    from support.volume_fixtures import conv3d_seg_model

    rng = np.random.default_rng(0)
    conv3d_seg_model(d / "seg3d.onnx", (rng.normal(0, 0.3, (2, 1, 3, 3, 3)).astype(np.float32),
                                        rng.normal(0, 0.3, (4, 2, 3, 3, 3)).astype(np.float32)),
                     (np.zeros(2, np.float32), np.zeros(4, np.float32)))
    vol = np.zeros((20, 20, 20), np.float32)
    vol[2, 2, 2] = np.nan
    nib.save(nib.Nifti1Image(vol, np.eye(4)), d / "nan.nii.gz")


# ---------------- models and weights ----------------
simple("model_unknown_timm", ["distill", "--data", TINY, "--student", "timm:resnet_nope", "--out", "{d}/out", "--quiet"],
       "unknown timm architecture")
simple("model_spec_without_kind", ["distill", "--data", TINY, "--student", "resnet18", "--out", "{d}/out", "--quiet"], "KIND:NAME")
simple("model_python_factory_missing", ["distill", "--data", TINY, "--teacher", "python:no_such_pkg_zz:make", "--out",
                                        "{d}/out", "--quiet"], "cannot import")


@case("weights_missing_file", ["distill", "--data", TINY, "--teacher", W16, "--teacher-weights", "{d}/none.safetensors",
                                "--out", "{d}/out", "--quiet"], "does not exist")
def _(d):
    pass


@case("weights_corrupt_safetensors", ["distill", "--data", TINY, "--teacher", W16, "--teacher-weights",
                                       "{d}/t.safetensors", "--out", "{d}/out", "--quiet"], "safetensors")
def _(d):
    (d / "t.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{bad json")


@case("weights_wrong_shapes", ["distill", "--data", TINY, "--teacher", W16, "--teacher-weights", "{d}/t.safetensors",
                                "--out", "{d}/out", "--quiet"], "shape mismatch")
def _(d):
    from medfm_compress.models import create_model, save_state_dict

    save_state_dict(create_model(W16, 7, 1), d / "t.safetensors")


@case("weights_wrong_dtype", ["distill", "--data", TINY, "--teacher", W16, "--teacher-weights", "{d}/t.safetensors",
                               "--out", "{d}/out", "--quiet"], "dtype")
def _(d):
    import torch
    from safetensors.torch import save_file

    from medfm_compress.models import create_model

    sd = {k: (v.to(torch.int32) if v.is_floating_point() else v) for k, v in create_model(W16, 4, 1).state_dict().items()}
    save_file(sd, str(d / "t.safetensors"))


@case("weights_wrong_architecture", ["distill", "--data", TINY, "--teacher", W16, "--teacher-weights",
                                      "{d}/t.safetensors", "--out", "{d}/out", "--quiet"], "does not match")
def _(d):
    from medfm_compress.models import create_model, save_state_dict

    save_state_dict(create_model("timm:medfm_resnet10_w32", 4, 1), d / "t.safetensors")


class _Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@case("weights_pickle_payload", ["distill", "--data", TINY, "--teacher", W16, "--teacher-weights", "{d}/evil.pt",
                                  "--out", "{d}/out", "--quiet"], "refused", outputs=["out", "PWNED"])
def _(d):
    with open(d / "evil.pt", "wb") as fh:
        pickle.dump({"w": _Payload(str(d / "PWNED"))}, fh)


@case("weights_unsupported_suffix", ["distill", "--data", TINY, "--teacher", W16, "--teacher-weights", "{d}/t.h5",
                                      "--out", "{d}/out", "--quiet"], "unsupported weight file")
def _(d):
    (d / "t.h5").write_bytes(b"\x89HDF")


# ---------------- options ----------------
simple("option_zero_batch_size", ["distill", "--data", TINY, "--batch-size", "0", "--out", "{d}/out", "--quiet"], "batch-size")
simple("option_negative_epochs", ["distill", "--data", TINY, "--epochs", "-2", "--out", "{d}/out", "--quiet"], "epochs")
simple("option_label_fraction_too_big", ["distill", "--data", TINY, "--label-fraction", "2", "--out", "{d}/out", "--quiet"],
       "label-fraction")
simple("option_unknown_loss", ["distill", "--data", TINY, "--loss", "dice", "--out", "{d}/out", "--quiet"], "unknown loss")
simple("option_not_a_number", ["distill", "--data", TINY, "--epochs", "many", "--out", "{d}/out", "--quiet"], "epochs", 2)
simple("option_unknown_flag", ["distill", "--colour", "--out", "{d}/out"], "no such option", 2)
simple("option_batch_larger_than_data", ["distill", "--data", TINY, "--teacher", W16, "--student", W16, "--batch-size",
                                          "4096", "--out", "{d}/out", "--quiet"], "fewer than one batch")


@case("output_dir_unwritable", ["distill", "--data", TINY, "--out", "{d}/ro/out", "--quiet"], "writable", outputs=[])
def _(d):
    (d / "ro").mkdir()
    os.chmod(d / "ro", stat.S_IRUSR | stat.S_IXUSR)


simple("output_dir_uncreatable", ["distill", "--data", TINY, "--out", "/proc/medfm-compress-out", "--quiet"],
       "cannot create output directory")


@case("output_is_a_file", ["distill", "--data", TINY, "--out", "{d}/out", "--quiet"], "", exit_code=2, outputs=[])
def _(d):
    (d / "out").write_text("I am a file")


# ---------------- verify ----------------
simple("verify_not_a_run_dir", ["verify", "{d}"], "no manifest.json")


@case("verify_corrupt_manifest", ["verify", "{d}/run"], "not valid JSON", outputs=[])
def _(d):
    (d / "run").mkdir()
    (d / "run" / "manifest.json").write_text("{ not json")


@case("verify_other_manifest_version", ["verify", "{d}/run"], "manifest_version", outputs=[])
def _(d):
    (d / "run").mkdir()
    (d / "run" / "manifest.json").write_text(json.dumps({"manifest_version": 99, "stages": []}))


# ---------------- OpenVINO (the openvino extra; make test installs it) ----------------
def _tiny_onnx(path: Path, custom_op: str | None = None) -> Path:
    """The shared tiny conv net (tests/support/onnx_fixtures.py) with the embedded default task's labels."""
    from support.onnx_fixtures import tiny_onnx

    return tiny_onnx(path, custom_op, label_names=("normal", "nodule", "consolidation", "effusion"))


def _tiny_ir(d: Path) -> Path:
    from medfm_compress.export.openvino import export_openvino

    return export_openvino(str(_tiny_onnx(d / "m.onnx")), out=str(d / "m.xml"), num_check=2).path


_BENCH_IR = ["bench", "{d}/m.xml", "--data", TINY, "--iterations", "2", "--out", "{d}/out", "--quiet"]


@case("openvino_ir_bin_missing", _BENCH_IR, "m.bin is missing")
def _(d):
    _tiny_ir(d).with_suffix(".bin").unlink()


@case("openvino_ir_bin_truncated", _BENCH_IR, "truncated")
def _(d):
    b = _tiny_ir(d).with_suffix(".bin")
    b.write_bytes(b.read_bytes()[:64])


@case("openvino_device_missing", [*_BENCH_IR, "--device", "NPU"], "not present on this machine")
def _(d):
    _tiny_ir(d)


@case("openvino_unconvertible_op", ["quantize", "{d}/bad.onnx", "--target", "openvino", "--calib-data", TINY,
                                    "--out", "{d}/out.xml", "--quiet"], "FooBarOp", outputs=["out.xml", "out.bin"])
def _(d):
    _tiny_onnx(d / "bad.onnx", custom_op="FooBarOp")


# ---------------- export / quantize / bench / report / run ----------------
def _onnx(path: Path, with_meta: bool = True, in_chans: int = 1, size: int = 32) -> None:
    import torch

    from medfm_compress.export.onnx_build import export_model_to_onnx
    from medfm_compress.models import create_model
    from medfm_compress.runtime.metadata import ModelMeta
    from medfm_compress.runtime.preprocess import PreprocessSpec

    model = create_model(W16, 4, in_chans).eval()
    pre = PreprocessSpec((size, size), in_chans, (0.5,) * in_chans, (0.25,) * in_chans)
    meta = ModelMeta(pre, "multiclass", ["a", "b", "c", "d"], W16)
    export_model_to_onnx(model, meta, path, torch.zeros(1, in_chans, size, size))
    if not with_meta:
        import onnx

        proto = onnx.load(str(path))
        del proto.metadata_props[:]
        onnx.save(proto, str(path))


_Q = ["--calib-data", TINY, "--target", "cpu", "--precision", "int8", "--num-calib", "16", "--num-holdout", "16", "--allow-small-holdout",
      "--out", "{d}/out/q.onnx"]

simple("export_source_missing", ["export", "{d}/nothing", "--out", "{d}/out/m.onnx"], "does not exist")


@case("export_card_not_json", ["export", "{d}/run", "--out", "{d}/out/m.onnx"], "not valid JSON")
def _(d):
    (d / "run").mkdir()
    (d / "run" / "student.json").write_text("{not json")
    (d / "run" / "student.safetensors").write_bytes(b"")


@case("quantize_corrupt_onnx", ["quantize", "{d}/m.onnx", *_Q], "onnx")
def _(d):
    (d / "m.onnx").write_bytes(b"\x08\x07garbage that is not a protobuf model" * 10)


@case("quantize_empty_onnx", ["quantize", "{d}/m.onnx", *_Q], "onnx")
def _(d):
    (d / "m.onnx").write_bytes(b"")


@case("quantize_no_calibration_data", ["quantize", "{d}/m.onnx", "--target", "cpu", "--precision", "int8", "--out",
                                        "{d}/out/q.onnx"], "calib")
def _(d):
    _onnx(d / "m.onnx")


@case("quantize_foreign_onnx_without_flags", ["quantize", "{d}/m.onnx", *_Q], "--input-size")
def _(d):
    _onnx(d / "m.onnx", with_meta=False)


def _rgb_npz(path: Path) -> str:
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 255, (48, 32, 32, 3), dtype=np.uint8)
    _npz(path, train_images=imgs[:32], train_labels=(np.arange(32) % 4)[:, None], test_images=imgs[32:],
         test_labels=(np.arange(16) % 4)[:, None])
    return f"medmnist:{path}"


@case("quantize_calibration_wrong_channels", ["quantize", "{d}/m.onnx", "--calib-data", "medmnist:{d}/rgb.npz",
                                               "--target", "cpu", "--precision", "int8", "--out", "{d}/out/q.onnx"],
      "channel")
def _(d):
    _onnx(d / "m.onnx")
    _rgb_npz(d / "rgb.npz")


@case("quantize_unknown_target", ["quantize", "{d}/m.onnx", "--calib-data", TINY, "--target", "fpga", "--out",
                                   "{d}/out/q.onnx"], "fpga")
def _(d):
    _onnx(d / "m.onnx")


@case("quantize_out_names_another_file_type", ["quantize", "{d}/m.onnx", "--calib-data", TINY, "--target", "tensorrt",
                                               "--precision", "fp16", "--out", "{d}/out/q.engine"],
      "--target tensorrt writes .onnx files")
def _(d):
    _onnx(d / "m.onnx")


@case("bench_unknown_backend", ["bench", "m={d}/m.onnx", "--backend", "tpu", "--data", TINY, "--out", "{d}/out"],
      "tpu")
def _(d):
    _onnx(d / "m.onnx")


simple("bench_artifact_missing", ["bench", "m={d}/none.onnx", "--data", TINY, "--out", "{d}/out"], "does not exist")
simple("bench_artifact_without_name", ["bench", "{d}/none.onnx", "--data", TINY, "--out", "{d}/out"], "NAME=PATH")
simple("bench_zero_batch_size", ["bench", "m={d}/none.onnx", "--batch-sizes", "0", "--data", TINY, "--out", "{d}/out"],
       "batch")


@case("bench_input_spec_mismatch", ["bench", "m={d}/m.onnx", "--data", "medmnist:{d}/rgb.npz", "--out", "{d}/out"],
      "channel")
def _(d):
    _onnx(d / "m.onnx")
    _rgb_npz(d / "rgb.npz")


@case("report_other_schema_version", ["report", "compare", "{d}/a.json", "{d}/a.json"], "schema", outputs=[])
def _(d):
    (d / "a.json").write_text(json.dumps({"schema_version": 42, "artifacts": []}))


@case("report_not_json", ["report", "compare", "{d}/a.json", "{d}/a.json"], "", outputs=[])
def _(d):
    (d / "a.json").write_text("<html>")


@case("recipe_unknown_key", ["run", "{d}/r.yaml", "--out", "{d}/out"], "did you mean 'distill'")
def _(d):
    (d / "r.yaml").write_text("version: 1\ndistil:\n  epochs: 1\n")


@case("recipe_wrong_type", ["run", "{d}/r.yaml", "--out", "{d}/out"], "must be an integer")
def _(d):
    (d / "r.yaml").write_text("version: 1\ndistill:\n  epochs: ten\n")


@case("recipe_not_yaml", ["run", "{d}/r.yaml", "--out", "{d}/out"], "not valid YAML")
def _(d):
    (d / "r.yaml").write_text("distill: [unclosed\n")


@case("recipe_python_object", ["run", "{d}/r.yaml", "--out", "{d}/out"], "YAML", outputs=["out", "PWNED"])
def _(d):
    (d / "r.yaml").write_text(f"!!python/object/apply:os.system ['touch {d}/PWNED']\n")


# ---------------- integrity (--force) and streaming ----------------
def _tracked(run: Path, name: str) -> None:
    """A manifest in ``run`` recording ``name`` with a sha256 its bytes no longer have (a tampered artifact)."""
    (run / "manifest.json").write_text(json.dumps({"manifest_version": 1, "stages": [
        {"stage": "export", "config": {}, "inputs": {}, "outputs": {"out": {"path": name, "sha256": "0" * 64}},
         "metrics": {}}]}))


@case("bench_artifact_hash_changed", ["bench", "m={d}/run/m.onnx", "--data", TINY, "--out", "{d}/out"],
      "differs from the sha256")
def _(d):
    (d / "run").mkdir()
    _onnx(d / "run" / "m.onnx")
    _tracked(d / "run", "m.onnx")


@case("export_tensorrt_onnx_hash_changed", ["export", "{d}/run/m.onnx", "--format", "tensorrt", "--out",
                                            "{d}/out/m.engine"], "differs from the sha256")
def _(d):
    (d / "run").mkdir()
    _onnx(d / "run" / "m.onnx")
    _tracked(d / "run", "m.onnx")


@case("distill_teacher_weights_hash_changed",
      ["distill", "--data", TINY, "--teacher", W16, "--teacher-weights", "{d}/run/teacher.safetensors", "--student",
       W16, "--epochs", "1", "--batch-size", "8", "--out", "{d}/out", "--quiet"], "differs from the sha256")
def _(d):
    (d / "run").mkdir()
    _teacher(d / "run", num_classes=4)
    _tracked(d / "run", "teacher.safetensors")


@case("data_stream_option_invalid", _distill("folder:{d}/imgs?stream=maybe"), "stream=")
def _(d):
    _teacher(d)


@case("quantize_streamed_folder_odd_image", ["quantize", "{d}/m.onnx", "--calib-data", "folder:{d}/imgs?stream=1",
                                              "--target", "cpu", "--precision", "int8", "--out", "{d}/out/q.onnx"],
      "?size=N")
def _(d):
    from PIL import Image

    _onnx(d / "m.onnx")
    (d / "imgs").mkdir()
    for i in range(12):
        Image.fromarray(np.full((16, 16), i * 10, np.uint8)).save(d / "imgs" / f"{i}.png")
    # Read lazily, the odd image is met only when its batch is used: still one clear line, nothing written.
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(d / "imgs" / "7.png")


def main() -> None:
    ap = argparse.ArgumentParser(description="Write the bad-input corpus to a directory.")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    root = Path(args.out)
    for c in CASES:
        d = root / c.name
        d.mkdir(parents=True, exist_ok=True)
        c.make(d)
        (d / "command.json").write_text(json.dumps({"args": [a.replace("{d}", str(d)) for a in c.args],
                                                    "expect": c.expect, "exit_code": c.exit_code}))
    print(f"{len(CASES)} cases written to {root}")


if __name__ == "__main__":
    main()
