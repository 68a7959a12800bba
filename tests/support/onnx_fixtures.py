"""A tiny ONNX classifier built with onnx.helper (no torch), shared by the OpenVINO tests and the bad-input
corpus: ``from support.onnx_fixtures import tiny_onnx``."""

from __future__ import annotations

import numpy as np


def tiny_onnx(path, custom_op: str | None = None, tied: bool = False, label_names=("a", "b", "c", "d"),
              provenance: dict | None = None, tie_offset: float = 0.0):
    """A 1x32x32 -> 4 class conv net with medfm metadata (optionally with an op OpenVINO cannot convert, or
    with classes 0 and 1 nearly tied so that int8 noise flips the top-1 class; ``tie_offset`` is added to class 1's
    logit, e.g. the median logit gap on some images so that each class wins about half of them)."""
    import onnx
    from onnx import TensorProto, helper

    from medfm_compress.runtime.metadata import ModelMeta, encode_metadata
    from medfm_compress.runtime.preprocess import PreprocessSpec

    rng = np.random.default_rng(0)
    inits = [
        onnx.numpy_helper.from_array(rng.standard_normal((8, 1, 3, 3)).astype(np.float32) * 0.5, "w1"),
        onnx.numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "b1"),
        onnx.numpy_helper.from_array(rng.standard_normal((4, 8)).astype(np.float32), "w2"),
        onnx.numpy_helper.from_array(rng.standard_normal(4).astype(np.float32) * 0.1, "b2"),
    ]
    if tied:
        # Conv channels 0 and 1 nearly equal; class k reads channel k: the top-1 between classes 0 and 1
        # hangs on a difference below one int8 activation step. Classes 2 and 3 never win.
        w1 = onnx.numpy_helper.to_array(inits[0]).copy()
        w1[1] = w1[0] + 0.003 * rng.standard_normal((1, 3, 3)).astype(np.float32)
        b1 = onnx.numpy_helper.to_array(inits[1]).copy()
        b1[:2] = 1.0
        w2 = np.zeros((4, 8), np.float32)
        w2[0, 0] = w2[1, 1] = 1.0
        w2[2:] = -10.0
        inits[:] = [onnx.numpy_helper.from_array(w1, "w1"), onnx.numpy_helper.from_array(b1, "b1"),
                    onnx.numpy_helper.from_array(w2, "w2"), onnx.numpy_helper.from_array(np.array([0.0, tie_offset, 0.0, 0.0], np.float32), "b2")]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
    ]
    last, opsets = "r1", [helper.make_opsetid("", 17)]
    if custom_op:
        nodes.append(helper.make_node(custom_op, ["r1"], ["cu"], name="custom", domain="com.example"))
        opsets.append(helper.make_opsetid("com.example", 1))
        last = "cu"
    nodes += [
        helper.make_node("GlobalAveragePool", [last], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "w2", "b2"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])], inits)
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    meta = ModelMeta(PreprocessSpec(input_size=(32, 32), channels=1, mean=(0.5,), std=(0.25,)), "multiclass",
                     list(label_names), arch="test:tiny", provenance=provenance or {})
    for k, v in encode_metadata(meta).items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))
    return path
