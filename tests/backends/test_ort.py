"""The `ort` backend: every kernel written as ONNX nodes against the numpy reference in float32
(onnxruntime has no float64 Conv, so the shared float64 tests leave it out), and whole explanation
graphs on small models of every routing and pooling kind."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import onnxdtd
from builders import model, node
from onnxdtd.backends import get_backend
from onnxdtd.backends.numpy_backend import OPS
from onnxdtd.rules import AlphaBeta, Epsilon, Gamma, Norm, ZPlus

from backends.test_kernels import POOLS as MAXPOOL_GRID, conv_configs, layer, pool_case, pool_ids
from backends.test_linear_reference import LAYERS, POOLS, RULES

RNG = np.random.default_rng(5)
ORT, NUMPY = get_backend("ort"), get_backend("numpy")


def _close(got, expected, tolerance=1e-5):
    assert got.shape == expected.shape and got.dtype == expected.dtype
    np.testing.assert_allclose(got, expected, rtol=0, atol=tolerance * np.abs(expected).max())


def _layer_case(nodes, inits, in_shape):
    proto = model(nodes, inits, in_shape)
    layer = onnxdtd.load(proto)[0]
    a = RNG.normal(size=(2, *in_shape)).astype(np.float32)
    z = onnxdtd.Explainer(proto, backend="numpy").forward.run({"x": a})[layer.output]
    r = RNG.normal(size=z.shape).astype(np.float32)
    low, high = a - np.float32(0.5), a + np.float32(0.5)
    return layer, a, z, r, low, high


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("rule", RULES, ids=repr)
def test_linear_kernels_equal_numpy(layer, rule, bias):
    args = _layer_case(*LAYERS[layer](bias))
    _close(ORT.linear(args[0], rule, *args[1:]), NUMPY.linear(args[0], rule, *args[1:]))


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("rule", [Norm(), ZPlus()], ids=repr)
def test_pooling_kernels_equal_numpy(pool, rule):
    nodes, in_shape = POOLS[pool]
    args = _layer_case(nodes, {}, in_shape)
    _close(ORT.linear(args[0], rule, *args[1:]), NUMPY.linear(args[0], rule, *args[1:]))


MAXPOOLS = {
    "2x2": (dict(kernel_shape=[2, 2], strides=[2, 2]), (3, 6, 6)),
    "3x3-stride2-pads": (dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]), (2, 7, 7)),
    "overlap-dilated-ceil": (dict(kernel_shape=[3, 2], strides=[2, 1], dilations=[1, 2], ceil_mode=1), (2, 8, 7)),
    "1d": (dict(kernel_shape=[3], strides=[2], pads=[1, 0]), (3, 9)),
}


@pytest.mark.parametrize("mode", ["winner", "proportional"])
@pytest.mark.parametrize("pool", MAXPOOLS)
def test_maxpool_kernels_equal_numpy(pool, mode):
    attrs, in_shape = MAXPOOLS[pool]
    layer, a, z, r, _, _ = _layer_case([node("MaxPool", ["x"], "y", **attrs)], {}, in_shape)
    a = np.abs(a)  # after a Relu, as max pooling's inputs are
    _close(ORT.maxpool(layer, a, r, mode), NUMPY.maxpool(layer, a, r, mode))


@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("mode", ["winner", "proportional"])
@pytest.mark.parametrize("config", MAXPOOL_GRID, ids=pool_ids)
def test_maxpool_grid_equals_numpy(config, mode, ties):
    pool, a, _, win = pool_case(RNG, np.float32, *config, ties=ties)
    r = RNG.normal(size=(*a.shape[:2], *win.out_size)).astype(np.float32)
    _close(ORT.maxpool(pool, a, r, mode), NUMPY.maxpool(pool, a, r, mode))


@settings(max_examples=60, deadline=None)
@given(config=conv_configs(), rule=st.sampled_from([ZPlus(), Epsilon(0.1), Gamma(0.25), AlphaBeta(2.0, 1.0)]),
       seed=st.integers(0, 2**32 - 1))
def test_conv_geometry_property(config, rule, seed):
    """Random strides, pads, dilations and groups: the transposed pass is ConvTranspose with explicit
    pads and output_padding, or a Conv with the flipped kernel at stride 1."""
    c, cout, group, size, kernel, strides, dilations, pads, batch = config
    rng = np.random.default_rng(seed)
    attrs = {"kernel": kernel, "strides": strides, "dilations": dilations, "pads": pads, "group": group}
    conv = layer("conv", attrs, rng.normal(size=(cout, c // group, *kernel)).astype(np.float32))
    conv.params["bias"] = rng.normal(size=cout).astype(np.float32)
    a = rng.normal(size=(batch, c, *size)).astype(np.float32)
    z = OPS["conv"](conv, a.shape).forward(a, conv.params["weight"], conv.params["bias"])
    r = rng.normal(size=z.shape).astype(np.float32)
    _close(ORT.linear(conv, rule, a, z, r, None, None), NUMPY.linear(conv, rule, a, z, r, None, None))


def test_add_splits_like_numpy_with_broadcasting():
    x, y = RNG.normal(size=(2, 3, 4)).astype(np.float32), RNG.normal(size=(2, 1, 4)).astype(np.float32)
    r = RNG.normal(size=(2, 3, 4)).astype(np.float32)
    for got, expected in zip(ORT.add([x, y], r), NUMPY.add([x, y], r)):
        _close(got, expected)


W = RNG.normal(size=(4, 3, 3, 3)).astype(np.float32)
ROUTING = {  # small models through every routing kind and reductions, (nodes, inits, input shape)
    "concat-split-transpose": ([node("Conv", ["x", "w"], "c", pads=[1, 1, 1, 1]), node("Relu", ["c"], "r"),
                                node("Split", ["r"], ["s1", "s2"], axis=1, num_outputs=2),
                                node("Concat", ["s2", "s1", "r"], "cat", axis=1),
                                node("Transpose", ["cat"], "t", perm=[0, 2, 3, 1]),
                                node("ReduceMean", ["t", "axes"], "y", keepdims=0)],
                               {"w": W, "axes": np.array([1, 2], np.int64)}, (3, 5, 5)),
    "slice-pad-reducemax": ([node("Conv", ["x", "w"], "c"), node("Relu", ["c"], "r"),
                             node("Slice", ["r", "st", "en", "ax"], "s"),
                             node("Pad", ["s", "pads"], "p"),
                             node("ReduceMax", ["p", "axes"], "y", keepdims=0)],
                            {"w": W, "st": np.array([1], np.int64), "en": np.array([4], np.int64),
                             "ax": np.array([1], np.int64), "pads": np.array([0, 0, 1, 0, 0, 0, 2, 1], np.int64),
                             "axes": np.array([2, 3], np.int64)}, (3, 6, 6)),
}


@pytest.mark.parametrize("maxpool", ["winner", "proportional"])
@pytest.mark.parametrize("case", ROUTING)
def test_explanation_graph_equals_numpy(case, maxpool):
    nodes, inits, in_shape = ROUTING[case]
    proto = model(nodes, inits, in_shape, opset=18)
    x = RNG.random((3, *in_shape), dtype=np.float32)
    expected = onnxdtd.Explainer(proto, rules="zplus", maxpool=maxpool, backend="numpy").explain(x, [0, 1, 2])
    got = onnxdtd.Explainer(proto, rules="zplus", maxpool=maxpool, backend="ort").explain(x, [0, 1, 2])
    _close(got.relevance, expected.relevance)
    np.testing.assert_array_equal(got.target, expected.target)


def test_float64_on_convs_is_a_clear_error():
    with pytest.raises(onnxdtd.ConfigError, match="no float64 kernel.*Conv"):
        onnxdtd.Explainer("models/mnist_cnn.onnx", backend="ort", dtype=np.float64)


def test_keep_and_init_one_equal_numpy():
    x = RNG.random((2, 1, 28, 28), dtype=np.float32)
    expected = onnxdtd.Explainer("models/mnist_cnn.onnx", backend="numpy").explain(x, [1, 2], init="one", keep=True)
    got = onnxdtd.Explainer("models/mnist_cnn.onnx", backend="ort").explain(x, [1, 2], init="one", keep=True)
    _close(got.relevance, expected.relevance)
    assert set(expected.intermediate) <= set(got.intermediate)
    for name, value in expected.intermediate.items():
        _close(got.intermediate[name], value)
