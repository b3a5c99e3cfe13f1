"""Seed 003's diffusion table: a small CNN trained plainly, then fine-tuned with the block-wise L1 penalty
on positive off-block dense weights for several λ; accuracy and diffusion per λ, and the diffusion of
CLRP and SGLRP on the plain model.

Writes models/experiments/diffusion_*.onnx, its table in docs/experiments.md and the figures
docs/experiments/diffusion_heatmaps.png and diffusion_weights.png.
Run from the repository root: ``python -m experiments.diffusion [--evaluate-only]``.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn

import onnxdtd
from experiments import common
from onnxdtd import heatmap as hm
from onnxdtd import metrics

CLASSES = 10
HIDDEN = 100  # dense units: 10 blocks of 10, one per class
PRETRAIN_EPOCHS, PRETRAIN_LR = 12, 2e-3
FINETUNE_EPOCHS, FINETUNE_LR = 10, 1e-3
MEAN, STD = 0.1307, 0.3081  # MNIST pixel statistics, normalized inside the model
LAMBDAS = (0.0, 0.1, 0.5, 1.0, 5.0)  # 0: fine-tuned as long, without the penalty (a control)
SHOWN = 1.0  # the λ of the figures (seed 003's Figures 4-6)
EXPLAINED = 500  # held-out digits explained per model


class DigitsCNN(nn.Module):
    """Seed 003's MNIST network (Conv 3×3, AvgPool, Conv 2×2, AvgPool, Dense, Dense), narrower: 16 and 16
    channels instead of 32 and 64, 100 dense units instead of 512; input (N, 1, 28, 28) in [0, 1],
    normalized inside (the z^B bounds stay the pixel range [0, 1])."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 16, 3), nn.ReLU(), nn.AvgPool2d(2),
                                      nn.Conv2d(16, 16, 2), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten())
        self.dense = nn.Linear(16 * 6 * 6, HIDDEN)
        self.out = nn.Linear(HIDDEN, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.dense(self.features((x - MEAN) / STD))))


def off_block(shape: tuple[int, int]) -> torch.Tensor:
    """Mask of the weights (out, in) that connect different class blocks: neuron k of a layer of n
    belongs to block k·C // n (seed 003, eq. 6: integer division of the index by the block size)."""
    rows = torch.arange(shape[0]) * CLASSES // shape[0]
    cols = torch.arange(shape[1]) * CLASSES // shape[1]
    return (rows[:, None] != cols[None, :]).float()


def block_penalty(model: DigitsCNN) -> torch.Tensor:
    """S(W) = Σ_layers Σ_ij max(0, w_ij) · [block(i) ≠ block(j)] over the dense layers (seed 003, eq. 6)."""
    return sum((torch.relu(layer.weight) * off_block(layer.weight.shape)).sum() for layer in (model.dense, model.out))


def path(lam: float | None) -> Path:
    """The file of the plain model (None) or of the model fine-tuned with penalty weight `lam`."""
    return common.MODELS / ("diffusion_plain.onnx" if lam is None else f"diffusion_lambda_{lam:g}.onnx")


def build() -> None:
    """Pre-train, export, then fine-tune a copy for each λ and export it."""
    x, _, y, _ = common.mnist_split()
    plain = DigitsCNN()
    print("plain model")
    common.train(plain, x, y, PRETRAIN_EPOCHS, lr=PRETRAIN_LR)
    common.export(plain, x[:500], path(None))
    for lam in LAMBDAS:
        print(f"fine-tuning with λ = {lam:g}")
        model = copy.deepcopy(plain)
        common.train(model, x, y, FINETUNE_EPOCHS, lr=FINETUNE_LR, penalty=lambda m, lam=lam: lam * block_penalty(m),
                     seed=1)
        common.export(model, x[:500], path(lam))


def top2(file: Path, x: np.ndarray) -> np.ndarray:
    """(N, 2) the classes with the highest and second-highest output."""
    return np.argsort(-common.predict(file, x), axis=1)[:, :2]


def heatmaps(file: Path, x: np.ndarray, method: str) -> np.ndarray:
    """(N, 2, 28, 28) heatmaps of the two top classes, each scaled to max |R| = 1. DTD starts from 1 at
    the class (init="one") so that a negative logit does not flip the sign of its heatmap; CLRP and
    SGLRP set their own initial relevance."""
    res = onnxdtd.Explainer(str(file), rules="dtd", low=0.0, high=1.0, method=method).explain(
        x, target=top2(file, x), init="one" if method == "lrp" else "logit")
    r = res.relevance[:, :, 0].astype(np.float64)
    return r / np.maximum(np.abs(r).max(axis=(2, 3), keepdims=True), 1e-30)


def dense_weights(file: Path) -> list[np.ndarray]:
    """The dense layers' weights (out, in) of an exported model, read back from the ONNX file."""
    return [layer.params["weight"] for layer in onnxdtd.load(str(file)) if layer.kind == "dense"]


def off_block_mass(file: Path) -> float:
    """S(W) of the exported model: the penalty without λ."""
    return float(sum((np.maximum(w, 0) * off_block(w.shape).numpy()).sum() for w in dense_weights(file)))


def diffusion_row(maps: np.ndarray) -> list[str]:
    """Empty heatmaps (all zero: the class's relevance was lost at zero denominators) of c1 and c2, d over
    all pairs, and d and the correlation over the pairs where both heatmaps are non-empty."""
    empty = np.abs(maps).reshape(len(maps), 2, -1).max(axis=2) == 0
    both = ~empty.any(axis=1)
    everything, full = metrics.diffusion(maps[:, 0], maps[:, 1]), metrics.diffusion(maps[both, 0], maps[both, 1])
    return [f"{empty[:, 0].mean():.0%} / {empty[:, 1].mean():.0%}", f"{everything.mean:.2f}", f"{full.mean:.2f}",
            f"{np.nanmean(full.correlation):.2f}"]


def evaluate() -> None:
    """The table (accuracy, S(W), diffusion per model and method) and the figures."""
    _, x_test, _, y_test = common.mnist_split()
    x = x_test[:EXPLAINED]
    rows, shown = [], {}
    cases = [(None, "lrp"), (None, "clrp"), (None, "sglrp")] + [(lam, "lrp") for lam in LAMBDAS]
    for lam, method in cases:
        file = path(lam)
        shown[(lam, method)] = maps = heatmaps(file, x, method)
        label = "plain" if lam is None else f"λ = {lam:g}" + (" (no penalty)" if lam == 0 else "")
        logits = common.predict(file, x_test)
        rows.append([label, {"lrp": "DTD", "clrp": "CLRP", "sglrp": "SGLRP"}[method],
                     f"{(logits.argmax(axis=1) == y_test).mean():.3f}", f"{(logits.max(axis=1) < 0).mean():.0%}",
                     f"{off_block_mass(file):.1f}", *diffusion_row(maps)])
    common.table("diffusion", ["model", "explanation", "accuracy", "top logit < 0", "S(W)", "empty heatmaps c1 / c2",
                               "d, all", "d, both non-empty", "correlation, both non-empty"], rows,
                 f"Accuracy on the {len(y_test)} held-out digits; the diffusion columns over the first {EXPLAINED} "
                 "of them: d = mean ‖R_c1 − R_c2‖_F (higher: less diffusion), each heatmap scaled to "
                 "max |R| = 1, and the mean Pearson correlation of the two heatmaps (lower: less diffusion).")
    heatmap_figure(x, shown)
    weight_figure()


def heatmap_figure(x: np.ndarray, shown: dict) -> None:
    """Five held-out digits: the heatmaps of the top two classes c1, c2 under DTD on the plain and the
    λ = SHOWN model, and under CLRP and SGLRP on the plain model."""
    columns = {"DTD": (None, "lrp"), f"DTD(lambda={SHOWN:g})": (SHOWN, "lrp"), "CLRP": (None, "clrp"),
               "SGLRP": (None, "sglrp")}
    rows = [[hm.heatmap(1 - x[i, 0], scale=2, cmap="gray", norm="absolute")] +
            [hm.heatmap(shown[key][i, c], scale=2) for key in columns.values() for c in (0, 1)] for i in range(5)]
    labels = ["input"] + [label for name in columns for label in (f"{name}: c1", "c2")]
    common.save_image(hm.grid(rows, column_labels=labels), "diffusion_heatmaps")


def weight_figure() -> None:
    """The first dense layer's weights (100 units × 576 inputs, each pixel the mean of 4 neighbouring
    inputs to keep the file small; red positive, blue negative) of the plain and the λ = SHOWN model
    (seed 003, Figure 6)."""
    tiles = [hm.heatmap(dense_weights(path(lam))[0].reshape(HIDDEN, -1, 4).mean(axis=2), scale=2)
             for lam in (None, SHOWN)]
    common.save_image(hm.grid([[t] for t in tiles], row_labels=["plain", f"lambda={SHOWN:g}"]), "diffusion_weights")


def main(argv=None) -> None:
    common.run(__doc__, build, evaluate, argv)


if __name__ == "__main__":
    main()
