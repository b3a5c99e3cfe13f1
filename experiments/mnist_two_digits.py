"""Seed 000's MNIST experiment: a digit 0-3 next to a distractor digit 4-9 (28×56 input), one hidden
ReLU layer of 400 units with biases ≤ 0, sum-pooling outputs; DTD (z^B, w², z⁺) against sensitivity
analysis (the squared gradient): the share of positive relevance on the target half, and consistency.

Writes models/experiments/two_digits.onnx, its table in docs/experiments.md and the figures
docs/experiments/two_digits_heatmaps.png and two_digits_consistency.png.
Run from the repository root: ``python -m experiments.mnist_two_digits [--evaluate-only]``.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

import onnxdtd
from experiments import common
from onnxdtd import heatmap as hm
from onnxdtd import metrics

MODEL = common.MODELS / "two_digits.onnx"
TARGETS = 4  # target digits 0..3, one sum-pooled output each
UNITS = 400  # hidden ReLU units, UNITS // TARGETS pooled into each output
TRAIN_PAIRS = 20_000
EPOCHS = 10
L1 = 1e-5  # weight of the L1 penalty on the hidden weights (sparse detectors)
METHODS = {  # label (ASCII: the figures' font has no superscripts): Explainer options
    "DTD z^B": dict(rules="dtd"),
    "DTD w^2": dict(rules="dtd-w2"),
    "DTD z+": dict(rules="zplus"),
    "sensitivity": dict(method="sensitivity"),
}
CONSISTENT_TOL = 1e-3  # relative conservation error and negative share below which a heatmap counts as consistent


class TwoDigitDetector(nn.Module):
    """x_j = max(0, Σ_i x_i w_ij + b_j) with b_j ≤ 0 (kept by `clamp_biases`), and per target digit k
    the sum-pooling output x_k = Σ_{j in block k} x_j over its own 100 hidden units."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(28 * 56, UNITS)
        nn.init.zeros_(self.hidden.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 28, 56) in [0, 1] -> (N, 4) non-negative detection scores."""
        h = torch.relu(self.hidden(x.flatten(1)))
        return h.view(-1, TARGETS, UNITS // TARGETS).sum(dim=2)


def clamp_biases(model: TwoDigitDetector) -> None:
    """Project the hidden biases onto b ≤ 0 (the detection-pooling assumption of DTD)."""
    model.hidden.bias.clamp_(max=0.0)


def detection_loss(out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of presence/absence with P(digit k present) = 1 − exp(−x_k): the output of a
    present digit is pushed up, that of every absent digit down to 0, so that f(x) = 0 means "absent"
    (seed 000: f(x) > 0 expresses the presence of the object). Cross-entropy would not do this: it only
    compares the outputs, so the distractor may raise all of them alike."""
    present = nn.functional.one_hot(labels, out.shape[1]).to(out.dtype)
    present_nll = -torch.log((-torch.expm1(-out)).clamp(min=1e-7))  # −log(1 − e^−x)
    return (present * present_nll + (1 - present) * out).sum(dim=1).mean()  # absent: −log e^−x = x


def sparsity(model: TwoDigitDetector) -> torch.Tensor:
    """L1 penalty on the hidden weights: weights of pixels that carry no evidence go to 0."""
    return L1 * model.hidden.weight.abs().sum()


def compose(x: np.ndarray, y: np.ndarray, count: int | None, seed: int) -> tuple[np.ndarray, ...]:
    """28×56 images of a target digit (0-3) on a random side and a distractor (4-9) on the other.
    count=None uses every target digit of (x, y) once, else `count` targets drawn with replacement;
    distractors are always drawn at random. Returns images (N, 1, 28, 56), labels (N,) and the side
    of the target (N,) (0: left, 1: right)."""
    rng = np.random.default_rng(seed)
    targets, distractors = np.flatnonzero(y < TARGETS), np.flatnonzero(y >= TARGETS)
    picked = targets if count is None else rng.choice(targets, count)
    others = rng.choice(distractors, len(picked))
    side = rng.integers(0, 2, len(picked))
    halves = np.stack([x[picked], x[others]], axis=1)  # (N, 2, 1, 28, 28): target, distractor
    left = np.where(side[:, None, None, None] == 0, halves[:, 0], halves[:, 1])
    right = np.where(side[:, None, None, None] == 0, halves[:, 1], halves[:, 0])
    return np.concatenate([left, right], axis=3), y[picked], side


def test_pairs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The held-out images: every held-out target digit once, next to a held-out distractor."""
    _, x_test, _, y_test = common.mnist_split()
    return compose(x_test, y_test, None, seed=1)


def build() -> None:
    """Train on 20,000 pairs of the 4,000 training digits and export."""
    x_train, _, y_train, _ = common.mnist_split()
    x, y, _ = compose(x_train, y_train, TRAIN_PAIRS, seed=0)
    model = TwoDigitDetector()
    common.train(model, x, y, EPOCHS, penalty=sparsity, project=clamp_biases, loss_fn=detection_loss)
    common.export(model, x[:500], MODEL, quantize_above=100_000)


def explain_all(x: np.ndarray, y: np.ndarray) -> dict[str, onnxdtd.Explanation]:
    """Each method's explanation of the true target's detection output."""
    return {name: onnxdtd.Explainer(str(MODEL), low=0.0, high=1.0, **options).explain(x, y)
            for name, options in METHODS.items()}


def target_share(relevance: np.ndarray, side: np.ndarray) -> np.ndarray:
    """Per sample, the share of the positive relevance that lies on the target digit's half."""
    pos = np.maximum(relevance.reshape(len(relevance), 28, 2, 28), 0)  # (N, rows, half, columns)
    halves = pos.sum(axis=(1, 3))
    return halves[np.arange(len(side)), side] / np.maximum(halves.sum(axis=1), 1e-30)


def consistency(res: onnxdtd.Explanation) -> tuple[np.ndarray, np.ndarray]:
    """Conservation error |Σ R − f| / f and the negative share of the relevance, per sample."""
    f = res.output[np.arange(len(res.target)), res.target]
    return metrics.conservation_error(res.relevance, f), metrics.negative_fraction(res.relevance)


def erased(x: np.ndarray, side: np.ndarray, which: np.ndarray) -> np.ndarray:
    """The images with the half `which` (per sample: 0 left, 1 right) set to 0 (black)."""
    halves = x.reshape(len(x), 1, 28, 2, 28).copy()
    halves[np.arange(len(x)), 0, :, which, :] = 0.0
    return halves.reshape(x.shape)


def erasure_change(x: np.ndarray, y: np.ndarray, side: np.ndarray) -> tuple[float, float]:
    """Mean relative change of the explained output when the distractor's half, or the target's half,
    is erased: what each digit really contributes, net of excitation and inhibition."""
    rows = np.arange(len(y))
    f = common.predict(MODEL, x)[rows, y]
    keep = f > 0
    change = [((common.predict(MODEL, erased(x, side, which))[rows, y] - f)[keep] / f[keep]).mean()
              for which in (1 - side, side)]
    return float(change[0]), float(change[1])


def detectors(x: np.ndarray) -> tuple[int, float, float]:
    """How many hidden units are active on some image of `x`, and the range of the share of those
    units' positive weight on the left half (near 0.5: a template over both halves)."""
    layer = next(layer for layer in onnxdtd.load(str(MODEL)) if layer.kind == "dense")
    w, b = layer.params["weight"], layer.params["bias"]
    active = (x.reshape(len(x), -1) @ w.T + b > 0).any(axis=0)
    positive = np.maximum(w[active], 0).reshape(-1, 28, 2, 28).sum(axis=(1, 3))
    left = positive[:, 0] / positive.sum(axis=1)
    return int(active.sum()), float(left.min()), float(left.max())


def evaluate() -> None:
    """The table (accuracy, target-half share, consistency per method) and the two figures."""
    x, y, side = test_pairs()
    acc = common.accuracy(MODEL, x, y)
    results = explain_all(x, y)
    rows = []
    for name, res in results.items():
        error, negative = consistency(res)
        valid = np.isfinite(error)  # f(x) = 0: nothing to conserve
        consistent = (error[valid] < CONSISTENT_TOL) & (negative[valid] < CONSISTENT_TOL)
        rows.append([name, common.mean_sem(target_share(res.relevance, side)),
                     f"{np.median(error[valid]):.2g}", f"{negative.mean():.3f}", f"{consistent.mean():.1%}"])
    distractor, target = erasure_change(x, y, side)
    active, low, high = detectors(x)
    common.table("two_digits", ["method", "positive relevance on the target half", "median conservation error",
                                "negative share", "consistent heatmaps"], rows,
                 f"{len(y)} held-out pairs (every held-out digit 0-3 once), explaining the true digit's output; "
                 f"test accuracy {acc:.1%}; {int((~np.isfinite(consistency(results['DTD z^B'])[0])).sum())} "
                 "pairs with output 0 left out of the conservation columns. Erasing the distractor's half "
                 f"changes the explained output by {distractor:+.0%} on average, erasing the target's half by "
                 f"{target:+.0%}. {active} of the {UNITS} hidden units are active on some held-out image; their "
                 f"positive weights lie {low:.0%}–{high:.0%} on the left half.")
    heatmap_figure(x, y, side, results)
    consistency_figure(results)


def heatmap_figure(x: np.ndarray, y: np.ndarray, side: np.ndarray, results: dict) -> None:
    """Six test pairs: the input and each method's heatmap (red positive, each scaled to its max |R|)."""
    # every target digit once, on alternating sides, then digits 0 and 1 on the other side
    picks = [int(np.flatnonzero((y == d) & (side == d % 2))[0]) for d in range(TARGETS)] + \
            [int(np.flatnonzero((y == d) & (side != d % 2))[0]) for d in range(2)]
    rows = [[hm.heatmap(1 - x[i, 0], scale=2, cmap="gray", norm="absolute")] +
            [hm.heatmap(res.relevance[i, 0], scale=2) for res in results.values()] for i in picks]
    common.save_image(hm.grid(rows, row_labels=[f"{y[i]}" for i in picks],
                              column_labels=["input", *results]), "two_digits_heatmaps")


def consistency_figure(results: dict) -> None:
    """Σ_p R_p against the explained output f(x), one panel per method (seed 000, Figure 2's plots)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(3 * len(results), 2.8))
    for ax, (name, res) in zip(axes, results.items()):
        f = res.output[np.arange(len(res.target)), res.target]
        total = res.relevance.reshape(len(f), -1).sum(axis=1)
        ax.scatter(f, total, s=4, alpha=0.5)
        top = max(f.max(), total.max())
        ax.plot([0, top], [0, top], "k--", lw=0.8)
        ax.set(title=name, xlabel="f(x)")
    axes[0].set_ylabel(r"$\sum_p R_p$")
    fig.tight_layout()
    common.save_plot(fig, "two_digits_consistency")


def main(argv=None) -> None:
    common.run(__doc__, build, evaluate, argv)


if __name__ == "__main__":
    main()
