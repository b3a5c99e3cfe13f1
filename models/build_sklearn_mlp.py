"""Build the scikit-learn example: an MLPClassifier on scikit-learn's 8×8 digits, converted with skl2onnx.

Writes models/examples/sklearn_digits_mlp.onnx (ZipMap off: a float probabilities output) and
models/examples/sklearn_digits.npz (four test digits as 'x', 64 features in [0, 16], and their labels
as 'label'). Needs scikit-learn and skl2onnx; no download.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from skl2onnx import to_onnx
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

OUT = Path(__file__).resolve().parent / "examples"


def main() -> None:
    """Train, convert, check against scikit-learn, and write the model and samples."""
    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    clf = MLPClassifier(hidden_layer_sizes=(32, 16), max_iter=300, random_state=0).fit(x_train, y_train)
    onx = to_onnx(clf, x_train[:1], options={id(clf): {"zipmap": False}}, target_opset=17)
    OUT.mkdir(exist_ok=True)
    (OUT / "sklearn_digits_mlp.onnx").write_bytes(onx.SerializeToString())
    picks = [int(np.flatnonzero(y_test == digit)[0]) for digit in (0, 3, 7, 9)]
    np.savez(OUT / "sklearn_digits.npz", x=x_test[picks], label=y_test[picks])
    print(f"test accuracy {clf.score(x_test, y_test):.3f}; wrote {OUT}")


if __name__ == "__main__":
    main()
