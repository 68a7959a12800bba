import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from medfm_compress.data import PreprocessSpec, load_data, parse_data_spec
from medfm_compress.data.synthetic import LABEL_NAMES, SyntheticConfig, generate
from medfm_compress.errors import DataError


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return f"medmnist:{path}"


def test_synthetic_is_deterministic_and_not_trivially_separable():
    cfg = SyntheticConfig(seed=5, size=32, n_train=200, n_val=10, n_test=10)
    a, b = generate(cfg), generate(cfg)
    assert np.array_equal(a["train_images"], b["train_images"])
    assert not np.array_equal(a["train_images"], generate(SyntheticConfig(seed=6, size=32, n_train=200, n_val=10, n_test=10))["train_images"])
    imgs, labels = a["train_images"].astype(float), a["train_labels"][:, 0]
    assert set(np.unique(labels)) == set(range(len(LABEL_NAMES)))
    # No single global statistic separates the classes: per-class means overlap within one std.
    means = imgs.reshape(len(imgs), -1).mean(1)
    per_class = [means[labels == c].mean() for c in range(4)]
    assert max(per_class) - min(per_class) < means.std()


def test_synthetic_spec_loads_through_medmnist_reader(tiny_data):
    task = load_data(tiny_data)
    assert task.task == "multiclass" and task.label_names == LABEL_NAMES
    assert task.channels == 1 and task.image_size == (32, 32)
    assert len(task.split("train")) == 192 and len(task.split("test")) == 96


def test_medmnist_multilabel_binary_and_rgb(tmp_path):
    rng = np.random.default_rng(0)
    ml = rng.integers(0, 2, (20, 3))
    spec = _npz(tmp_path / "ml.npz", train_images=rng.integers(0, 255, (20, 8, 8), dtype=np.uint8), train_labels=ml,
                test_images=rng.integers(0, 255, (6, 8, 8), dtype=np.uint8), test_labels=ml[:6])
    t = load_data(spec)
    assert t.task == "multilabel" and t.num_classes == 3 and "val" in t.splits
    spec = _npz(tmp_path / "bin.npz", train_images=rng.integers(0, 255, (20, 8, 8, 3), dtype=np.uint8),
                train_labels=rng.integers(0, 2, (20, 1)), test_images=rng.integers(0, 255, (4, 8, 8, 3), dtype=np.uint8),
                test_labels=np.array([[0], [1], [0], [1]]), label_names=np.array(json.dumps(["normal", "pneumonia"])))
    t = load_data(spec)
    assert t.task == "binary" and t.channels == 3 and t.label_names == ["normal", "pneumonia"]


@pytest.mark.parametrize(
    "arrays_kw, message",
    [
        ({"train_images": np.zeros((4, 8, 8)), "test_images": np.zeros((2, 8, 8)), "test_labels": np.zeros(2)}, "train_labels"),
        ({"train_images": np.zeros((4, 8)), "train_labels": np.zeros(4), "test_images": np.zeros((2, 8)), "test_labels": np.zeros(2)}, "shape"),
        ({"train_images": np.full((4, 8, 8), np.nan), "train_labels": np.zeros(4), "test_images": np.zeros((2, 8, 8)), "test_labels": np.zeros(2)}, "NaN"),
        ({"train_images": np.zeros((4, 8, 8)), "train_labels": np.zeros(3), "test_images": np.zeros((2, 8, 8)), "test_labels": np.zeros(2)}, "labels"),
        ({"train_images": np.zeros((0, 8, 8)), "train_labels": np.zeros(0), "test_images": np.zeros((0, 8, 8)), "test_labels": np.zeros(0)}, "empty"),
    ],
)
def test_medmnist_bad_arrays(tmp_path, arrays_kw, message):
    spec = _npz(tmp_path / "bad.npz", **arrays_kw)
    with pytest.raises(DataError, match=message):
        task = load_data(spec)
        task.split("train")


def test_corrupt_and_missing_files(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable"):
        load_data(f"medmnist:{tmp_path / 'x.npz'}")
    with pytest.raises(DataError, match="does not exist"):
        load_data(f"medmnist:{tmp_path / 'nope.npz'}")
    with pytest.raises(DataError, match="unknown data kind"):
        parse_data_spec("hdf5:foo")
    with pytest.raises(DataError, match="unknown option"):
        parse_data_spec("synthetic?colour=1")


def test_folder_reader_with_csv(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    rows = ["file,label"]
    for i in range(30):
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(tmp_path / f"im{i}.png")
        rows.append(f"im{i}.png,{'lesion' if i % 3 == 0 else 'normal'}")
    (tmp_path / "labels.csv").write_text("\n".join(rows))
    t = load_data(f"folder:{tmp_path}")
    assert t.label_names == ["lesion", "normal"] and t.task == "binary"
    assert sum(len(s) for s in t.splits.values()) == 30
    (tmp_path / "labels.csv").write_text("file,label\nmissing.png,normal\n")
    with pytest.raises(DataError, match="does not exist"):
        load_data(f"folder:{tmp_path}")


def test_dicom_reader_applies_modality_lut(tmp_path):
    import glob
    import os
    import shutil

    import pydicom

    base = os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files")
    ct = os.path.join(base, "CT_small.dcm")
    if not os.path.exists(ct):
        pytest.skip("pydicom test file CT_small.dcm not shipped with this pydicom")
    rows = ["file,label,split"]
    for i, split in enumerate(["train", "train", "val", "test"]):
        shutil.copy(ct, tmp_path / f"s{i}.dcm")
        rows.append(f"s{i}.dcm,{i % 2},{split}")
    (tmp_path / "labels.csv").write_text("\n".join(rows))
    t = load_data(f"dicom:{tmp_path}?size=32&window=-1000,400")
    img = t.split("train").images
    assert img.dtype == np.float32 and img.shape == (2, 32, 32) and 0 <= img.min() and img.max() <= 1
    assert glob.glob(str(tmp_path / "*.dcm"))


@settings(max_examples=30, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 3), st.integers(4, 12), st.integers(4, 12))))
def test_preprocess_shapes_and_inverse(images):
    spec = PreprocessSpec(input_size=images.shape[1:], channels=1, mean=(0.5,), std=(0.25,))
    x = spec(images)
    assert x.shape == (images.shape[0], 1, *images.shape[1:]) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 0] * 0.25 + 0.5, images / 255.0, atol=1e-6)
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec


def test_preprocess_rejects_bad_input():
    spec = PreprocessSpec(input_size=(8, 8), channels=1, mean=(0.5,), std=(0.25,))
    with pytest.raises(DataError, match="NaN"):
        spec(np.full((1, 8, 8), np.nan, dtype=np.float32))
    with pytest.raises(DataError, match="channel"):
        spec(np.zeros((1, 8, 8, 3), dtype=np.uint8))
    with pytest.raises(DataError, match="std"):
        PreprocessSpec(input_size=(8, 8), channels=1, mean=(0.5,), std=(0.0,))
