"""Segmentation data: the synthetic task's label maps, segmentation archives, image + mask folders, bad masks."""

import hashlib
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from medfm_compress.data import load_data
from medfm_compress.data.dataset import class_presence
from medfm_compress.data.digest import data_digest, split_labels, split_summary
from medfm_compress.data.synthetic import LABEL_NAMES, SEGMENTATION_NAMES, SyntheticConfig, generate
from medfm_compress.errors import DataError

SEG = "synthetic?task=segmentation&size=32&n_train=60&n_val=8&n_test=20&seed=2"


def test_classification_archive_is_unchanged_by_the_segmentation_option():
    # The digest and images of the classification task predate segmentation: cached teachers stay valid.
    cfg = SyntheticConfig(size=32, n_train=6, n_val=2, n_test=3, seed=5)
    assert cfg.digest() == "36f175c281a44ee0"
    arrays = generate(cfg)
    assert sorted(arrays) == ["label_names", "test_images", "test_labels", "train_images", "train_labels",
                              "val_images", "val_labels"]
    assert hashlib.sha256(arrays["train_images"].tobytes()).hexdigest()[:16] == "6e89688b53a64906"
    seg = generate(SyntheticConfig(size=32, n_train=6, n_val=2, n_test=3, seed=5, task="segmentation"))
    for split in ("train", "val", "test"):  # the same images, with label maps instead of labels
        np.testing.assert_array_equal(seg[f"{split}_images"], arrays[f"{split}_images"])
    assert SyntheticConfig(task="segmentation").digest() != SyntheticConfig().digest()
    assert json.loads(str(arrays["label_names"])) == LABEL_NAMES


def test_synthetic_label_maps_follow_the_drawn_anatomy_and_lesions():
    task = load_data(SEG)
    assert task.task == "segmentation" and task.label_names == SEGMENTATION_NAMES
    train = task.split("train")
    assert train.labels.shape == (60, 32, 32) and train.labels.dtype == np.uint8
    presence = class_presence(train.labels, task.num_classes)
    # Every case shows lungs and heart, and at most one lesion class (the image's class).
    assert presence[:, 1].all() and presence[:, 2].all()
    assert (presence[:, 3:].sum(axis=1) <= 1).all() and presence[:, 3:].any(axis=0).all()
    # Lungs are dark in the image, the heart bright: the map marks what the pixels show.
    img = train.images.astype(np.float32)
    lung = img[train.labels == 1].mean()
    heart = img[train.labels == 2].mean()
    assert heart > lung + 10
    # Deterministic: read again, same maps.
    np.testing.assert_array_equal(load_data(SEG).split("train").labels, train.labels)
    assert "nodule" in split_summary(task)[0]


def test_synthetic_task_option_is_checked():
    with pytest.raises(DataError, match="synthetic task must be one of classification, segmentation"):
        load_data("synthetic?task=detection")


def _folder(root, n=12, size=(24, 20), names=("background", "liver", "tumour")):
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        img = rng.integers(0, 255, size, dtype=np.uint8)
        mask = np.zeros(size, dtype=np.uint8)
        mask[4:12, 3:9] = 1
        if i % 3 == 0:
            mask[6:8, 5:7] = 2
        Image.fromarray(img).save(root / "images" / f"c{i:02d}.png")
        if i % 2:
            np.save(root / "masks" / f"c{i:02d}.npy", mask.astype(np.int32))
        else:
            Image.fromarray(mask).save(root / "masks" / f"c{i:02d}.png")
    if names is not None:
        (root / "labels.json").write_text(json.dumps(list(names)))
    return root


def test_mask_folder_reads_checks_and_resizes_with_nearest(tmp_path):
    root = _folder(tmp_path / "d")
    task = load_data(f"folder:{root}")
    assert task.task == "segmentation" and task.label_names == ["background", "liver", "tumour"]
    assert sum(len(s) for s in task.splits.values()) == 12 and len(task.split("test")) >= 1
    # Each split holds what its files say: images and masks stay paired.
    for split in task.splits.values():
        for rel, img, mask in zip(split.files, split.images, split.labels, strict=True):
            np.testing.assert_array_equal(img, np.asarray(Image.open(root / rel)))
            assert mask[6, 5] == (2 if int(rel[8:10]) % 3 == 0 else 1)
    resized = load_data(f"folder:{root}?size=48")
    m = resized.split("train").labels
    assert m.shape[1:] == (48, 48) and set(np.unique(m)) <= {0, 1, 2}  # nearest: no blended labels
    # The digest sees a relabelled mask.
    before = data_digest(task, f"folder:{root}")["sha256"]
    bad = np.load(root / "masks" / "c01.npy")
    bad[0, 0] = 2
    np.save(root / "masks" / "c01.npy", bad)
    assert data_digest(load_data(f"folder:{root}"), f"folder:{root}")["sha256"] != before
    assert all(lab.startswith("mask:") for lab in split_labels(task, "train"))


def test_mask_folder_without_labels_json_names_classes_by_index(tmp_path):
    task = load_data(f"folder:{_folder(tmp_path / 'd', names=None)}")
    assert task.label_names == ["background", "class_1", "class_2"]


@pytest.mark.parametrize("damage, match", [
    ("missing", r"c03.png has no mask: expected .*c03.png \(or .npy\)"),
    ("shape", r"c04.png is 7x5 but its image c04.png is 20x24; a mask must have its image's size"),
    ("value", r"mask of masks/c05.npy has label value 7, outside the 3 named classes \(0..2: background, liver, tumour\)"),
    ("float", r"c05.npy is a float mask \(float32\); save label maps as integers"),
    ("rgb", r"c04.png is a RGB image; a mask must be a single-channel label map"),
    ("orphan", r"masks/zz.png has no image under"),
])
def test_bad_masks_are_one_line_errors_naming_the_file(tmp_path, damage, match):
    root = _folder(tmp_path / "d")
    if damage == "missing":
        (root / "masks" / "c03.npy").unlink()
    elif damage == "shape":
        Image.fromarray(np.zeros((5, 7), np.uint8)).save(root / "masks" / "c04.png")
    elif damage == "value":
        m = np.load(root / "masks" / "c05.npy")
        m[0, 0] = 7
        np.save(root / "masks" / "c05.npy", m)
    elif damage == "float":
        np.save(root / "masks" / "c05.npy", np.load(root / "masks" / "c05.npy").astype(np.float32))
    elif damage == "rgb":
        Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(root / "masks" / "c04.png")
    elif damage == "orphan":
        Image.fromarray(np.zeros((20, 24), np.uint8)).save(root / "masks" / "zz.png")
    with pytest.raises(DataError, match=match) as e:
        load_data(f"folder:{root}")
    assert "\n" not in str(e.value)


def test_mask_folder_errors_through_the_cli_exit_1_one_line(tmp_path):
    from medfm_compress.cli import cli

    root = _folder(tmp_path / "d")
    (root / "masks" / "c03.npy").unlink()
    out = tmp_path / "run"
    args = ["distill", "--data", f"folder:{root}", "--teacher-epochs", "1", "--epochs", "1", "--out", str(out)]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 1 and "c03.png has no mask" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.parametrize("command", ["distill", "bench"])
def test_a_classifier_given_masks_is_one_line(tmp_path, command):
    from support.onnx_fixtures import tiny_onnx

    from medfm_compress.cli import cli

    root = _folder(tmp_path / "d")
    out = tmp_path / "run"
    if command == "distill":
        args = ["distill", "--data", f"folder:{root}", "--teacher-epochs", "1", "--student", "timm:medfm_resnet10_w16",
                "--epochs", "1", "--out", str(out)]
        want = "--student timm:medfm_resnet10_w16 is an image classifier, but folder:"
    else:
        model = tiny_onnx(tmp_path / "m.onnx")
        args = ["bench", f"m={model}", "--data", f"folder:{root}", "--out", str(out), "--quiet"]
        want = "artifact 'm' is a multiclass model but the data is a segmentation task"
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 1, r.output
    assert want in r.output
    assert len(r.output.strip().splitlines()) == 1 and not out.exists()


def test_segmentation_archive_and_its_errors(tmp_path):
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 255, (10, 16, 16), dtype=np.uint8)
    masks = (rng.random((10, 16, 16)) > 0.7).astype(np.uint8)
    p = tmp_path / "seg.npz"
    np.savez(p, train_images=imgs[:8], train_masks=masks[:8], test_images=imgs[8:], test_masks=masks[8:],
             label_names=np.array(json.dumps(["background", "lesion"])))
    task = load_data(f"medmnist:{p}")
    assert task.task == "segmentation" and task.label_names == ["background", "lesion"] and "val" in task.splits
    np.savez(p, train_images=imgs[:8], train_masks=masks[:8, :8], test_images=imgs[8:], test_masks=masks[8:])
    with pytest.raises(DataError, match="train masks are 8x16 but the images are 16x16"):
        load_data(f"medmnist:{p}")
    np.savez(p, train_images=imgs[:8], train_masks=masks[:8], test_images=imgs[8:], test_masks=masks[8:],
             train_labels=np.zeros(8))
    with pytest.raises(DataError, match="holds both \\*_labels and \\*_masks"):
        load_data(f"medmnist:{p}")
    np.savez(p, train_images=imgs[:8], train_masks=masks[:8] * 3, test_images=imgs[8:], test_masks=masks[8:],
             label_names=np.array(json.dumps(["background", "lesion"])))
    with pytest.raises(DataError, match="train\\[0\\] has label value 3, outside the 2 named classes"):
        load_data(f"medmnist:{p}")
