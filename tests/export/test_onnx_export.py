"""ONNX export: self-check on a real run, metadata round trip, safe loading of untrusted files."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from medfm_compress.cli import cli
from medfm_compress.errors import ExportError, ModelError
from medfm_compress.export.onnx import ExportConfig, export_onnx
from medfm_compress.export.onnx_build import export_model_to_onnx
from medfm_compress.models import load_model
from medfm_compress.runtime.metadata import ModelMeta
from medfm_compress.runtime.onnx_loader import load_onnx_checked, ort_session, read_meta, run_onnx


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "student.onnx"
    res = export_onnx(ExportConfig(source=str(tiny_run), out=str(out)))
    return res


def test_export_self_checks_on_real_data_and_records_manifest(exported, tiny_run):
    res = exported
    assert res.path.is_file() and res.size_bytes == res.path.stat().st_size
    assert res.check["real_n"] > 0 and res.check["random_n"] > 0
    assert res.check["max_abs"] <= 1e-4 and res.check["cosine"] > 0.99999
    manifest = json.loads((tiny_run / "manifest.json").read_text())
    rec = [s for s in manifest["stages"] if s["stage"] == "export"][-1]
    assert rec["outputs"]["onnx"]["sha256"]
    assert rec["metrics"]["check"]["max_abs"] == res.check["max_abs"]


def test_exported_graph_has_dynamic_batch_and_fixed_names(exported, tiny_run):
    proto = load_onnx_checked(exported.path)
    inp, out = proto.graph.input[0], proto.graph.output[0]
    assert (inp.name, out.name) == ("input", "logits")
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and dims[0].dim_value == 0
    assert [d.dim_value for d in dims[2:]] == [32, 32] and dims[1].dim_value in (1, 3)
    # Different batch sizes run and match torch.
    model, card = load_model(tiny_run)
    sess = ort_session(proto)
    x = np.random.default_rng(0).standard_normal((5, *[d.dim_value for d in dims[1:]])).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run_onnx(sess, x, batch_size=3), ref, atol=1e-4)


def test_metadata_round_trip(exported, tiny_run):
    _, card = load_model(tiny_run)
    meta = read_meta(exported.path)
    assert meta.preprocess == card.preprocess
    assert meta.task == card.task and meta.label_names == card.label_names and meta.arch == card.arch
    assert meta.precision == "fp32"
    assert len(meta.provenance["source_weights_sha256"]) == 64
    assert meta.provenance["tool"].startswith("medfm-compress")
    assert meta.provenance["check_data"] == card.provenance["data"]


def test_export_model_to_onnx_writes_atomically(tmp_path, tiny_run):
    model, card = load_model(tiny_run)
    meta = ModelMeta.from_card(card)
    h, w = card.preprocess.input_size
    path = export_model_to_onnx(
        model, meta, tmp_path / "m.onnx", torch.zeros(1, card.in_chans, h, w), simplify=False
    )
    assert read_meta(path).arch == card.arch
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_parity_failure_writes_nothing(tiny_run, tmp_path):
    out = tmp_path / "x.onnx"
    with pytest.raises(ExportError, match="atol"):
        export_onnx(ExportConfig(source=str(tiny_run), out=str(out), atol=1e-12, num_check=8))
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_cli_export(tiny_run, tmp_path):
    out = tmp_path / "cli.onnx"
    r = CliRunner().invoke(
        cli, ["export", str(tiny_run), "--out", str(out), "--model", "teacher", "--num-check", "8"]
    )
    assert r.exit_code == 0, r.output
    assert "max-abs" in r.output and out.is_file()


@pytest.mark.parametrize("content", [b"", b"this is not onnx at all \x00\xff", b"\x08\x07"])
def test_cli_refuses_bad_files(tmp_path, content):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content)
    with pytest.raises(ModelError):
        load_onnx_checked(bad)


def test_missing_and_directory(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_onnx_checked(tmp_path / "nope.onnx")
    with pytest.raises(ModelError, match="directory"):
        load_onnx_checked(tmp_path)


def test_cli_export_bad_source_is_one_line(tmp_path):
    r = CliRunner().invoke(cli, ["export", str(tmp_path / "missing"), "--out", str(tmp_path / "o.onnx")])
    assert r.exit_code == 1
    assert r.output.strip().count("\n") == 0 and r.output.startswith("error:")
    assert not (tmp_path / "o.onnx").exists()


# ----- external data -----------------------------------------------------------------------------------------


def _model_with_external(dirpath, location: str, data_path=None):
    """A one-node Add model whose initializer lives in external file ``location`` (relative to ``dirpath``)."""
    w = numpy_helper.from_array(np.arange(4, dtype=np.float32), name="w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", "16")):
        e = w.external_data.add()
        e.key, e.value = k, v
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = dirpath / "m.onnx"
    path.write_bytes(model.SerializeToString())
    if data_path is not None:
        data_path.parent.mkdir(parents=True, exist_ok=True)
        data_path.write_bytes(np.arange(4, dtype=np.float32).tobytes())
    return path


def test_external_data_inside_loads(tmp_path):
    path = _model_with_external(tmp_path, "w.bin", tmp_path / "w.bin")
    proto = load_onnx_checked(path)
    np.testing.assert_array_equal(numpy_helper.to_array(proto.graph.initializer[0]), np.arange(4))


def test_external_data_traversal_refused(tmp_path):
    (tmp_path / "m").mkdir()
    path = _model_with_external(tmp_path / "m", "../secret.bin", tmp_path / "secret.bin")
    with pytest.raises(ModelError, match="outside"):
        load_onnx_checked(path)


def test_external_data_absolute_refused(tmp_path):
    target = tmp_path / "abs.bin"
    path = _model_with_external(tmp_path, str(target), target)
    with pytest.raises(ModelError, match="absolute"):
        load_onnx_checked(path)


def test_external_data_symlink_out_refused(tmp_path):
    (tmp_path / "m").mkdir()
    outside = tmp_path / "outside.bin"
    outside.write_bytes(np.arange(4, dtype=np.float32).tobytes())
    os.symlink(outside, tmp_path / "m" / "w.bin")
    path = _model_with_external(tmp_path / "m", "w.bin")
    with pytest.raises(ModelError, match="outside"):
        load_onnx_checked(path)


def test_external_data_missing(tmp_path):
    path = _model_with_external(tmp_path, "gone.bin")
    with pytest.raises(ModelError, match="missing"):
        load_onnx_checked(path)


def test_model_without_metadata_names_flags(tmp_path):
    path = _model_with_external(tmp_path, "w.bin", tmp_path / "w.bin")
    with pytest.raises(ModelError, match="--input-size"):
        read_meta(path)


def test_onnx_module_is_real_onnx():
    # Guard against a shadowing local module named onnx.
    assert hasattr(onnx, "checker")
