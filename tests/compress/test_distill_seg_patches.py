"""2-D segmentation at the images' own resolution (``folder:DIR?patch=H,W``): training patches with foreground
oversampling, whole held-out images scored by sliding windows, and the same windows in predict and bench."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from medfm_compress.cli import cli
from medfm_compress.data import load_data
from medfm_compress.data.patches import case_shapes
from medfm_compress.errors import DataError

torch = pytest.importorskip("torch")
pytest.importorskip("segmentation_models_pytorch")
pytest.importorskip("monai")

TEACHER = "smp:Unet:tu-medfm_resnet10_w16"
STUDENT = "smp:Linknet:tu-medfm_resnet10_w16"
SIZES = [(64, 48)] * 14 + [(56, 72)] * 6  # (H, W): two sizes in one folder


def _folder(root, sizes=SIZES):
    """Grey images of bright blobs on a dark background; the mask is a threshold of them (1 above 100, 2 above
    200), as a CT's tissue and bone are; neighbours share a group in pairs; test holds images of both sizes."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = ["file,group,split"]
    for i, (h, w) in enumerate(sizes):
        yy, xx = np.mgrid[:h, :w]
        img = np.zeros((h, w), np.float32)
        for _ in range(3):
            cy, cx, r = rng.uniform(8, h - 8), rng.uniform(8, w - 8), rng.uniform(5, 12)
            img = np.maximum(img, 230 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)))
        img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
        mask = np.where(img > 200, 2, np.where(img > 100, 1, 0)).astype(np.uint8)
        Image.fromarray(img).save(root / "images" / f"c{i:02d}.png")
        Image.fromarray(mask).save(root / "masks" / f"c{i:02d}.png")
        split = "test" if 12 <= i < 16 else "val" if 16 <= i < 18 else "train"
        rows.append(f"images/c{i:02d}.png,g{i // 2},{split}")
    (root / "labels.json").write_text(json.dumps(["background", "tissue", "bone"]))
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_patches_from_images_of_two_sizes_and_whole_held_out_images(tmp_path):
    root = _folder(tmp_path / "seg")
    task = load_data(f"folder:{root}?patch=32,32&per_case=5&fg=0.6")
    train, test = task.split("train"), task.split("test")
    assert task.whole_cases and not task.volumes and task.image_size == (32, 32) and task.cases.spacing_mm is None
    assert train.images.shape[1:] == (32, 32) and len(train) == 5 * 2 * len(set(train.groups))  # groups: pairs
    assert all("@" in f for f in train.files)  # FILE@Y,X: where each patch was cut
    # Whole test images, padded to the largest; their true sizes are kept, and they are the files' own.
    assert test.images.shape[1:] == (64, 72)
    for f, shape in zip(test.files, case_shapes(task, "test"), strict=True):
        i = int(str(f)[-6:-4])
        assert tuple(shape) == SIZES[i]
    # Patches hold the foreground more often than the images do (a centred fraction of 0.6).
    fg_patch = (train.labels == 2).mean()
    fg_image = np.mean([(np.asarray(Image.open(root / "masks" / f"c{i:02d}.png")) == 2).mean() for i in range(20)])
    assert fg_patch > fg_image
    # The same images without ?patch= keep today's behaviour: one size is required and named.
    with pytest.raises(DataError, match=r"c14.png is a 72x56 grey uint8 image .* add \?size=N"):
        load_data(f"folder:{root}")


@pytest.mark.parametrize("spec, match", [
    ("?per_case=4", r"option per_case .* applies to patches: add \?patch=H,W"),
    ("?patch=32", r"patch='32' .* must be 2 positive integers"),
    ("?patch=32,32&fg=2", r"fg='2' .* in \[0, 1\]"),
])
def test_patch_options_are_checked(tmp_path, spec, match):
    root = _folder(tmp_path / "seg", SIZES[:10])
    with pytest.raises(DataError, match=match):
        load_data(f"folder:{root}{spec}")


def test_patch_on_a_classification_folder_is_refused(tmp_path):
    (tmp_path / "imgs").mkdir()
    for i in range(4):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    (tmp_path / "imgs" / "labels.csv").write_text("file,label\n" + "".join(f"{i}.png,a\n" for i in range(4)))
    with pytest.raises(DataError, match="not a segmentation folder"):
        load_data(f"folder:{tmp_path / 'imgs'}?patch=4,4")


def test_distill_on_patches_scores_whole_images_as_predict_and_bench_segment_them(tmp_path):
    from medfm_compress.compress.distill import DistillConfig, distill
    from medfm_compress.compress.tasks.segmentation import predict_masks
    from medfm_compress.models.card import ModelCard
    from medfm_compress.models.weights import load_weights
    from medfm_compress.segmetrics import dice_per_case

    root = _folder(tmp_path / "seg")
    spec = f"folder:{root}?patch=32,32&per_case=6"
    run = tmp_path / "run"
    res = distill(DistillConfig.from_options(data=spec, out=str(run), teacher=TEACHER, teacher_steps=12,
                                             student=STUDENT, steps=12, batch_size=8, progress=False))
    m = res.metrics
    card = ModelCard.load(run / "student.json")
    assert card.preprocess.tiles and tuple(card.preprocess.input_size) == (32, 32)
    # The scores are of whole test images at their own size, segmented by windows of the patch.
    task = load_data(spec)
    test, shapes = task.split("test"), case_shapes(task, "test")
    model = card.build()
    load_weights(model, run / "student.safetensors")
    x = torch.from_numpy(card.preprocess.whole(test.images))
    pred = predict_masks(model, x, roi=(32, 32), shapes=shapes)
    assert [p.shape for p in pred] == [tuple(s) for s in shapes]
    per_case = np.concatenate([dice_per_case(p[None], test.labels[i][None, :s[0], :s[1]], 3)
                               for i, (p, s) in enumerate(zip(pred, shapes, strict=True))])
    assert float(np.nanmean(np.nanmean(per_case, axis=1))) == pytest.approx(m["student"]["mean_dice"], abs=1e-6)

    r = CliRunner().invoke(cli, ["export", str(run)])
    assert r.exit_code == 0, r.output
    onnx = run / "student.onnx"
    # predict: each file's mask at its own size from windows over the whole image, as training scored it.
    files = [root / str(f) for f in test.files]
    r = CliRunner().invoke(cli, ["predict", str(onnx), *map(str, files), "--out", str(tmp_path / "pred"), "--quiet"])
    assert r.exit_code == 0, r.output
    for f, p in zip(files, pred, strict=True):
        mask = np.asarray(Image.open(tmp_path / "pred" / "masks" / f.name))
        assert mask.shape == p.shape and (mask == p).mean() >= 0.999
    # bench: the same Dice from the ONNX on the same whole images.
    r = CliRunner().invoke(cli, ["bench", f"fp32={onnx}", "--data", spec, "--out", str(tmp_path / "b"), "--quiet",
                                 "--iterations", "3", "--warmup", "1"])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    fp32 = report["artifacts"][0]
    assert fp32["metrics"]["mean_dice"] == pytest.approx(m["student"]["mean_dice"], abs=2e-3)
    assert report["data"]["case_shapes"] == [list(s) for s in shapes]
    assert fp32["end_to_end"]["n"] >= 1
    # A model trained on patches is refused on data that resizes whole images, with the fix.
    r = CliRunner().invoke(cli, ["bench", f"fp32={onnx}", "--data", f"folder:{root}?size=48", "--quiet"])
    assert r.exit_code == 1 and r.output.count("\n") == 1
    assert "was trained on 32x32 patches at the images' own resolution" in r.output and "?patch=32,32" in r.output


def test_tiles_travel_in_the_card_and_the_onnx_metadata_and_only_for_2d():
    from medfm_compress.runtime.metadata import ModelMeta, decode_metadata, encode_metadata
    from medfm_compress.runtime.preprocess import PreprocessSpec

    pre = PreprocessSpec(input_size=(32, 32), channels=1, mean=(0.2,), std=(0.3,), tiles=True)
    assert PreprocessSpec.from_dict(pre.to_dict()) == pre and pre.windowed
    plain = PreprocessSpec(input_size=(32, 32), channels=1, mean=(0.2,), std=(0.3,))
    assert "tiles" not in plain.to_dict() and not plain.windowed  # cards of whole-image models are unchanged
    props = encode_metadata(ModelMeta(preprocess=pre, task="segmentation", label_names=["background", "a"]))
    assert props["medfm.tiles"] == "1" and decode_metadata(props).preprocess.tiles
    # Whole images go through the preprocessing unresized; a whole-image model refuses them.
    img = np.arange(50 * 70, dtype=np.uint8).reshape(1, 50, 70)
    assert pre.whole(img).shape == (1, 1, 50, 70)
    with pytest.raises(DataError, match="takes images resized to 32x32"):
        plain.whole(img)
    with pytest.raises(DataError, match="tiles marks a 2-D model"):
        PreprocessSpec(input_size=(8, 8, 8), channels=1, mean=(0.2,), std=(0.3,), tiles=True)
