"""graph.signs: which tensors the graph proves non-negative, so kernels skip the a⁻ terms."""
import numpy as np
import pytest

import onnxdtd
from onnxdtd.graph.layer import Layer
from onnxdtd.graph.signs import nonnegative


def act(name, src, **attrs):
    return Layer(name, "elementwise", "op", [src], [name], attrs=attrs)


def layer(kind, name, *srcs, **params):
    return Layer(name, kind, "op", list(srcs), [name], params=params)


@pytest.mark.parametrize("activation, expected", [
    (act("y", "x", function="Relu", alpha=0.0), True),
    (act("y", "x", function="LeakyRelu", alpha=0.1), False),
    (act("y", "x", function="Clip", min=0.0, max=6.0), True),
    (act("y", "x", function="Clip", min=-1.0, max=1.0), False),
    (act("y", "x", function="Max", bound=np.zeros(3)), True),
    (act("y", "x", function="Max", bound=np.array([0.0, -1.0])), False),
    (act("y", "x", function="Tanh", lenient=True), False),
])
def test_activations_that_clamp_below_zero(activation, expected):
    assert ("y" in nonnegative([activation])) is expected


@pytest.mark.parametrize("after, expected", [
    (layer("maxpool", "p", "r"), True),
    (layer("avgpool", "p", "r"), True),
    (layer("avgpool", "p", "r", weight=np.float64(-2.0)), False),  # a folded negative scale
    (layer("reshape", "p", "r"), True),
    (layer("conv", "p", "r"), False),
    (layer("add", "p", "r", "x"), False),  # x is not known non-negative
    (layer("add", "p", "r", "r"), True),
    (act("p", "r", function="LeakyRelu", alpha=0.1), True),  # identity on non-negative inputs
    (act("p", "r", function="Min", bound=np.float64(-1.0)), False),
])
def test_propagation_through_layers(after, expected):
    assert ("p" in nonnegative([act("r", "x", function="Relu", alpha=0.0), after])) is expected


def test_shipped_model_marks_every_layer_after_a_relu():
    model = onnxdtd.load("models/mnist_cnn.onnx")
    marked = {layer.index for layer in model if layer.nonnegative_input}
    after_relu = {layer.index for layer in model
                  if layer.index > 0 and model.layers[layer.index - 1].attrs.get("function") == "Relu"}
    assert after_relu and after_relu <= marked
    assert not model.layers[0].nonnegative_input
