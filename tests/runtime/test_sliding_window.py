"""The NumPy sliding window (runtime) gives MONAI's ``sliding_window_inference`` result: schedule, Gaussian and
constant blending, padding of inputs smaller than the window, batches of windows across cases."""

import numpy as np
import pytest

from medfm_compress.errors import ConfigError, ModelError
from medfm_compress.runtime.sliding_window import importance_map, sliding_window, window_starts


def _conv_model(dims: int, classes: int = 3):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    conv = (torch.nn.Conv3d if dims == 3 else torch.nn.Conv2d)(2, classes, 3, padding=1).eval()

    def run_torch(x):
        with torch.no_grad():
            return conv(x)

    def run_numpy(x):
        return run_torch(torch.from_numpy(np.ascontiguousarray(x))).numpy()

    return run_torch, run_numpy


@pytest.mark.parametrize(("shape", "roi", "overlap", "sw", "mode"), [
    ((2, 2, 37, 29, 20), (16, 16, 12), 0.25, 4, "gaussian"),   # uneven sizes, windows moved back at the border
    ((1, 2, 40, 12, 9), (16, 16, 12), 0.5, 3, "gaussian"),     # smaller than the window on two axes: padded
    ((2, 2, 33, 30), (16, 16), 0.25, 1, "constant"),           # 2-D, one window at a time
    ((1, 2, 16, 16, 12), (16, 16, 12), 0.25, 2, "gaussian"),   # exactly one window
])
def test_matches_monai(shape, roi, overlap, sw, mode):
    torch = pytest.importorskip("torch")
    monai_inferers = pytest.importorskip("monai.inferers")
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    run_torch, run_numpy = _conv_model(len(roi))
    expected = monai_inferers.sliding_window_inference(torch.from_numpy(x), roi, sw, run_torch, overlap=overlap,
                                                       mode=mode).numpy()
    calls = []
    got = sliding_window(x, roi, run_numpy, overlap=overlap, sw_batch_size=sw, mode=mode,
                         progress=lambda done, total: calls.append((done, total)))
    assert got.shape == expected.shape == (shape[0], 3, *shape[2:])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert calls[-1][0] == calls[-1][1] and len(calls) == -(-calls[-1][1] // sw)


def test_schedule_and_weights():
    assert window_starts(100, 32, 0.25) == [0, 24, 48, 68]
    assert window_starts(32, 32, 0.25) == [0]
    assert window_starts(33, 32, 0.99) == [0, 1]  # the step is at least one
    w = importance_map((9, 7), "gaussian")
    assert w.shape == (9, 7) and w.max() == pytest.approx(1.0) and w[4, 3] == w.max() and w.min() >= 1e-3
    assert (importance_map((4, 4), "constant") == 1).all()


def test_bad_arguments_and_bad_models_say_so():
    x = np.zeros((1, 1, 20, 20), np.float32)
    ok = lambda b: np.zeros((len(b), 2, 8, 8), np.float32)  # noqa: E731
    with pytest.raises(ConfigError, match="needs inputs"):
        sliding_window(x[0], (8, 8), ok)
    with pytest.raises(ConfigError, match="overlap"):
        sliding_window(x, (8, 8), ok, overlap=1.0)
    with pytest.raises(ConfigError, match="batch size"):
        sliding_window(x, (8, 8), ok, sw_batch_size=0)
    with pytest.raises(ConfigError, match="blend mode"):
        sliding_window(x, (8, 8), ok, mode="median")
    with pytest.raises(ModelError, match="window's size"):
        sliding_window(x, (8, 8), lambda b: np.zeros((len(b), 2, 4, 4), np.float32))


def test_class_argmax_is_argmax_with_first_class_on_ties():
    from medfm_compress.runtime.sliding_window import class_argmax

    rng = np.random.default_rng(0)
    for maps in (rng.standard_normal((5, 9, 7, 4)).astype(np.float32),
                 np.round(rng.standard_normal((4, 6, 5)) * 2),  # many ties
                 rng.standard_normal((1, 3, 3)).astype(np.float32),
                 rng.standard_normal((2, 11)).astype(np.float16)):
        got = class_argmax(maps)
        assert got.dtype == np.uint8 and got.shape == maps.shape[1:]
        np.testing.assert_array_equal(got, maps.argmax(0))
    with pytest.raises(ModelError, match="at most 256 classes"):
        class_argmax(np.zeros((257, 2), np.float32))


def test_unnormalized_blend_has_the_normalized_argmax():
    """segment_volume skips dividing by the per-voxel weight: a positive factor, so the labels are the same."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 1, 40, 37, 21)).astype(np.float32)
    w = rng.standard_normal((3, 1, 1, 1, 1)).astype(np.float32)

    def run(b):
        return (b * w[None, :, 0]).astype(np.float32) + rng.standard_normal((len(b), 3, *b.shape[2:])).astype(
            np.float32)

    rng_state = rng.bit_generator.state
    normalized = sliding_window(x, (16, 16, 8), run, overlap=0.25)
    rng.bit_generator.state = rng_state
    raw = sliding_window(x, (16, 16, 8), run, overlap=0.25, normalize=False)
    assert not np.allclose(raw, normalized)
    np.testing.assert_array_equal(raw.argmax(1), normalized.argmax(1))
