"""DESIGN.md's golden toy values for every rule, on one dense neuron, through the public API."""
import numpy as np
import pytest

import onnxdtd
from builders import model, node
from onnxdtd.rules import AlphaBeta, Composite, Epsilon, Flat, Gamma, WSquare, ZPlus


def neuron(w, b):
    """y = x @ w + b as a one-output Gemm."""
    return model([node("Gemm", ["x", "w", "b"], "y")], {"w": np.array(w).reshape(-1, 1), "b": np.array([b])},
                 [len(w)])


CASE_A = ((1.0, -1.0), -1.0, (1.0, 1.0), "logit")  # z = -1, R = z
CASE_B = ((1.0, 2.0), 3.0, (5.0, 7.0), "one")  # R = 1

GOLDEN = [
    (AlphaBeta(1.0, 0.0), CASE_A, (-1.0, 0.0)),
    (AlphaBeta(2.0, 1.0), CASE_A, (-2.0, 0.5)),
    (ZPlus(bias=True), CASE_A, (-1.0, 0.0)),
    (Epsilon(), CASE_A, (1.0, -1.0)),
    (Gamma(0.25), CASE_A, (2 / 3, -5 / 6)),
    (WSquare(bias=True), CASE_B, (1 / 14, 4 / 14)),
    (WSquare(), CASE_B, (0.2, 0.8)),
    (Flat(), CASE_B, (0.5, 0.5)),
]


@pytest.mark.parametrize("rule, case, expected", GOLDEN, ids=[repr(g[0]) for g in GOLDEN])
def test_golden_values(rule, case, expected, backend):
    w, b, x, init = case
    ex = onnxdtd.Explainer(neuron(w, b), rules=Composite(kinds={"dense": rule}), backend=backend, dtype=np.float64)
    res = ex.explain(np.array([x]), target=0, init=init)
    np.testing.assert_allclose(res.relevance[0], expected, atol=1e-5)


def test_zplus_without_bias_ignores_bias():
    """DTD's z⁺ excludes the bias: a positive bias changes nothing."""
    ex = onnxdtd.Explainer(neuron((1.0, 2.0), 5.0), rules="zplus", dtype=np.float64)
    res = ex.explain(np.array([[1.0, 1.0]]), init="one")
    np.testing.assert_allclose(res.relevance[0], (1 / 3, 2 / 3), atol=1e-6)
