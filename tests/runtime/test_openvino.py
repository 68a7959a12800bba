"""OpenVINO IR export, metadata in rt_info, the ``openvino`` runtime backend and its refusals (tiny models)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

pytest.importorskip("openvino")

from support.onnx_fixtures import tiny_onnx as _tiny_onnx  # noqa: E402

from medfm_compress.errors import ConfigError, ExportError, ModelError  # noqa: E402


def tiny_onnx(path, custom_op: str | None = None):
    return _tiny_onnx(path, custom_op, provenance={"note": 'quotes " and <xml> & stuff'})


@pytest.fixture(scope="module")
def ir(tmp_path_factory):
    from medfm_compress.export.openvino import export_openvino

    d = tmp_path_factory.mktemp("ov")
    onnx_path = tiny_onnx(d / "tiny.onnx")
    res = export_openvino(str(onnx_path), out=str(d / "tiny.xml"))
    return onnx_path, res


def _x(n=5):
    return np.random.default_rng(1).standard_normal((n, 1, 32, 32)).astype(np.float32)


def test_export_writes_pair_with_metadata(ir):
    from medfm_compress.runtime.onnx_loader import read_meta

    onnx_path, res = ir
    assert res.path.suffix == ".xml" and res.path.with_suffix(".bin").is_file()
    assert res.size_bytes == res.path.stat().st_size + res.path.with_suffix(".bin").stat().st_size
    assert res.check["cosine"] > 0.9999
    assert read_meta(res.path) == read_meta(onnx_path)  # same medfm.* keys, round-tripped through rt_info
    assert not [p for p in res.path.parent.iterdir() if p.name.endswith(".irtmp")]


def test_engine_runs_ir_and_onnx(ir):
    from medfm_compress.runtime import Engine, backend_for_path

    onnx_path, res = ir
    assert backend_for_path(res.path) == "openvino"
    x = _x()
    with Engine.load(onnx_path) as ref, Engine.load(res.path, threads=1) as eng:
        want = ref.run(x)
        got = eng.run(x)
        # fp16-compressed weights in the IR: close, not bit-equal.
        np.testing.assert_allclose(got, want, atol=2e-2, rtol=2e-2)
        assert eng.info["threads"] == 1 and eng.info["hint"] == "LATENCY"
        assert eng.info["size_bytes"] == res.size_bytes
        first = eng.run(x[:1]).copy()
        eng.run(x[1:2])  # the returned logits must not be overwritten by the next call
        np.testing.assert_array_equal(first, eng.run(x[:1]))
        assert np.array_equal(eng.run(x[:1]), first)
    with Engine.load(onnx_path, backend="openvino", hint="throughput", threads=2) as eng:
        np.testing.assert_allclose(eng.run(x), want, atol=1e-4)
        assert eng.info["hint"] == "THROUGHPUT" and eng.info["threads"] == 2
        _, probs = eng.predict(np.random.default_rng(0).integers(0, 255, (2, 32, 32)).astype(np.uint8))
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def test_inference_precision_is_set_not_left_to_the_cpu(ir, monkeypatch):
    """OpenVINO's CPU plugin runs an fp32 model in bf16 on CPUs with native bf16 unless told otherwise; an fp32 IR
    must run at f32 everywhere, and a precision the device lacks is refused, not emulated."""
    from medfm_compress.runtime import Engine
    from medfm_compress.runtime import openvino_loader as ovl

    onnx_path, res = ir
    x = _x()
    with Engine.load(onnx_path) as ref, Engine.load(res.path) as eng:
        assert eng.info["inference_precision"] == "f32"
        np.testing.assert_allclose(eng.run(x), ref.run(x), atol=2e-2, rtol=2e-2)
    with pytest.raises(ConfigError, match="inference precision must be one of"):
        Engine.load(res.path, inference_precision="int4")
    monkeypatch.setattr(ovl, "ov_supports", lambda precision, device="CPU": precision == "f32")
    with pytest.raises(ConfigError, match="runs at bf16.*no native support"):
        Engine.load(res.path, inference_precision="bf16")


def test_engine_refusals(ir, tmp_path):
    from medfm_compress.runtime import Engine

    _, res = ir
    with pytest.raises(ConfigError, match="not present on this machine"):
        Engine.load(res.path, device="NPU")
    with pytest.raises(ConfigError, match="hint"):
        Engine.load(res.path, hint="fastest")
    with pytest.raises(ConfigError, match="unknown openvino option"):
        Engine.load(res.path, streams=2)
    with pytest.raises(ConfigError, match="threads"):
        Engine.load(res.path, threads=0)


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_bin_missing_or_truncated(ir, tmp_path, damage):
    from medfm_compress.runtime import Engine

    _, res = ir
    xml = tmp_path / "m.xml"
    xml.write_bytes(res.path.read_bytes())
    if damage == "truncated":
        (tmp_path / "m.bin").write_bytes(res.path.with_suffix(".bin").read_bytes()[:100])
    with pytest.raises(ModelError, match=damage):
        Engine.load(xml)


def test_not_an_ir(tmp_path):
    from medfm_compress.runtime.openvino_loader import load_ir_checked

    (tmp_path / "a.xml").write_text("<config><x/></config>")
    with pytest.raises(ModelError, match="not an OpenVINO IR"):
        load_ir_checked(tmp_path / "a.xml")
    (tmp_path / "b.xml").write_text("<net")
    with pytest.raises(ModelError, match="not a readable"):
        load_ir_checked(tmp_path / "b.xml")


def test_unconvertible_op_is_named(tmp_path):
    from medfm_compress.export.openvino import export_openvino

    bad = tiny_onnx(tmp_path / "bad.onnx", custom_op="FooBarOp")
    with pytest.raises(ExportError, match="FooBarOp"):
        export_openvino(str(bad), out=str(tmp_path / "bad.xml"))
    assert not list(tmp_path.glob("bad.xml")) and not list(tmp_path.glob("bad.bin"))


def test_save_ir_is_all_or_nothing(ir, tmp_path, monkeypatch):
    from medfm_compress.export import openvino as ovx
    from medfm_compress.runtime import openvino_loader as ovl

    model = ovl.load_ir_checked(ir[1].path)
    with pytest.raises(ConfigError, match=".xml"):
        ovx.save_ir(model, tmp_path / "m.onnx")
    real = os.replace

    def fail_on_xml(src, dst):
        if str(dst).endswith(".xml"):
            raise OSError("disk gone")
        return real(src, dst)

    monkeypatch.setattr(ovx.os, "replace", fail_on_xml)
    with pytest.raises(OSError):
        ovx.save_ir(model, tmp_path / "m.xml")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_bench_measures_openvino(ir, tmp_path):
    from click.testing import CliRunner

    from medfm_compress.cli import cli

    onnx_path, res = ir
    xml = tmp_path / "tiny_ov.xml"
    xml.write_bytes(res.path.read_bytes())
    xml.with_suffix(".bin").write_bytes(res.path.with_suffix(".bin").read_bytes())
    # One gate the IR certainly meets (it is a few kB), so the exit status is 0, and 3 would be a regression.
    r = CliRunner().invoke(cli, ["bench", str(onnx_path), str(xml), "--data",
                                  "synthetic?size=32&n_train=16&n_val=8&n_test=16&seed=3", "--iterations", "5",
                                  "--warmup", "1", "--bootstrap", "10", "--max-size-mb", "1", "--out",
                                  str(tmp_path / "rep"), "--quiet", "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert [a["backend"] for a in rep["artifacts"]] == ["onnxruntime", "openvino"]
    ov = rep["artifacts"][1]
    assert ov["latency"]["1"]["engine"]["p50_ms"] > 0 and ov["size_bytes"] == res.size_bytes
    gates = [(g["gate"], g["artifact"], g["passed"]) for g in rep["gates"]]
    # An absolute gate judges every artifact, the reference (the ONNX, first) included.
    assert gates == [("max_size_mb", rep["artifacts"][0]["name"], True), ("max_size_mb", ov["name"], True)]
    assert rep["passed"] is True and (tmp_path / "rep" / "report.json").is_file()


def test_export_cli_format_openvino(ir, tmp_path):
    from click.testing import CliRunner

    from medfm_compress.cli import cli

    onnx_path, _ = ir
    out = tmp_path / "cli.xml"
    r = CliRunner().invoke(cli, ["export", str(onnx_path), "--format", "openvino", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["path"] == str(out) and out.with_suffix(".bin").is_file()


def test_every_metadata_key_survives_an_ir(ir, tmp_path):
    """A volume model's window and spacing come back from an IR's rt_info like every other key (spacing was once
    written but never read back, so predict segmented a scan on the wrong grid with an OpenVINO artifact)."""
    import dataclasses

    from medfm_compress.export import openvino as ovx
    from medfm_compress.runtime.metadata import encode_metadata
    from medfm_compress.runtime.onnx_loader import read_meta
    from medfm_compress.runtime.openvino_loader import load_ir_checked

    _, res = ir
    meta = read_meta(res.path)
    pre = dataclasses.replace(meta.preprocess, input_size=(32, 32, 8), window=(-1000.0, 1000.0), spacing=(2.0, 2.0, 1.5))
    meta = dataclasses.replace(meta, preprocess=pre)
    model = load_ir_checked(res.path)
    ovx.set_ov_meta(model, meta)
    out = ovx.save_ir(model, tmp_path / "vol.xml")
    got = read_meta(out)
    assert got.preprocess.spacing == (2.0, 2.0, 1.5) and got.preprocess.window == (-1000.0, 1000.0)
    assert encode_metadata(got) == encode_metadata(meta)
