"""onnxdtd.metrics on cases with known answers: linear models, hand-made heatmaps, the shipped MNIST CNN."""
from pathlib import Path

import numpy as np
import onnx
import pytest

from builders import model, node
from onnxdtd import BoundsError, ConfigError, Explainer, InputError, TargetError
from onnxdtd import metrics as M

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT / "models" / "mnist_cnn.onnx"
DIGITS = np.concatenate([np.load(ROOT / "models" / "samples" / f"digit_{d}.npy") for d in (3, 7)])


@pytest.fixture(scope="module")
def linear():
    """A bias-free linear model f(x) = W flatten(x) on (N, 1, 6, 6), two inputs, and their exact
    contributions w ⊙ x for the predicted class (what LRP-0 gives for a linear model)."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(36, 3)).astype(np.float32)
    proto = model([node("Flatten", ["x"], "f"), node("MatMul", ["f", "w"], "y")], {"w": w}, [1, 6, 6])
    x = rng.random((2, 1, 6, 6)).astype(np.float32)
    target = (x.reshape(2, -1) @ w).argmax(axis=1)
    return proto, x, target, (x.reshape(2, -1) * w[:, target].T).reshape(x.shape).astype(np.float64)


def dense(w: np.ndarray):
    """predict(x) = flatten(x) · w as one output column."""
    return lambda x: np.asarray(x, np.float64).reshape(len(x), -1) @ w.reshape(-1, 1)


# ---------------------------------------------------------------- consistency

@pytest.mark.parametrize("shape", [(1, 5), (3, 2, 4, 4), (2, 7, 3)])
def test_heatmap_summing_to_f_has_conservation_error_0(shape):
    r = np.random.default_rng(1).normal(size=shape)
    assert np.all(M.conservation_error(r, r.reshape(len(r), -1).sum(axis=1)) < 1e-12)


def test_conservation_error_values():
    r = np.array([[1.0, 2.0], [1.0, -1.0], [1.0, 0.0]])
    assert np.allclose(M.conservation_error(r[:2], [4.0, -2.0]), [0.25, 1.0])
    assert np.isnan(M.conservation_error(r[2:], 0.0)[0])  # relative to f(x) = 0: undefined


def test_conservation_of_dtd_on_mnist():
    res = Explainer(MNIST).explain(DIGITS)
    assert np.all(M.conservation_error(res.relevance, res.output[[0, 1], res.target]) < 1e-3)
    assert np.all(M.negative_fraction(res.relevance) == 0)  # z^B/z+ on a bias ≤ 0 net: positive


@pytest.mark.parametrize("r, expected", [([[1.0, 2.0, 0.0]], 0.0), ([[1.0, -1.0, 2.0, 0.0]], 0.25),
                                         ([[-1.0, -3.0]], 1.0), ([[0.0, 0.0]], 0.0)])
def test_negative_fraction(r, expected):
    assert M.negative_fraction(r)[0] == pytest.approx(expected)


# ---------------------------------------------------------------- region perturbation

@pytest.mark.parametrize("patch", [1, 2, 3, 4, (2, 3)])
@pytest.mark.parametrize("baseline", [0.0, 0.5])
def test_removing_the_most_relevant_patch_drops_a_linear_output_by_its_contribution(linear, patch, baseline):
    proto, x, target, w_x = linear
    res = Explainer(proto, rules="lrp0").explain(x)
    assert np.allclose(res.relevance, w_x, rtol=1e-5, atol=1e-6)
    p = M.region_perturbation(M.predictor(proto), x, res.relevance, patch=patch, baseline=baseline)
    labels, count = M._patch_labels((6, 6), p.patch)
    patches = [labels == k for k in range(count)]
    relevance = np.array([[w_x[n, 0][m].sum() for m in patches] for n in range(2)])
    # replacing a patch by the baseline c drops f by Σ_patch w (x − c): R of the patch when c = 0
    drop = np.array([[(w_x[n, 0] * (1 - baseline / x[n, 0]))[m].sum() for m in patches] for n in range(2)])
    drops = np.take_along_axis(drop, np.argsort(-relevance, axis=1), axis=1)[:, :p.curve.shape[1] - 1]
    expected = p.curve[:, :1] - np.concatenate([np.zeros((2, 1)), np.cumsum(drops, axis=1)], axis=1)
    assert np.allclose(p.curve, expected, rtol=1e-5, atol=1e-5)
    if baseline == 0:
        assert p.curve[:, 0] - p.curve[:, 1] == pytest.approx(relevance.max(axis=1), rel=1e-5)


def test_random_ordering_baseline(linear):
    proto, x, target, contributions = linear
    predict = M.predictor(proto)
    p = M.region_perturbation(predict, x, contributions, patch=2, steps=9, baseline=0.0, seed=3)
    assert p.curve.shape == p.random_curve.shape == (2, 10)
    assert np.allclose(p.curve[:, 0], p.random_curve[:, 0])  # both start at f(x)
    assert np.allclose(p.curve[:, -1], p.random_curve[:, -1], atol=1e-5)  # every patch replaced by 0: f = 0
    assert np.all(p.curve <= p.random_curve + 1e-5)  # greedy removal of the largest contributions drops fastest
    assert np.all(p.aopc >= p.random_aopc)
    again = M.region_perturbation(predict, x, contributions, patch=2, steps=9, baseline=0.0, seed=3)
    other = M.region_perturbation(predict, x, contributions, patch=2, steps=9, baseline=0.0, seed=4)
    assert np.array_equal(again.random_curve, p.random_curve)
    assert not np.array_equal(other.random_curve, p.random_curve)


def test_uniform_noise_stays_in_bounds_and_is_shared_by_both_orders(linear):
    proto, x, target, contributions = linear
    seen = []
    predict = M.predictor(proto)
    p = M.region_perturbation(lambda z: seen.append(z.copy()) or predict(z), x, contributions, target, patch=3,
                              low=0.2, high=0.4)
    last = seen[-1]  # every patch replaced, in both orders: the same noise image
    assert np.all((last >= 0.2) & (last <= 0.4)) and np.array_equal(last[:2], last[2:])
    assert np.allclose(p.curve[:, -1], p.random_curve[:, -1])


def test_pixel_flipping_is_the_1x1_case(linear):
    proto, x, _, contributions = linear
    predict = M.predictor(proto)
    flip = M.pixel_flipping(predict, x, contributions, steps=5, seed=1)
    region = M.region_perturbation(predict, x, contributions, patch=1, steps=5, seed=1)
    assert flip.patch == (1, 1) and np.array_equal(flip.curve, region.curve)


@pytest.mark.parametrize("shape, patch", [((1, 1, 28, 28), (4, 4)), ((1, 3, 32, 32), (4, 4)),
                                          ((1, 3, 64, 48), (9, 9)), ((1, 28, 28), (4, 4)), ((1, 10), (1,))])
def test_default_patch(shape, patch):
    x = np.zeros(shape)
    p = M.region_perturbation(dense(np.ones(x[0].size)), x, x, steps=1, baseline=1.0)
    assert p.patch == patch


def test_channels_last_equals_channels_first():
    rng = np.random.default_rng(2)
    x, w = rng.random((2, 3, 8, 8)), rng.normal(size=(3, 8, 8))
    first = M.region_perturbation(dense(w), x, x * w, patch=2, baseline=0.0)
    last = M.region_perturbation(dense(w.transpose(1, 2, 0)), x.transpose(0, 2, 3, 1),
                                 (x * w).transpose(0, 2, 3, 1), patch=2, baseline=0.0, channel_axis=-1)
    assert np.allclose(first.curve, last.curve)


def test_aopc_definition():
    p = M.Perturbation(np.array([[4.0, 2.0, 0.0]]), np.array([[4.0, 4.0, 1.0]]), (1,))
    assert p.aopc[0] == pytest.approx((0 + 2 + 4) / 3) and p.random_aopc[0] == pytest.approx(1.0)


# ---------------------------------------------------------------- diffusion, correlations, sparseness

def test_identical_heatmaps_have_diffusion_0():
    h = np.random.default_rng(3).normal(size=(4, 1, 5, 5))
    d = M.diffusion(h, h.copy())
    assert d.mean == 0 and np.all(d.distance == 0) and np.allclose(d.correlation, 1)


def test_diffusion_is_the_mean_frobenius_norm():
    h1 = np.zeros((2, 2, 2))
    h2 = np.stack([np.full((2, 2), 1.0), np.array([[3.0, 0.0], [0.0, -4.0]])])
    d = M.diffusion(h1, h2)
    assert np.allclose(d.distance, [2.0, 5.0]) and d.mean == pytest.approx(3.5)
    assert np.isnan(d.correlation).all()  # one heatmap is constant: no correlation
    assert M.diffusion(h2[1:], -h2[1:]).correlation[0] == pytest.approx(-1)


@pytest.mark.parametrize("a, b, expected", [([1, 2, 2, 3], [1, 2, 3, 4], 0.9486832980505138),
                                            ([1, 1, 2, 2], [2, 2, 1, 1], -1.0),
                                            ([3, 1, 2], [30, 10, 20], 1.0),
                                            ([5, 5, 5], [1, 2, 3], np.nan)])
def test_rank_correlation_with_ties(a, b, expected):
    got = M.rank_correlation(np.array([a], float), np.array([b], float))[0]
    assert np.isnan(got) if np.isnan(expected) else got == pytest.approx(expected)


def test_rank_correlation_equals_scipy_and_honours_the_mask():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(4)
    a, b = rng.integers(0, 5, (3, 40)).astype(float), rng.integers(0, 5, (3, 40)).astype(float)
    mask = rng.random((3, 40)) > 0.3
    got = M.rank_correlation(a, b, mask)
    assert np.allclose(got, [stats.spearmanr(u[m], v[m])[0] for u, v, m in zip(a, b, mask)])
    assert M.rank_correlation(np.array([[1.0, 2, 3, 9]]), np.array([[1.0, 2, 3, -9]]), [[1, 1, 1, 0]])[0] == 1


@pytest.mark.parametrize("n", [1, 4, 100])
def test_gini_of_one_hot_and_constant_maps(n):
    one_hot = np.zeros((1, n))
    one_hot[0, n // 2] = -3.0
    assert M.gini(one_hot)[0] == pytest.approx(1 - 1 / n)
    assert M.gini(np.full((1, n), 2.5))[0] == pytest.approx(0, abs=1e-12)
    assert M.gini(np.zeros((1, n)))[0] == 0


def test_gini_is_scale_and_sign_invariant():
    r = np.random.default_rng(5).normal(size=(2, 3, 4))
    assert np.allclose(M.gini(r), M.gini(-7 * r)) and np.all((M.gini(r) > 0) & (M.gini(r) < 1))


# ---------------------------------------------------------------- model randomization

@pytest.mark.parametrize("source", ["path", "proto"])
def test_randomization_keeps_the_model_and_starts_at_1(source):
    before = MNIST.read_bytes()
    proto = onnx.load(str(MNIST))
    serialized = proto.SerializeToString()
    r = M.model_randomization(MNIST if source == "path" else proto, DIGITS, mask=DIGITS > 0)
    assert MNIST.read_bytes() == before and proto.SerializeToString() == serialized
    assert len(r.layers) == 4 and r.correlation.shape == r.abs_correlation.shape == (5, 2)
    assert np.allclose(r.correlation[0], 1) and np.allclose(r.abs_correlation[0], 1)
    assert np.all(r.correlation[1:] < 0.99)  # the top layer's weights change the heatmap


def test_randomization_goes_from_the_output_down():
    w1, w2 = np.eye(4, dtype=np.float32), np.abs(np.random.default_rng(6).normal(size=(4, 2))).astype(np.float32)
    proto = model([node("MatMul", ["x", "w1"], "h"), node("Relu", ["h"], "a"), node("MatMul", ["a", "w2"], "y")],
                  {"w1": w1, "w2": w2}, [4])
    r = M.model_randomization(proto, np.ones((1, 4), np.float32), rules="zplus", backend="numpy", seed=1)
    assert r.layers == ["MatMul_y", "MatMul_h"]


# ---------------------------------------------------------------- continuity

def test_continuity_of_a_linear_explanation():
    w = np.array([-2.5])
    c = M.continuity(lambda x, t: x * w, dense(w), np.full((3, 1), 0.5), radius=0.1, samples=5)
    assert c.relevance_change.shape == (3, 5)
    assert np.allclose(c.lipschitz, 2.5) and np.allclose(c.output_ratio, 1.0)


def test_continuity_of_a_constant_explanation_and_clipping():
    seen = []

    def explain(x, target):
        seen.append(x)
        return np.ones_like(x)

    x = np.full((2, 6), 0.9)
    c = M.continuity(explain, dense(np.arange(6.0)), x, radius=0.5, samples=4, low=0.0, high=1.0)
    assert np.all(c.lipschitz == 0) and np.all(c.output_ratio == 0)
    assert np.all((seen[0] >= 0) & (seen[0] <= 1)) and np.all(c.input_change > 0)


def test_continuity_of_dtd_on_mnist():
    ex = Explainer(MNIST)
    c = M.continuity(lambda x, t: ex.explain(x, t).relevance, M.predictor(MNIST), DIGITS, samples=2, low=0, high=1)
    assert np.all(np.isfinite(c.lipschitz)) and np.all(c.output_ratio >= 1 - 1e-3)  # conservative: ≥ 1


# ---------------------------------------------------------------- helpers and errors

def test_predictor_gives_the_explainers_output():
    assert np.allclose(M.predictor(MNIST)(DIGITS), Explainer(MNIST).explain(DIGITS).output)


def test_pixel_map_sums_channels():
    r = np.arange(2 * 3 * 2 * 2, dtype=float).reshape(2, 3, 2, 2)
    assert np.array_equal(M.pixel_map(r), r.sum(axis=1))
    assert np.array_equal(M.pixel_map(r.transpose(0, 2, 3, 1), channel_axis=3), r.sum(axis=1))
    assert np.array_equal(M.pixel_map(r[:, 0]), r[:, 0])


X = np.ones((2, 1, 4, 4))
PREDICT = dense(np.ones(16))
ERRORS = [
    (InputError, "relevance", lambda: M.conservation_error(np.ones(3), 1.0)),
    (InputError, "value", lambda: M.conservation_error(np.ones((2, 3)), [1.0, 2.0, 3.0])),
    (InputError, "NaN", lambda: M.gini(np.full((1, 2), np.nan))),
    (InputError, "same shape", lambda: M.diffusion(np.ones((1, 2)), np.ones((1, 3)))),
    (InputError, "mask", lambda: M.rank_correlation(np.ones((2, 3)), np.ones((2, 3)), np.ones((2, 4)))),
    (InputError, "shape of x", lambda: M.region_perturbation(PREDICT, X, X[:, 0])),
    (InputError, "predict", lambda: M.region_perturbation(lambda x: np.ones(len(x)), X, X)),
    (ConfigError, "patch", lambda: M.region_perturbation(PREDICT, X, X, patch=0)),
    (ConfigError, "patch", lambda: M.region_perturbation(PREDICT, X, X, patch=(2, 2, 2))),
    (ConfigError, "steps", lambda: M.region_perturbation(PREDICT, X, X, patch=2, steps=5)),
    (ConfigError, "baseline", lambda: M.region_perturbation(PREDICT, X, X, baseline="zeros")),
    (ConfigError, "baseline", lambda: M.region_perturbation(PREDICT, X, X, baseline=float("nan"))),
    (ConfigError, "channel_axis", lambda: M.region_perturbation(PREDICT, X, X, channel_axis=0)),
    (BoundsError, "low", lambda: M.region_perturbation(PREDICT, X, X, low=1.0, high=0.0)),
    (TargetError, "out of range", lambda: M.region_perturbation(PREDICT, X, X, target=3)),
    (ConfigError, "radius", lambda: M.continuity(lambda x, t: x, PREDICT, X, radius=0.0)),
    (InputError, "explain", lambda: M.continuity(lambda x, t: x[:1], PREDICT, X)),
]


@pytest.mark.parametrize("error, word, call", ERRORS, ids=[f"{e.__name__}-{w}" for e, w, _ in ERRORS])
def test_errors(error, word, call):
    with pytest.raises(error, match=word):
        call()


def test_randomization_needs_linear_weights():
    proto = model([node("Relu", ["x"], "y")], {}, [4])
    with pytest.raises(ConfigError, match="Conv/Gemm/MatMul"):
        M.model_randomization(proto, np.ones((1, 4), np.float32))
