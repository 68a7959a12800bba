"""segment_volume: a 3-D segmentation ONNX model over a whole volume by sliding windows, as MONAI does it (the
model's preprocessing, Gaussian blending, padding with air), in the runtime; wrong models and bad volumes refused."""

import numpy as np
import pytest
from support.volume_fixtures import conv3d_seg_model

from medfm_compress.errors import DataError, ModelError
from medfm_compress.runtime import Engine
from medfm_compress.runtime.sliding_window import segment_volume

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
NAMES = ["background", "liver", "spleen", "kidney"]
PATCH = (16, 16, 12)
WINDOW = (-200.0, 300.0)


@pytest.fixture(scope="module")
def params():
    rng = np.random.default_rng(0)
    w = (rng.normal(0, 0.3, (6, 1, 3, 3, 3)).astype(np.float32), rng.normal(0, 0.3, (4, 6, 3, 3, 3)).astype(np.float32))
    b = (rng.normal(0, 0.1, 6).astype(np.float32), rng.normal(0, 0.1, 4).astype(np.float32))
    return w, b


def _phantom(shape, seed=1):
    from medfm_compress.data.synthetic3d import Synthetic3DConfig, generate_volumes

    cfg = Synthetic3DConfig(seed=seed, shape=shape, spacing=(8.0, 7.5, 7.5), n_train=1, n_val=1, n_test=1)
    return generate_volumes(cfg)["train_images"][0]


def _monai_mask(volume, params):
    torch = pytest.importorskip("torch")
    inferers = pytest.importorskip("monai.inferers")
    (w1, w2), (b1, b2) = params
    lo, hi = WINDOW
    x = ((np.clip(volume.astype(np.float32), lo, hi) - lo) / (hi - lo) - 0.5) / 0.25

    def net(t):
        h = torch.relu(torch.nn.functional.conv3d(t, torch.from_numpy(w1), torch.from_numpy(b1), padding=1))
        return torch.nn.functional.conv3d(h, torch.from_numpy(w2), torch.from_numpy(b2), padding=1)

    with torch.no_grad():
        out = inferers.sliding_window_inference(torch.from_numpy(x)[None, None], PATCH, 4, net, overlap=0.25,
                                                mode="gaussian", cval=-2.0)
    return out[0].argmax(0).numpy().astype(np.uint8)


@pytest.mark.parametrize(("crop", "batch"), [
    ((slice(None),) * 3, "N"),
    ((slice(None),) * 3, 3),  # an engine of one batch size: the last windows padded to it
    ((slice(4, 44), slice(12, 24), slice(3, 23)), "N"),  # thinner than a window along Y: padded with air
])
def test_masks_match_monai_sliding_window(tmp_path, params, crop, batch):
    volume = np.ascontiguousarray(_phantom((48, 36, 26))[crop])
    model = conv3d_seg_model(tmp_path / "seg3d.onnx", *params, batch=batch)
    calls = []
    with Engine.load(str(model)) as eng:
        mask = segment_volume(eng, volume, sw_batch_size=4, progress=lambda d, t: calls.append((d, t)))
    expected = _monai_mask(volume, params)
    assert mask.shape == volume.shape and mask.dtype == np.uint8
    assert (mask == expected).mean() >= 0.999
    assert len(np.unique(mask)) > 1 and calls[-1][0] == calls[-1][1]


def test_wrong_models_and_bad_volumes_are_refused(tmp_path, params):
    volume = _phantom((48, 36, 26)).astype(np.float32)
    flat = conv3d_seg_model(tmp_path / "seg2d.onnx", (params[0][0][..., 1], params[0][1][..., 1]), params[1],
                       input_size=(16, 16))
    with Engine.load(str(flat)) as eng, pytest.raises(ModelError, match="takes 2-D images .* needs a 3-D"):
        segment_volume(eng, volume)
    cls = conv3d_seg_model(tmp_path / "cls.onnx", *params, task="multiclass")
    with Engine.load(str(cls)) as eng, pytest.raises(ModelError, match="is a multiclass model"):
        segment_volume(eng, volume)
    seg = conv3d_seg_model(tmp_path / "seg3d.onnx", *params)
    volume[3, 4, 5] = np.nan
    with Engine.load(str(seg)) as eng:
        with pytest.raises(DataError, match="1 NaN or infinite voxels"):
            segment_volume(eng, volume)
        with pytest.raises(ModelError, match=r"is \(X, Y, Z\)"):
            segment_volume(eng, volume[0])
