"""Build the JAX / Flax coverage models: small Flax NNX and Linen modules and a plain jax function,
exported to ONNX with jax2onnx, written to tests/frameworks/models/jax/.

For every model this writes ``<name>.onnx`` (dynamic batch axis "B", unless noted) and ``<name>.npz``
with an input batch ``x`` (N = 2) and JAX's own output ``y`` for it, and finally
``models/jax/README.md`` (the models, their ONNX ops, the versions that made them).

JAX is not a dependency of onnxdtd or of its tests: run this in a separate environment::

    python3 -m venv /work/venv-jax && . /work/venv-jax/bin/activate
    pip install jax flax jax2onnx onnx onnxruntime numpy
    python tests/frameworks/build_jax.py            # all models; or name some: ... mlp cnn

tests/frameworks/test_jax.py only reads the committed files. Weights are random with fixed seeds
(biases and BatchNorm statistics non-trivial); BatchNorm runs with use_running_average=True.
"""
from __future__ import annotations

import argparse
import collections
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the exported graph does not depend on the device

import flax  # noqa: E402
import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax2onnx  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from flax import nnx  # noqa: E402
from jax2onnx import onnx_function, to_onnx  # noqa: E402

# ONNXDTD_COVERAGE_MODELS redirects the output (CI exports afresh there and tests those files).
OUT = Path(os.environ.get("ONNXDTD_COVERAGE_MODELS", Path(__file__).resolve().parent / "models")) / "jax"
MAX_BYTES = 200_000
BIAS = nnx.initializers.normal(0.1)  # trained networks have non-zero biases; Flax initializes them to 0


@dataclass
class Spec:
    """One model: what to export, its input batch, and how to export it."""

    fn: Callable[[Any], Any]  # the Flax module (bound, in eval mode) or plain function to export
    x: np.ndarray  # the input batch stored with the model (N = 2)
    what: str  # one line for the README
    batch: Any = "B"  # the exported batch dimension: a symbol (dynamic) or an int (fixed)
    double: bool = False  # enable_double_precision: export tensor(double) and compute y in float64


MODELS: dict[str, Callable[[], Spec]] = {}


def model(fn: Callable[[], Spec]) -> Callable[[], Spec]:
    MODELS[fn.__name__] = fn
    return fn


def tabular(seed: int, features: int) -> np.ndarray:
    """z-scored tabular features: unbounded, hence dtd-w2 in the tests."""
    return np.random.default_rng(seed).normal(size=(2, features)).astype(np.float32)


def image(seed: int, size: int = 12, channels: int = 3) -> np.ndarray:
    """NHWC pixels in [0, 1], the layout Flax convolutions use."""
    return np.random.default_rng(seed).uniform(size=(2, size, size, channels)).astype(np.float32)


def randomize_batchnorm(bn: nnx.BatchNorm, rng: np.random.Generator) -> None:
    """Non-trivial running statistics and affine parameters, so that folding them is really tested."""
    c = bn.mean[...].shape[0]
    bn.mean[...] = jnp.asarray(rng.normal(0.0, 0.5, c), jnp.float32)
    bn.var[...] = jnp.asarray(rng.uniform(0.5, 2.0, c), jnp.float32)
    bn.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, c), jnp.float32)
    bn.bias[...] = jnp.asarray(rng.normal(0.0, 0.2, c), jnp.float32)


def linear(din: int, dout: int, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(din, dout, bias_init=BIAS, rngs=rngs)


def conv(cin: int, cout: int, rngs: nnx.Rngs, kernel=(3, 3), **kw) -> nnx.Conv:
    return nnx.Conv(cin, cout, kernel, bias_init=BIAS, rngs=rngs, **kw)


# ------------------------------------------------------------------ models onnxdtd explains


class MLP(nnx.Module):
    """Dense-ReLU-Dense-ReLU-Dense on tabular features."""

    def __init__(self, din: int, hidden: int, dout: int, rngs: nnx.Rngs):
        self.fc1, self.fc2 = linear(din, hidden, rngs), linear(hidden, hidden, rngs)
        self.fc3 = linear(hidden, dout, rngs)

    def act(self, h):
        return nnx.relu(h)

    def __call__(self, x):
        return self.fc3(self.act(self.fc2(self.act(self.fc1(x)))))


@model
def mlp() -> Spec:
    return Spec(MLP(10, 32, 4, nnx.Rngs(0)), tabular(100, 10),
                "nnx MLP: Linear-relu-Linear-relu-Linear, tabular (N, 10)")


@model
def mlp_f64() -> Spec:
    return Spec(MLP(10, 32, 4, nnx.Rngs(1)), tabular(101, 10).astype(np.float64),
                "the nnx MLP exported with enable_double_precision=True (tensor(double) throughout)", double=True)


class CNN(nnx.Module):
    """Conv-ReLU-avg_pool-Conv-ReLU-mean over space-Dense, NHWC."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv1, self.conv2, self.fc = conv(3, 8, rngs), conv(8, 16, rngs), linear(16, 5, rngs)

    def __call__(self, x):
        h = nnx.relu(self.conv1(x))
        h = nnx.avg_pool(h, window_shape=(2, 2), strides=(2, 2))  # window_shape must be a keyword (see docs)
        h = nnx.relu(self.conv2(h))
        return self.fc(h.mean(axis=(1, 2)))  # the array method: ReduceSum + Div (jnp.mean gives ReduceMean)


@model
def cnn() -> Spec:
    return Spec(CNN(nnx.Rngs(2)), image(102),
                "nnx CNN: Conv(SAME)-relu-avg_pool 2x2-Conv-relu-x.mean(1, 2)-Linear, NHWC (N, 12, 12, 3)")


class ResBlock(nnx.Module):
    """Two basic residual blocks: identity skip, then a strided one with a 1x1 strided projection."""

    def __init__(self, rngs: nnx.Rngs):
        self.stem = conv(3, 8, rngs)
        self.a1, self.a2 = conv(8, 8, rngs), conv(8, 8, rngs)
        self.b1, self.b2 = conv(8, 16, rngs, strides=(2, 2)), conv(16, 16, rngs)
        self.proj = conv(8, 16, rngs, kernel=(1, 1), strides=(2, 2))
        self.fc = linear(16, 4, rngs)

    def __call__(self, x):
        h = nnx.relu(self.stem(x))
        h = nnx.relu(self.a2(nnx.relu(self.a1(h))) + h)
        h = nnx.relu(self.b2(nnx.relu(self.b1(h))) + self.proj(h))
        return self.fc(jnp.mean(h, axis=(1, 2)))


@model
def resblock() -> Spec:
    return Spec(ResBlock(nnx.Rngs(3)), image(103),
                "nnx residual blocks (identity skip; strided skip with 1x1 projection), jnp.mean, Linear")


class CNNBatchNorm(nnx.Module):
    """BatchNorm on the input (a learned normalization), Conv-BN-ReLU-max_pool-Conv-BN-ReLU-mean-Dense."""

    def __init__(self, rngs: nnx.Rngs, rng: np.random.Generator):
        self.bn0 = nnx.BatchNorm(3, use_running_average=True, rngs=rngs)
        self.conv1, self.bn1 = conv(3, 8, rngs), nnx.BatchNorm(8, use_running_average=True, rngs=rngs)
        self.conv2 = conv(8, 16, rngs, padding="VALID")
        self.bn2 = nnx.BatchNorm(16, use_running_average=True, rngs=rngs)
        self.fc = linear(16, 5, rngs)
        for bn in (self.bn0, self.bn1, self.bn2):
            randomize_batchnorm(bn, rng)

    def __call__(self, x):
        h = nnx.relu(self.bn1(self.conv1(self.bn0(x))))
        h = nnx.max_pool(h, window_shape=(3, 3), strides=(2, 2), padding="SAME")
        h = nnx.relu(self.bn2(self.conv2(h)))
        return self.fc(jnp.mean(h, axis=(1, 2)))


@model
def cnn_bn() -> Spec:
    return Spec(CNNBatchNorm(nnx.Rngs(4), np.random.default_rng(4)), image(104),
                "nnx BatchNorm(input)-Conv-BN-relu-max_pool 3x3/2 SAME-Conv(VALID)-BN-relu-jnp.mean-Linear")


class CNNFlatten(nnx.Module):
    """Strided conv, then flatten NHWC with x.reshape(x.shape[0], -1) under a dynamic batch."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv1, self.conv2 = conv(3, 8, rngs, strides=(2, 2)), conv(8, 8, rngs, padding="VALID")
        self.fc = linear(4 * 4 * 8, 4, rngs)

    def __call__(self, x):
        h = nnx.relu(self.conv2(nnx.relu(self.conv1(x))))
        return self.fc(h.reshape(h.shape[0], -1))


@model
def cnn_flatten() -> Spec:
    return Spec(CNNFlatten(nnx.Rngs(5)), image(105),
                "nnx Conv/2-relu-Conv(VALID)-relu-reshape(B, -1)-Linear (batch-dependent shape arithmetic)")


def jax_fn_weights() -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(6)
    return (rng.normal(0, 0.4, (6, 16)).astype(np.float32), rng.normal(0, 0.1, 16).astype(np.float32),
            rng.normal(0, 0.4, (16, 3)).astype(np.float32))


@model
def jax_fn() -> Spec:
    w1, b1, w2 = jax_fn_weights()

    def f(x):  # the weights are closed over: jax2onnx bakes them in as initializers
        return jax.nn.relu(x @ w1 + b1) @ w2

    return Spec(f, tabular(106, 6), "plain jax function relu(x @ W1 + b1) @ W2, weights captured as constants")


class LinenCNN(nn.Module):
    """A Linen CNN: Conv-ReLU-avg_pool-BatchNorm-Conv-ReLU-max_pool-mean-Dense."""

    @nn.compact
    def __call__(self, x):
        bias = nn.initializers.normal(0.1)
        h = nn.relu(nn.Conv(8, (3, 3), bias_init=bias)(x))
        h = nn.avg_pool(h, window_shape=(2, 2), strides=(2, 2))
        h = nn.BatchNorm(use_running_average=True)(h)  # after a pooling layer: not foldable to the left
        h = nn.relu(nn.Conv(16, (3, 3), bias_init=bias)(h))
        h = nn.max_pool(h, window_shape=(2, 2), strides=(2, 2))
        return nn.Dense(4, bias_init=bias)(h.mean(axis=(1, 2)))


@model
def linen_cnn() -> Spec:
    x = image(107)
    module = LinenCNN()
    variables = module.init(jax.random.PRNGKey(7), jnp.asarray(x))
    rng = np.random.default_rng(7)
    stats = variables["batch_stats"]["BatchNorm_0"]
    c = stats["mean"].shape[0]
    variables["batch_stats"]["BatchNorm_0"] = {"mean": jnp.asarray(rng.normal(0.3, 0.2, c), jnp.float32),
                                               "var": jnp.asarray(rng.uniform(0.05, 0.5, c), jnp.float32)}
    variables["params"]["BatchNorm_0"] = {"scale": jnp.asarray(rng.uniform(0.5, 1.5, c), jnp.float32),
                                          "bias": jnp.asarray(rng.normal(0.0, 0.2, c), jnp.float32)}
    return Spec(lambda v: module.apply(variables, v), x,
                "Linen Conv-relu-avg_pool-BatchNorm-Conv-relu-max_pool-x.mean-Dense, "
                "exported as lambda x: apply(variables, x)")


# ------------------------------------------------------------------ models onnxdtd cannot explain yet
# Realistic Flax idioms whose jax2onnx graphs use ops the core lacks; test_jax.py marks them
# (PENDING) and they turn into ordinary coverage models when the core supports them.


class MaxReLU(MLP):
    def act(self, h):
        return jnp.maximum(h, 0.0)  # ONNX Max with a constant, not Relu


@model
def mlp_maximum() -> Spec:
    return Spec(MaxReLU(10, 16, 3, nnx.Rngs(10)), tabular(110, 10),
                "nnx MLP with ReLU written as jnp.maximum(h, 0.0) (ONNX Max)")


class ReLU6(MLP):
    def act(self, h):
        return nnx.relu6(h)  # Max then Min with constants


@model
def mlp_relu6() -> Spec:
    return Spec(ReLU6(10, 16, 3, nnx.Rngs(11)), tabular(111, 10), "nnx MLP with nnx.relu6 (ONNX Max + Min)")


class SiLU(MLP):
    def act(self, h):
        return nnx.silu(h)  # Sigmoid and Mul of two activations


@model
def mlp_silu() -> Spec:
    return Spec(SiLU(10, 16, 3, nnx.Rngs(12)), tabular(112, 10),
                "nnx MLP with nnx.silu (ONNX Sigmoid + Mul(h, sigmoid(h)))")


class GELU(MLP):
    def act(self, h):
        return nnx.gelu(h)  # ONNX Gelu (approximate='tanh'), opset 20+


@model
def mlp_gelu() -> Spec:
    return Spec(GELU(10, 16, 3, nnx.Rngs(13)), tabular(113, 10),
                "nnx MLP with nnx.gelu (ONNX Gelu, approximate='tanh')")


class EinsumHead(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.fc1 = linear(10, 16, rngs)
        self.w = nnx.Param(jax.random.normal(jax.random.PRNGKey(14), (16, 3)) * 0.3)
        self.b = nnx.Param(jnp.full((3,), 0.05))

    def __call__(self, x):
        return jnp.einsum("bi,ij->bj", nnx.relu(self.fc1(x)), self.w[...]) + self.b[...]


@model
def mlp_einsum() -> Spec:
    return Spec(EinsumHead(nnx.Rngs(14)), tabular(114, 10),
                "nnx Linear-relu, then jnp.einsum('bi,ij->bj', h, W) + b (ONNX Einsum)")


@onnx_function
class FnBlock(nnx.Module):
    """Exported as an ONNX local function (a node in a custom domain plus a FunctionProto)."""

    def __init__(self, din: int, dout: int, rngs: nnx.Rngs):
        self.fc = linear(din, dout, rngs)

    def __call__(self, x):
        return nnx.relu(self.fc(x))


class FunctionMLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.block, self.fc = FnBlock(10, 16, rngs), linear(16, 3, rngs)

    def __call__(self, x):
        return self.fc(self.block(x))


@model
def mlp_onnx_function() -> Spec:
    return Spec(FunctionMLP(nnx.Rngs(15)), tabular(115, 10),
                "nnx MLP whose first block is an @jax2onnx.onnx_function (ONNX local function)")


class GlobalMax(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv1, self.fc = conv(3, 8, rngs), linear(8, 4, rngs)

    def __call__(self, x):
        return self.fc(jnp.max(nnx.relu(self.conv1(x)), axis=(1, 2)))  # global max pooling: ReduceMax


@model
def cnn_globalmax() -> Spec:
    return Spec(GlobalMax(nnx.Rngs(16)), image(116),
                "nnx Conv-relu-jnp.max(axis=(1, 2))-Linear (global max pooling as ONNX ReduceMax)")


class Upsample(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, how: str):
        self.conv1, self.conv2, self.fc = conv(3, 8, rngs), conv(8, 8, rngs), linear(8, 4, rngs)
        self.how = how

    def __call__(self, x):
        h = nnx.avg_pool(nnx.relu(self.conv1(x)), window_shape=(2, 2), strides=(2, 2))
        if self.how == "repeat":
            h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
        else:  # jax.image.resize needs a concrete batch size, and jax2onnx rejects antialias=True
            n, height, width, c = h.shape
            h = jax.image.resize(h, (n, 2 * height, 2 * width, c), "bilinear", antialias=False)
        return self.fc(jnp.mean(nnx.relu(self.conv2(h)), axis=(1, 2)))


@model
def cnn_repeat() -> Spec:
    return Spec(Upsample(nnx.Rngs(17), "repeat"), image(117),
                "nnx 2x nearest upsampling as jnp.repeat under a dynamic batch (ONNX Expand to a run-time shape)")


@model
def cnn_resize_linear() -> Spec:
    return Spec(Upsample(nnx.Rngs(18), "bilinear"), image(118),
                "nnx 2x bilinear upsampling, jax.image.resize(antialias=False), batch fixed to 2 (ONNX Resize linear)",
                batch=2)


# ------------------------------------------------------------------ export


def export(name: str, spec: Spec) -> dict:
    """Export one model, check it in onnxruntime against JAX, write <name>.onnx and <name>.npz."""
    x = spec.x
    with jax.enable_x64(spec.double):
        y = np.asarray(spec.fn(jnp.asarray(x)))
        proto = to_onnx(spec.fn, [(spec.batch, *x.shape[1:])], model_name=name, input_names=["x"],
                        output_names=["logits"], enable_double_precision=spec.double)
    # No full_check: jax2onnx can leave stale value_info shapes behind its layout rewrite (cnn_bn:
    # NHWC shapes on tensors that are NCHW), which strict shape inference rejects; the files are
    # committed as jax2onnx writes them, since that is what users feed onnxdtd.
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    if len(data) > MAX_BYTES:
        raise SystemExit(f"{name}: {len(data)} bytes, over the {MAX_BYTES} byte limit")
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    y_ort = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(y_ort, y, rtol=1e-4, atol=1e-5, err_msg=f"{name}: onnxruntime differs from JAX")
    (OUT / f"{name}.onnx").write_bytes(data)
    buf = io.BytesIO()
    np.savez(buf, x=x, y=y)
    (OUT / f"{name}.npz").write_bytes(buf.getvalue())
    ops = collections.Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}:{n.op_type}"
                              for n in proto.graph.node)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    print(f"{name:20s} {len(data):6d} B  opset {opset}  {dict(ops)}")
    return dict(name=name, what=spec.what, bytes=len(data), opset=opset, ops=ops, shape=dims,
                dtype=onnx.helper.tensor_dtype_to_np_dtype(proto.graph.input[0].type.tensor_type.elem_type).name,
                functions=len(proto.functions))


def readme(rows: list[dict]) -> str:
    lines = [
        "# JAX / Flax coverage models",
        "",
        "Made by `tests/frameworks/build_jax.py` (run it in an environment with JAX; onnxdtd's tests only read",
        "these files). Each `<name>.onnx` was exported by jax2onnx with",
        "`to_onnx(fn, [(\"B\", *sample_shape)], input_names=[\"x\"], output_names=[\"logits\"])`; each",
        "`<name>.npz` holds an input batch `x` (N = 2) and JAX's own output `y` for it. Weights are random",
        "with fixed seeds, biases and BatchNorm statistics non-trivial, BatchNorm in inference mode.",
        "See `docs/exporters/jax.md` for what the graphs look like and how onnxdtd reads them.",
        "",
        f"Versions: jax {jax.__version__}, jaxlib {_version('jaxlib')}, "
        f"flax {flax.__version__}, jax2onnx {_version('jax2onnx')}, onnx {onnx.__version__}, "
        f"onnxruntime {ort.__version__}, numpy {np.__version__}, Python {sys.version.split()[0]}.",
        "",
        "| model | input | bytes | ONNX ops (opset) | what |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        ops = ", ".join(f"{op}×{k}" if k > 1 else op for op, k in sorted(r["ops"].items()))
        fn = f"; {r['functions']} local function(s)" if r["functions"] else ""
        shape = "(" + ", ".join(str(d) for d in r["shape"]) + ")"
        lines.append(f"| `{r['name']}` | {shape} {r['dtype']} | {r['bytes']} | {ops} ({r['opset']}{fn}) "
                     f"| {r['what']} |")
    lines += ["", "`tests/frameworks/test_jax.py` lists in `PENDING` the models whose ops onnxdtd does not support",
              "yet, and in `NOT_CONSERVED` and `STALE_SHAPES` the known problems of the others.", ""]
    return "\n".join(lines)


def _version(dist: str) -> str:
    from importlib.metadata import version
    return version(dist)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"models to build (default: all of {', '.join(MODELS)})")
    args = parser.parse_args()
    unknown = set(args.names) - set(MODELS)
    if unknown:
        parser.error(f"unknown model(s) {sorted(unknown)}; choose from {', '.join(MODELS)}")
    OUT.mkdir(parents=True, exist_ok=True)
    rows = [export(name, MODELS[name]()) for name in (args.names or MODELS)]
    if not args.names:
        (OUT / "README.md").write_text(readme(rows))


if __name__ == "__main__":
    main()
