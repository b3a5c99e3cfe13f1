"""Methods beyond one rule chain: CLRP, SGLRP, and the SmoothGrad / Integrated Gradients wrappers."""
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnxdtd
import onnxdtd.metrics
from onnxdtd.methods import IntegratedGradients, SmoothGrad

BACKENDS = onnxdtd.available_backends()
MNIST = "models/mnist_cnn.onnx"


def digits() -> np.ndarray:
    return np.concatenate([np.load(f"models/samples/digit_{d}.npy") for d in (7, 3)]).astype(np.float32)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_clrp_is_the_positive_part_of_target_minus_dual(backend):
    x = digits()
    plain = onnxdtd.Explainer(MNIST, backend=backend)
    res = onnxdtd.Explainer(MNIST, backend=backend, method="clrp").explain(x, target=[7, 5])
    logits = res.output.astype(np.float64)
    target = plain.explain(x, target=[7, 5]).relevance
    dual_init = np.repeat(logits[[0, 1], [7, 5]][:, None] / 9, 10, axis=1)
    dual_init[[0, 1], [7, 5]] = 0
    dual = plain.explain(x, init=dual_init.astype(np.float32)).relevance
    expected = np.maximum(target - dual, 0)
    assert res.relevance.min() >= 0
    np.testing.assert_allclose(res.relevance, expected, atol=1e-5 * np.abs(expected).max())
    np.testing.assert_array_equal(res.target, [7, 5])


@pytest.mark.parametrize("backend", BACKENDS)
def test_sglrp_starts_from_the_softmax_gradient(backend):
    x = digits()
    res = onnxdtd.Explainer(MNIST, backend=backend, method="sglrp").explain(x)
    y = softmax(res.output.astype(np.float64))
    t = res.target
    init = -y[np.arange(2), t][:, None] * y
    init[np.arange(2), t] += y[np.arange(2), t]
    expected = onnxdtd.Explainer(MNIST, backend=backend).explain(x, init=init.astype(np.float32)).relevance
    np.testing.assert_allclose(res.relevance, expected, atol=1e-5 * np.abs(expected).max())


def torch_gradient(x: np.ndarray, target: int) -> np.ndarray:
    """The gradient of the shipped MNIST CNN's logit by torch autograd, on the ONNX file's weights."""
    import torch
    import torch.nn.functional as F

    w = {t.name: torch.tensor(numpy_helper.to_array(t), dtype=torch.float64)
         for t in onnx.load(MNIST).graph.initializer}
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    h = (xt - w["val_1"]) / w["val_2"]  # the graph's Sub/Div normalization
    for conv in ("features.0", "features.3"):
        h = F.max_pool2d(F.relu(F.conv2d(h, w[f"{conv}.weight"], w[f"{conv}.bias"], padding=1)), 2)
    h = F.relu(h.reshape(len(h), -1) @ w["classifier.1.weight"].T + w["classifier.1.bias"])
    (h @ w["classifier.3.weight"].T + w["classifier.3.bias"])[:, target].sum().backward()
    return xt.grad.numpy()


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_methods_equal_torch_autograd(backend):
    # Noise breaks the exact ties of max pooling over the black background, which float32 rounding
    # would break differently in onnxruntime's forward pass and in torch's float64 one.
    x = digits() + np.random.default_rng(0).uniform(0, 0.05, (2, 1, 28, 28)).astype(np.float32)
    grad = onnxdtd.Explainer(MNIST, backend=backend, method="gradient").explain(x, target=7).relevance
    expected = torch_gradient(x, 7)
    np.testing.assert_allclose(grad, expected, atol=1e-5 * np.abs(expected).max())
    times = onnxdtd.Explainer(MNIST, backend=backend, method="gradient_x_input").explain(x, target=7).relevance
    squared = onnxdtd.Explainer(MNIST, backend=backend, method="sensitivity").explain(x, target=7).relevance
    np.testing.assert_allclose(times, grad * x, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(squared, grad ** 2, rtol=1e-5, atol=1e-9)


def test_integrated_gradients_are_complete():
    """Σ IG = f(x) − f(baseline), up to the path's midpoint rule."""
    x = digits()
    res = onnxdtd.Explainer(MNIST, backend="numpy", method=IntegratedGradients(steps=64)).explain(x, target=[7, 3])
    f = onnxdtd.metrics.predictor(MNIST)
    gap = f(x)[[0, 1], [7, 3]] - f(0 * x)[[0, 1], [7, 3]]
    np.testing.assert_allclose(res.relevance.reshape(2, -1).sum(axis=1), gap, rtol=0.01)


def test_smoothgrad_of_the_gradient_by_name():
    x = digits()
    res = onnxdtd.Explainer(MNIST, backend="numpy", method="smoothgrad").explain(x)
    manual = onnxdtd.Explainer(MNIST, backend="numpy", method=SmoothGrad("gradient")).explain(x)
    np.testing.assert_array_equal(res.relevance, manual.relevance)
    assert res.relevance.shape == x.shape and not np.allclose(res.relevance, 0)


def test_methods_take_every_target_at_once():
    x = digits()
    ex = onnxdtd.Explainer(MNIST, backend="numpy", method="clrp")
    every = ex.explain(x, target="all").relevance
    assert every.shape == (2, 10, 1, 28, 28)
    np.testing.assert_allclose(every[:, 4], ex.explain(x, target=4).relevance, rtol=1e-5, atol=1e-7)


def test_smoothgrad_without_noise_is_the_method_itself():
    x = digits()
    plain = onnxdtd.Explainer(MNIST, backend="numpy").explain(x).relevance
    smooth = onnxdtd.Explainer(MNIST, backend="numpy", method=SmoothGrad("lrp", samples=3, noise=0.0)).explain(x)
    np.testing.assert_allclose(smooth.relevance, plain, rtol=1e-5, atol=1e-7)


def test_smoothgrad_is_seeded_and_keeps_the_clean_inputs_classes():
    x = digits()
    ex = onnxdtd.Explainer(MNIST, backend="numpy", method=SmoothGrad("lrp", samples=4, noise=0.5, seed=1))
    first, second = ex.explain(x), ex.explain(x)
    np.testing.assert_array_equal(first.relevance, second.relevance)
    np.testing.assert_array_equal(first.target, first.output.argmax(axis=1))
    plain = onnxdtd.Explainer(MNIST, backend="numpy").explain(x).relevance
    assert not np.allclose(first.relevance, plain)


def test_integrated_lrp_averages_over_the_path():
    """A wrapped non-gradient method is the mean of the method at the path's points."""
    x = digits()
    plain = onnxdtd.Explainer(MNIST, backend="numpy", rules="zplus")
    wrapped = onnxdtd.Explainer(MNIST, backend="numpy", rules="zplus",
                                method=IntegratedGradients("lrp", steps=2, baseline=0.0))
    res = wrapped.explain(x, target=3)
    expected = (plain.explain(0.25 * x, target=3).relevance + plain.explain(0.75 * x, target=3).relevance) / 2
    np.testing.assert_allclose(res.relevance, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method, call, message", [
    ("attention", {}, "method must be one of"),
    (SmoothGrad("lrp", samples=0), {}, "at least one"),
    (SmoothGrad("occlusion"), {}, "method must be one of"),
    ("clrp", {"init": "one"}, "sets the initial relevance"),
    ("smoothgrad", {"keep": True}, "keep=True"),
])
def test_bad_methods(method, call, message):
    with pytest.raises(onnxdtd.ConfigError, match=message):
        onnxdtd.Explainer(MNIST, backend="numpy", method=method).explain(digits(), **call)
