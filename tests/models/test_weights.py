import os
import pickle

import pytest
import torch

from medfm_compress.errors import ModelError
from medfm_compress.models import create_model, load_weights, parse_model_spec, save_state_dict


class _Payload:
    """Unpickling this would create a file: the weights loader must refuse it before that happens."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_timm_spec_adapts_channels_and_classes():
    m = create_model("timm:medfm_resnet10_w16", num_classes=3, in_chans=1)
    assert m(torch.zeros(2, 1, 32, 32)).shape == (2, 3)
    v = create_model("timm:vit_tiny_patch16_224", num_classes=2, in_chans=1, img_size=32)
    assert v(torch.zeros(1, 1, 32, 32)).shape == (1, 2)


def test_bad_specs():
    with pytest.raises(ModelError, match="unknown timm architecture"):
        create_model("timm:resnet_does_not_exist", 2, 1)
    with pytest.raises(ModelError, match="KIND:NAME"):
        parse_model_spec("resnet18")
    with pytest.raises(ModelError, match="cannot import"):
        create_model("python:no_such_module_xyz:make", 2, 1)


def test_python_factory(tmp_path, monkeypatch):
    (tmp_path / "my_fm.py").write_text(
        "import torch\n"
        "def make(num_classes, in_chans):\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(in_chans * 16, num_classes))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    m = create_model("python:my_fm:make", 3, 1)
    assert m(torch.zeros(1, 1, 4, 4)).shape == (1, 3)


def test_safetensors_roundtrip_and_mismatch(tmp_path):
    m = create_model("timm:medfm_resnet10_w16", 3, 1)
    path = save_state_dict(m, tmp_path / "w.safetensors")
    m2 = create_model("timm:medfm_resnet10_w16", 3, 1)
    load_weights(m2, path)
    for a, b in zip(m.state_dict().values(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    wrong = create_model("timm:medfm_resnet10_w16", 5, 1)
    with pytest.raises(ModelError, match="shape mismatch at .*fc.weight"):
        load_weights(wrong, path)
    other = create_model("timm:medfm_resnet10_w32", 3, 1)
    with pytest.raises(ModelError, match="does not match"):
        load_weights(other, path)


def test_pt_with_code_payload_is_refused_and_runs_nothing(tmp_path):
    target = tmp_path / "pwned.txt"
    bad = tmp_path / "evil.pt"
    with open(bad, "wb") as fh:
        pickle.dump({"weight": _Payload(str(target))}, fh)
    m = create_model("timm:medfm_resnet10_w16", 3, 1)
    with pytest.raises(ModelError, match="refused"):
        load_weights(m, bad)
    assert not target.exists()


def test_plain_pt_state_dict_loads(tmp_path):
    m = create_model("timm:medfm_resnet10_w16", 3, 1)
    torch.save({"state_dict": {"module." + k: v for k, v in m.state_dict().items()}}, tmp_path / "w.pt")
    m2 = create_model("timm:medfm_resnet10_w16", 3, 1)
    load_weights(m2, tmp_path / "w.pt")
    assert os.path.exists(tmp_path / "w.pt")


def test_corrupt_safetensors(tmp_path):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(b"\x00\x01garbage")
    with pytest.raises(ModelError, match="not a valid safetensors"):
        load_weights(create_model("timm:medfm_resnet10_w16", 3, 1), p)
