"""predict with a segmentation model: PNG label maps at each input's own size and a CSV of class areas."""

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from support.tiny import TINY_SEG_DATA

from medfm_compress.cli import cli

pytest.importorskip("torch")


def _images(folder, sizes):
    from medfm_compress.data import load_data

    test = load_data(TINY_SEG_DATA).split("test")
    folder.mkdir()
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(test.images[i]).resize((w, h), Image.BILINEAR).save(folder / f"case{i}.png")
    return test


def test_masks_come_back_at_each_image_size_with_their_areas(seg_run, tmp_path):
    from medfm_compress.runtime import Engine
    from medfm_compress.runtime.images import read_image_file, resize_mask

    sizes = [(32, 32), (512, 512), (60, 40)]
    _images(tmp_path / "in", sizes)
    out = tmp_path / "pred"
    model = seg_run / "student.onnx"
    r = CliRunner().invoke(cli, ["predict", str(model), str(tmp_path / "in"), "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    assert "label map(s) at each image's size" in r.output
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    labels = json.loads((out / "predictions.json").read_text())["label_names"]
    assert [c for c in rows[0] if c.startswith("area_")] == [f"area_{n}" for n in labels]
    eng = Engine.load(str(model))
    try:
        for (h, w), row in zip(sizes, rows, strict=True):
            mask = np.asarray(Image.open(out / row["mask"]))
            assert mask.shape == (h, w) and mask.dtype == np.uint8 and mask.max() < len(labels)
            assert sum(int(row[f"area_{n}"]) for n in labels) == h * w
            # The mask is the model's argmax at its input size, brought back with nearest-neighbour.
            raw = read_image_file(row["file"], None)
            want = resize_mask(eng.run(eng.preprocess(raw[None])).argmax(1)[0].astype(np.uint8), (h, w))
            np.testing.assert_array_equal(mask, want)
    finally:
        eng.close()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_a_bad_case_leaves_the_previous_masks_intact(seg_run, tmp_path):
    _images(tmp_path / "in", [(32, 32), (32, 32)])
    out = tmp_path / "pred"
    model = str(seg_run / "student.onnx")
    assert CliRunner().invoke(cli, ["predict", model, str(tmp_path / "in"), "--out", str(out), "--quiet"]).exit_code == 0
    before = sorted(p.name for p in (out / "masks").iterdir())
    (tmp_path / "in" / "broken.png").write_bytes(b"not a png")
    r = CliRunner().invoke(cli, ["predict", model, str(tmp_path / "in"), "--out", str(out), "--quiet"])
    assert r.exit_code == 1 and "broken.png" in r.output
    assert sorted(p.name for p in (out / "masks").iterdir()) == before
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    # With --skip-bad the bad case is a row with its reason, and the masks folder is replaced.
    r = CliRunner().invoke(cli, ["predict", model, str(tmp_path / "in"), "--out", str(out), "--quiet", "--skip-bad"])
    assert r.exit_code == 0, r.output
    rows = {row["file"].rsplit("/", 1)[-1]: row for row in csv.DictReader(open(out / "predictions.csv"))}
    assert rows["broken.png"]["error"] and not rows["broken.png"]["mask"]
    assert sorted(p.name for p in (out / "masks").iterdir()) == before
