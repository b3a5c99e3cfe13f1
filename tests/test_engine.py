"""The engine's bookkeeping: the forward pass exposes only the tensors kernels read, and the walk
releases every activation once no earlier layer needs it."""
import numpy as np
import pytest

import onnxdtd
from onnxdtd import engine

SHIPPED = "models/mnist_cnn.onnx"


@pytest.mark.parametrize("preset, reads_conv_outputs", [("dtd", False), ("epsilon", True)])
def test_forward_exposes_what_the_rules_read(preset, reads_conv_outputs):
    ex = onnxdtd.Explainer(SHIPPED, rules=preset, backend="numpy")
    conv_outputs = {layer.output for layer in ex.model if layer.kind == "conv"}
    conv_inputs = {layer.inputs[0] for layer in ex.model if layer.kind == "conv"}
    exposed = set(ex.forward.names) | set(ex.model.inputs)
    assert conv_inputs <= exposed
    assert (conv_outputs <= exposed) is reads_conv_outputs
    assert not conv_outputs & exposed or reads_conv_outputs


def test_walk_releases_every_activation(monkeypatch):
    seen = {}
    original = engine.backward

    def spy(walk, initial, keep=False):
        held = len(walk.acts)
        result = original(walk, initial, keep)
        seen.update(held=held, left=dict(walk.acts))
        return result

    monkeypatch.setattr(onnxdtd.explainer, "backward", spy)
    ex = onnxdtd.Explainer(SHIPPED, backend="numpy")
    ex.explain(np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32))
    assert seen["held"] > 3 and seen["left"] == {}


def test_static_shapes_give_run_time_shapes_for_any_batch():
    model = onnxdtd.load(SHIPPED)
    static = engine.static_shapes(model)
    batch = model.inputs[model.input_name][0]
    shapes = engine.run_shapes(static, batch, 7, static)
    assert shapes[model.input_name] == (7, 1, 28, 28)
    assert all(shape[0] == 7 for shape in shapes.values())
