"""A teacher held only as an engine: an ONNX (ours, with metadata, or anyone's) or an OpenVINO IR, forward only."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from support.tiny import TINY_DATA, TINY_STUDENT

from medfm_compress.compress.distill import DistillConfig, distill
from medfm_compress.errors import ConfigError
from medfm_compress.models.engine_teacher import EngineModule, TensorRef

MEAN, STD = (0.5,), (0.25,)


class _Encoder(torch.nn.Module):
    """A foreign graph: a token encoder (class token first) followed by a dense decoder, as a saliency model ships."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = torch.nn.Conv2d(3, 16, 4, stride=4)
        self.norm = torch.nn.LayerNorm(16)
        self.cls = torch.nn.Parameter(torch.randn(1, 1, 16))
        self.decoder = torch.nn.Sequential(torch.nn.Conv2d(16, 64, 3, padding=1), torch.nn.Conv2d(64, 1, 1))

    def forward(self, x):
        t = self.stem(x).flatten(2).transpose(1, 2)  # (N, 64, 16) patch tokens
        tokens = self.norm(torch.cat([self.cls + 0 * t[:, :1], t], dim=1))
        grid = tokens[:, 1:].transpose(1, 2).unflatten(2, (8, 8))
        return torch.sigmoid(self.decoder(grid))


@pytest.fixture(scope="module")
def foreign_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("foreign") / "encoder.onnx"
    torch.onnx.export(_Encoder().eval(), (torch.rand(1, 3, 32, 32),), str(path), input_names=["image"],
                      output_names=["saliency"], dynamic_axes={"image": {0: "batch"}}, opset_version=17, dynamo=False)
    return path


def _norm_output(path) -> str:
    import onnx

    proto = onnx.load(str(path))
    names = [o for n in proto.graph.node if "norm" in n.name.lower() for o in n.output]
    return names[-1]  # the LayerNorm's result: the tokens


def test_a_foreign_graph_is_cut_to_the_tensor_it_teaches_with(foreign_onnx):
    name = _norm_output(foreign_onnx)
    full = _Encoder()
    eng = EngineModule(foreign_onnx, embedding=name)
    # The decoder after the tokens is neither run nor counted.
    assert eng.num_params == sum(p.numel() for n, p in full.named_parameters() if not n.startswith("decoder"))
    x = torch.rand(3, 3, 32, 32)
    logits, emb = eng.logits_and_embedding(x)
    with torch.no_grad():
        t = full.stem(x).flatten(2).transpose(1, 2)
        ref = full.norm(torch.cat([full.cls.expand(3, -1, -1), t], dim=1))
    assert logits is None and torch.allclose(emb, ref[:, 0], atol=1e-5)  # the class token
    mean = EngineModule(foreign_onnx, embedding=f"{name}:mean").logits_and_embedding(x)[1]
    assert torch.allclose(mean, ref.mean(dim=1), atol=1e-5)
    # Its tokens as a patch map: the class token dropped, 64 patch tokens as an 8x8 grid.
    from medfm_compress.models.features import tokens_to_map

    grid = tokens_to_map(eng.last_embedding_tensor())
    assert grid.shape == (3, 16, 8, 8) and torch.allclose(grid[:, :, 0, 1], ref[:, 2], atol=1e-5)
    assert TensorRef.parse("onnx::Gemm_3") == TensorRef("onnx::Gemm_3", "cls")


def test_a_foreign_graph_says_what_it_needs(foreign_onnx):
    with pytest.raises(ConfigError, match=r"no tensor of that name .* \(its outputs: saliency\)"):
        EngineModule(foreign_onnx, embedding="/nowhere")
    # Its single output is a (N, 1, H, W) map, not an embedding: the tensor to distil must be named.
    with pytest.raises(ConfigError, match=r"'saliency' is a \(1, 1, 8, 8\) map, not an embedding; name the tensor"):
        EngineModule(foreign_onnx)


def test_an_engine_teacher_distils_a_student(foreign_onnx, tmp_path):
    base = dict(data=TINY_DATA, teacher=str(foreign_onnx), student=TINY_STUDENT, epochs=1, batch_size=32,
                progress=False, cache=str(tmp_path / "cache"))
    name = _norm_output(foreign_onnx)
    with pytest.raises(ConfigError, match="carries no preprocessing; give .*--teacher-mean"):
        distill(DistillConfig.from_options(out=str(tmp_path / "a"), teacher_embedding=name, **base))
    res = distill(DistillConfig.from_options(out=str(tmp_path / "b"), teacher_embedding=name, teacher_mean=MEAN,
                                             teacher_std=STD, **base))
    m = res.metrics
    assert m["teacher"]["arch"] == "engine:encoder.onnx + linear probe" and m["teacher"]["params"] == EngineModule(
        foreign_onnx, embedding=name).num_params
    assert m["teacher"]["macs"] is None and m["student"]["macro_auc"] > 0
    # A head-less teacher is scored by a linear probe on its embeddings of the labelled images: the student is
    # measured against it (agreement, retention) and the default losses are its embedding and the labels.
    assert m["teacher"]["probe"] == "linear" and 0 <= m["teacher"]["macro_auc"] <= 1 and "val" in m["teacher"]
    assert m["student_teacher_agreement"] is not None and m["auc_retention"] is not None
    log = (tmp_path / "b" / "train.log").read_text()
    assert "onnxruntime engine" in log and f"embedding {name}:cls (16)" in log
    # Nothing of the engine is copied into the run; the manifest names it.
    assert not (tmp_path / "b" / "teacher.safetensors").exists()
    rec = json.loads((tmp_path / "b" / "manifest.json").read_text())["stages"][-1]
    assert rec["config"]["teacher"]["embedding"] == name and rec["config"]["resolved_losses"] == ["feat", "ce"]
    from medfm_compress._io import sha256_file

    assert rec["inputs"]["teacher_engine"]["sha256"] == sha256_file(foreign_onnx)
    with pytest.raises(ConfigError, match="no classifier head, so logit KD"):
        distill(DistillConfig.from_options(out=str(tmp_path / "c"), teacher_embedding=name, teacher_mean=MEAN,
                                           teacher_std=STD, **{**base, "losses": ("kd", "ce")}))


def test_our_exported_teacher_teaches_as_the_torch_one(tiny_run, tmp_path):
    from medfm_compress.export.onnx import ExportConfig, export_onnx

    onnx_path = export_onnx(ExportConfig(source=str(tiny_run), model="teacher", out=str(tmp_path / "t.onnx"))).path
    eng = EngineModule(onnx_path)
    assert eng.num_classes == 4 and eng.embedding_dim > 4  # logits, and the classifier's input as embedding
    res = distill(DistillConfig.from_options(data=TINY_DATA, out=str(tmp_path / "run"), teacher=str(onnx_path),
                                             student=TINY_STUDENT, epochs=1, batch_size=32, progress=False))
    torch_teacher = json.loads((tiny_run / "metrics.json").read_text())["teacher"]
    assert res.metrics["teacher"]["macro_auc"] == pytest.approx(torch_teacher["macro_auc"], abs=1e-3)
    assert res.metrics["student_teacher_agreement"] is not None
    with pytest.raises(ConfigError, match="does not apply to --teacher .*t.onnx"):
        distill(DistillConfig.from_options(data=TINY_DATA, out=str(tmp_path / "bad"), teacher=str(onnx_path),
                                           teacher_epochs=2, progress=False))


def test_engine_tensor_options_need_an_engine():
    with pytest.raises(ConfigError, match="--teacher-embedding/--teacher-logits name tensors of a teacher held as an"):
        DistillConfig.from_options(teacher="timm:resnet18", teacher_embedding="x")


def test_an_openvino_ir_teacher_answers_as_its_onnx(foreign_onnx, tmp_path):
    pytest.importorskip("openvino")
    import openvino as ov

    from medfm_compress.export.openvino import onnx_to_ov

    xml = tmp_path / "encoder.xml"
    ov.save_model(onnx_to_ov(str(foreign_onnx)), str(xml), compress_to_fp16=False)
    name = _norm_output(foreign_onnx)
    x = torch.rand(2, 3, 32, 32)
    ref = EngineModule(foreign_onnx, embedding=name).logits_and_embedding(x)[1]
    ir = EngineModule(xml, embedding=name)
    got = ir.logits_and_embedding(x)[1]
    assert ir.describe()["engine"] == "openvino" and np.allclose(got.numpy(), ref.numpy(), atol=1e-4)


def test_a_student_sees_its_own_size_while_the_teacher_sees_the_data_s(tiny_run, tmp_path):
    from medfm_compress.models.card import ModelCard

    base = dict(data=TINY_DATA, teacher=str(tiny_run / "teacher"), student=TINY_STUDENT, epochs=1, batch_size=32,
                progress=False, cache=str(tmp_path / "cache"))
    res = distill(DistillConfig.from_options(out=str(tmp_path / "s16"), student_input_size=16, baseline=True, **base))
    card = ModelCard.load(tmp_path / "s16" / "student.json")
    assert tuple(card.preprocess.input_size) == (16, 16)
    # The teacher was scored on the data at its own size (32 px): as in the run that trained it.
    torch_teacher = json.loads((tiny_run / "metrics.json").read_text())["teacher"]
    assert res.metrics["teacher"]["macro_auc"] == pytest.approx(torch_teacher["macro_auc"], abs=1e-6)
    assert "student input: 16x16 (the data and the teacher's input are made from 32x32)" in (
        tmp_path / "s16" / "train.log").read_text()
    assert res.metrics["baseline"]["params"] == res.metrics["student"]["params"]
    with pytest.raises(ConfigError, match="a teacher trained from scratch here would learn at the student's"):
        distill(DistillConfig.from_options(data=TINY_DATA, out=str(tmp_path / "scratch"), teacher_epochs=1,
                                           student_input_size=16, epochs=1, progress=False))
    with pytest.raises(ConfigError, match="student-input-size must be"):
        DistillConfig.from_options(student_input_size=0)


def test_patch_tokens_of_a_vit_teacher_teach_a_cnn_s_last_stage(tmp_path):
    """ViT to CNN: the teacher's patch tokens as a grid (pooled to 7x7, cached) onto the student's last stage."""
    from medfm_compress.compress.taskprep import FrozenTeacher
    from medfm_compress.models.card import ModelCard
    from medfm_compress.models.factory import create_model
    from medfm_compress.models.features import MapTap, tokens_to_map
    from medfm_compress.models.weights import save_state_dict
    from medfm_compress.runtime.preprocess import PreprocessSpec

    torch.manual_seed(0)
    vit = "timm:vit_tiny_patch16_224"
    model = create_model(vit, 4, 1, 32).eval()
    pre = PreprocessSpec(input_size=(32, 32), channels=1, mean=(0.5,), std=(0.25,))
    x = torch.randn(3, 1, 32, 32)
    _, _, pmap = FrozenTeacher(model, ModelCard(arch=vit, num_classes=4, in_chans=1, task="multiclass",
                                                label_names=list("abcd"), preprocess=pre), "t").outputs(x, pre, patch=True)
    with torch.no_grad():
        tokens = model.forward_features(x)  # (3, 1 + 4, 192): class token + a 2x2 grid
    grid = tokens_to_map(tokens, model.num_prefix_tokens)
    assert grid.shape == (3, 192, 2, 2) and pmap.shape == (3, 192, 7, 7)
    assert torch.allclose(pmap[:, :, :3, :3].mean(dim=(2, 3)), grid[:, :, 0, 0], atol=1e-5)  # top-left token
    with MapTap(create_model(TINY_STUDENT, 4, 1, 32)) as tap:
        tap.model(x)
    assert tap.map.dim() == 4 and tap.map.shape[0] == 3

    weights = save_state_dict(model, tmp_path / "vit.safetensors")
    base = dict(data=TINY_DATA, teacher=vit, teacher_weights=str(weights), student=TINY_STUDENT, epochs=1,
                batch_size=32, progress=False, cache=str(tmp_path / "cache"), teacher_views=1)
    res = distill(DistillConfig.from_options(out=str(tmp_path / "p"), losses=("kd", "patch", "ce"), **base))
    hist = res.metrics["history"]["history"]
    assert "patch" in hist[0] and hist[0]["patch"] > 0
    caches = list((tmp_path / "cache").iterdir())
    meta = json.loads((caches[0] / "meta.json").read_text())
    assert meta["patch_shape"] == [192, 7, 7] and (caches[0] / "patch.npy").is_file()
    with pytest.raises(ConfigError, match="--labels none distills embeddings only"):
        distill(DistillConfig.from_options(out=str(tmp_path / "q"), losses=("patch",), labels="none", **base))
