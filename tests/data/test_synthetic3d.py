"""synthetic3d: CT-like phantoms with organ label maps, deterministic, plausible in HU, cached atomically."""

import numpy as np
import pytest

from medfm_compress.data.synthetic3d import (
    SEGMENTATION3D_NAMES,
    Synthetic3DConfig,
    generate_volumes,
    synthetic3d_npz,
)
from medfm_compress.errors import DataError

SMALL = Synthetic3DConfig(seed=1, shape=(48, 36, 26), spacing=(8.0, 7.5, 7.5), n_train=6, n_val=1, n_test=3)


@pytest.fixture(scope="module")
def arrays():
    return generate_volumes(SMALL)


def test_shapes_types_and_determinism(arrays):
    assert arrays["train_images"].shape == (6, 48, 36, 26) and arrays["train_images"].dtype == np.int16
    assert arrays["test_masks"].shape == (3, 48, 36, 26) and arrays["test_masks"].dtype == np.uint8
    assert arrays["spacing"].tolist() == [8.0, 7.5, 7.5]
    again = generate_volumes(SMALL)
    for k in ("train_images", "train_masks", "val_images", "test_masks"):
        np.testing.assert_array_equal(arrays[k], again[k])
    other = generate_volumes(Synthetic3DConfig(**{**SMALL.__dict__, "seed": 2}))
    assert not np.array_equal(arrays["train_images"], other["train_images"])
    assert not np.array_equal(arrays["train_images"], arrays["val_images"][:1].repeat(6, 0))


def test_organs_in_every_case_and_plausible_hounsfield_units(arrays):
    images = np.concatenate([arrays[f"{s}_images"] for s in ("train", "val", "test")]).astype(np.float64)
    masks = np.concatenate([arrays[f"{s}_masks"] for s in ("train", "val", "test")])
    assert set(np.unique(masks)) <= set(range(len(SEGMENTATION3D_NAMES)))
    for case in range(len(masks)):
        present = set(np.unique(masks[case]).tolist())
        assert {0, 1, 2, 3} <= present, f"case {case} lacks an organ: {present}"
    with_lesion = [(masks[c] == 4).any() for c in range(len(masks))]
    assert any(with_lesion) and not all(with_lesion)
    median = {k: np.median(images[masks == k]) for k in range(1, 5)}
    assert 40 < median[1] < 90 and 30 < median[2] < 75 and 70 < median[3] < 220
    assert median[4] < median[1] - 10  # hypodense lesions
    corner = images[:, :3, :3, :]  # outside the body: air
    assert np.median(corner) < -900
    assert (images > 400).any(axis=(1, 2, 3)).all()  # bone (above any soft tissue or the aorta) in every case
    body = (images > -500) & (masks == 0)
    assert 0.2 < body.mean() < 0.8


def test_noise_and_partial_volume(arrays):
    vol, mask = arrays["train_images"][0].astype(np.float64), arrays["train_masks"][0]
    # Noise: the spread of HU deep inside the liver (eroded by two voxels) is that of CT noise, not zero.
    from scipy import ndimage

    deep = ndimage.binary_erosion(mask == 1, iterations=2)
    assert deep.sum() > 50 and 5 < vol[deep].std() < 30
    # Partial volume: voxels at the air-body border take HU between air and fat.
    edge = ndimage.binary_dilation(vol > -500) & ~(vol > -500)
    assert ((vol[edge] > -950) & (vol[edge] < -500)).mean() > 0.3


def test_cached_once_and_read_back(tmp_path, arrays):
    path = synthetic3d_npz(SMALL, tmp_path)
    stamp = path.stat().st_mtime_ns
    assert synthetic3d_npz(SMALL, tmp_path) == path and path.stat().st_mtime_ns == stamp
    with np.load(path) as z:
        np.testing.assert_array_equal(z["test_images"], arrays["test_images"])
        assert list(np.atleast_1d(z["spacing"])) == [8.0, 7.5, 7.5]
    assert not list(path.parent.glob("*.tmp*"))


@pytest.mark.parametrize(("field", "value", "match"), [
    ("shape", (48, 8, 26), "shape"), ("spacing", (1.0, 0.0, 1.0), "spacing"), ("n_train", 0, "n_train"),
])
def test_bad_configs_say_what(field, value, match):
    with pytest.raises(DataError, match=match):
        Synthetic3DConfig(**{**SMALL.__dict__, field: value})
