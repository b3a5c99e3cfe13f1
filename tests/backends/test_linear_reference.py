"""Every rule on dense, conv and pooling layers against a slow float64 reference that works on the
explicit connection matrix, read off onnxruntime (so layer geometry is checked independently)."""
import numpy as np
import pytest

import onnxdtd
from builders import linear_matrix, model, node, run
from onnxdtd.backends import get_backend
from onnxdtd.rules import LRP0, AlphaBeta, Epsilon, Flat, Gamma, Norm, WSquare, ZBox, ZPlus, stabilize

RNG = np.random.default_rng(0)
POS, NEG = (lambda m: np.maximum(m, 0)), (lambda m: np.minimum(m, 0))


def prop(contrib, bias, r, eps=1e-6):
    """R_i = Σ_j C_ij R_j / s(Σ_i C_ij + b_j) with explicit per-connection contributions C (N, I, J)."""
    z = contrib.sum(axis=1) + bias
    return (contrib * (r / stabilize(z, eps))[:, None, :]).sum(axis=2)


def reference(rule, a, m, b, r, low, high):
    """The textbook formula of each rule, per connection."""
    ap, an = POS(a)[:, :, None], NEG(a)[:, :, None]
    x = a[:, :, None]
    if isinstance(rule, ZPlus):
        return prop(ap * POS(m) + an * NEG(m), POS(b) if rule.shown["bias"] else 0, r)
    if isinstance(rule, ZBox):
        return prop(x * m - low[:, :, None] * POS(m) - high[:, :, None] * NEG(m), 0, r)
    if isinstance(rule, WSquare):
        return prop(np.broadcast_to(m * m, (len(a), *m.shape)), b * b if rule.shown["bias"] else 0, r)
    if isinstance(rule, Flat):
        return prop(np.broadcast_to((m != 0) * 1.0, (len(a), *m.shape)), 0, r)
    if isinstance(rule, Gamma):
        g = rule.gamma
        up, down = m + g * POS(m), m + g * NEG(m)
        z = (x * m).sum(axis=1) + b
        return (prop(ap * up + an * down, b + g * POS(b), r * (z > 0))
                + prop(ap * down + an * up, b + g * NEG(b), r * (z < 0)))
    if isinstance(rule, AlphaBeta):
        alpha, beta = rule.shown["alpha"], rule.shown["beta"]
        return (alpha * prop(ap * POS(m) + an * NEG(m), POS(b), r)
                - beta * prop(ap * NEG(m) + an * POS(m), NEG(b), r))
    return prop(x * m, b, r, rule.stabilizer)  # Epsilon, LRP0, Norm


RULES = [ZPlus(), ZPlus(bias=True), ZBox(), WSquare(), WSquare(bias=True), Flat(), Epsilon(0.1), LRP0(),
         Gamma(0.25), AlphaBeta(2.0, 1.0), AlphaBeta(1.0, 0.0)]


def conv(cin, cout, k, size, bias, **attrs):
    w = RNG.normal(size=(cout, cin // attrs.get("group", 1), *k))
    inits = {"w": w} | ({"b": RNG.normal(size=cout)} if bias else {})
    return [node("Conv", ["x", "w", *(["b"] if bias else [])], "y", **attrs)], inits, (cin, *size)


def conv_transpose(cin, cout, k, size, bias, **attrs):
    w = RNG.normal(size=(cin, cout // attrs.get("group", 1), *k))
    inits = {"w": w} | ({"b": RNG.normal(size=cout)} if bias else {})
    return [node("ConvTranspose", ["x", "w", *(["b"] if bias else [])], "y", **attrs)], inits, (cin, *size)


def gemm(i, o, bias, **attrs):
    shape = (o, i) if attrs.get("transB") else (i, o)
    inits = {"w": RNG.normal(size=shape)} | ({"b": RNG.normal(size=o)} if bias else {})
    return [node("Gemm", ["x", "w", *(["b"] if bias else [])], "y", **attrs)], inits, (i,)


def matmul(i, o, bias):
    return [node("MatMul", ["x", "w"], "y")], {"w": RNG.normal(size=(i, o))}, (i,)


LAYERS = {
    "dense": lambda bias: gemm(5, 4, bias),
    "dense-transB-alpha-beta": lambda bias: gemm(6, 3, bias, transB=1, alpha=0.5, beta=2.0),
    "matmul": lambda bias: matmul(5, 3, bias),
    "conv1d": lambda bias: conv(2, 3, (3,), (8,), bias, pads=[1, 1]),
    "conv1d-stride-dilation-groups": lambda bias: conv(2, 4, (3,), (9,), bias, strides=[2], dilations=[2],
                                                     pads=[0, 2], group=2),
    "conv2d": lambda bias: conv(3, 4, (3, 3), (6, 6), bias, pads=[1, 1, 1, 1]),
    "conv2d-stride2-asym-pads": lambda bias: conv(2, 3, (3, 3), (7, 6), bias, strides=[2, 2], pads=[1, 0, 0, 1]),
    "conv2d-depthwise-dilated": lambda bias: conv(3, 3, (3, 3), (7, 7), bias, group=3, dilations=[2, 2],
                                                 pads=[2, 2, 2, 2]),
    "conv2d-groups-rect-kernel": lambda bias: conv(4, 6, (2, 3), (6, 7), bias, group=2, strides=[2, 1]),
    "conv2d-pointwise": lambda bias: conv(3, 2, (1, 1), (4, 4), bias),
    "conv2d-same-upper": lambda bias: conv(2, 2, (3, 3), (5, 6), bias, strides=[2, 2], auto_pad="SAME_UPPER"),
    "conv2d-same-lower": lambda bias: conv(2, 2, (2, 2), (5, 5), bias, auto_pad="SAME_LOWER"),
    "convtranspose1d": lambda bias: conv_transpose(2, 3, (3,), (5,), bias, strides=[2], pads=[1, 0]),
    "convtranspose2d-stride-pads-outpad": lambda bias: conv_transpose(3, 2, (3, 3), (4, 3), bias, strides=[2, 2],
                                                                    pads=[1, 1, 1, 0], output_padding=[1, 0]),
    "convtranspose2d-groups-dilation": lambda bias: conv_transpose(4, 6, (2, 3), (3, 4), bias, group=2,
                                                                 dilations=[2, 1]),
}


def check(nodes, inits, in_shape, rule, backend_name):
    """Compare one layer's backend kernel with the explicit reference on random a, R and bounds."""
    proto = model(nodes, inits, in_shape)
    layer = onnxdtd.load(proto)[0]
    nobias = model(nodes, {k: (v if k != "b" else 0 * v) for k, v in inits.items()}, in_shape)
    m = linear_matrix(nobias, in_shape)
    a = RNG.normal(size=(2, *in_shape)).astype(np.float32).astype(np.float64)
    bias = run(proto, np.zeros((1, *in_shape))).reshape(-1).astype(np.float64)  # exact: 0·w + b
    z = (a.reshape(2, -1) @ m + bias).reshape(run(proto, a).shape)  # the layer output, in float64
    r = RNG.normal(size=z.shape)
    low = a - RNG.uniform(0.1, 1, size=a.shape)
    high = a + RNG.uniform(0.1, 1, size=a.shape)
    flat = lambda t: t.reshape(2, -1)  # noqa: E731
    expected = reference(rule, flat(a), m, bias, flat(r), flat(low), flat(high))
    got = get_backend(backend_name).linear(layer, rule, a, z, r, low, high)
    assert got.shape == a.shape
    np.testing.assert_allclose(flat(got), expected, atol=1e-6 * np.abs(expected).max())


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("rule", RULES, ids=repr)
def test_linear_layer_rule_matches_explicit_reference(layer, rule, bias, backend):
    nodes, inits, in_shape = LAYERS[layer](bias)
    check(nodes, inits, in_shape, rule, backend)


POOLS = {
    "avgpool": ([node("AveragePool", ["x"], "y", kernel_shape=[2, 2], strides=[2, 2])], (2, 6, 6)),
    "avgpool-pads-count-include": ([node("AveragePool", ["x"], "y", kernel_shape=[3, 3], strides=[2, 2],
                                         pads=[1, 1, 1, 1], count_include_pad=1)], (2, 7, 6)),
    "avgpool-pads-exclude-ceil": ([node("AveragePool", ["x"], "y", kernel_shape=[3, 3], strides=[2, 2],
                                        pads=[1, 0, 1, 0], ceil_mode=1)], (2, 6, 7)),
    "avgpool-1d": ([node("AveragePool", ["x"], "y", kernel_shape=[3], strides=[1], pads=[1, 1])], (3, 8)),
    "global-avgpool": ([node("GlobalAveragePool", ["x"], "y")], (3, 4, 5)),
}


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("rule", [Norm(), ZPlus(), Epsilon(0.5), AlphaBeta(2.0, 1.0)], ids=repr)
def test_pooling_rule_matches_explicit_reference(pool, rule, backend):
    nodes, in_shape = POOLS[pool]
    check(nodes, {}, in_shape, rule, backend)


@pytest.mark.parametrize("op, opset, axes_as_input", [("ReduceSum", 11, False), ("ReduceSum", 13, True),
                                                      ("ReduceMean", 13, False), ("ReduceMean", 18, True)])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_both_opset_styles(op, opset, axes_as_input, keepdims, backend):
    inits = {"axes": np.array([2, -1], np.int64)} if axes_as_input else {}
    attrs = {} if axes_as_input else {"axes": [2, -1]}
    nodes = [node(op, ["x", *(["axes"] if axes_as_input else [])], "y", keepdims=keepdims, **attrs)]
    proto = model(nodes, inits, (2, 3, 4), opset=opset)
    layer = onnxdtd.load(proto)[0]
    assert layer.kind == "reduce" and layer.attrs["axes"] == (2, 3)
    a = RNG.normal(size=(2, 2, 3, 4))
    m = linear_matrix(proto, (2, 3, 4))
    z = (a.reshape(2, -1) @ m).reshape(run(proto, a).shape)
    r = RNG.normal(size=z.shape)
    got = get_backend(backend).linear(layer, Norm(), a, z, r, None, None)
    np.testing.assert_allclose(got.reshape(2, -1), reference(Norm(), a.reshape(2, -1), m, 0, r.reshape(2, -1),
                                                              None, None), rtol=1e-6, atol=1e-9)
