"""Exporter coverage: scikit-learn MLPClassifier / MLPRegressor converted with skl2onnx.

The models are trained here on scikit-learn's shipped data sets (small, few iterations, fixed seeds) and
converted inside the test. Every explanation is checked against a float64 reference written from the
estimator's own `coefs_` / `intercepts_`, never from the ONNX graph. docs/exporters/sklearn.md describes
the graphs that skl2onnx emits and what onnxdtd does with them.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pytest

pytest.importorskip("sklearn")
skl2onnx = pytest.importorskip("skl2onnx")

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.neural_network import MLPClassifier, MLPRegressor  # noqa: E402

import onnxdtd  # noqa: E402

EPS = 1e-6  # the stabilizer of every rule (DESIGN.md), and the ε of the `epsilon` preset
N_SAMPLES = 6

# --------------------------------------------------------------------------------------------------
# The models: name -> (data set, hidden layers, activation, number of regression outputs)
# --------------------------------------------------------------------------------------------------

CLASSIFIERS = {
    "digits-relu": ("digits", (16, 8), "relu"),  # 10 classes: Softmax head
    "digits-identity": ("digits", (16, 8), "identity"),
    "digits-tanh": ("digits", (16, 8), "tanh"),  # hidden Tanh: needs strict=False
    "digits-logistic": ("digits", (16, 8), "logistic"),  # hidden Sigmoid: needs strict=False
    "cancer-relu": ("breast_cancer", (8,), "relu"),  # 2 classes: one sigmoid unit, Sub, Concat
    "cancer-identity": ("breast_cancer", (8,), "identity"),
}
REGRESSORS = {
    "diabetes-relu": ((8,), "relu", 1),
    "diabetes-identity": ((8,), "identity", 1),
    "diabetes-relu-2out": ((8,), "relu", 2),
}
SUPPORTED = ["digits-relu", "digits-identity", "cancer-relu", "cancer-identity"]  # no rule needed beyond the core
LENIENT = {"digits-tanh": "Tanh", "digits-logistic": "Sigmoid"}  # variant -> the hidden op without a rule
HEADS = ["plain", "zipmap"]  # options={id(clf): {'zipmap': False}}, and skl2onnx's default ZipMap output
PRESETS = ["dtd-w2", "zplus", "epsilon", "lrp0"]
PRESET_RULES = {"dtd-w2": ("w2", "zplus"), "zplus": ("zplus", "zplus"), "epsilon": ("eps", "eps"),
                "lrp0": ("eps", "eps")}  # (first dense layer, every other dense layer)
CONSERVATIVE = ["dtd-w2", "zplus"]

ACTIVATIONS = {"relu": lambda z: np.maximum(z, 0.0), "identity": lambda z: z, "tanh": np.tanh,
               "logistic": lambda z: 1.0 / (1.0 + np.exp(-z))}


def _data(name: str) -> tuple[np.ndarray, np.ndarray]:
    if name == "digits":  # pixels 0..16 -> [0, 1]
        x, y = load_digits(return_X_y=True)
        return (x / 16.0).astype(np.float32), y
    if name == "breast_cancer":  # tabular features, standardized (unbounded z-scores)
        x, y = load_breast_cancer(return_X_y=True)
        return ((x - x.mean(0)) / x.std(0)).astype(np.float32), y
    x, y = load_diabetes(return_X_y=True)  # already centred and scaled by scikit-learn
    return x.astype(np.float32), y


def _fit(est, x, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(x, y)


@dataclass
class Case:
    """One trained estimator, its ONNX conversions and its float64 reference network."""

    name: str
    estimator: object
    activation: str
    x_train: np.ndarray

    @property
    def x(self) -> np.ndarray:
        return self.x_train[:N_SAMPLES]

    @property
    def is_classifier(self) -> bool:
        return isinstance(self.estimator, MLPClassifier)

    @cached_property
    def plain(self) -> onnx.ModelProto:
        options = {id(self.estimator): {"zipmap": False}} if self.is_classifier else None
        return skl2onnx.to_onnx(self.estimator, self.x_train[:1], options=options)

    @cached_property
    def zipmap(self) -> onnx.ModelProto:
        assert self.is_classifier
        return skl2onnx.to_onnx(self.estimator, self.x_train[:1])

    def onnx(self, head: str) -> onnx.ModelProto:
        return self.zipmap if head == "zipmap" else self.plain

    @cached_property
    def layers(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(W (in, out), b (out,)) in float64 from coefs_/intercepts_. A binary classifier's single
        sigmoid unit z becomes two logits (-z, z): p(class 0) = 1 - σ(z) = σ(-z), p(class 1) = σ(z)."""
        est = self.estimator
        layers = [(np.asarray(w, np.float64), np.asarray(b, np.float64)) for w, b in zip(est.coefs_, est.intercepts_)]
        if self.is_classifier and len(est.classes_) == 2:
            w, b = layers[-1]
            layers[-1] = (np.concatenate([-w, w], axis=1), np.concatenate([-b, b]))
        return layers

    def forward(self, x: np.ndarray) -> list[np.ndarray]:
        """Every layer's input, then the logits (the output of the last dense layer), in float64."""
        acts = [np.asarray(x, np.float64)]
        for i, (w, b) in enumerate(self.layers):
            z = acts[-1] @ w + b
            acts.append(z if i == len(self.layers) - 1 else ACTIVATIONS[self.activation](z))
        return acts

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x)[-1]

    def reference(self, x: np.ndarray, targets, preset: str) -> np.ndarray:
        """The preset's relevance, sample by sample, with explicit per-connection contribution matrices.
        Elementwise activations pass relevance unchanged; the target's relevance is its logit."""
        return self._reference(x, targets, preset)[0]

    def lost(self, x: np.ndarray, targets, preset: str) -> np.ndarray:
        """Per sample, the relevance that a bias-free chain drops at units with a zero denominator
        (z_j = 0: no input contributes), so that Σ R = logit - lost."""
        return self._reference(x, targets, preset)[1]

    def _reference(self, x, targets, preset):
        first, rest = PRESET_RULES[preset]
        out, lost = np.zeros(x.shape, np.float64), np.zeros(len(x))
        for n, t in enumerate(np.broadcast_to(targets, (len(x),))):
            acts = [a[0] for a in self.forward(x[n:n + 1])]
            relevance = np.zeros_like(acts[-1])
            relevance[t] = acts[-1][t]
            for i in reversed(range(len(self.layers))):
                relevance, dropped = _propagate(first if i == 0 else rest, acts[i], *self.layers[i], relevance)
                lost[n] += dropped
            out[n] = relevance
        return out, lost


def _propagate(rule: str, a: np.ndarray, w: np.ndarray, b: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, float]:
    """R_i = Σ_j C_ij R_j / s(z_j) with z_j = Σ_i C_ij (+ b_j for ε), s(z) = z + 1e-6·sgn(z), sgn(0) = +1;
    and the relevance of the outputs that no input contributes to (dropped)."""
    if rule == "eps":
        c = a[:, None] * w
    elif rule == "zplus":
        c = np.maximum(a, 0)[:, None] * np.maximum(w, 0) + np.minimum(a, 0)[:, None] * np.minimum(w, 0)
    elif rule == "w2":
        c = w ** 2
    else:
        raise ValueError(rule)
    z = c.sum(axis=0) + (b if rule == "eps" else 0.0)
    s = z + EPS * np.where(z >= 0, 1.0, -1.0)
    dropped = float(r[~np.any(c != 0, axis=0)].sum())
    return (c * (r / s)[None, :]).sum(axis=1), dropped


class Zoo:
    """Trains and converts each model once, on first use."""

    def __init__(self):
        self._cases: dict[str, Case] = {}

    def __getitem__(self, name: str) -> Case:
        if name not in self._cases:
            self._cases[name] = self._build(name)
        return self._cases[name]

    @staticmethod
    def _build(name: str) -> Case:
        if name in CLASSIFIERS:
            data, hidden, activation = CLASSIFIERS[name]
            x, y = _data(data)
            est = MLPClassifier(hidden_layer_sizes=hidden, activation=activation, max_iter=60, random_state=0)
        else:
            hidden, activation, outputs = REGRESSORS[name]
            x, y = _data("diabetes")
            y = y if outputs == 1 else np.stack([y, 0.5 * y + 10.0 * x[:, 2]], axis=1)
            est = MLPRegressor(hidden_layer_sizes=hidden, activation=activation, learning_rate_init=0.01,
                               max_iter=100, random_state=0)
        return Case(name, _fit(est, x, y), activation, x)


@pytest.fixture(scope="module")
def zoo() -> Zoo:
    return Zoo()


def _session(proto: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def _assert_close_to_reference(relevance: np.ndarray, ref: np.ndarray) -> None:
    """Max error at most 1e-4 of max |R|, per sample."""
    assert relevance.shape == ref.shape
    for n in range(len(ref)):
        err = np.abs(relevance[n] - ref[n]).max()
        assert err <= 1e-4 * np.abs(ref[n]).max() + 1e-9, f"sample {n}: max error {err:.3g}, max |R| " \
                                                           f"{np.abs(ref[n]).max():.3g}"


def _assert_output_is_logits(output: np.ndarray, logits: np.ndarray) -> None:
    assert output.shape == logits.shape, f"output shape {output.shape}, logits shape {logits.shape}"
    np.testing.assert_allclose(output, logits, rtol=1e-5, atol=1e-5 * np.abs(logits).max())


# --------------------------------------------------------------------------------------------------
# What skl2onnx emits (docs/exporters/sklearn.md): a change of the exporter shows up here first
# --------------------------------------------------------------------------------------------------

def _output_kinds(proto: onnx.ModelProto) -> list[tuple[str, str]]:
    kinds = []
    for vi in proto.graph.output:
        which = vi.type.WhichOneof("value")
        if which == "tensor_type":
            kinds.append((vi.name, onnx.TensorProto.DataType.Name(vi.type.tensor_type.elem_type)))
        else:
            kinds.append((vi.name, which))
    return kinds


@pytest.mark.parametrize("name", ["digits-relu", "cancer-relu"])
def test_skl2onnx_classifier_graph(zoo, name):
    case = zoo[name]
    binary = len(case.estimator.classes_) == 2
    plain_ops = [n.op_type for n in case.plain.graph.node]
    head = ["Sigmoid", "Sub", "Concat"] if binary else ["Softmax", "Identity"]
    hidden = ["MatMul", "Add", "Relu"] * (len(case.layers) - 1)
    assert plain_ops[:1 + len(hidden) + 2 + len(head)] == ["Cast", *hidden, "MatMul", "Add", *head]
    assert _output_kinds(case.plain) == [("label", "INT64"), ("probabilities", "FLOAT")]
    assert _output_kinds(case.zipmap) == [("output_label", "INT64"), ("output_probability", "sequence_type")]
    assert "ZipMap" in [n.op_type for n in case.zipmap.graph.node]
    # onnxruntime agrees with scikit-learn on both conversions
    label, proba = _session(case.plain).run(None, {"X": case.x})
    np.testing.assert_allclose(proba, case.estimator.predict_proba(case.x), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(label, case.estimator.predict(case.x))
    _, maps = _session(case.zipmap).run(None, {"X": case.x})
    assert isinstance(maps, list) and sorted(maps[0]) == list(case.estimator.classes_)


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_float64_reference_reproduces_predict_proba(zoo, name):
    """The test's own forward pass (and the binary (-z, z) logits) are what scikit-learn computes."""
    case = zoo[name]
    logits = case.logits(case.x)
    proba = np.exp(logits - logits.max(1, keepdims=True))
    proba /= proba.sum(1, keepdims=True)
    if len(case.estimator.classes_) == 2:  # softmax(-z, z) = σ(2z) != σ(z): check σ(±z) instead
        proba = 1.0 / (1.0 + np.exp(-logits))
    # scikit-learn keeps float32 data in float32: agreement to float32 precision
    np.testing.assert_allclose(proba, case.estimator.predict_proba(case.x), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", sorted(REGRESSORS))
def test_skl2onnx_regressor_graph(zoo, name):
    case = zoo[name]
    ops = [n.op_type for n in case.plain.graph.node]
    assert ops[0] == "Cast" and ops[-1] == "Reshape" and "Softmax" not in ops
    # skl2onnx 1.20 reshapes every regressor output to (-1, 1): K outputs come back as (N*K, 1)
    (out,) = _session(case.plain).run(None, {"X": case.x})
    pred = case.estimator.predict(case.x).reshape(N_SAMPLES, -1)
    np.testing.assert_allclose(out.reshape(N_SAMPLES, -1), pred, rtol=1e-4, atol=1e-4 * np.abs(pred).max())
    np.testing.assert_allclose(case.logits(case.x), pred, rtol=1e-5)


# --------------------------------------------------------------------------------------------------
# Classifiers: the class logit is explained, with either output head
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("name", SUPPORTED)
def test_classifier_loads_without_unsupported_ops(zoo, name, head):
    proto = zoo[name].onnx(head)
    assert [str(e) for e in onnxdtd.find_unsupported(proto)] == []
    model = onnxdtd.load(proto)
    assert model.stripped in ("Softmax", "Sigmoid")
    assert [layer.kind for layer in model if layer.kind == "dense"] == ["dense"] * len(zoo[name].layers)


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("name", SUPPORTED)
def test_classifier_output_is_the_logit(zoo, name, head):
    case = zoo[name]
    res = onnxdtd.Explainer(case.onnx(head), rules="zplus").explain(case.x)
    logits = case.logits(case.x)  # binary: (-z, z)
    _assert_output_is_logits(res.output, logits)
    np.testing.assert_array_equal(res.target, logits.argmax(1))
    np.testing.assert_array_equal(case.estimator.classes_[res.target], case.estimator.predict(case.x))
    assert res.relevance.shape == case.x.shape and res.relevance.dtype == np.float32


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("name", SUPPORTED)
def test_classifier_relevance_matches_reference(zoo, name, head, preset, backend):
    case = zoo[name]
    res = onnxdtd.Explainer(case.onnx(head), rules=preset, backend=backend).explain(case.x)
    _assert_output_is_logits(res.output, case.logits(case.x))
    _assert_close_to_reference(res.relevance, case.reference(case.x, res.target, preset))


@pytest.mark.parametrize("preset", CONSERVATIVE)
@pytest.mark.parametrize("name", SUPPORTED)
def test_classifier_dtd_chains_conserve_the_logit(zoo, name, preset, backend):
    case = zoo[name]
    res = onnxdtd.Explainer(case.plain, rules=preset, backend=backend, dtype=np.float64).explain(case.x)
    logit = case.logits(case.x)[np.arange(N_SAMPLES), res.target]
    np.testing.assert_allclose(res.relevance.sum(axis=1), logit, rtol=1e-4)


@pytest.mark.parametrize("preset", ["dtd-w2", "epsilon"])
@pytest.mark.parametrize("name", ["digits-relu", "cancer-relu"])
def test_classifier_target_by_int(zoo, name, preset):
    case = zoo[name]
    ex = onnxdtd.Explainer(case.plain, rules=preset)
    k = len(case.estimator.classes_)
    logits = case.logits(case.x)
    for target in range(k):  # binary: target 0 explains -z, target 1 explains z
        res = ex.explain(case.x, target=target)
        np.testing.assert_array_equal(res.target, np.full(N_SAMPLES, target))
        _assert_close_to_reference(res.relevance, case.reference(case.x, target, preset))
        if preset in CONSERVATIVE:
            np.testing.assert_allclose(res.relevance.sum(1), logits[:, target], rtol=1e-4, atol=1e-6)
    per_sample = np.arange(N_SAMPLES) % k
    res = ex.explain(case.x, target=per_sample)
    _assert_close_to_reference(res.relevance, case.reference(case.x, per_sample, preset))


def test_binary_class_relevances_are_opposite_under_epsilon(zoo):
    """With the linear ε rule, explaining -z gives exactly minus the relevance of z."""
    case = zoo["cancer-relu"]
    ex = onnxdtd.Explainer(case.plain, rules="epsilon")
    r0, r1 = (ex.explain(case.x, target=t).relevance for t in (0, 1))
    np.testing.assert_allclose(r0, -r1, rtol=1e-5, atol=1e-6 * np.abs(r1).max())


@pytest.mark.parametrize("name", ["digits-relu", "cancer-relu"])
def test_output_argument_picks_the_probabilities(zoo, name):
    """Naming the probabilities output (tensor or ZipMap sequence) explains the logits feeding it; the
    int64 label cannot be explained."""
    case = zoo[name]
    logits = case.logits(case.x)
    for proto, output in ((case.plain, "probabilities"), (case.zipmap, "output_probability")):
        res = onnxdtd.Explainer(proto, rules="epsilon", output=output).explain(case.x)
        _assert_output_is_logits(res.output, logits)
        _assert_close_to_reference(res.relevance, case.reference(case.x, res.target, "epsilon"))
    for proto, output in ((case.plain, "label"), (case.zipmap, "output_label")):
        with pytest.raises(onnxdtd.OnnxdtdError, match=output):
            onnxdtd.Explainer(proto, output=output)


def test_float64_model(zoo):
    """to_onnx on scikit-learn's float64 arrays writes a DOUBLE graph."""
    case = zoo["digits-relu"]
    proto = skl2onnx.to_onnx(case.estimator, case.x_train[:1].astype(np.float64),
                             options={id(case.estimator): {"zipmap": False}})
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    x = case.x.astype(np.float64)
    res = onnxdtd.Explainer(proto, rules="epsilon", dtype=np.float64).explain(x)
    np.testing.assert_allclose(res.output, case.logits(x), rtol=1e-9, atol=1e-9)
    _assert_close_to_reference(res.relevance, case.reference(x, res.target, "epsilon"))


# --------------------------------------------------------------------------------------------------
# Hidden Tanh / Sigmoid: strict mode refuses them by name, lenient mode passes relevance through
# --------------------------------------------------------------------------------------------------

def _hidden_nodes(proto: onnx.ModelProto, op: str) -> set[str]:
    """The hidden activation nodes (the output squashing node is Softmax, whatever skl2onnx names it)."""
    return {n.name for n in proto.graph.node if n.op_type == op}


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("name", sorted(LENIENT))
def test_strict_mode_names_the_hidden_activation(zoo, name, head):
    case, op = zoo[name], LENIENT[name]
    proto = case.onnx(head)
    hidden = _hidden_nodes(proto, op)
    assert len(hidden) == len(case.layers) - 1
    with pytest.raises(onnxdtd.UnsupportedOperatorError, match=op) as info:
        onnxdtd.Explainer(proto, rules="zplus")
    assert info.value.op_type == op and info.value.node in hidden
    assert sorted((e.op_type, e.node) for e in onnxdtd.find_unsupported(proto)) == sorted((op, n) for n in hidden)


@pytest.mark.parametrize("name", sorted(LENIENT))
def test_strict_true_is_the_default(zoo, name):
    with pytest.raises(onnxdtd.UnsupportedOperatorError, match=LENIENT[name]):
        onnxdtd.Explainer(zoo[name].plain, rules="zplus", strict=True)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("name", sorted(LENIENT))
def test_lenient_mode_warns_and_passes_relevance_through(zoo, name, head, preset):
    case, op = zoo[name], LENIENT[name]
    with pytest.warns(onnxdtd.LenientWarning, match=op):
        ex = onnxdtd.Explainer(case.onnx(head), rules=preset, strict=False)
    res = ex.explain(case.x)
    logits = case.logits(case.x)
    _assert_output_is_logits(res.output, logits)
    assert res.relevance.shape == case.x.shape and np.all(np.isfinite(res.relevance))
    _assert_close_to_reference(res.relevance, case.reference(case.x, res.target, preset))
    if preset in CONSERVATIVE:
        np.testing.assert_allclose(res.relevance.sum(1), logits[np.arange(N_SAMPLES), res.target], rtol=1e-4)


@pytest.mark.parametrize("head", HEADS)
def test_lenient_mode_still_explains_the_binary_logit(zoo, head):
    """The binary head's Sigmoid is the output squashing, not a hidden activation: strict=False must not
    turn it into a pass-through and explain the probabilities."""
    case = zoo["cancer-relu"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", onnxdtd.LenientWarning)
        ex = onnxdtd.Explainer(case.onnx(head), rules="epsilon", strict=False)
    res = ex.explain(case.x)
    _assert_output_is_logits(res.output, case.logits(case.x))
    _assert_close_to_reference(res.relevance, case.reference(case.x, res.target, "epsilon"))


# --------------------------------------------------------------------------------------------------
# Regressors: the prediction itself is explained (target=0, or one output of several)
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("name", ["diabetes-relu", "diabetes-identity"])
def test_regressor_single_output(zoo, name, preset, backend):
    case = zoo[name]
    assert onnxdtd.find_unsupported(case.plain) == []
    res = onnxdtd.Explainer(case.plain, rules=preset, backend=backend).explain(case.x, target=0)
    pred = case.estimator.predict(case.x)[:, None]
    _assert_output_is_logits(res.output, pred)
    np.testing.assert_array_equal(res.target, np.zeros(N_SAMPLES, np.int64))
    assert res.relevance.shape == case.x.shape
    _assert_close_to_reference(res.relevance, case.reference(case.x, 0, preset))
    if preset in CONSERVATIVE:
        # The prediction is mostly the output bias (≈ mean of y): where every active hidden unit has a
        # negative output weight, z⁺ of the output is 0 and DTD drops the relevance (no positive evidence).
        lost = case.lost(case.x, 0, preset)
        np.testing.assert_allclose(res.relevance.sum(1), pred[:, 0] - lost, rtol=1e-4, atol=1e-4 * np.abs(pred).max())


@pytest.mark.parametrize("preset", ["dtd-w2", "epsilon"])
def test_regressor_two_outputs(zoo, preset):
    """Each of K outputs can be explained; res.output is (N, K) like predict(), although skl2onnx's graph
    output is (N*K, 1)."""
    case = zoo["diabetes-relu-2out"]
    ex = onnxdtd.Explainer(case.plain, rules=preset)
    pred = case.estimator.predict(case.x)
    for target in (0, 1):
        res = ex.explain(case.x, target=target)
        _assert_output_is_logits(res.output, pred)
        _assert_close_to_reference(res.relevance, case.reference(case.x, target, preset))
