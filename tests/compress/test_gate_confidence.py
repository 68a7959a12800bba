"""The parity gate says how much its held-out set can show: the number of cases and the 95% interval of the figure
it judges (Wilson for top-1 agreement, a bootstrap over cases for a segmentation model's mean Dice); it judges the
lower bound, refuses a held-out set too small to show its threshold at all, and (``--allow-small-holdout``) warns
where a gate passed on a point value its interval reaches below."""

import numpy as np
import pytest

from medfm_compress.compress.quantize import (
    check_holdout_size,
    gate_confidence,
    gate_passes,
    gate_text,
    parity_report,
)
from medfm_compress.compress.quantize_config import QuantizeConfig
from medfm_compress.errors import ConfigError
from medfm_compress.metrics import wilson_cases_needed, wilson_interval
from medfm_compress.segmetrics import pooled_dice, pooled_dice_interval


def test_wilson_interval_and_the_cases_a_threshold_needs():
    lo, hi = wilson_interval(25, 26)
    assert lo == pytest.approx(0.811, abs=1e-3) and hi == pytest.approx(0.9932, abs=1e-3)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    # n / (n + z^2) >= t: 73 cases that all agree are the fewest that can show 0.95; 381 for 0.99.
    assert wilson_cases_needed(0.95) == 73 and wilson_interval(73, 73)[0] >= 0.95 > wilson_interval(72, 72)[0]
    assert wilson_cases_needed(0.99) == 381


def test_pooled_dice_interval_brackets_the_point_and_is_exact_for_identical_masks():
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 3, (30, 16, 16))
    assert pooled_dice_interval(ref, ref, 3) == (1.0, 1.0)
    noisy = np.where(rng.random(ref.shape) < 0.1, rng.integers(0, 3, ref.shape), ref)
    lo, hi = pooled_dice_interval(noisy, ref, 3)
    assert lo < pooled_dice(noisy, ref, 3) < hi


def _cfg(**gate):
    return QuantizeConfig.from_options(input="m.onnx", **gate)


def test_a_classifier_parity_carries_its_cases_and_wilson_interval():
    ref = np.eye(4)[np.arange(26) % 4]
    got = ref.copy()
    got[0] = np.roll(got[0], 1)  # one of 26 disagrees
    p = parity_report(ref, got, "multiclass")
    assert p["cases"] == 26 and p["top1_agreement"] == pytest.approx(25 / 26)
    assert p["top1_agreement_ci"] == pytest.approx(list(wilson_interval(25, 26)))
    warn = gate_confidence(p, _cfg(min_agreement=0.95, allow_small_holdout=True), "multiclass")
    assert len(warn) == 1 and "26 held-out cases" in warn[0] and "[0.8111, 0.9932]" in warn[0]
    assert "26 cases cannot show 0.95 at all (it takes 73 that all agree)" in warn[0]
    assert gate_confidence(p, _cfg(min_agreement=0.8, allow_small_holdout=True), "multiclass") == []  # clears it
    assert gate_confidence(p, _cfg(min_agreement=0.95), "multiclass") == []  # the gate judged the bound itself


def test_the_gate_judges_the_lower_bound_and_refuses_a_holdout_too_small_to_show_it():
    ref = np.eye(4)[np.arange(26) % 4]
    got = ref.copy()
    got[0] = np.roll(got[0], 1)
    p = parity_report(ref, got, "multiclass")  # 25 of 26: point 0.9615, lower bound 0.8111
    assert gate_passes(p, _cfg(min_agreement=0.8))
    assert not gate_passes(p, _cfg(min_agreement=0.85))  # the point value clears 0.85, its lower bound does not
    assert gate_passes(p, _cfg(min_agreement=0.85, allow_small_holdout=True))
    assert "top-1 agreement (95% lower bound) >= 0.85" in gate_text(_cfg(min_agreement=0.85), "multiclass")
    with pytest.raises(ConfigError, match=r"26 held-out images cannot show top-1 agreement >= 0.95 .* it takes at "
                                          r"least 73 images that all agree.*--allow-small-holdout"):
        check_holdout_size(26, _cfg(min_agreement=0.95), "multiclass")
    check_holdout_size(73, _cfg(min_agreement=0.95), "multiclass")
    check_holdout_size(26, _cfg(min_agreement=0.95, allow_small_holdout=True), "multiclass")
    check_holdout_size(26, _cfg(min_agreement=0.95), "segmentation")  # pixels are not independent cases
    check_holdout_size(26, _cfg(min_agreement=0.95), "multilabel")
    check_holdout_size(26, _cfg(min_agreement=0.0), "multiclass")
    with pytest.raises(ConfigError, match="cannot be shown by the 95% lower bound .* on any number"):
        check_holdout_size(10_000, _cfg(min_agreement=1.0), "multiclass")


def test_a_segmentation_parity_carries_a_bootstrap_interval_of_its_dice():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(12, 3, 8, 8))
    got = ref + rng.normal(scale=0.3, size=ref.shape)
    p = parity_report(ref, got, "segmentation")
    lo, hi = p["mean_dice_ci"]
    assert p["cases"] == 12 and lo <= p["mean_dice"] <= hi
    mid = lo + (p["mean_dice"] - lo) / 2
    assert not gate_passes(p, _cfg(min_dice=mid, min_agreement=0))  # judged by its lower bound
    warn = gate_confidence(p, _cfg(min_dice=mid, min_agreement=0, allow_small_holdout=True), "segmentation")
    assert len(warn) == 1 and "mean Dice vs fp32's masks" in warn[0]
