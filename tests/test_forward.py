"""The forward pass (onnxdtd.forward): exposed tensors, and I/O binding for backends whose arrays live
on a device."""
import numpy as np
import pytest

import onnxdtd
from builders import model, node
from onnxdtd import backends
from onnxdtd.backends.numpy_backend import NumpyBackend
from onnxdtd.forward import Device, Forward, _available


def small():
    """Conv, ReLU, Gemm: intermediate tensors of rank 4 and 2."""
    rng = np.random.default_rng(0)
    inits = {"w": rng.normal(size=(3, 2, 3, 3)), "b": rng.normal(size=3), "v": rng.normal(size=(4, 27))}
    nodes = [node("Conv", ["x", "w", "b"], "c"), node("Relu", ["c"], "r"), node("Flatten", ["r"], "f"),
             node("Gemm", ["f", "v"], "y", transB=1)]
    return model(nodes, inits, (2, 5, 5))


class Boxed(np.ndarray):
    """A backend's own array type, to see that every bound output went through its conversion."""


def test_binding_converts_every_exposed_tensor():
    """With a binding, onnxruntime's outputs come as OrtValues on the bound device, each converted by
    the backend; the values equal a plain run's."""
    seen = []

    def convert(value):
        seen.append(value.device_name().lower())
        return value.numpy().view(Boxed)

    proto, x = small(), np.random.default_rng(1).random((3, 2, 5, 5)).astype(np.float32)
    names = ["c", "r", "y"]
    plain = Forward(proto, ["x"], names).run({"x": x})
    bound = Forward(proto, ["x"], names, binding=("cpu", convert)).run({"x": x})
    assert seen == ["cpu"] * len(names)
    for name in names:
        assert isinstance(bound[name], Boxed)
        np.testing.assert_array_equal(bound[name], plain[name])


def test_binding_to_a_device_without_its_provider_falls_back_to_the_host():
    """A CUDA binding on a session without onnxruntime's CUDA provider binds host memory (the
    conversion then moves the outputs); with no binding the session runs plainly."""
    forward = Forward(small(), ["x"], ["y"])
    assert _available(None, forward.session) is None
    device, convert = _available(("cuda", abs), forward.session)
    assert device == Device("cpu") and convert is abs


def test_explainer_binds_the_backends_device(monkeypatch):
    """The Explainer's forward pass takes the backend's binding; relevance is unchanged by it,
    also for several targets (whose shared dense denominators are computed from host copies)."""
    calls = []

    class Bound(NumpyBackend):
        def forward_binding(self):
            return "cpu", lambda value: calls.append(1) or value.numpy()

        def to_numpy(self, x):
            return np.asarray(x)

    monkeypatch.setitem(backends.FACTORIES, "bound", Bound)
    proto, x = small(), np.random.default_rng(2).random((2, 2, 5, 5)).astype(np.float32)
    for target in (None, "all"):
        got = onnxdtd.Explainer(proto, backend="bound").explain(x, target=target).relevance
        ref = onnxdtd.Explainer(proto, backend="numpy").explain(x, target=target).relevance
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-7)
    assert calls


@pytest.mark.parametrize("binding", [None, ("cpu", lambda value: value.numpy())])
def test_rejected_input_is_an_input_error(binding):
    """onnxruntime's refusal of an input shape is an InputError naming it, bound or not."""
    forward = Forward(small(), ["x"], ["y"], binding=binding)
    with pytest.raises(onnxdtd.InputError, match=r"\(1, 2, 4, 4\)"):
        forward.run({"x": np.zeros((1, 2, 4, 4), np.float32)})
