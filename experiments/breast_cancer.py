"""A tabular model explained with DTD: a small MLP on scikit-learn's breast-cancer table (30 features,
malignant / benign), explained with the w² rule (unbounded input) and with z^B (the box of the data
set), as per-feature relevance; seed 000 shows the same kind of chart for the Titanic table.

Writes models/experiments/breast_cancer_mlp.onnx, its table in docs/experiments.md and the figure
docs/experiments/breast_cancer_relevance.png.
Run from the repository root: ``python -m experiments.breast_cancer [--evaluate-only]``.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

import onnxdtd
from experiments import common
from onnxdtd import metrics

MODEL = common.MODELS / "breast_cancer_mlp.onnx"
HIDDEN = 16
EPOCHS = 60
CLASSES = ("malignant", "benign")  # scikit-learn's target 0 and 1
TOP = 5  # features listed per class in the table


class CancerMLP(nn.Module):
    """Standardization (inside the model: the input is the raw table row), Dense(30→16), ReLU, Dense(16→2)."""

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("mean", torch.from_numpy(mean))
        self.register_buffer("std", torch.from_numpy(std))
        self.hidden = nn.Linear(len(mean), HIDDEN)
        self.out = nn.Linear(HIDDEN, len(CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden((x - self.mean) / self.std)))


def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """The table as float32, split stratified 75/25 (seed 0), and the feature names."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    table = load_breast_cancer()
    x, y = table.data.astype(np.float32), table.target.astype(np.int64)
    return (*train_test_split(x, y, test_size=0.25, stratify=y, random_state=common.SEED), list(table.feature_names))


def bounds() -> tuple[np.ndarray, np.ndarray]:
    """The z^B box: each feature's minimum and maximum over the whole table (the input domain)."""
    from sklearn.datasets import load_breast_cancer

    x = load_breast_cancer().data.astype(np.float32)
    return x.min(axis=0), x.max(axis=0)


def build() -> None:
    """Train on the 426 training rows (standardized with their own statistics) and export."""
    x, _, y, _, _ = data()
    model = CancerMLP(x.mean(axis=0), x.std(axis=0))
    common.train(model, x, y, EPOCHS, batch=32)
    common.export(model, x, MODEL)


def explain(x: np.ndarray) -> dict[str, onnxdtd.Explanation]:
    """The predicted class explained with w² and with z^B on the first layer (z⁺ above both)."""
    low, high = bounds()
    return {"w²": onnxdtd.Explainer(str(MODEL), rules="dtd-w2").explain(x),
            "z^B": onnxdtd.Explainer(str(MODEL), rules="dtd", low=low, high=high).explain(x)}


def shares(res: onnxdtd.Explanation) -> np.ndarray:
    """Relevance per feature as a share of the sample's total (the explained logit), (N, 30)."""
    return res.relevance / res.relevance.sum(axis=1, keepdims=True)


def evaluate() -> None:
    """The table (consistency, top features per class, stability of the profile) and the bar chart."""
    _, x, _, y, names = data()
    acc = common.accuracy(MODEL, x, y)
    results = explain(x)
    rows = []
    for rule, res in results.items():
        f = res.output[np.arange(len(x)), res.target]
        s = shares(res)
        row = [rule, f"{np.median(metrics.conservation_error(res.relevance, f)):.1g}",
               f"{metrics.negative_fraction(res.relevance).mean():.3f}"]
        for k in range(len(CLASSES)):
            mine = res.target == k
            mean = s[mine].mean(axis=0)
            order = np.argsort(-mean)[:TOP]
            row.append(", ".join(f"{names[i]} ({mean[i]:.2f})" for i in order))
            row.append(f"{np.nanmean(metrics.rank_correlation(s[mine], np.broadcast_to(mean, s[mine].shape))):.2f}")
        rows.append(row)
    counts = [int((results["z^B"].target == k).sum()) for k in range(len(CLASSES))]
    header = ["first-layer rule", "median conservation error", "negative share"]
    for name, n in zip(CLASSES, counts):
        header += [f"top {TOP} features, {name} (n = {n}), mean share", "rank correlation with that mean"]
    common.table("breast_cancer", header, rows,
                 f"{len(y)} held-out rows, test accuracy {acc:.1%}; each row explains its predicted class; "
                 "shares are R_i / Σ R; the rank correlation is Spearman's between each row's shares and its "
                 "class's mean shares (1: every row ranks the features alike).")
    bar_chart(results, names)


def bar_chart(results: dict[str, onnxdtd.Explanation], names: list[str]) -> None:
    """Mean relevance share per feature, w² against z^B, one panel per predicted class."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CLASSES), figsize=(10, 6.5), sharey=True)
    ypos = np.arange(len(names))
    for k, ax in enumerate(axes):
        for offset, (rule, res) in zip((-0.2, 0.2), results.items()):
            mine = res.target == k
            ax.barh(ypos + offset, shares(res)[mine].mean(axis=0), height=0.4, label=f"${rule.replace('²', '^2')}$")
        ax.set(title=f"predicted {CLASSES[k]} (n = {int(mine.sum())})", xlabel="mean share of the relevance")
    axes[0].set_yticks(ypos, names, fontsize=7)
    axes[0].invert_yaxis()  # shared: the first feature on top in both panels
    axes[0].legend()
    fig.tight_layout()
    common.save_plot(fig, "breast_cancer_relevance", dpi=70)


def main(argv=None) -> None:
    common.run(__doc__, build, evaluate, argv)


if __name__ == "__main__":
    main()
