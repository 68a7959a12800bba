"""``medfm-compress predict``: files, folders and data specs in; predictions.csv/.json (embeddings.npy) out.

Tiny ONNX models are built here with onnx.helper (no torch); the edge test runs the CLI in a subprocess whose
import system refuses torch, onnx, openvino and friends.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from support.edge import edge_cli

from medfm_compress.cli import cli
from medfm_compress.errors import ConfigError
from medfm_compress.runtime import Engine
from medfm_compress.runtime.images import read_any
from medfm_compress.runtime.predict import PredictConfig, predict
from medfm_compress.runtime.tasks import get_task

DATA = "synthetic?size=32&n_train=8&n_val=4&n_test=10&seed=1"
LABELS = ["normal", "nodule", "effusion", "mass"]


# ----------------------------------------------------------------------------------------------------------------
# Builders
# ----------------------------------------------------------------------------------------------------------------


def make_onnx(
    path,
    *,
    task="multiclass",
    labels=LABELS,
    outputs=None,
    size=32,
    channels=1,
    metadata=True,
    batch="batch",
    window=None,
    seed=0,
):
    """Conv -> ReLU -> global average pool -> Gemm; ``outputs`` values per case (default: one per label)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from medfm_compress.runtime.metadata import ModelMeta, encode_metadata
    from medfm_compress.runtime.preprocess import PreprocessSpec

    k = outputs or len(labels)
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, channels, 3, 3)).astype(np.float32) * 0.5, "w1"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "b1"),
        numpy_helper.from_array(rng.standard_normal((k, 8)).astype(np.float32) * 2, "w2"),
        numpy_helper.from_array(rng.standard_normal(k).astype(np.float32) * 0.1, "b2"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("GlobalAveragePool", ["r1"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "w2", "b2"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, channels, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, k])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if metadata:
        pre = PreprocessSpec((size, size), channels, (0.5,) * channels, (0.25,) * channels, window=window)
        for key, v in encode_metadata(ModelMeta(pre, task, list(labels), arch="test:tiny")).items():
            model.metadata_props.add(key=key, value=v)
    onnx.save(model, str(path))
    return Path(path)


def write_dicom(path, pixels: np.ndarray):
    """A minimal uncompressed CT slice (uint16 pixels, rescale intercept -1024 -> HU)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return Path(path)


def make_cases(root: Path) -> list[Path]:
    """PNG, JPEG (another size), NPY (float and uint8), DICOM with and without a suffix, in a folder tree, plus
    files that are not cases (labels.csv, a hidden file, a text file without a suffix)."""
    from PIL import Image

    rng = np.random.default_rng(1)
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / ".hidden").mkdir()
    Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(root / "a.png")
    Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(root / "b.png")
    Image.fromarray(rng.integers(0, 255, (40, 50), dtype=np.uint8)).save(root / "sub" / "c.jpg", quality=95)
    np.save(root / "sub" / "d.npy", rng.random((32, 32)).astype(np.float32))
    np.save(root / "sub" / "deeper" / "e.npy", rng.integers(0, 255, (24, 24), dtype=np.uint8))
    write_dicom(root / "sub" / "f.dcm", rng.integers(0, 2000, (32, 32)))
    write_dicom(root / "sub" / "g", rng.integers(0, 2000, (36, 36)))
    (root / "labels.csv").write_text("file,label\n")
    (root / "README").write_text("not an image")
    Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(root / ".hidden" / "x.png")
    return sorted(
        [
            root / "a.png",
            root / "b.png",
            root / "sub" / "c.jpg",
            root / "sub" / "d.npy",
            root / "sub" / "deeper" / "e.npy",
            root / "sub" / "f.dcm",
            root / "sub" / "g",
        ],
        key=str,
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {
        "multiclass": make_onnx(d / "multiclass.onnx"),
        "binary": make_onnx(d / "binary.onnx", task="binary", labels=["benign", "malignant"]),
        "multilabel": make_onnx(d / "multilabel.onnx", task="multilabel", labels=["x", "y", "z"]),
        "embedding": make_onnx(d / "embedding.onnx", task="embedding", labels=[], outputs=6),
        "fixed3": make_onnx(d / "fixed3.onnx", batch=3),
        "foreign": make_onnx(d / "foreign.onnx", metadata=False),
        "windowed": make_onnx(d / "windowed.onnx", window=(-1000.0, 400.0)),
    }


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("cases")
    return root, make_cases(root)


def run_cli(*args):
    return CliRunner().invoke(cli, ["predict", *map(str, args)])


def read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def direct(model, files):
    """Probabilities of a direct engine run, one case at a time, on the same reader and preprocessing."""
    with Engine.load(model) as eng:
        pre = eng.meta.preprocess
        rows = []
        for f in files:
            raw = read_any(f, pre.window)
            rows.append(get_task(eng.meta.task).probabilities(eng.run(pre(raw[None])))[0])
        return np.array(rows, dtype=np.float32)


# ----------------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["multiclass", "binary"])
def test_files_and_folders_match_a_direct_engine_run(models, cases, tmp_path, kind):
    root, files = cases
    out = tmp_path / "out"
    # A folder (recursive, sorted; labels.csv, README and hidden files skipped), then one file again, explicitly.
    res = run_cli(models[kind], root, files[0], "--out", out, "--batch-size", "3")
    assert res.exit_code == 0, res.output
    rows = read_csv(out / "predictions.csv")
    expected_files = [*files, files[0]]
    assert [r["file"] for r in rows] == [str(f) for f in expected_files]
    labels = LABELS if kind == "multiclass" else ["benign", "malignant"]
    assert list(rows[0]) == ["file", "label", *labels, "error"]
    probs = np.array([[float(r[name]) for name in labels] for r in rows])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    ref = direct(models[kind], expected_files)
    np.testing.assert_allclose(probs, ref, atol=1e-6)
    assert [r["label"] for r in rows] == [labels[k] for k in ref.argmax(1)]
    assert all(r["error"] == "" for r in rows)
    doc = json.loads((out / "predictions.json").read_text())
    assert (
        doc["task"] == kind
        and doc["label_names"] == labels
        and doc["counts"] == {"cases": len(rows), "predicted": len(rows), "skipped": 0}
    )
    assert [c["file"] for c in doc["cases"]] == [r["file"] for r in rows]
    assert [c["label"] for c in doc["cases"]] == [r["label"] for r in rows]
    assert [[c["probabilities"][n] for n in labels] for c in doc["cases"]] == probs.tolist()
    assert f"predicted {len(rows)} of {len(rows)} cases" in res.stdout
    assert "predict: 100%" in res.stderr  # the progress bar, on stderr only
    assert sorted(p.name for p in out.iterdir()) == ["predictions.csv", "predictions.json"]


def test_multilabel_lists_every_label_at_or_above_one_half(models, cases, tmp_path):
    root, files = cases
    res = run_cli(models["multilabel"], root, "--out", tmp_path, "--quiet")
    assert res.exit_code == 0, res.output
    rows = read_csv(tmp_path / "predictions.csv")
    assert list(rows[0]) == ["file", "labels", "x", "y", "z", "error"]
    ref = direct(models["multilabel"], files)
    probs = np.array([[float(r[n]) for n in "xyz"] for r in rows])
    np.testing.assert_allclose(probs, ref, atol=1e-6)
    assert [r["labels"] for r in rows] == [
        "|".join(n for n, p in zip("xyz", p, strict=True) if p >= 0.5) for p in ref
    ]
    doc = json.loads((tmp_path / "predictions.json").read_text())
    assert [c["labels"] for c in doc["cases"]] == [
        r["labels"].split("|") if r["labels"] else [] for r in rows
    ]


def test_embedding_model_writes_embeddings_npy_in_csv_order(models, cases, tmp_path):
    root, files = cases
    res = run_cli(models["embedding"], root, "--out", tmp_path, "--quiet", "--batch-size", "4")
    assert res.exit_code == 0, res.output
    emb = np.load(tmp_path / "embeddings.npy")
    assert emb.dtype == np.float32 and emb.shape == (len(files), 6)
    rows = read_csv(tmp_path / "predictions.csv")
    assert list(rows[0]) == ["file", "row", "error"]
    assert [(r["file"], int(r["row"])) for r in rows] == [(str(f), i) for i, f in enumerate(files)]
    np.testing.assert_allclose(emb, direct(models["embedding"], files), atol=1e-5)
    doc = json.loads((tmp_path / "predictions.json").read_text())
    assert doc["task"] == "embedding" and [c["row"] for c in doc["cases"]] == list(range(len(files)))
    assert "embeddings.npy" in res.stdout


def test_data_spec_uses_its_test_split(models, tmp_path):
    from medfm_compress.data import load_data

    res = run_cli(models["multiclass"], DATA, "--out", tmp_path, "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["notes"] == [f"{DATA}: 10 images, its test split"] and res.stderr == ""
    assert (summary["cases"], summary["predicted"], summary["skipped"]) == (10, 10, 0)
    assert summary["csv_path"] == str(tmp_path / "predictions.csv") and summary["embeddings_path"] is None
    rows = read_csv(tmp_path / "predictions.csv")
    assert [r["file"] for r in rows] == [f"{DATA}#{i}" for i in range(10)]
    images = load_data(DATA).split("test").images
    with Engine.load(models["multiclass"]) as eng:
        _, ref = eng.predict(images)
    np.testing.assert_allclose([[float(r[n]) for n in LABELS] for r in rows], ref, atol=1e-6)
    assert [r["label"] for r in rows] == [LABELS[k] for k in ref.argmax(1)]


def test_folder_spec_without_labels_uses_all_images(models, cases, tmp_path):
    from PIL import Image

    folder = tmp_path / "plain"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((32, 32), 40 * i, np.uint8)).save(folder / f"{i}.png")
    res = run_cli(models["multiclass"], f"folder:{folder}", "--out", tmp_path / "o", "--quiet")
    assert res.exit_code == 0, res.output
    assert "3 images, all its images" in res.stdout
    assert len(read_csv(tmp_path / "o" / "predictions.csv")) == 3


def test_output_folder_inside_the_input_folder_is_not_read_back(models, tmp_path):
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((32, 32), 50 * i, np.uint8)).save(tmp_path / f"{i}.png")
    for _ in range(2):  # the second run must not take the first run's embeddings.npy for a case
        res = run_cli(models["embedding"], tmp_path, "--out", tmp_path / "preds", "--quiet")
        assert res.exit_code == 0, res.output
        assert np.load(tmp_path / "preds" / "embeddings.npy").shape == (3, 6)


def test_library_call_and_fixed_batch_model(models, cases, tmp_path):
    root, files = cases
    cfg = PredictConfig(
        model=str(models["fixed3"]), inputs=(str(root),), out=str(tmp_path), batch_size=32, progress=False
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.batch_size = 2  # type: ignore[misc]
    res = predict(cfg)
    # The artifact only takes batches of 3: 7 cases run as 3 + 3 + a padded 1.
    assert (res.cases, res.predicted, res.skipped, res.batch_size) == (len(files), len(files), 0, 3)
    assert res.images_per_s > 0 and res.seconds > 0 and res.csv_path == tmp_path / "predictions.csv"
    rows = read_csv(res.csv_path)
    # Same weights as the dynamic-batch model (same seed): the same probabilities.
    np.testing.assert_allclose(
        [[float(r[n]) for n in LABELS] for r in rows], direct(models["multiclass"], files), atol=1e-6
    )
    with pytest.raises(ConfigError, match="batch size"):
        PredictConfig(model="m.onnx", inputs=("x",), out="o", batch_size=0)


def test_dicom_is_read_in_hounsfield_units_for_a_windowed_model(models, cases, tmp_path):
    root, files = cases
    dicoms = [f for f in files if f.suffix in (".dcm", "")]
    res = run_cli(models["windowed"], *dicoms, "--out", tmp_path, "--quiet")
    assert res.exit_code == 0, res.output
    probs = [[float(r[n]) for n in LABELS] for r in read_csv(tmp_path / "predictions.csv")]
    hu = read_any(dicoms[0], window=(-1000.0, 400.0))
    assert hu.min() < -500 and hu.max() > 500  # modality LUT applied, not windowed
    np.testing.assert_allclose(probs, direct(models["windowed"], dicoms), atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# Bad inputs
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture
def with_bad(tmp_path, cases):
    import shutil

    root, files = cases
    folder = tmp_path / "in"
    shutil.copytree(root, folder)
    (folder / "sub" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return folder


def _no_temp_files(folder: Path) -> bool:
    return not any(p.name.startswith(".") for p in folder.iterdir())


def test_corrupt_file_stops_the_run_with_one_line_and_writes_nothing(models, with_bad, tmp_path):
    out = tmp_path / "out"
    res = run_cli(models["multiclass"], with_bad, "--out", out, "--quiet", "--batch-size", "2")
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.output, res.output
    assert str(with_bad / "sub" / "broken.png") in lines[0] and "not a readable image" in lines[0]
    assert not out.exists()  # created for the run, removed again: nothing left behind
    # Over a previous run's outputs: they stay as they were, and no temporary file is left.
    good = run_cli(models["multiclass"], with_bad / "a.png", "--out", out, "--quiet")
    assert good.exit_code == 0, good.output
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    res = run_cli(
        models["embedding"], with_bad, "--out", out, "--quiet", "--batch-size", "2", "--workers", "0"
    )
    assert res.exit_code == 1 and "broken.png" in res.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and _no_temp_files(out)


def test_skip_bad_records_the_file_and_goes_on(models, with_bad, tmp_path):
    res = run_cli(models["multiclass"], with_bad, "--out", tmp_path / "o", "--skip-bad", "--quiet")
    assert res.exit_code == 0, res.output
    assert "predicted 7 of 8 cases" in res.stdout and "skipped 1 unreadable" in res.stdout
    rows = read_csv(tmp_path / "o" / "predictions.csv")
    bad = [r for r in rows if r["error"]]
    assert len(rows) == 8 and len(bad) == 1 and bad[0]["file"].endswith("broken.png")
    assert "not a readable image" in bad[0]["error"] and bad[0]["label"] == "" and bad[0]["nodule"] == ""
    doc = json.loads((tmp_path / "o" / "predictions.json").read_text())
    assert doc["counts"] == {"cases": 8, "predicted": 7, "skipped": 1}
    assert [c for c in doc["cases"] if "error" in c][0]["file"] == bad[0]["file"]
    # Embeddings: the bad case has no row; the .npy holds the 7 others, in order.
    res = run_cli(
        models["embedding"],
        with_bad,
        "--out",
        tmp_path / "e",
        "--skip-bad",
        "--quiet",
        "--batch-size",
        "3",
        "--workers",
        "0",
    )
    assert res.exit_code == 0, res.output
    rows = read_csv(tmp_path / "e" / "predictions.csv")
    emb = np.load(tmp_path / "e" / "embeddings.npy")
    good = [r for r in rows if not r["error"]]
    assert emb.shape == (7, 6) and [int(r["row"]) for r in good] == list(range(7))
    np.testing.assert_allclose(emb, direct(models["embedding"], [r["file"] for r in good]), atol=1e-5)
    assert _no_temp_files(tmp_path / "e")


def test_wrong_channel_count_names_the_file(models, tmp_path):
    from PIL import Image

    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(rgb)
    res = run_cli(models["multiclass"], rgb, "--out", tmp_path / "o", "--quiet")
    assert res.exit_code == 1 and f"error: {rgb}: images have 3 channel(s)" in res.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["nothere.png"], "nothere.png does not exist"),
        (["synthetic?colour=1"], "unknown option(s) colour"),
    ],
)
def test_bad_input_arguments(models, tmp_path, args, message):
    res = run_cli(models["multiclass"], *args, "--out", tmp_path / "o", "--quiet")
    assert res.exit_code == 1 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------------------------------------------
# Foreign models, OpenVINO
# ----------------------------------------------------------------------------------------------------------------

FLAGS = ["--input-size", "32", "--channels", "1", "--mean", "0.5", "--std", "0.25"]


def test_foreign_onnx_needs_the_preprocessing_flags(models, cases, tmp_path):
    root, files = cases
    res = run_cli(models["foreign"], root, "--out", tmp_path / "o", "--quiet")
    assert res.exit_code == 1 and "--input-size, --channels, --mean and --std" in res.stderr
    res = run_cli(models["foreign"], root, "--out", tmp_path / "o", "--quiet", *FLAGS[:6])
    assert res.exit_code == 1 and "--std (missing)" in res.stderr
    res = run_cli(models["foreign"], root, "--out", tmp_path / "o", "--quiet", *FLAGS[:1], "64", *FLAGS[2:])
    assert res.exit_code == 1 and "takes input 1x32x32" in res.stderr and "--input-size" in res.stderr
    assert not (tmp_path / "o").exists()
    res = run_cli(models["foreign"], root, "--out", tmp_path / "o", "--quiet", *FLAGS)
    assert res.exit_code == 0, res.output
    rows = read_csv(tmp_path / "o" / "predictions.csv")
    names = [f"class_{k}" for k in range(4)]
    assert list(rows[0]) == ["file", "label", *names, "error"]
    # Same weights and preprocessing as the model with metadata: the same numbers, other label names.
    ref = direct(models["multiclass"], files)
    np.testing.assert_allclose([[float(r[n]) for n in names] for r in rows], ref, atol=1e-6)
    # The flags do not override a model's own metadata.
    res = run_cli(models["multiclass"], files[0], "--out", tmp_path / "m", "--quiet", *FLAGS)
    assert res.exit_code == 0 and list(read_csv(tmp_path / "m" / "predictions.csv")[0])[2:6] == LABELS


def test_openvino_backend_and_ir(models, cases, tmp_path):
    ov = pytest.importorskip("openvino")
    root, files = cases
    res = run_cli(models["multiclass"], root, "--out", tmp_path / "o", "--quiet", "--backend", "openvino")
    assert res.exit_code == 0, res.output
    ref = direct(models["multiclass"], files)
    np.testing.assert_allclose(
        [[float(r[n]) for n in LABELS] for r in read_csv(tmp_path / "o" / "predictions.csv")], ref, atol=1e-4
    )
    xml = tmp_path / "foreign.xml"
    ov.save_model(ov.Core().read_model(str(models["foreign"])), str(xml), compress_to_fp16=False)
    res = run_cli(xml, root, "--out", tmp_path / "x", "--quiet")
    assert res.exit_code == 1 and "--input-size" in res.stderr
    res = run_cli(xml, root, "--out", tmp_path / "x", "--quiet", *FLAGS)
    assert res.exit_code == 0, res.output
    got = [[float(r[f"class_{k}"]) for k in range(4)] for r in read_csv(tmp_path / "x" / "predictions.csv")]
    np.testing.assert_allclose(got, ref, atol=1e-4)


# ----------------------------------------------------------------------------------------------------------------
# Edge install: no torch, onnx or openvino
# ----------------------------------------------------------------------------------------------------------------

def test_edge_path_imports_no_torch(models, cases, tmp_path):
    """Files of other sizes (resized without torch), NPY, DICOM and a data spec, in a process that cannot import
    torch: the same predictions as the full install, within float rounding."""
    root, files = cases
    args = ["predict", str(models["multiclass"]), str(root), DATA, "--out", str(tmp_path / "edge"), "--quiet"]
    proc = edge_cli(args, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    full = run_cli(*args[1:4], "--out", tmp_path / "full", "--quiet")
    assert full.exit_code == 0, full.output
    edge_rows, full_rows = (
        read_csv(tmp_path / "edge" / "predictions.csv"),
        read_csv(tmp_path / "full" / "predictions.csv"),
    )
    assert [r["file"] for r in edge_rows] == [r["file"] for r in full_rows] and len(edge_rows) == len(
        files
    ) + 10
    np.testing.assert_allclose(
        [[float(r[n]) for n in LABELS] for r in edge_rows],
        [[float(r[n]) for n in LABELS] for r in full_rows],
        atol=1e-5,
    )
    assert [r["label"] for r in edge_rows] == [r["label"] for r in full_rows]


def test_numpy_resize_matches_torch(monkeypatch):
    """The edge install's resize (no torch) is torch's antialiased bilinear / trilinear filter."""
    pytest.importorskip("torch")
    from medfm_compress.runtime.preprocess import resize_batch, resize_volume_batch

    rng = np.random.default_rng(0)
    cases = [
        (rng.random((2, 3, 64, 96), dtype=np.float32), (32, 32)),  # downsampling, both axes
        (rng.random((1, 1, 23, 28), dtype=np.float32), (32, 32)),  # upsampling
        (rng.random((1, 1, 500, 37), dtype=np.float32), (64, 64)),
    ]
    volumes = [(rng.random((2, 1, 20, 30, 10), dtype=np.float32), (16, 16, 16))]
    want = [resize_batch(x, s) for x, s in cases] + [resize_volume_batch(x, s) for x, s in volumes]
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    got = [resize_batch(x, s) for x, s in cases] + [resize_volume_batch(x, s) for x, s in volumes]
    for g, w in zip(got, want, strict=True):
        assert g.dtype == np.float32 and g.shape == w.shape
        np.testing.assert_allclose(g, w, atol=1e-6)


def test_file_size_limit_while_writing_leaves_the_previous_outputs(models, tmp_path):
    """A real failed write (RLIMIT_FSIZE in the child; the CLI ignores SIGXFSZ, so the write fails with EFBIG)."""
    import os
    import resource

    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(60):
        Image.fromarray(np.full((32, 32), i, np.uint8)).save(folder / f"case_with_a_long_name_{i:03d}.png")
    out = tmp_path / "out"
    assert (
        run_cli(
            models["multiclass"], folder / "case_with_a_long_name_000.png", "--out", out, "--quiet"
        ).exit_code
        == 0
    )
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "medfm_compress",
            "predict",
            str(models["multiclass"]),
            str(folder),
            "--out",
            str(out),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        preexec_fn=limit,
        timeout=120,
        env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"),
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: disk full") and str(out) in lines[0], proc.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and _no_temp_files(out)


def test_volume_embedding_model_on_npy_crops(tmp_path):
    """An embedding model on 3-D crops (what distill-volume exports): .npy volumes, one resized (trilinear)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from medfm_compress.runtime.metadata import ModelMeta, encode_metadata
    from medfm_compress.runtime.preprocess import PreprocessSpec

    rng = np.random.default_rng(3)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3, 3)).astype(np.float32) * 0.3, "w1"),
        numpy_helper.from_array(rng.standard_normal((5, 4)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.zeros(5, np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["c"], pads=[1] * 6),
        helper.make_node("GlobalAveragePool", ["c"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "w2", "b2"], ["emb"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "vol",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 1, 16, 16, 16])],
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["n", 5])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    pre = PreprocessSpec((16, 16, 16), 1, (0.5,), (0.25,), window=(-1000.0, 400.0))
    for key, v in encode_metadata(ModelMeta(pre, "embedding", [], arch="test:vol")).items():
        model.metadata_props.add(key=key, value=v)
    path = tmp_path / "vol.onnx"
    onnx.save(model, str(path))
    crops = tmp_path / "crops"
    crops.mkdir()
    np.save(crops / "a.npy", rng.uniform(-1000, 400, (16, 16, 16)).astype(np.float32))
    np.save(crops / "b.npy", rng.integers(-1000, 400, (20, 20, 12)).astype(np.int16))
    res = run_cli(path, crops, "--out", tmp_path / "o", "--quiet")
    assert res.exit_code == 0, res.output
    emb = np.load(tmp_path / "o" / "embeddings.npy")
    assert emb.shape == (2, 5)
    np.testing.assert_allclose(emb, direct(path, [crops / "a.npy", crops / "b.npy"]), atol=1e-5)
