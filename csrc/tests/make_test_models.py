"""Write the tiny ONNX fixtures the C++ unit tests (ctest) load: run from the repository root with
``.venv/bin/python csrc/tests/make_test_models.py``; the outputs are committed in csrc/tests/data/.

Each model is Flatten -> Gemm with weights given by a formula the C++ test recomputes, so the test checks
the runtime's logits against an independent computation. Metadata comes from the project's own encoder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from medfm_compress.runtime.metadata import ModelMeta, encode_metadata
from medfm_compress.runtime.preprocess import PreprocessSpec

OUT = Path(__file__).parent / "data"


def weights(features: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """W[i, k] = ((7 i + 3 k) mod 11 - 5) / 10, b[k] = k / 4 - 0.25 (C++: tiny_weight / tiny_bias)."""
    i = np.arange(features)[:, None]
    k = np.arange(classes)[None, :]
    w = (((7 * i + 3 * k) % 11) - 5) / 10.0
    b = np.arange(classes) / 4.0 - 0.25
    return w.astype(np.float32), b.astype(np.float32)


def tiny_model(channels: int, height: int, width: int, classes: int, meta: ModelMeta | None) -> onnx.ModelProto:
    w, b = weights(channels * height * width, classes)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"], axis=1), helper.make_node("Gemm", ["flat", "W", "b"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", channels, height, width])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    if meta is not None:
        helper.set_model_props(model, encode_metadata(meta))
    onnx.checker.check_model(model)
    return model


def tiny_seg_model(meta: ModelMeta) -> onnx.ModelProto:
    """A 1x1 convolution with stride 2 from one channel to 3 class maps at half the input's size: class k scores
    ``(k - 1) * x + k / 4 - 0.25`` at every other pixel (C++: seg_logit)."""
    w = (np.arange(3, dtype=np.float32) - 1.0).reshape(3, 1, 1, 1)
    b = (np.arange(3) / 4.0 - 0.25).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "W", "b"], ["maps"], kernel_shape=[1, 1], strides=[2, 2])],
        "tiny_seg",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("maps", TensorProto.FLOAT, ["batch", 3, 4, 4])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    helper.set_model_props(model, encode_metadata(meta))
    onnx.checker.check_model(model)
    return model


def tiny_seg3d_model(meta: ModelMeta) -> onnx.ModelProto:
    """A 1x1x1 3-D convolution from one channel to 3 class maps at the window's size (4x4x3): class k scores
    ``(k - 1) * x + k / 4 - 0.25`` at every voxel (C++: seg_logit), so blended windows give the same scores."""
    w = (np.arange(3, dtype=np.float32) - 1.0).reshape(3, 1, 1, 1, 1)
    b = (np.arange(3) / 4.0 - 0.25).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "W", "b"], ["maps"], kernel_shape=[1, 1, 1])],
        "tiny_seg3d",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 4, 4, 3])],
        [helper.make_tensor_value_info("maps", TensorProto.FLOAT, ["batch", 3, 4, 4, 3])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    helper.set_model_props(model, encode_metadata(meta))
    onnx.checker.check_model(model)
    return model


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    gray = ModelMeta(
        preprocess=PreprocessSpec(input_size=(8, 8), channels=1, mean=(0.5,), std=(0.25,)),
        task="multiclass",
        label_names=["normal", 'nod"ule', "\u00e9panchement"],  # a quote and a non-ASCII name test the parser
        arch="test:flatten-gemm",
    )
    rgb = ModelMeta(
        preprocess=PreprocessSpec(
            input_size=(4, 6), channels=3, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), window=(-100.0, 300.0)
        ),
        task="multilabel",
        label_names=["a", "b"],
        arch="test:flatten-gemm",
    )
    onnx.save(tiny_model(1, 8, 8, 3, gray), OUT / "tiny_gray.onnx")
    onnx.save(tiny_model(3, 4, 6, 2, rgb), OUT / "tiny_rgb_multilabel.onnx")
    onnx.save(tiny_model(1, 8, 8, 3, None), OUT / "no_metadata.onnx")
    seg = ModelMeta(
        preprocess=PreprocessSpec(input_size=(8, 8), channels=1, mean=(0.5,), std=(0.25,)),
        task="segmentation",
        label_names=["background", "lung", "lesion"],
        arch="test:conv1x1-stride2",
    )
    onnx.save(tiny_seg_model(seg), OUT / "tiny_seg.onnx")
    seg3d = ModelMeta(
        preprocess=PreprocessSpec(input_size=(4, 4, 3), channels=1, mean=(0.5,), std=(0.25,), window=(-100.0, 300.0),
                                  spacing=(2.0, 2.0, 3.0)),
        task="segmentation",
        label_names=["background", "organ", "lesion"],
        arch="test:conv1x1x1",
    )
    onnx.save(tiny_seg3d_model(seg3d), OUT / "tiny_seg3d.onnx")
    # Segmentation metadata on a classifier's (batch, classes) output: the runtime must refuse it.
    onnx.save(tiny_model(1, 8, 8, 3, seg), OUT / "seg_meta_on_classifier.onnx")


if __name__ == "__main__":
    main()
