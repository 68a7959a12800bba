"""Dice, HD95 and the paired bootstrap on label maps (medfm_compress.segmetrics), checked against MONAI."""

import numpy as np
import pytest

from medfm_compress.segmetrics import (
    class_dice,
    dice_per_case,
    dice_summary,
    hd95_per_case,
    mean_dice,
    paired_dice_bootstrap,
    pixel_agreement,
)


def _maps(seed=0, n=6):
    rng = np.random.default_rng(seed)
    ref = rng.integers(0, 4, (n, 16, 16))
    pred = ref.copy()
    pred[:, :5] = 0
    pred[1][pred[1] == 2] = 1
    return pred, ref


def test_dice_matches_monai_where_the_reference_has_the_class():
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    pred, ref = _maps()
    ref[2][ref[2] == 3] = 0  # case 2 lacks class 3 in the reference; the prediction still has it
    ours = dice_per_case(pred, ref, 4)

    def onehot(m):
        return torch.nn.functional.one_hot(torch.as_tensor(m), 4).permute(0, 3, 1, 2)

    theirs = monai_metrics.compute_dice(onehot(pred), onehot(ref), include_background=False, ignore_empty=True).numpy()
    has = ~np.isnan(theirs)
    np.testing.assert_allclose(ours[has], theirs[has], rtol=1e-6)
    # Where the reference lacks the class: a predicted one is a false positive (0), none at all is not scored.
    assert ours[2, 2] == 0.0
    empty = np.zeros((1, 8, 8), int)
    assert np.isnan(dice_per_case(empty, empty, 3)).all()


def test_class_and_mean_dice_average_over_scoring_cases():
    per = np.array([[1.0, np.nan], [0.5, 0.0], [np.nan, np.nan]])
    np.testing.assert_allclose(class_dice(per), [0.75, 0.0])
    assert mean_dice(per) == pytest.approx(0.375)
    pred, ref = _maps()
    s = dice_summary(pred, ref, ["background", "a", "b", "c"])
    assert set(s["dice"]) == {"a", "b", "c"} and s["pixel_accuracy"] == pytest.approx(pixel_agreement(pred, ref))


def test_paired_bootstrap_of_a_mean_dice_difference():
    pred, ref = _maps(n=40)
    worse = pred.copy()
    worse[:, 5:8] = 0
    a, b = dice_per_case(pred, ref, 4), dice_per_case(worse, ref, 4)
    boot = paired_dice_bootstrap(a, b, n_resamples=300)
    assert boot["delta"] < 0 and boot["ci_low"] <= boot["delta"] <= boot["ci_high"] < 0
    same = paired_dice_bootstrap(a, a, n_resamples=100)
    assert same["delta"] == same["ci_low"] == same["ci_high"] == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        paired_dice_bootstrap(a, b[:3])


def test_hd95_from_monai_in_pixels():
    pytest.importorskip("monai")
    ref = np.zeros((2, 32, 32), int)
    ref[:, 8:16, 8:16] = 1
    pred = ref.copy()
    pred[0] = np.roll(pred[0], 3, axis=1)  # shifted 3 pixels
    pred[1] = 0  # class missing from the prediction: not scored
    hd = hd95_per_case(pred, ref, 2)
    assert hd.shape == (2, 1) and hd[0, 0] == pytest.approx(3.0) and np.isnan(hd[1, 0])


def test_hd95_equals_monais_compute_hausdorff_distance():
    """The per-pair path (whole-image edges, absent pairs skipped) gives MONAI's own figures, shapes touching the
    image border and one-pixel specks included."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("monai")
    import warnings

    from monai.metrics import compute_hausdorff_distance
    from scipy import ndimage

    rng = np.random.default_rng(3)
    noise = ndimage.gaussian_filter(rng.normal(size=(24, 40, 36)), (0, 3, 3))
    ref = np.digitize(noise, np.quantile(noise, [0.5, 0.8, 0.97]))  # 4 classes, blobs that touch the border
    pred = np.where(rng.random(ref.shape) < 0.03, rng.integers(0, 4, ref.shape), np.roll(ref, 2, axis=2))
    pred[5], ref[6][ref[6] == 3] = 0, 0  # a class missing from a prediction and from a reference
    hd = hd95_per_case(pred, ref, 4)
    oh = [torch.nn.functional.one_hot(torch.as_tensor(m), 4).permute(0, 3, 1, 2) for m in (pred, ref)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = compute_hausdorff_distance(oh[0], oh[1], include_background=False, percentile=95).numpy()
    both = oh[0].flatten(2).any(-1)[:, 1:].numpy() & oh[1].flatten(2).any(-1)[:, 1:].numpy()
    assert (~both).any() and np.isnan(hd[~both]).all()
    np.testing.assert_allclose(hd[both], expected[both], rtol=1e-6)
    assert np.nanmax(hd) > 2.0  # the shifts and the specks are measured, not all zero


def test_masks_move_with_their_images_under_augmentation():
    torch = pytest.importorskip("torch")
    from medfm_compress.compress.train import augment_batch, augment_masks

    y = torch.zeros(4, 32, 32, dtype=torch.long)
    y[:, 10:20, 12:22] = 3
    x = (y.float() * 50).unsqueeze(1)
    idx = np.array([3, 7, 11, 19])
    xa, ya = augment_batch(x, idx, 0, 1), augment_masks(y, idx, 0, 1)
    assert set(ya.unique().tolist()) == {0, 3} and ya.dtype == y.dtype
    assert ((xa[:, 0] > 75) == (ya == 3)).float().mean() > 0.99
    assert not torch.equal(ya, y)  # it did move


def test_pooled_dice_counts_a_speck_as_its_pixels_not_as_a_case():
    from medfm_compress.segmetrics import dice_per_case, mean_dice, pooled_dice

    ref = np.zeros((4, 8, 8), np.uint8)
    ref[:, 2:6, 2:6] = 1  # class 1: 16 pixels in every case
    ref[0, 0, 0] = 2  # class 2: a one-pixel speck in case 0 only
    pred = ref.copy()
    pred[0, 0, 0] = 0  # the test masks miss the speck
    # Per case, the speck's class scores 0 in case 0, the only case that has it: that class's Dice is 0.
    assert mean_dice(dice_per_case(pred, ref, 3)) == pytest.approx(0.5)
    # Pooled over the cases' pixels, class 1 agrees fully and class 2 has 0 of 1 pixel.
    assert pooled_dice(pred, ref, 3) == pytest.approx(0.5)
    pred[1, 0, 1] = 2  # the test masks draw a speck elsewhere too: still one class-2 pixel each, no overlap
    assert pooled_dice(pred, ref, 3) == pytest.approx((1.0 + 0.0) / 2)
    big = ref.copy()
    big[:, 0, :] = 2  # class 2 over 8 pixels in every case; the test masks miss one of them
    pred = big.copy()
    pred[0, 0, 0] = 0
    assert pooled_dice(pred, big, 3) == pytest.approx((1.0 + 2 * 31 / 63) / 2)
    assert mean_dice(dice_per_case(pred, big, 3)) == pytest.approx((1.0 + (2 * 7 / 15 + 3) / 4) / 2)
    assert pooled_dice(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)), 3) == 1.0
    with pytest.raises(ValueError, match="differ in shape"):
        pooled_dice(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)), 3)
