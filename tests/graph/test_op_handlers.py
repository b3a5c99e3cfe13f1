"""Every supported op, in small hand-built graphs: LRP-0 on a bias-free ReLU network equals
gradient × input, which checks each handler's reading of the ONNX attributes and its relevance routing."""
import zlib

import numpy as np
import pytest

import onnxdtd
from builders import model, node, numeric_gradient

RNG = np.random.default_rng(1)


@pytest.fixture(autouse=True)
def _seeded(request):
    """Seed the weights and inputs per graph, so that a case's numbers do not depend on which tests ran
    before it (the numeric gradient's smoothness check depends on them)."""
    global RNG
    params = getattr(request.node, "callspec", None)
    key = params.params.get("name", request.node.originalname) if params else request.node.originalname
    RNG = np.random.default_rng(zlib.crc32(key.encode()))


def w(*shape):
    return RNG.normal(size=shape) / np.sqrt(np.prod(shape[1:]) if len(shape) > 1 else 1)


def head(src, features, classes=4, op="Gemm"):
    """Flatten `src` and end in a bias-free dense layer to 'y'."""
    return [node("Flatten", [src], "flat"), node(op, ["flat", "wout"], "y")], {"wout": w(features, classes)}


def graph(body, inits, in_shape, features, opset=17, op="Gemm"):
    tail, tail_inits = head(body[-1].output[0], features, op=op)
    return model([*body, *tail], {**inits, **tail_inits}, in_shape, opset=opset)


GRAPHS = {
    "conv1d-relu-globalavg": lambda: graph(
        [node("Conv", ["x", "w1"], "c", pads=[1, 1], dilations=[2], strides=[1]), node("Relu", ["c"], "r"),
         node("GlobalAveragePool", ["r"], "g")], {"w1": w(4, 2, 3)}, (2, 10), 4),
    "conv-same-prelu-overlapping-maxpool": lambda: graph(
        [node("Conv", ["x", "w1"], "c", auto_pad="SAME_UPPER", strides=[2, 2]),
         node("PRelu", ["c", "slope"], "r"),
         node("MaxPool", ["r"], "p", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])],
        {"w1": w(3, 2, 3, 3), "slope": np.array([0.1, 0.2, 0.3]).reshape(3, 1, 1)}, (2, 9, 9), 3 * 3 * 3,
        op="MatMul"),
    "leakyrelu": lambda: graph([node("Conv", ["x", "w1"], "c"), node("LeakyRelu", ["c"], "r", alpha=0.1)],
                               {"w1": w(2, 2, 3, 3)}, (2, 5, 5), 2 * 3 * 3),
    "maxpool-ceil-mode-dilated": lambda: graph(
        [node("Conv", ["x", "w1"], "c", pads=[1, 1, 1, 1]), node("Relu", ["c"], "r"),
         node("MaxPool", ["r"], "p", kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1, dilations=[1, 2])],
        {"w1": w(2, 1, 3, 3)}, (1, 7, 8), 2 * 4 * 4),
    "depthwise-clip-avgpool-reducemean": lambda: graph(
        [node("Conv", ["x", "w1"], "c", group=3, pads=[1, 1, 1, 1]), node("Clip", ["c", "lo", "hi"], "r"),
         node("AveragePool", ["r"], "p", kernel_shape=[2, 2], pads=[1, 1, 0, 0], count_include_pad=1),
         node("ReduceMean", ["p"], "m", axes=[3], keepdims=0)],
        {"w1": w(3, 1, 3, 3), "lo": np.float32(0.0), "hi": np.float32(1e4)}, (3, 6, 6), 3 * 6),
    "avgpool-ceil-exclude-pad": lambda: graph(
        [node("AveragePool", ["x"], "p", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)],
        {}, (2, 6, 6), 2 * 4 * 4),
    "residual-add-globalmaxpool": lambda: graph(
        [node("Conv", ["x", "w1"], "c1", pads=[1, 1, 1, 1]), node("Relu", ["c1"], "r1"),
         node("Conv", ["r1", "w2"], "c2", pads=[1, 1, 1, 1]), node("Add", ["r1", "c2"], "s"),
         node("Relu", ["s"], "r2"), node("GlobalMaxPool", ["r2"], "g")],
        {"w1": w(3, 2, 3, 3), "w2": w(3, 3, 3, 3)}, (2, 5, 5), 3),
    "inception-concat-reducesum": lambda: graph(
        [node("Conv", ["x", "w1"], "a"), node("Conv", ["x", "w2"], "b", pads=[1, 1, 1, 1]),
         node("Concat", ["a", "b"], "cat", axis=-3), node("Relu", ["cat"], "r"),
         node("ReduceSum", ["r", "axes"], "s", keepdims=1)],
        {"w1": w(2, 2, 1, 1), "w2": w(3, 2, 3, 3), "axes": np.array([2], np.int64)}, (2, 4, 4), 5 * 4),
    "transpose-matmul-unsqueeze-squeeze-reshape": lambda: graph(
        [node("Transpose", ["x"], "t", perm=[0, 2, 1]), node("MatMul", ["t", "w1"], "m"), node("Relu", ["m"], "r"),
         node("Unsqueeze", ["r", "ax"], "u"), node("Squeeze", ["u", "ax"], "sq"),
         node("Reshape", ["sq", "shape"], "rs")],
        {"w1": w(3, 5), "ax": np.array([1], np.int64), "shape": np.array([0, -1], np.int64)}, (3, 4), 20),
    "pad-conv": lambda: graph(
        [node("Pad", ["x", "pads", "val"], "p", mode="constant"), node("Conv", ["p", "w1"], "c"),
         node("Relu", ["c"], "r")],
        {"pads": np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64), "val": np.float32(0.0), "w1": w(2, 2, 3, 3)},
        (2, 5, 5), 2 * 6 * 6),
    "scale-mul-div-conv": lambda: graph(
        [node("Mul", ["x", "scale"], "m"), node("Div", ["m", "div"], "d"), node("Conv", ["d", "w1"], "c"),
         node("Relu", ["c"], "r")],
        {"scale": RNG.uniform(0.5, 2, size=(1, 2, 1, 1)), "div": np.float32(3.0), "w1": w(2, 2, 3, 3)},
        (2, 5, 5), 2 * 3 * 3),
    "slice-gather-split-concat-resize": lambda: graph(
        [node("Slice", ["x", "starts", "ends", "axes", "steps"], "s"), node("Gather", ["s", "idx"], "g", axis=3),
         node("Split", ["g", "halves"], ["a", "b"], axis=1), node("Concat", ["b", "a"], "c", axis=1),
         node("Relu", ["c"], "r"), node("Resize", ["r", "", "scales"], "up", mode="nearest"),
         node("Conv", ["up", "w1"], "conv", strides=[2, 2]), node("Relu", ["conv"], "out")],
        {"starts": np.array([1], np.int64), "ends": np.array([5], np.int64), "axes": np.array([2], np.int64),
         "steps": np.array([1], np.int64), "idx": np.array([0, 2, 2, 5], np.int64),
         "halves": np.array([1, 1], np.int64), "scales": np.array([1, 1, 2, 2], np.float32),
         "w1": w(3, 2, 3, 3)}, (2, 6, 6), 3 * 3 * 3),
    "max-min-relu6-reducemax": lambda: graph(
        [node("Conv", ["x", "w1"], "c", pads=[1, 1, 1, 1]), node("Max", ["c", "zero"], "m"),
         node("Min", ["m", "big"], "r"), node("ReduceMax", ["r"], "g", axes=[2, 3], keepdims=1)],
        {"w1": w(3, 2, 3, 3), "zero": np.float32(0.0), "big": np.float32(1e4)}, (2, 5, 5), 3, opset=17),
    "expand-einsum": lambda: model(
        [node("Expand", ["x", "shape"], "e"), node("Einsum", ["e", "w1"], "d", equation="bci,ij->bcj"),
         node("Relu", ["d"], "r"), node("Flatten", ["r"], "f"), node("Gemm", ["f", "w2"], "y")],
        {"shape": np.array([1, 3, 4], np.int64), "w1": w(4, 5), "w2": w(15, 3)}, (1, 4)),
    "gemm-transA": lambda: model(
        [node("Transpose", ["x"], "t", perm=[1, 0]), node("Gemm", ["t", "w1"], "g", transA=1, transB=1),
         node("Relu", ["g"], "r"), node("MatMul", ["r", "w2"], "y")],
        {"w1": w(6, 5), "w2": w(6, 3)}, (5,)),
}


@pytest.mark.parametrize("name", GRAPHS)
def test_lrp0_equals_gradient_times_input(name, backend):
    proto = GRAPHS[name]()
    shape = [d.dim_value or 1 for d in proto.graph.input[0].type.tensor_type.shape.dim]
    x = RNG.normal(size=shape).astype(np.float32)
    res = onnxdtd.Explainer(proto, rules="lrp0", backend=backend, dtype=np.float64).explain(x)
    grad, smooth = numeric_gradient(proto, x, int(res.target[0]))
    expected = grad * x
    # ReLU kinks within the difference step leave out some coordinates; at least half are compared.
    assert res.relevance.shape == x.shape and smooth.mean() >= 0.5
    np.testing.assert_allclose(res.relevance[smooth], expected[smooth], atol=1e-3 * np.abs(expected).max())


@pytest.mark.parametrize("name", GRAPHS)
def test_layer_table_lists_every_layer(name):
    table = str(onnxdtd.load(GRAPHS[name]()))
    assert "kind" in table and "params" in table
    assert table.count("\n") >= 4


@pytest.mark.parametrize("op, attrs", [("ReduceMax", {"axes": [2, 3], "keepdims": 0}), ("GlobalMaxPool", {})])
def test_max_over_axes_winner_and_proportional(op, attrs, backend):
    x = RNG.uniform(size=(2, 3, 4, 5)).astype(np.float32)
    proto = model([node(op, ["x"], "m", **attrs), node("Flatten", ["m"], "y")], {}, (3, 4, 5))
    flat = x.reshape(2, 3, -1)
    for mode in ("winner", "proportional"):
        res = onnxdtd.Explainer(proto, rules="zplus", maxpool=mode, backend=backend, dtype=np.float64).explain(x)
        logit = flat.max(axis=2)[[0, 1], res.target]
        r = res.relevance.reshape(2, 3, -1)[[0, 1], res.target]
        if mode == "winner":
            expected = np.zeros_like(r)
            expected[[0, 1], flat[[0, 1], res.target].argmax(axis=1)] = logit
        else:
            expected = flat[[0, 1], res.target] * (logit / flat[[0, 1], res.target].sum(axis=1))[:, None]
        np.testing.assert_allclose(r, expected, rtol=1e-5)
