"""Exporter coverage: Keras 3 / TensorFlow models exported with tf2onnx.

Reads only the committed files in tests/frameworks/models/keras/ (made by build_keras.py, which needs
TensorFlow; these tests do not): <name>_opset<k>.onnx and <name>.npz with the input batch `x`
(channels-last), Keras's output `y` and the logits before a final softmax.

For every model and both opsets: the graph loads, onnxdtd's output equals Keras's logits, and the DTD
presets (dtd, zplus) conserve the logit, agree between float32 and float64, keep the input's shape and
produce no NaN. Conservation is checked in DESIGN.md's exact form, "Σ R = logit up to relevance lost
at zero denominators": the relevance a z⁺ layer loses, Σ_j R_j (1 − z⁺_j / s(z⁺_j)), is computed here
independently (z⁺ by an onnxruntime Conv / numpy matmul on the layer's input activation) and added
back. It is zero up to ε except where an activation comes from a bias alone (z⁺ = 0), as in the
separable model's depthwise conv.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxdtd
from onnxdtd.rules import ZPlus

# CI points ONNXDTD_COVERAGE_MODELS at models that it has just exported with the real exporter.
HERE = Path(os.environ.get("ONNXDTD_COVERAGE_MODELS", Path(__file__).resolve().parent / "models")) / "keras"
FILES = sorted(HERE.glob("*_opset*.onnx"))
IDS = [f.stem for f in FILES]
PRESETS = ("dtd", "zplus")
# Known canonicalization gaps (strict xfail of test_bias_and_batchnorm_folded; remove an entry when
# onnxdtd folds it): the canonical layer list still holds an `affine` layer after a linear layer.
UNFOLDED: dict[str, str] = {}  # models whose bias/BatchNorm canonicalization cannot fold: model -> why


def _name(path: Path) -> str:
    return path.stem.rsplit("_opset", 1)[0]


@functools.lru_cache(maxsize=None)
def _data(name: str) -> dict[str, np.ndarray]:
    with np.load(HERE / f"{name}.npz") as d:
        return {k: d[k] for k in d.files}


@functools.lru_cache(maxsize=None)
def _model(path: Path) -> onnxdtd.LayerList:
    return onnxdtd.load(str(path))


@functools.lru_cache(maxsize=None)
def _explain(path: Path, preset: str, dtype: str):
    """(explainer, explanation with every intermediate relevance) for the stored x, argmax targets."""
    x = _data(_name(path))["x"]
    ex = onnxdtd.Explainer(_model(path), rules=preset, low=float(x.min()), high=float(x.max()),
                           dtype=np.dtype(dtype))
    return ex, ex.explain(x, keep=True)


def _table(path: Path) -> str:
    try:
        return str(_model(path))
    except Exception as exc:  # noqa: BLE001  (only for a failure message)
        return f"<onnxdtd.load failed: {type(exc).__name__}: {exc}>"


def test_files_present():
    names = {_name(f) for f in FILES}
    assert names >= {"cnn", "residual", "separable", "conv1d", "mlp_softmax", "mlp_norm", "cnn_flatten"}, names
    for name in names:
        assert {f.stem for f in FILES if _name(f) == name} == {f"{name}_opset13", f"{name}_opset18"}
        assert (HERE / f"{name}.npz").exists()
    assert all(f.stat().st_size < 200_000 for f in FILES)


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_load(path):
    """The graph loads, every node is supported, and the input is the channels-last Keras input."""
    proto = onnx.load(str(path))
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    assert path.stem.endswith(f"_opset{opset}")
    unsupported = onnxdtd.find_unsupported(str(path))
    assert not unsupported, "\n".join(str(e) for e in unsupported)
    model = _model(path)
    x = _data(_name(path))["x"]
    assert len(model) > 0
    assert tuple(model.input_shape[1:]) == x.shape[1:], str(model)


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_output_equals_keras(path):
    """onnxdtd reports Keras's logits (the softmax of mlp_softmax stripped) for the stored batch."""
    d = _data(_name(path))
    _, res = _explain(path, "dtd", "float32")
    np.testing.assert_allclose(res.output, d["logits"], rtol=1e-4, atol=1e-5, err_msg=_table(path))
    np.testing.assert_array_equal(res.target, d["logits"].argmax(axis=1))
    model = _model(path)
    if not np.allclose(d["y"], d["logits"]):  # Keras's output went through a final softmax
        assert model.stripped == "Softmax", str(model)
        e = np.exp(res.output - res.output.max(axis=1, keepdims=True))
        np.testing.assert_allclose(e / e.sum(axis=1, keepdims=True), d["y"], rtol=1e-4, atol=1e-6)
    else:
        assert model.stripped is None, str(model)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_relevance_shape_finite_and_dtypes_agree(path, preset):
    x = _data(_name(path))["x"]
    _, r32 = _explain(path, preset, "float32")
    _, r64 = _explain(path, preset, "float64")
    for res, dtype in ((r32, np.float32), (r64, np.float64)):
        assert res.relevance.shape == x.shape  # channels-last, as Keras takes it
        assert res.relevance.dtype == dtype
        assert np.isfinite(res.relevance).all()
    scale = np.abs(r64.relevance).max()
    assert scale > 0
    err = np.abs(r32.relevance.astype(np.float64) - r64.relevance).max() / scale
    assert err <= 1e-4, f"{path.stem}/{preset}: max|R32 - R64| / max|R64| = {err:.2e}"


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_single_sample_matches_batch(path):
    """The batch axis is dynamic (tf2onnx's unk__N): one sample alone gives that sample's row (up to
    onnxruntime's float32 forward, whose kernels may round differently for another batch size)."""
    x = _data(_name(path))["x"]
    ex, res = _explain(path, "dtd", "float64")
    one = ex.explain(x[1:2])
    np.testing.assert_allclose(one.output, res.output[1:2], rtol=1e-5, atol=1e-6)
    scale = np.abs(res.relevance[1]).max()
    assert np.abs(one.relevance[0] - res.relevance[1]).max() <= 1e-4 * scale


@pytest.mark.parametrize("dtype", ("float32", "float64"))
@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_conservation(path, preset, dtype):
    """Σ R_input == logit − relevance lost at (near-)zero z⁺ denominators, per sample, within 1e-4."""
    ex, res = _explain(path, preset, dtype)
    rows = np.arange(len(res.target))
    logit = res.output[rows, res.target].astype(np.float64)
    total = res.relevance.reshape(len(rows), -1).astype(np.float64).sum(axis=1)
    lost = _zplus_lost(path, ex, res)
    err = np.abs(total + lost - logit) / np.abs(logit)
    assert np.all(err <= 1e-4), (f"{path.stem}/{preset}/{dtype}: ΣR = {total}, lost at zero denominators = "
                                 f"{lost}, logit = {logit}, relative error {err}\n{_table(path)}")


@pytest.mark.parametrize("path", [pytest.param(f, marks=pytest.mark.xfail(strict=True, reason=UNFOLDED[_name(f)]))
                                  if _name(f) in UNFOLDED else f for f in FILES], ids=IDS)
def test_bias_and_batchnorm_folded(path):
    """After canonicalization every bias Add and BatchNorm sits inside its Conv/Gemm/MatMul layer: an
    `affine` layer may only precede the first linear layer (input normalization, whose z^B bounds are
    mapped). An unfolded one makes ε/LRP-0/γ ignore the bias and, with a negative BatchNorm scale,
    makes z⁺ see the wrong weight signs."""
    model = _model(path)
    first_linear = next(l.index for l in model if l.kind in ("dense", "conv"))
    late = [f"{l.index}:{l.name} ({l.op_type})" for l in model if l.kind == "affine" and l.index > first_linear]
    assert not late, f"unfolded affine layer(s) after a linear layer: {late}\n{model}"


# --- the independent z⁺ denominators --------------------------------------------------------------

def _activations(path: Path, names: list[str], x: np.ndarray) -> dict[str, np.ndarray]:
    """The model's own tensors `names` for input x, from onnxruntime (not from onnxdtd)."""
    proto = onnx.load(str(path))
    known = {o.name for o in proto.graph.output}
    for name in names:
        if name not in known:
            proto.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(names, sess.run(names, {sess.get_inputs()[0].name: x})))


def _conv(layer, a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The layer's convolution (no bias) of `a` with weight `w`, as one onnxruntime Conv node."""
    attrs = dict(kernel_shape=list(layer.attrs["kernel"]), strides=list(layer.attrs["strides"]),
                 dilations=list(layer.attrs["dilations"]), group=int(layer.attrs["group"]))
    if layer.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "", None):
        attrs["auto_pad"] = layer.attrs["auto_pad"]
    else:
        attrs["pads"] = list(layer.attrs["pads"])
    graph = helper.make_graph([helper.make_node("Conv", ["a", "w"], ["z"], **attrs)], "conv",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, list(a.shape))],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w.astype(np.float32), "w")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"a": a.astype(np.float32)})[0].astype(np.float64)


def _zplus_denominator(layer, a: np.ndarray) -> np.ndarray:
    """z⁺_j = Σ a⁺ w⁺ + Σ a⁻ w⁻ (no bias) of a dense or conv layer."""
    w = np.asarray(layer.params["weight"], np.float64)
    wp, wn = np.maximum(w, 0), np.minimum(w, 0)
    ap, an = np.maximum(a, 0).astype(np.float64), np.minimum(a, 0).astype(np.float64)
    if layer.kind == "dense":
        axis = layer.attrs.get("axis", -1)
        z = np.moveaxis(ap, axis, -1) @ wp.T + np.moveaxis(an, axis, -1) @ wn.T
        return np.moveaxis(z, -1, axis)
    return _conv(layer, ap, wp) + _conv(layer, an, wn)


def _zplus_lost(path: Path, ex, res) -> np.ndarray:
    """Per sample, Σ over z⁺ layers of Σ_j R_j (1 − z⁺_j / s(z⁺_j)): what the z⁺ rule cannot pass on."""
    model, n = ex.model, len(res.target)
    layers = [(l, r) for l, r in zip(model, ex.rules) if isinstance(r, ZPlus)]
    acts = _activations(path, sorted({l.inputs[0] for l, _ in layers} - {model.input_name}), _data(_name(path))["x"])
    acts[model.input_name] = _data(_name(path))["x"]
    lost = np.zeros(n)
    for layer, rule in layers:
        if layer.output not in res.intermediate:
            continue
        z = _zplus_denominator(layer, acts[layer.inputs[0]])
        r = res.intermediate[layer.output].astype(np.float64)
        kept = z / (z + rule.stabilizer)  # z⁺ ≥ 0, so s(z⁺) = z⁺ + ε
        lost += (r * (1.0 - kept)).reshape(n, -1).sum(axis=1)
    return lost
