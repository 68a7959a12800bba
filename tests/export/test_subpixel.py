"""ConvTranspose -> sub-pixel convolution (export.subpixel): the same outputs, and nodes that do not fit left alone."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from medfm_compress.export.subpixel import conv_transpose_to_subpixel  # noqa: E402


def _model(dims: int, kernel: int, stride: int, pad: int, out_pad: int, *, cin: int = 3, cout: int = 4,
           size: int | str = 5, bias: bool = True, group: int = 1, dilation: int = 1, weight_is_input: bool = False,
           seed: int = 0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((cin, cout // group, *[kernel] * dims)).astype(np.float32)
    inits = [] if weight_is_input else [numpy_helper.from_array(w, "w")]
    inputs = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), "b"))
        inputs.append("b")
    node = helper.make_node("ConvTranspose", inputs, ["y"], name="up", strides=[stride] * dims,
                            pads=[pad] * (2 * dims), output_padding=[out_pad] * dims, kernel_shape=[kernel] * dims,
                            group=group, dilations=[dilation] * dims)
    graph_inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", cin, *[size] * dims])]
    if weight_is_input:
        graph_inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, list(w.shape)))
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", cout, *[f"s{i}" for i in range(dims)]])
    g = helper.make_graph([node], "g", graph_inputs, [out], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), w


def _run(model, x, **extra):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x, **extra})[0]


# (kernel, stride, pad, output_padding): MONAI's U-Net upsampling (3, 2, 1, 1), a 2x2x2 deconvolution, kernel 4,
# stride 3, an odd kernel 5, a 1-tap kernel with output padding: each upsamples by exactly its stride.
FITTING = [(3, 2, 1, 1), (2, 2, 0, 0), (4, 2, 1, 0), (3, 3, 0, 0), (5, 2, 2, 1), (1, 2, 0, 1)]


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("kernel, stride, pad, out_pad", FITTING)
@pytest.mark.parametrize("bias", [True, False])
def test_rewrite_gives_the_same_outputs(dims, kernel, stride, pad, out_pad, bias):
    model, _ = _model(dims, kernel, stride, pad, out_pad, bias=bias)
    new, count = conv_transpose_to_subpixel(model)
    assert count == 1
    onnx.checker.check_model(new, full_check=True)
    ops = [n.op_type for n in new.graph.node]
    assert "ConvTranspose" not in ops and ops == ["Conv", "Reshape", "Transpose", "Reshape"]
    # The convolution keeps the node's name (exclusions by name still find the weights); the old weights are gone.
    assert new.graph.node[0].name == "up" and "w" not in {i.name for i in new.graph.initializer}
    x = np.random.default_rng(1).standard_normal((2, 3, *[5] * dims)).astype(np.float32)
    want = _run(model, x)
    got = _run(new, x)
    assert got.shape == want.shape == (2, 4, *[5 * stride] * dims)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # The input is untouched (a copy is rewritten).
    assert [n.op_type for n in model.graph.node] == ["ConvTranspose"]


@pytest.mark.parametrize(
    "why, kwargs",
    [
        ("output is not stride x input (9, not 10)", dict(kernel=3, stride=2, pad=1, out_pad=0)),
        ("grouped", dict(kernel=3, stride=2, pad=1, out_pad=1, group=2)),
        ("dilated", dict(kernel=3, stride=2, pad=3, out_pad=1, dilation=2)),
        ("stride 1: nothing to gain", dict(kernel=3, stride=1, pad=1, out_pad=0)),
        ("weights are a graph input", dict(kernel=3, stride=2, pad=1, out_pad=1, weight_is_input=True)),
        ("spatial size unknown", dict(kernel=3, stride=2, pad=1, out_pad=1, size="d")),
    ],
)
def test_nodes_that_do_not_fit_are_left_alone(why, kwargs):
    model, _ = _model(3, cin=4, **kwargs)
    new, count = conv_transpose_to_subpixel(model)
    assert count == 0 and new is model, why


def test_openvino_conversion_applies_it_when_asked():
    pytest.importorskip("openvino")
    from medfm_compress.export.openvino import graph_rewrites, onnx_to_ov
    from medfm_compress.runtime.openvino_loader import compile_ov

    model, _ = _model(3, 3, 2, 1, 1, size=6)
    x = np.random.default_rng(2).standard_normal((2, 3, 6, 6, 6)).astype(np.float32)
    want = _run(model, x)
    plain = onnx_to_ov(model)
    assert graph_rewrites(plain) == {}
    assert "ConvolutionBackpropData" in {op.get_type_name() for op in plain.get_ops()}
    rewritten = onnx_to_ov(model, subpixel=True)
    assert graph_rewrites(rewritten) == {"conv_transpose_as_subpixel_conv": 1}
    assert "ConvolutionBackpropData" not in {op.get_type_name() for op in rewritten.get_ops()}
    got = compile_ov(rewritten, "CPU")(x)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
