"""A folder that mixes colour and grey images (or sizes) is refused naming the file that breaks it, with the fix
that applies; ``?channels=1|3`` converts by a stated rule (luminance, or repetition)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from medfm_compress.data import load_data
from medfm_compress.errors import DataError
from medfm_compress.runtime.images import LUMA_WEIGHTS, to_channels

FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def _grey_folder(root: Path, n: int = 6, size: int = 16) -> Path:
    rng = np.random.default_rng(0)
    rows = ["file,label"]
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(root / f"g{i}.png")
        rows.append(f"g{i}.png,{'ab'[i % 2]}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_to_channels_uses_luminance_and_repetition():
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]]], dtype=np.uint8)
    grey = to_channels(rgb, 1)
    expect = np.rint(rgb.astype(float) @ np.array(LUMA_WEIGHTS)).astype(np.uint8)
    assert grey.dtype == np.uint8 and np.array_equal(grey, expect)
    assert np.array_equal(to_channels(grey, 3)[..., 2], grey) and to_channels(grey, 3).shape == (1, 4, 3)
    assert to_channels(grey, 1) is grey


def test_a_colour_image_among_grey_ones_is_named_and_converted_by_channels_1(tmp_path):
    root = _grey_folder(tmp_path)
    colour = np.zeros((16, 16, 3), dtype=np.uint8)
    colour[..., 0] = 200
    Image.fromarray(colour).save(root / "rgb.png")
    (root / "labels.csv").write_text((root / "labels.csv").read_text() + "rgb.png,a\n")
    with pytest.raises(DataError) as e:
        load_data(f"folder:{root}")
    msg = str(e.value)
    assert "rgb.png is a 16x16 colour uint8 image" in msg and "?channels=1" in msg and "remove the file" in msg
    assert "\n" not in msg
    data = load_data(f"folder:{root}?channels=1")
    assert data.channels == 1
    split = next(s for s in data.splits.values() if "rgb.png" in list(s.files))
    k = list(split.files).index("rgb.png")
    assert int(np.asarray(split.images[k]).max()) == round(200 * LUMA_WEIGHTS[0])


def test_a_grey_image_among_colour_ones_is_offered_channels_3(tmp_path):
    rng = np.random.default_rng(1)
    rows = ["file,label"]
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / f"c{i}.png")
        rows.append(f"c{i}.png,{'ab'[i % 2]}")
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(tmp_path / "grey.png")
    (tmp_path / "labels.csv").write_text("\n".join(rows + ["grey.png,a"]) + "\n")
    with pytest.raises(DataError, match=r"grey.png is a 16x16 grey uint8 image.*\?channels=3"):
        load_data(f"folder:{tmp_path}")
    assert load_data(f"folder:{tmp_path}?channels=3").channels == 3


def test_a_size_that_differs_is_named_with_the_resize_fix(tmp_path):
    root = _grey_folder(tmp_path)
    Image.fromarray(np.zeros((20, 16), dtype=np.uint8)).save(root / "tall.png")
    (root / "labels.csv").write_text((root / "labels.csv").read_text() + "tall.png,a\n")
    with pytest.raises(DataError, match=r"tall.png is a 16x20 grey uint8 image, but g0.png .*\?size=N"):
        load_data(f"folder:{root}")


@pytest.mark.filterwarnings("ignore:Expected explicit VR")
def test_a_colour_dicom_among_grey_ones_is_named_even_with_a_size(tmp_path):
    # Real files shipped with pydicom: a CT, an MR and a colour secondary capture (RLE, decoded by pydicom itself).
    for name in ("CT_small.dcm", "MR_small.dcm", "SC_rgb_rle.dcm"):
        shutil.copy(FILES / name, tmp_path / name)
    rgb = "SC_rgb_rle.dcm"
    with pytest.raises(DataError) as e:
        load_data(f"dicom:{tmp_path}?size=32", require_labels=False)
    assert f"{rgb} is a 32x32 colour float32 image" in str(e.value) and "?channels=1" in str(e.value)
    data = load_data(f"dicom:{tmp_path}?size=32&channels=1", require_labels=False)
    assert data.split("train").images.shape == (3, 32, 32)


def test_channels_takes_one_or_three(tmp_path):
    with pytest.raises(DataError, match="channels=2 .* must be 1"):
        load_data(f"folder:{_grey_folder(tmp_path)}?channels=2")
