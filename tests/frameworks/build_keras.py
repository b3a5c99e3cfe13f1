"""Build the Keras 3 / TensorFlow coverage models and export them to ONNX with tf2onnx.

Needs TensorFlow, which is NOT part of onnxdtd's environment; run it from a virtual environment of
its own (never install TensorFlow into onnxdtd's):

    python3 -m venv /work/venv-tf && . /work/venv-tf/bin/activate
    pip install tensorflow-cpu tf2onnx onnx onnxruntime numpy
    python tests/frameworks/build_keras.py [NAME ...]      # from the repository root; default: all

For every model it writes into tests/frameworks/models/keras/:

    <name>_opset13.onnx, <name>_opset18.onnx   tf2onnx's export (dynamic batch axis), opset 13 and 18
                                               (18 is the newest opset tf2onnx 1.17 accepts)
    <name>.npz                                 x: an input batch (N=2, channels-last as Keras wants);
                                               y: Keras's own output for x; logits: the output before a
                                               final softmax (equal to y when the model has none)
    manifest.json                              versions, the ONNX op sequence of every file, and what
                                               the two in-process export routes give for each model

Weights are random (fixed seeds), biases random, BatchNormalization statistics non-trivial (some
gammas negative); nothing is trained. The export recipe that works for every model here:

    model.export("saved_model_dir", format="tf_saved_model")            # Keras 3
    python -m tf2onnx.convert --saved-model saved_model_dir --opset 13 --output model.onnx

tf2onnx.convert.from_keras fails on Keras 3 models (KeyError: 'keras_tensor_N'); from_function and
Keras's own model.export(format="onnx") work except for models that capture constant tensors (the
Normalization layer), whose constants become extra graph inputs; see docs/exporters/keras.md.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # CPU only: no cuInit noise, deterministic kernels

import json  # noqa: E402
import zlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf2onnx  # noqa: E402

import keras  # noqa: E402
from keras import layers  # noqa: E402

# ONNXDTD_COVERAGE_MODELS redirects the output (CI exports afresh there and tests those files).
OUT = Path(os.environ.get("ONNXDTD_COVERAGE_MODELS", Path(__file__).resolve().parent / "models")) / "keras"
OPSETS = (13, 18)
N = 2
MAX_BYTES = 200_000


def randomize_batchnorm(model: keras.Model, rng: np.random.Generator) -> None:
    """Give every BatchNormalization layer non-trivial gamma, beta, moving mean and moving variance.
    Every third gamma is negative (channels 1, 4, 7, ...), as trained networks have: a BatchNorm that
    is not folded into its conv then flips which weights z+ sees as positive."""
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            c = layer.gamma.shape[0]
            sign = np.where(np.arange(c) % 3 == 1, -1.0, 1.0)
            layer.set_weights([sign * rng.uniform(0.5, 1.5, c), rng.normal(0.0, 0.2, c),
                               rng.normal(0.0, 0.3, c), rng.uniform(0.5, 2.0, c)])


def randomize_biases(model: keras.Model, rng: np.random.Generator) -> None:
    """Keras initializes biases to zero; small random biases make the MatMul+Add/Conv bias paths real."""
    for layer in model.layers:
        bias = getattr(layer, "bias", None)
        if bias is not None:
            bias.assign(rng.normal(0.0, 0.1, bias.shape).astype(np.float32))


# Each builder returns (model, a function rng -> input batch x).

def cnn():
    """Rescaling (x*2-1) - Conv2D-BN-ReLU - MaxPool - Conv2D(ReLU) - GlobalAveragePooling2D - Dense."""
    inp = keras.Input((16, 16, 3), name="image")
    h = layers.Rescaling(2.0, offset=-1.0, name="rescale")(inp)
    h = layers.Conv2D(8, 3, padding="same", name="conv1")(h)
    h = layers.BatchNormalization(name="bn1")(h)
    h = layers.ReLU(name="relu1")(h)
    h = layers.MaxPooling2D(2, name="pool1")(h)
    h = layers.Conv2D(16, 3, activation="relu", name="conv2")(h)
    h = layers.GlobalAveragePooling2D(name="gap")(h)
    out = layers.Dense(10, name="logits")(h)
    return keras.Model(inp, out, name="cnn"), lambda rng: rng.random((N, 16, 16, 3))


def residual():
    """Conv-BN-ReLU stem, then a ResNet basic block (functional Add) and GAP + Dense."""
    inp = keras.Input((12, 12, 4), name="image")
    h = layers.Conv2D(8, 3, padding="same", use_bias=False, name="stem_conv")(inp)
    h = layers.BatchNormalization(name="stem_bn")(h)
    h = layers.ReLU(name="stem_relu")(h)
    y = layers.Conv2D(8, 3, padding="same", use_bias=False, name="block_conv1")(h)
    y = layers.BatchNormalization(name="block_bn1")(y)
    y = layers.ReLU(name="block_relu1")(y)
    y = layers.Conv2D(8, 3, padding="same", use_bias=False, name="block_conv2")(y)
    y = layers.BatchNormalization(name="block_bn2")(y)
    h = layers.Add(name="block_add")([h, y])
    h = layers.ReLU(name="block_relu2")(h)
    h = layers.GlobalAveragePooling2D(name="gap")(h)
    out = layers.Dense(5, name="logits")(h)
    return keras.Model(inp, out, name="residual"), lambda rng: rng.random((N, 12, 12, 4))


def separable():
    """MobileNet-style: strided Conv-BN-ReLU6, DepthwiseConv-BN-ReLU6, pointwise Conv-BN-ReLU6,
    a SeparableConv2D with relu6, GAP, Dense."""
    inp = keras.Input((16, 16, 3), name="image")
    h = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="conv1")(inp)
    h = layers.BatchNormalization(name="bn1")(h)
    h = layers.ReLU(6.0, name="relu6_1")(h)
    h = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(h)
    h = layers.BatchNormalization(name="dw_bn")(h)
    h = layers.ReLU(6.0, name="dw_relu6")(h)
    h = layers.Conv2D(16, 1, use_bias=False, name="pw")(h)
    h = layers.BatchNormalization(name="pw_bn")(h)
    h = layers.ReLU(6.0, name="pw_relu6")(h)
    h = layers.SeparableConv2D(16, 3, activation="relu6", name="sep")(h)
    h = layers.GlobalAveragePooling2D(name="gap")(h)
    out = layers.Dense(4, name="logits")(h)
    return keras.Model(inp, out, name="separable"), lambda rng: rng.random((N, 16, 16, 3))


def conv1d():
    """Time series (steps, features): causal Conv1D, BN, MaxPooling1D, dilated Conv1D, Flatten, Dense."""
    inp = keras.Input((32, 2), name="series")
    h = layers.Conv1D(8, 5, padding="causal", name="conv1")(inp)
    h = layers.BatchNormalization(name="bn1")(h)
    h = layers.ReLU(name="relu1")(h)
    h = layers.MaxPooling1D(2, name="pool1")(h)
    h = layers.Conv1D(8, 3, dilation_rate=2, activation="relu", name="conv2")(h)
    h = layers.Flatten(name="flatten")(h)
    out = layers.Dense(3, name="logits")(h)
    return keras.Model(inp, out, name="conv1d"), lambda rng: rng.normal(size=(N, 32, 2))


def mlp_softmax():
    """Tabular MLP whose last Dense has activation="softmax" (tf2onnx: MatMul, Add, Softmax)."""
    model = keras.Sequential([keras.Input((20,), name="features"),
                              layers.Dense(32, activation="relu", name="dense1"),
                              layers.Dense(16, activation="relu", name="dense2"),
                              layers.Dense(4, activation="softmax", name="probs")], name="mlp_softmax")
    return model, lambda rng: rng.normal(size=(N, 20))


def mlp_norm():
    """Tabular MLP with a Normalization layer ((x - mean) / sqrt(var)) inside the model."""
    rng = np.random.default_rng(7)
    mean = rng.normal(5.0, 2.0, 10)
    var = rng.uniform(0.5, 4.0, 10)
    model = keras.Sequential([keras.Input((10,), name="features"),
                              layers.Normalization(mean=mean, variance=var, name="norm"),
                              layers.Dense(16, activation="relu", name="dense1"),
                              layers.Dense(3, name="logits")], name="mlp_norm")
    return model, lambda rng: rng.normal(mean, np.sqrt(var), size=(N, 10))


def cnn_flatten():
    """Pixels in [0, 255] with Rescaling(1/255); ZeroPadding2D, strided valid Conv2D, two branches
    (Conv2D + LeakyReLU, 1x1 Conv2D + ReLU) joined by Concatenate, AveragePooling2D, Flatten (tf2onnx:
    Transpose back to NHWC + Reshape), Dense-ReLU-BatchNorm-Dense (a BatchNorm after an activation)."""
    inp = keras.Input((12, 12, 3), name="image")
    h = layers.Rescaling(1.0 / 255.0, name="rescale")(inp)
    h = layers.ZeroPadding2D(1, name="zeropad")(h)
    h = layers.Conv2D(8, 3, strides=2, activation="relu", name="conv1")(h)
    a = layers.Conv2D(4, 3, padding="same", name="branch_a")(h)
    a = layers.LeakyReLU(0.2, name="branch_a_leaky")(a)
    b = layers.Conv2D(4, 1, activation="relu", name="branch_b")(h)
    h = layers.Concatenate(name="concat")([a, b])
    h = layers.AveragePooling2D(2, name="avgpool")(h)
    h = layers.Flatten(name="flatten")(h)
    h = layers.Dense(16, activation="relu", name="dense1")(h)
    h = layers.BatchNormalization(name="dense1_bn")(h)
    out = layers.Dense(5, name="logits")(h)
    return keras.Model(inp, out, name="cnn_flatten"), lambda rng: np.round(255 * rng.random((N, 12, 12, 3)))


MODELS = {"cnn": cnn, "residual": residual, "separable": separable, "conv1d": conv1d,
          "mlp_softmax": mlp_softmax, "mlp_norm": mlp_norm, "cnn_flatten": cnn_flatten}


def logits_of(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """The model's output with a final softmax activation switched off (the output itself otherwise)."""
    last = model.layers[-1]
    act = getattr(last, "activation", None)
    if act is not keras.activations.softmax:
        return np.asarray(model(x, training=False))
    last.activation = keras.activations.linear
    try:
        return np.asarray(model(x, training=False))
    finally:
        last.activation = act


def export(model: keras.Model, shape: tuple[int, ...], opset: int, workdir: Path) -> onnx.ModelProto:
    """tf2onnx's export of `model` (dynamic batch axis) through a SavedModel and tf2onnx's command line."""
    saved, path = workdir / f"{model.name}_saved_model", workdir / f"{model.name}_opset{opset}.onnx"
    if not saved.exists():
        model.export(str(saved), format="tf_saved_model", verbose=False)
    cmd = [sys.executable, "-m", "tf2onnx.convert", "--saved-model", str(saved), "--opset", str(opset),
           "--output", str(path)]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{run.stderr[-3000:]}")
    proto = onnx.load(path)
    proto.graph.doc_string = f"converted by tf2onnx from the SavedModel of Keras model {model.name!r}"  # not the temp path
    onnx.checker.check_model(proto)
    return proto


def alternatives(model: keras.Model, shape: tuple[int, ...], x: np.ndarray, y: np.ndarray) -> dict:
    """The two in-process routes, for the record: tf2onnx.convert.from_function and Keras's own
    model.export(format="onnx") (which calls from_function). Each gives its op list or its error."""
    spec = (tf.TensorSpec((None, *shape), tf.float32, name="x"),)
    fn = tf.function(lambda t: model(t, training=False), input_signature=spec, autograph=False)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        routes = {"from_function": lambda: tf2onnx.convert.from_function(fn, input_signature=spec, opset=13)[0],
                  "keras_export_onnx": lambda: (model.export(f"{tmp}/m.onnx", format="onnx", opset_version=13,
                                                             verbose=False), onnx.load(f"{tmp}/m.onnx"))[1]}
        for route, make in routes.items():
            try:
                proto = make()
                sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
                got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
                np.testing.assert_allclose(got, y, rtol=1e-4, atol=1e-5)
                out[route] = "ok: " + " ".join(n.op_type for n in proto.graph.node)
            except Exception as exc:  # noqa: BLE001  (recorded, not raised)
                out[route] = f"FAILED: {type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}"
            print(f"  {route}: {out[route]}")
    return out


def build(name: str, workdir: Path) -> dict:
    seed = zlib.crc32(name.encode())  # stable per model, whatever other models exist
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    model, sample = MODELS[name]()
    randomize_biases(model, rng)
    randomize_batchnorm(model, rng)
    x = sample(rng).astype(np.float32)
    y = np.asarray(model(x, training=False))
    logits = logits_of(model, x)
    np.savez(OUT / f"{name}.npz", x=x, y=y, logits=logits)
    info = {"input": list(x.shape), "output": list(y.shape), "onnx": {}}
    for opset in OPSETS:
        proto = export(model, x.shape[1:], opset, workdir)
        path = OUT / f"{name}_opset{opset}.onnx"
        onnx.save(proto, path)
        size = path.stat().st_size
        assert size < MAX_BYTES, f"{path.name} is {size} bytes"
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        np.testing.assert_allclose(got, y, rtol=1e-4, atol=1e-5, err_msg=f"{path.name}: onnxruntime != Keras")
        ops = " ".join(n.op_type for n in proto.graph.node)
        info["onnx"][f"opset{opset}"] = ops
        print(f"{path.name:28s} {size:7d} B  {ops}")
    info["in_process_routes"] = alternatives(model, x.shape[1:], x, y)
    return info


def main() -> None:
    names = sys.argv[1:] or list(MODELS)
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        models = {name: build(name, Path(tmp)) for name in names}
    path = OUT / "manifest.json"
    old = json.loads(path.read_text())["models"] if path.exists() else {}
    manifest = {"versions": {"python": sys.version.split()[0], "tensorflow": tf.__version__,
                             "keras": keras.__version__, "tf2onnx": tf2onnx.__version__,
                             "onnx": onnx.__version__, "onnxruntime": ort.__version__,
                             "numpy": np.__version__},
                "models": {name: models.get(name, old.get(name)) for name in MODELS if name in models or name in old}}
    path.write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()
