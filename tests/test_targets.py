"""Several targets per sample in one batched backward walk, and initial relevance given as an array."""
import numpy as np
import onnx
import pytest

import onnxdtd
from builders import model, node
from onnxdtd.targets import class_table, one_hot

BACKENDS = onnxdtd.available_backends()
MNIST = "models/mnist_cnn.onnx"


def digits() -> np.ndarray:
    return np.concatenate([np.load(f"models/samples/digit_{d}.npy") for d in (7, 3, 0)]).astype(np.float32)


def residual():
    """Conv → Relu → Conv, added to its input (residual), pooled and read out densely."""
    rng = np.random.default_rng(0)
    inits = {"w1": rng.normal(size=(3, 3, 3, 3)) / 3, "w2": rng.normal(size=(3, 3, 3, 3)) / 3,
             "b": rng.uniform(-0.1, 0, 3), "w3": rng.normal(size=(3, 4))}
    nodes = [node("Conv", ["x", "w1", "b"], "c1", pads=[1, 1, 1, 1]), node("Relu", ["c1"], "r1"),
             node("Conv", ["r1", "w2", "b"], "c2", pads=[1, 1, 1, 1]), node("Add", ["c2", "x"], "s"),
             node("Relu", ["s"], "r2"), node("GlobalAveragePool", ["r2"], "g"), node("Flatten", ["g"], "f"),
             node("MatMul", ["f", "w3"], "y")]
    x = np.random.default_rng(1).uniform(size=(3, 3, 6, 6)).astype(np.float32)
    return model(nodes, inits, (3, 6, 6)), x, "zplus"


def fixed_batch():
    """The shipped MNIST model with its batch axis fixed to 3: the passes cannot be batched."""
    proto = onnx.load(MNIST)
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 3
    return proto, digits(), "dtd"


CASES = {"mnist": lambda: (MNIST, digits(), "dtd"), "residual": residual, "fixed-batch": fixed_batch}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_all_targets_equal_one_call_per_target(case, backend):
    source, x, rules = CASES[case]()
    ex = onnxdtd.Explainer(source, rules=rules, backend=backend)
    res = ex.explain(x, target="all")
    k = res.output.shape[1]
    assert res.relevance.shape == (len(x), k, *x.shape[1:]) and res.relevance.dtype == np.float32
    np.testing.assert_array_equal(res.target, np.tile(np.arange(k), (len(x), 1)))
    expected = np.stack([ex.explain(x, target=c).relevance for c in range(k)], axis=1)
    np.testing.assert_allclose(res.relevance, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_table_of_targets_with_init_one_and_keep(backend):
    ex = onnxdtd.Explainer(MNIST, backend=backend)
    x = digits()
    table = [[1, 7], [3, 3], [9, 0]]
    res = ex.explain(x, target=table, init="one", keep=True)
    assert res.relevance.shape == (3, 2, 1, 28, 28)
    np.testing.assert_array_equal(res.target, table)
    for row, classes in enumerate(table):
        for col, c in enumerate(classes):
            one = ex.explain(x[row:row + 1], target=c, init="one", keep=True)
            np.testing.assert_allclose(res.relevance[row, col], one.relevance[0], rtol=1e-5, atol=1e-6)
            for name, r in one.intermediate.items():
                np.testing.assert_allclose(res.intermediate[name][row, col], r[0], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_init_array_is_the_initial_relevance(backend):
    """Relevance is linear in the initial relevance: an array init equals the sum of one-hot calls."""
    ex = onnxdtd.Explainer(MNIST, rules="zplus", backend=backend)
    x = digits()
    init = np.random.default_rng(2).uniform(-1, 1, size=(3, 10)).astype(np.float32)
    res = ex.explain(x, init=init)
    np.testing.assert_array_equal(res.target, [-1, -1, -1])
    per_class = ex.explain(x, target="all", init="one").relevance
    expected = np.einsum("nk,nk...->n...", init, per_class)
    np.testing.assert_allclose(res.relevance, expected, atol=1e-5 * np.abs(expected).max())


def test_passes_are_chunked_to_bound_memory(monkeypatch):
    """With a tiny tile budget every pass runs alone, with the same result."""
    ex = onnxdtd.Explainer(MNIST, backend="numpy")
    x = digits()
    whole = ex.explain(x, target="all").relevance
    monkeypatch.setattr(onnxdtd.explainer, "TILE_BYTES", 1)
    np.testing.assert_allclose(ex.explain(x, target="all").relevance, whole, rtol=1e-5, atol=1e-7)


def test_one_hot_and_tables():
    logits = np.array([[2.0, -1.0, 0.5], [0.0, 3.0, 1.0]])
    table = class_table("all", logits)
    np.testing.assert_array_equal(table, [[0, 1, 2], [0, 1, 2]])
    start = one_hot(logits, np.array([[2], [1]]), "logit", np.float64)
    np.testing.assert_array_equal(start[:, 0], [[0, 0, 0.5], [0, 3.0, 0]])


@pytest.mark.parametrize("kwargs, message", [
    ({"target": "every"}, "'all'"),
    ({"target": [[1, 2], [3]]}, "same length"),
    ({"target": [[1, 2]]}, "one non-empty row per sample"),
    ({"target": [[1, 12], [0, 0], [0, 0]]}, "out of range"),
    ({"target": [[1.5, 2], [0, 0], [0, 0]]}, "integral"),
    ({"init": np.zeros((3, 9), np.float32)}, "output's shape"),
    ({"init": np.zeros((3, 10), np.int64)}, "float array"),
    ({"init": np.full((3, 10), np.nan, np.float32)}, "NaN"),
    ({"init": np.zeros((3, 10), np.float32), "target": 1}, "target=None"),
])
def test_bad_targets_and_inits(kwargs, message):
    ex = onnxdtd.Explainer(MNIST, backend="numpy")
    with pytest.raises((onnxdtd.TargetError, onnxdtd.ConfigError), match=message):
        ex.explain(digits(), **kwargs)


def test_dense_denominators_are_computed_once_per_sample(monkeypatch):
    """Several passes per sample take the dense layers' denominators (z⁺) from before the activations
    are repeated, not from the walk's kernels."""
    from onnxdtd.backends import numpy_backend

    calls = []
    real = numpy_backend.modified_forward
    monkeypatch.setattr(numpy_backend, "modified_forward", lambda op, terms: calls.append(op) or real(op, terms))
    dense = lambda: [op for op in calls if isinstance(op, numpy_backend.OPS["dense"])]  # noqa: E731
    ex = onnxdtd.Explainer(MNIST, backend="numpy")
    ex.explain(digits(), target=3)
    assert len(dense()) == 2  # one pass: the kernels compute the two dense layers' denominators themselves
    calls.clear()
    every = ex.explain(digits(), target="all").relevance
    assert not dense()
    np.testing.assert_allclose(every[:, 3], ex.explain(digits(), target=3).relevance, rtol=1e-5, atol=1e-7)
