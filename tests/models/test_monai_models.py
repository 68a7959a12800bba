"""monai:NET?KEY=VALUE: MONAI networks built offline from a spec, 3-D by default; bad specs refused in one line.
Model kinds are a registry."""

import subprocess
import sys

import pytest

from medfm_compress.errors import ModelError
from medfm_compress.models.factory import (
    ModelKind,
    check_model_spec,
    count_params,
    create_model,
    is_dense_kind,
    model_kinds,
    register_model_kind,
)
from medfm_compress.models.monai_nets import parse_monai_spec

torch = pytest.importorskip("torch")
pytest.importorskip("monai")


@pytest.mark.parametrize(("spec", "shape"), [
    ("monai:UNet?channels=8,16,32&strides=2,2&num_res_units=1", (1, 1, 32, 32, 24)),
    ("monai:SegResNet?init_filters=8&blocks_down=1,1,1&blocks_up=1,1", (1, 1, 32, 32, 24)),
    ("monai:BasicUNet?features=4,4,8,16,32,4", (1, 1, 32, 32, 32)),
    ("monai:UNet?spatial_dims=2&channels=8,16&strides=2,", (2, 1, 32, 32)),  # "2,": a one-item tuple
])
def test_monai_model_outputs_one_map_per_class_at_the_input_size(spec, shape):
    torch.manual_seed(0)
    model = create_model(spec, num_classes=5, in_chans=1).eval()
    with torch.no_grad():
        y = model(torch.randn(*shape))
    assert tuple(y.shape) == (shape[0], 5, *shape[2:]) and torch.isfinite(y).all()
    assert count_params(model) > 0


def test_spec_values_are_typed():
    net, opts = parse_monai_spec("UNet?channels=8,16&strides=2&dropout=0.1&bias=false&act=PRELU")
    assert net == "UNet" and opts == {"channels": (8, 16), "strides": 2, "dropout": 0.1, "bias": False,
                                      "act": "PRELU"}


@pytest.mark.parametrize(("spec", "match"), [
    ("monai:UNetz", r"unknown MONAI network 'UNetz'"),
    ("monai:UNet", r"monai:UNet needs channels, strides: give them in the spec"),
    ("monai:UNet?channels=8,16&strides=2&colour=red", r"monai:UNet takes no colour; its options: spatial_dims"),
    ("monai:UNet?channels=8,16&strides=2&out_channels=3", r"sets out_channels; it comes from the data"),
    ("monai:UNet?channels", r"option 'channels' in 'monai:UNet\?channels' must be KEY=VALUE"),
])
def test_bad_monai_specs_are_refused_before_building(spec, match):
    with pytest.raises(ModelError, match=match) as e:
        check_model_spec(spec)
    assert "\n" not in str(e.value)


def test_build_error_is_one_line():
    with pytest.raises(ModelError, match="MONAI could not build UNet") as e:
        create_model("monai:UNet?channels=8,16,32&strides=2", 3, 1)  # one stride too few
    assert "\n" not in str(e.value)


def test_kinds_are_a_registry_and_monai_stays_lazy():
    assert {"timm", "smp", "python", "monai"} <= set(model_kinds())
    assert is_dense_kind("monai") and is_dense_kind("smp") and not is_dense_kind("timm")
    built = []
    register_model_kind(ModelKind("toy", lambda name, k, c, s, **kw: built.append((name, k, c)) or torch.nn.Identity(),
                                  dense=True))
    try:
        assert isinstance(create_model("toy:any", 3, 1), torch.nn.Identity) and built == [("any", 3, 1)]
        assert is_dense_kind("toy")
    finally:
        from medfm_compress.models import kinds

        kinds._KINDS.pop("toy")
    code = "import sys, medfm_compress.models.factory; print('monai' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize(("modules", "spec"), [(("monai", "monai.networks"), "monai:UNet?channels=8,16&strides=2,"),
                                               (("segmentation_models_pytorch",), "smp:Unet:tu-resnet18")])
def test_a_missing_network_library_names_its_extra(monkeypatch, modules, spec):
    from medfm_compress.errors import BackendMissingError

    for module in modules:  # as in an install without the [seg] extra
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(BackendMissingError, match=r"is not installed; install it with: pip install "
                                                  r"'medfm-compress\[seg\]'") as e:
        check_model_spec(spec)
    assert "\n" not in str(e.value)
