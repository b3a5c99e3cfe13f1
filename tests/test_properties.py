"""DESIGN.md's properties on random networks: conservation, positivity, finiteness."""
import numpy as np
import pytest

import onnxdtd
from builders import model, node

def relu_net(bias_sign=-1.0, pool="MaxPool", seed=3):
    """Conv → Relu → pool → Conv → Relu → GlobalAveragePool → Flatten → Gemm → Relu → Gemm, with
    biases of one sign; the same network for the same arguments, whatever ran before."""
    rng = np.random.default_rng(seed)
    b = lambda n: bias_sign * rng.uniform(0, 0.1, n)  # noqa: E731
    inits = {"w1": rng.normal(size=(4, 3, 3, 3)) / 4, "b1": b(4), "w2": rng.normal(size=(6, 4, 3, 3)) / 6,
             "b2": b(6), "w3": rng.normal(size=(6, 8)), "b3": b(8), "w4": np.abs(rng.normal(size=(8, 5))), "b4": b(5)}
    nodes = [node("Conv", ["x", "w1", "b1"], "c1", pads=[1, 1, 1, 1]), node("Relu", ["c1"], "r1"),
             node(pool, ["r1"], "p1", kernel_shape=[2, 2], strides=[2, 2]),
             node("Conv", ["p1", "w2", "b2"], "c2", pads=[1, 1, 1, 1]), node("Relu", ["c2"], "r2"),
             node("GlobalAveragePool", ["r2"], "g"), node("Flatten", ["g"], "f"),
             node("Gemm", ["f", "w3", "b3"], "d1"), node("Relu", ["d1"], "r3"), node("Gemm", ["r3", "w4", "b4"], "y")]
    return model(nodes, inits, (3, 8, 8))


def positive_logit_inputs(proto, n=4):
    """Inputs in [0, 1] whose top logit is positive (DTD explains positive evidence)."""
    ex = onnxdtd.Explainer(proto)
    x = np.random.default_rng(4).uniform(size=(64, 3, 8, 8)).astype(np.float32)
    logits = ex.explain(x, init="one").output
    keep = logits.max(axis=1) > 0.05
    assert keep.sum() >= n
    return x[keep][:n]


@pytest.mark.parametrize("preset", ["dtd", "dtd-w2", "zplus"])
@pytest.mark.parametrize("pool", ["MaxPool", "AveragePool"])
@pytest.mark.parametrize("maxpool", ["winner", "proportional"])
@pytest.mark.parametrize("bias_sign", [-1.0, 1.0], ids=["bias<=0", "bias>=0"])
def test_dtd_chains_conserve_the_logit(preset, pool, maxpool, bias_sign, backend):
    proto = relu_net(bias_sign, pool)
    x = positive_logit_inputs(proto)
    res = onnxdtd.Explainer(proto, rules=preset, maxpool=maxpool, backend=backend, dtype=np.float64).explain(x)
    logit = res.output[np.arange(len(x)), res.target]
    np.testing.assert_allclose(res.relevance.reshape(len(x), -1).sum(axis=1), logit, rtol=1e-4)


@pytest.mark.parametrize("preset", ["dtd", "dtd-w2", "zplus"])
@pytest.mark.parametrize("maxpool", ["winner", "proportional"])
def test_dtd_chains_are_positive_with_nonpositive_biases(preset, maxpool, backend):
    proto = relu_net(-1.0)
    x = positive_logit_inputs(proto)
    res = onnxdtd.Explainer(proto, rules=preset, maxpool=maxpool, backend=backend, dtype=np.float64).explain(x)
    assert res.relevance.min() >= -1e-12 * np.abs(res.relevance).max()


@pytest.mark.parametrize("preset", sorted(onnxdtd.rules.PRESETS))
def test_relevance_is_finite_even_where_every_activation_is_zero(preset, backend):
    proto = relu_net(-1.0)
    x = np.zeros((2, 3, 8, 8), np.float32)
    res = onnxdtd.Explainer(proto, rules=preset, backend=backend).explain(x, target=[0, 1])
    assert np.all(np.isfinite(res.relevance))


def test_float64_and_float32_agree(backend):
    proto = relu_net()
    x = positive_logit_inputs(proto)
    r32 = onnxdtd.Explainer(proto, backend=backend).explain(x).relevance
    r64 = onnxdtd.Explainer(proto, backend=backend, dtype=np.float64).explain(x).relevance
    assert r32.dtype == np.float32 and r64.dtype == np.float64
    np.testing.assert_allclose(r32, r64, atol=1e-5 * np.abs(r64).max())


def test_targets_and_init_one():
    proto = relu_net()
    x = positive_logit_inputs(proto)
    ex = onnxdtd.Explainer(proto, rules="zplus", dtype=np.float64)
    res = ex.explain(x, target=[1, 2, 3, 4], init="one")
    np.testing.assert_array_equal(res.target, [1, 2, 3, 4])
    np.testing.assert_allclose(res.relevance.reshape(4, -1).sum(axis=1), 1.0, rtol=1e-4)
    single = ex.explain(x[:1], target=2)
    np.testing.assert_allclose(single.relevance[0], ex.explain(x, target=2).relevance[0], rtol=1e-12)
