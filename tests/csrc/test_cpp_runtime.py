"""The C++ runtime (csrc/): it builds, its ctest suite passes, and it agrees with the Python runtime.

The build goes to ``build/cpp-pytest`` in the repository (incremental across runs, guarded by a lock so that
concurrent pytest sessions do not build into each other); a clean build takes about a minute here. Parity runs
the same real images (the synthetic task's test split, written as PGM/.npy files that the C++ side decodes)
through ``medfm-run predict`` and through the Python runtime's ``Engine.predict``.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from support.tiny import TINY_DATA

# Every test needs the C++ build (a minute from clean) or runs the built CLI.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def _medfm_run(build: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(build / "medfm-run"), *args], capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"medfm-run {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc


def write_pgm(path: Path, image: np.ndarray) -> Path:
    """Binary PGM: 8-bit for uint8, 16-bit big-endian for uint16."""
    maxval = 255 if image.dtype == np.uint8 else 65535
    body = image.astype(">u2").tobytes() if image.dtype == np.uint16 else image.tobytes()
    path.write_bytes(f"P5\n{image.shape[1]} {image.shape[0]}\n{maxval}\n".encode() + body)
    return path


@pytest.fixture(scope="module")
def test_images() -> np.ndarray:
    from medfm_compress.data import load_data

    images = load_data(TINY_DATA).split("test").images[:24]
    assert images.dtype == np.uint8 and images.ndim == 3  # raw grayscale (N, H, W)
    return images


@pytest.fixture(scope="module")
def student_onnx(tiny_run, tmp_path_factory) -> Path:
    import torch

    from medfm_compress.export.onnx_build import export_model_to_onnx
    from medfm_compress.models import load_model
    from medfm_compress.runtime.metadata import ModelMeta

    model, card = load_model(tiny_run, name="student")
    example = torch.zeros(2, card.in_chans, *card.preprocess.input_size)
    return export_model_to_onnx(
        model, ModelMeta.from_card(card), tmp_path_factory.mktemp("cpp") / "student.onnx", example
    )


def python_predict(model: Path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from medfm_compress.runtime import Engine

    with Engine.load(model, threads=1) as engine:
        return engine.predict(images)


def cpp_predict(build: Path, model: Path, files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    out = _medfm_run(
        build, "predict", str(model), *map(str, files), "--threads", "1", "--batch", "8", "--json"
    )
    rows = json.loads(out.stdout)
    assert [r["image"] for r in rows] == [str(f) for f in files]
    return (
        np.asarray([r["logits"] for r in rows], dtype=np.float32),
        np.asarray([r["probabilities"] for r in rows], dtype=np.float32),
    )


def test_ctest_suite_passes(cpp_build):
    proc = subprocess.run(
        ["ctest", "--test-dir", str(cpp_build), "--output-on-failure"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "100% tests passed" in proc.stdout


def test_parity_with_python_runtime_on_real_images(cpp_build, student_onnx, test_images, tmp_path):
    from medfm_compress.metrics import max_abs_error

    files = [write_pgm(tmp_path / f"case{i:02d}.pgm", img) for i, img in enumerate(test_images)]
    py_logits, py_probs = python_predict(student_onnx, test_images)
    cpp_logits, cpp_probs = cpp_predict(cpp_build, student_onnx, files)
    assert cpp_logits.shape == py_logits.shape == (len(test_images), 4)
    np.testing.assert_array_equal(cpp_logits.argmax(1), py_logits.argmax(1))
    assert max_abs_error(py_logits, cpp_logits) <= 1e-5
    assert max_abs_error(py_probs, cpp_probs) <= 1e-6
    # The labels printed are the model's own label names, in order.
    plain = _medfm_run(cpp_build, "predict", str(student_onnx), str(files[0]), "--threads", "1").stdout
    names = ["normal", "nodule", "consolidation", "effusion"]
    assert plain.split("\t")[1] == names[int(py_logits[0].argmax())]


def test_parity_npy_uint16_float_and_window(cpp_build, student_onnx, test_images, tmp_path):
    """uint16 and float images as .npy, and a model whose metadata sets an intensity window."""
    import onnx

    from medfm_compress.export.onnx_build import set_meta
    from medfm_compress.metrics import max_abs_error
    from medfm_compress.runtime.onnx_loader import read_meta

    u16 = test_images[:8].astype(np.uint16) * 257  # full 16-bit range
    f32 = test_images[8:16].astype(np.float32) / 255.0
    for name, batch in (("u16", u16), ("f32", f32)):
        files = []
        for i, img in enumerate(batch):
            files.append(tmp_path / f"{name}{i}.npy")
            np.save(files[-1], img)
        py_logits, _ = python_predict(student_onnx, batch)
        cpp_logits, _ = cpp_predict(cpp_build, student_onnx, files)
        np.testing.assert_array_equal(cpp_logits.argmax(1), py_logits.argmax(1))
        assert max_abs_error(py_logits, cpp_logits) <= 1e-5, name

    # A CT-style window on raw 16-bit values (clip + scale), written into the model's metadata.
    meta = read_meta(student_onnx)
    pre = meta.preprocess
    meta.preprocess = type(pre)(pre.input_size, pre.channels, pre.mean, pre.std, window=(1000.0, 60000.0))
    proto = onnx.load(str(student_onnx))
    set_meta(proto, meta)
    windowed = tmp_path / "windowed.onnx"
    onnx.save(proto, str(windowed))
    files = [write_pgm(tmp_path / f"w{i}.pgm", img) for i, img in enumerate(u16)]
    py_logits, _ = python_predict(windowed, u16)
    cpp_logits, _ = cpp_predict(cpp_build, windowed, files)
    np.testing.assert_array_equal(cpp_logits.argmax(1), py_logits.argmax(1))
    assert max_abs_error(py_logits, cpp_logits) <= 1e-5


def test_resize_matches_torch_antialiased_bilinear(cpp_build, student_onnx, test_images, tmp_path):
    """Images of another size are resized like Python (torch bilinear, antialias=True): same top-1, logits
    within 1e-5 (measured ~3e-8 on a 64 px model)."""
    from medfm_compress.metrics import max_abs_error

    rng = np.random.default_rng(0)
    big = np.repeat(np.repeat(test_images[:8], 2, axis=1), 3, axis=2)  # 64 x 96: downsampling, both axes
    big = np.clip(big.astype(np.int16) + rng.integers(-20, 20, big.shape), 0, 255).astype(np.uint8)
    small = test_images[8:16, 4:27, 2:30]  # 23 x 28: upsampling
    for name, batch in (("down", big), ("up", small)):
        files = [write_pgm(tmp_path / f"{name}{i}.pgm", img) for i, img in enumerate(batch)]
        py_logits, _ = python_predict(student_onnx, batch)
        cpp_logits, _ = cpp_predict(cpp_build, student_onnx, files)
        np.testing.assert_array_equal(cpp_logits.argmax(1), py_logits.argmax(1))
        assert max_abs_error(py_logits, cpp_logits) <= 1e-5, name


def test_cli_user_errors_exit_1_with_message(cpp_build, student_onnx, tmp_path):
    bad_image = tmp_path / "broken.pgm"
    bad_image.write_bytes(b"P5\n64 64\n255\nshort")
    proc = _medfm_run(cpp_build, "predict", str(student_onnx), str(bad_image), check=False)
    assert proc.returncode == 1 and "error: image" in proc.stderr and "truncated" in proc.stderr
    rgb = tmp_path / "rgb.ppm"
    rgb.write_bytes(b"P6\n32 32\n255\n" + bytes(32 * 32 * 3))
    proc = _medfm_run(cpp_build, "predict", str(student_onnx), str(rgb), check=False)
    assert proc.returncode == 1 and "model expects 1" in proc.stderr
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_bytes(b"\x00garbage")
    proc = _medfm_run(cpp_build, "info", str(not_onnx), check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("error: cannot load model")


def test_latency_json_reports_percentiles(cpp_build, student_onnx, test_images, tmp_path):
    out = _medfm_run(
        cpp_build,
        "latency",
        str(student_onnx),
        "--iterations",
        "20",
        "--warmup",
        "2",
        "--threads",
        "1",
        "--json",
    )
    rec = json.loads(out.stdout)
    assert rec["mode"] == "engine" and rec["batch"] == 1 and len(rec["samples_ms"]) == 20
    assert 0 < rec["min_ms"] <= rec["p50_ms"] <= rec["p90_ms"] <= rec["p99_ms"] <= rec["max_ms"]
    assert rec["p50_ms"] == pytest.approx(float(np.percentile(rec["samples_ms"], 50)), rel=1e-6)
    np.save(tmp_path / "a.npy", test_images[0])
    out = _medfm_run(
        cpp_build,
        "latency",
        str(student_onnx),
        "--iterations",
        "5",
        "--warmup",
        "1",
        "--json",
        "--images",
        str(tmp_path / "a.npy"),
    )
    assert json.loads(out.stdout)["mode"] == "end_to_end"


def test_segmentation_masks_identical_to_python_predict(cpp_build, seg_run, tmp_path):
    """`medfm-run predict seg.onnx case.pgm --mask-out case.mask.pgm` writes, at each image's own size, the same
    label map as `medfm-compress predict` (PNG), pixel for pixel."""
    from click.testing import CliRunner
    from PIL import Image
    from support.tiny import TINY_SEG_DATA

    from medfm_compress.cli import cli
    from medfm_compress.data import load_data

    images = load_data(TINY_SEG_DATA).split("test").images[:6]
    sizes = [(32, 32), (512, 512), (60, 40), (47, 91), (32, 32), (200, 150)]
    (tmp_path / "png").mkdir()
    (tmp_path / "cpp").mkdir()
    files = []
    for i, ((h, w), img) in enumerate(zip(sizes, images, strict=True)):
        arr = np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))
        Image.fromarray(arr).save(tmp_path / "png" / f"case{i}.png")
        files.append(write_pgm(tmp_path / f"case{i}.pgm", arr))
    model = seg_run / "student.onnx"
    r = CliRunner().invoke(cli, ["predict", str(model), str(tmp_path / "png"), "--out", str(tmp_path / "py"),
                                 "--quiet", "--threads", "1"])
    assert r.exit_code == 0, r.output
    rows = {Path(row["file"]).stem: row for row in json.loads((tmp_path / "py" / "predictions.json").read_text())["cases"]}

    out = _medfm_run(cpp_build, "predict", str(model), *map(str, files), "--threads", "1", "--batch", "4",
                     "--mask-dir", str(tmp_path / "cpp"), "--json")
    reported = json.loads(out.stdout)
    labels = json.loads((tmp_path / "py" / "predictions.json").read_text())["label_names"]
    foreground = 0
    for i, (h, w) in enumerate(sizes):
        want = np.asarray(Image.open(tmp_path / "py" / rows[f"case{i}"]["mask"]))
        got = np.asarray(Image.open(tmp_path / "cpp" / f"case{i}.mask.pgm"))
        assert got.shape == want.shape == (h, w)
        np.testing.assert_array_equal(got, want)
        assert reported[i]["areas"] == {n: int((want == k).sum()) for k, n in enumerate(labels)}
        foreground += int((want > 0).sum())
    assert foreground > 0  # the student draws organs: the comparison covers more than background

    # One image, one named mask file; a classifier given --mask-out is a one-line error, exit 1.
    single = tmp_path / "one.mask.npy"
    _medfm_run(cpp_build, "predict", str(model), str(files[2]), "--mask-out", str(single))
    np.testing.assert_array_equal(np.load(single), np.asarray(Image.open(tmp_path / "cpp" / "case2.mask.pgm")))


def test_regression_values_match_python(cpp_build, reg_run, tmp_path):
    """A regression model: medfm-run prints each image's value in the target's units, as Python's predict does."""
    from support.tiny import TINY_REG_DATA

    from medfm_compress.data import load_data

    images = load_data(TINY_REG_DATA).split("test").images[:12]
    files = [write_pgm(tmp_path / f"r{i:02d}.pgm", img) for i, img in enumerate(images)]
    model = reg_run / "student.onnx"
    _, py_values = python_predict(model, images)
    rows = json.loads(_medfm_run(cpp_build, "predict", str(model), *map(str, files), "--threads", "1", "--json").stdout)
    cpp_values = np.asarray([[r["values"]["lesion_area_pct"]] for r in rows], dtype=np.float32)
    assert cpp_values.shape == py_values.shape == (12, 1)
    np.testing.assert_allclose(cpp_values, py_values, atol=1e-4)
    text = _medfm_run(cpp_build, "predict", str(model), str(files[0]), "--threads", "1").stdout
    assert text.startswith(f"{files[0]}\tlesion_area_pct=")
