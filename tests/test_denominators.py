"""Rule denominators computed by onnxruntime in the forward pass: which layers get them, and that the
explanation equals the one whose denominators the backend kernels compute."""
import numpy as np
import onnx
import pytest

import onnxdtd
from onnxdtd import denominators
from onnxdtd.backends import get_backend
from onnxdtd.rules import Composite
from onnxdtd.rules.base import Group, Rule, Term
from onnxdtd.rules.presets import PRESETS

from builders import model, node

SHIPPED = "models/mnist_cnn.onnx"


def _signed_convs() -> onnx.ModelProto:
    """Convs on signed inputs (no Relu in between), strided, padded with auto_pad, dilated, grouped."""
    rng = np.random.default_rng(0)
    w = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    nodes = [node("Conv", ["x", "w1", "b1"], "c1", strides=[2, 1], auto_pad="SAME_UPPER"),
             node("Conv", ["c1", "w2", "b2"], "c2", group=2, dilations=[2, 1], pads=[1, 0, 2, 1]),
             node("Relu", ["c2"], "r2"),
             node("Conv", ["r2", "w3"], "c3", kernel_shape=[3, 3]),
             node("Flatten", ["c3"], "f"),
             node("Gemm", ["f", "w4", "b4"], "y", transB=1)]
    inits = {"w1": w(4, 2, 3, 3), "b1": w(4), "w2": w(6, 2, 3, 2), "b2": w(6) - 1, "w3": w(3, 6, 3, 3),
             "w4": w(5, 3 * 3 * 7), "b4": w(5)}
    return model(nodes, inits, (2, 11, 9))


# A rule with a subtracted term, a modified bias and the plain input, as users can write them: the
# parts of the rule language that the presets do not use.
SIGNED = Rule((Group((Term("pos", "pos", "pos"), Term("neg", "pos", sign=-1.0)), coeff=0.5),  # |a|·W⁺ + b⁺
               Group((Term("x", "gamma_pos"),), coeff=0.5, mask="pos")), gamma=0.5)
RULES = {**{name: name for name in PRESETS}, "signed-terms": Composite(kinds={"conv": SIGNED, "dense": PRESETS["zplus"]().kinds["linear"]})}
CASES = {"shipped": (SHIPPED, (3, 1, 28, 28)), "signed_convs": (_signed_convs(), (3, 2, 11, 9))}


def _explain(source, shape, preset, backend, dtype=np.float32):
    x = np.random.default_rng(1).random(shape, dtype=np.float32) * 2 - 0.5
    ex = onnxdtd.Explainer(source, rules=preset, backend=backend, dtype=dtype, low=-0.5, high=1.5)
    return ex, ex.explain(x, np.arange(shape[0]) % 3).relevance


@pytest.mark.parametrize("backend", [b for b in onnxdtd.available_backends() if not get_backend(b).whole_graph])
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("rules", sorted(RULES))
def test_equal_to_the_kernels_own_denominators(monkeypatch, backend, case, rules):
    source, shape = CASES[case]
    ex, got = _explain(source, shape, RULES[rules], backend)
    assert ex.denominators or rules in ("epsilon", "lrp0")
    monkeypatch.setattr(denominators, "plan", lambda *args: denominators.Denominators())
    plain, expected = _explain(source, shape, RULES[rules], backend)
    assert not plain.denominators
    scale = np.abs(expected).max()
    assert scale > 0
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("preset, planned", [  # conv number (in graph order) -> planned groups
    ("dtd", {1: {0}, 2: {0}}),  # z^B on the first conv reads the bounds: left to the kernels
    ("dtd-w2", {1: {0}, 2: {0}}),  # w² reads the all-ones input
    ("zplus", {0: {0}, 1: {0}, 2: {0}}),
    ("epsilon-alpha2-beta1", {0: {0, 1}, 1: {0, 1}, 2: {0, 1}}),  # the dense layer's ε is plain
    ("epsilon-gamma-box", {1: {0, 1}, 2: {0, 1}}),
    ("epsilon", {}),  # plain groups: the layer's own output is the denominator
])
def test_planned_groups(preset, planned):
    ex = onnxdtd.Explainer(_signed_convs(), rules=preset, backend="numpy")
    convs = [layer.index for layer in ex.model if layer.kind == "conv"]
    assert {convs.index(i): set(groups) for i, groups in ex.denominators.items()} == planned


def test_nonnegative_inputs_need_no_sign_split():
    ex = onnxdtd.Explainer(SHIPPED, rules="zplus", backend="numpy")
    extra = denominators.plan(ex.model, ex.rules, ex.dtype)
    assert extra.names == ex.denominators
    ops = {i: [n.op_type for n in extra.nodes if n.name.startswith(f"{denominators.PREFIX}/{i}/")]
           for i in extra.names}
    signed = [i for i in ops if not ex.model.layers[i].nonnegative_input]
    assert len(signed) == 1 and "Relu" in ops[signed[0]]  # the model input is split into its parts
    assert all(set(ops[i]) == {"Conv"} for i in ops if i not in signed)


def test_left_to_the_kernels_in_another_dtype():
    ex = onnxdtd.Explainer(SHIPPED, backend="numpy", dtype=np.float64)
    assert not ex.denominators and not denominators.plan(ex.model, ex.rules, ex.dtype).nodes


def test_the_model_is_left_unchanged():
    proto = onnx.load(SHIPPED)
    before = proto.SerializeToString()
    onnxdtd.Explainer(proto, rules="zplus", backend="numpy")
    assert proto.SerializeToString() == before
