"""Region perturbation (Samek et al. 2017, seed 002's "perturbation analysis") on the shipped digits CNN:
the AOPC of DTD, LRP-ε, the ε/γ/z^B composite, CLRP, gradient × input, sensitivity and a random order.

The model is models/mnist_cnn.onnx (built by models/build_mnist_cnn.py, nothing to train here); the
inputs are its held-out digits. Writes its table in docs/experiments.md and the figure
docs/experiments/perturbation_curves.png.
Run from the repository root: ``python -m experiments.perturbation`` (--evaluate-only changes nothing).
"""
from __future__ import annotations

import numpy as np

import onnxdtd
from experiments import common
from onnxdtd import metrics
from onnxdtd.rules import Composite, Epsilon

MODEL = common.ROOT / "models" / "mnist_cnn.onnx"
EXPLAINED = 300  # held-out digits
EARLY = 10  # patches of the second AOPC column: the start of the curve, where heatmaps differ most
METHODS = {  # label: Explainer options
    "DTD (z^B first, z⁺ rest)": dict(rules="dtd"),
    "LRP-ε (ε = 0.25 everywhere)": dict(rules=Composite(kinds={"linear": Epsilon(0.25)})),
    "ε/γ/z^B composite (epsilon-gamma-box)": dict(rules="epsilon-gamma-box"),
    "CLRP (DTD rules)": dict(rules="dtd", method="clrp"),
    "gradient × input": dict(method="gradient_x_input"),
    "sensitivity (squared gradient)": dict(method="sensitivity"),
}


def explain_all(x: np.ndarray) -> dict[str, onnxdtd.Explanation]:
    """Each method's explanation of the predicted class."""
    return {name: onnxdtd.Explainer(str(MODEL), low=0.0, high=1.0, **options).explain(x)
            for name, options in METHODS.items()}


def perturb_all(x: np.ndarray, explanations: dict[str, onnxdtd.Explanation]) -> dict[str, metrics.Perturbation]:
    """Region perturbation of each heatmap: 4×4 patches, most relevant first, replaced by uniform noise
    in [0, 1], all 49 patches (the defaults of metrics.region_perturbation)."""
    predict = metrics.predictor(str(MODEL))
    return {name: metrics.region_perturbation(predict, x, res.relevance, res.target, seed=0)
            for name, res in explanations.items()}


def ink_first(x: np.ndarray, relevance: np.ndarray) -> np.ndarray:
    """Per image, the share of its ink (summed pixel values) in the EARLY patches ranked most relevant
    (the ranking of metrics.region_perturbation: 4×4 patches, ties by index)."""
    patches = lambda a: a.reshape(len(a), 7, 4, 7, 4).sum(axis=(2, 4)).reshape(len(a), -1)  # noqa: E731
    ink = patches(x[:, 0])
    first = np.argsort(-patches(relevance[:, 0]), axis=1, kind="stable")[:, :EARLY]
    return np.take_along_axis(ink, first, axis=1).sum(axis=1) / ink.sum(axis=1)


def evaluate() -> None:
    """The AOPC table and the mean perturbation curves."""
    _, x_test, _, _ = common.mnist_split()
    x = x_test[:EXPLAINED]
    explanations = explain_all(x)
    results = perturb_all(x, explanations)
    first = next(iter(results.values()))  # the same random orders and noise in every call (seed 0)
    rows = [[name, common.mean_sem(p.aopc, 2), common.mean_sem(early_aopc(p.curve), 2),
             f"{ink_first(x, explanations[name].relevance).mean():.0%}"] for name, p in results.items()]
    rows.append(["random order", common.mean_sem(first.random_aopc, 2),
                 common.mean_sem(early_aopc(first.random_curve), 2), f"{EARLY / 49:.0%} expected"])
    rows.sort(key=lambda row: -float(row[1].split()[0]))
    common.table("perturbation", ["heatmap", "AOPC, all 49 patches", f"AOPC, first {EARLY} patches",
                                  f"ink in the first {EARLY} patches"], rows,
                 f"{EXPLAINED} held-out digits, the predicted class's logit (about {first.curve[:, 0].mean():.0f} "
                 "on average), 4×4 patches replaced by uniform noise in [0, 1], most relevant first; "
                 "AOPC = mean over k of f(x) − f(x after k patches), in logit units, mean ± standard error; "
                 "ink: the share of the digit's summed pixel values in those patches.")
    curves_figure(results)


def early_aopc(curve: np.ndarray) -> np.ndarray:
    """AOPC over the first EARLY perturbation steps (k = 0..EARLY)."""
    return (curve[:, :1] - curve[:, :EARLY + 1]).mean(axis=1)


def curves_figure(results: dict[str, metrics.Perturbation]) -> None:
    """Mean logit after k perturbed patches, per method and for the random order."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, p in results.items():
        ax.plot(p.curve.mean(axis=0), label=name)
    ax.plot(next(iter(results.values())).random_curve.mean(axis=0), "k--", label="random order")
    ax.set(xlabel="patches replaced (most relevant first)", ylabel="mean logit of the predicted class")
    ax.legend(fontsize=7)
    fig.tight_layout()
    common.save_plot(fig, "perturbation_curves")


def main(argv=None) -> None:
    """Evaluate only: the model is the shipped one (rebuild it with models/build_mnist_cnn.py)."""
    common.run(__doc__, None, evaluate, argv)


if __name__ == "__main__":
    main()
