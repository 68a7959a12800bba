"""The one reader of a model's image input, shared by quantization and the TensorRT build."""

from __future__ import annotations

import pytest
from onnx import TensorProto, helper

from medfm_compress.errors import ExportError, ModelError
from medfm_compress.runtime.onnx_loader import image_input


def _model(*shapes):
    inputs = [helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, s) for i, s in enumerate(shapes)]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("Identity", ["x0"], ["y"])], "g", inputs, [out])
    return helper.make_model(graph)


def test_the_shape_without_the_batch_axis():
    assert image_input(_model(["N", 1, 32, 48]), "m.onnx") == ("x0", (1, 32, 48))
    assert image_input(_model(["N", 1, 8, 16, 24]), "m.onnx", ranks=(4, 5)) == ("x0", (1, 8, 16, 24))


@pytest.mark.parametrize(
    "shapes, message",
    [
        ([["N", 1, 32, 32], ["N", 1, 32, 32]], "has 2 inputs"),
        ([["N", 1, 8, 16, 24]], "rank 5; expected NCHW"),
        ([[1, 1, 32, 32]], "fixed batch of 1; re-export it with a dynamic batch axis"),
        ([[4, 1, 32, 32]], "fixed batch of 4"),
        ([["N", 1, "H", 32]], "dynamic channel or spatial size"),
    ],
)
def test_what_it_refuses(shapes, message):
    with pytest.raises(ModelError, match=message):
        image_input(_model(*shapes), "m.onnx")
    with pytest.raises(ExportError, match=message):
        image_input(_model(*shapes), "m.onnx", error=ExportError)
