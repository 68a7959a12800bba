"""smp:ARCH:ENCODER: segmentation-models-pytorch networks on timm encoders, built offline with random weights."""

import pytest

from medfm_compress.errors import ModelError
from medfm_compress.models.factory import check_model_spec, count_params, create_model

torch = pytest.importorskip("torch")
pytest.importorskip("segmentation_models_pytorch")


@pytest.mark.parametrize("spec", ["smp:Unet:tu-mobilenetv3_small_100", "smp:FPN:tu-medfm_resnet10_w16"])
def test_smp_model_outputs_one_map_per_class_at_the_input_size(spec):
    torch.manual_seed(0)
    model = create_model(spec, num_classes=6, in_chans=1).eval()
    with torch.no_grad():
        y = model(torch.randn(2, 1, 64, 64))
    assert tuple(y.shape) == (2, 6, 64, 64) and torch.isfinite(y).all()
    assert count_params(model) > 0


@pytest.mark.parametrize("spec, match", [
    ("smp:Unet", r"must be smp:ARCH:ENCODER"),
    ("smp:Unetx:tu-resnet18", r"unknown smp architecture 'Unetx'; one of .*unet"),
    ("smp:Unet:tu-resnet_nope", r"unknown timm architecture 'resnet_nope'"),
    ("smp:Unet:nope", r"unknown smp encoder 'nope'; use a timm encoder as tu-NAME"),
])
def test_bad_smp_specs_are_refused_before_building(spec, match):
    with pytest.raises(ModelError, match=match) as e:
        check_model_spec(spec)
    assert "\n" not in str(e.value)


def test_smp_build_error_is_one_line():
    with pytest.raises(ModelError, match="could not build Unet on tu-resnet18") as e:
        create_model("smp:Unet:tu-resnet18", 3, 1, encoder_depth=9)
    assert "\n" not in str(e.value)
