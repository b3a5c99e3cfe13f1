"""Models with several inputs (relevance by input name) and several outputs (output=)."""
import numpy as np
import onnx
import pytest

import onnxdtd
from builders import model, node

RNG = np.random.default_rng(5)


def two_inputs():
    """An image branch (conv) and a tabular branch (dense), concatenated before a dense head."""
    rng = np.random.default_rng(0)
    nodes = [node("Conv", ["img", "w1", "b1"], "c", pads=[1, 1, 1, 1]), node("Relu", ["c"], "r1"),
             node("GlobalAveragePool", ["r1"], "g"), node("Flatten", ["g"], "f"),
             node("Gemm", ["tab", "w2", "b2"], "d"), node("Relu", ["d"], "r2"),
             node("Concat", ["f", "r2"], "cat", axis=1), node("Gemm", ["cat", "w3"], "y")]
    inits = {"w1": rng.normal(size=(4, 2, 3, 3)), "b1": -rng.uniform(size=4) * 0.1, "w2": rng.normal(size=(3, 5)),
             "b2": -rng.uniform(size=5) * 0.1, "w3": np.abs(rng.normal(size=(9, 3)))}
    return model(nodes, inits, (2, 4, 4), in_name="img", more_inputs={"tab": (3,)})


def test_two_inputs_give_relevance_by_name_and_conserve_together():
    x = {"img": RNG.uniform(size=(2, 2, 4, 4)), "tab": RNG.normal(size=(2, 3))}
    ex = onnxdtd.Explainer(two_inputs(), rules="zplus", dtype=np.float64)
    assert list(ex.model.inputs) == ["img", "tab"]
    res = ex.explain(x)
    assert set(res.relevance) == {"img", "tab"}
    assert res.relevance["img"].shape == (2, 2, 4, 4) and res.relevance["tab"].shape == (2, 3)
    total = res.relevance["img"].reshape(2, -1).sum(1) + res.relevance["tab"].sum(1)
    np.testing.assert_allclose(total, res.output[[0, 1], res.target], rtol=1e-5)
    in_order = ex.explain([x["img"], x["tab"]])
    np.testing.assert_array_equal(in_order.relevance["tab"], res.relevance["tab"])


def test_two_inputs_get_their_own_bounds_and_first_layer_rule():
    """DTD gives z^B to the first linear layer of every input branch, with that input's bounds."""
    x = {"img": RNG.uniform(size=(2, 2, 4, 4)), "tab": RNG.uniform(-2, 2, size=(2, 3))}
    ex = onnxdtd.Explainer(two_inputs(), rules="dtd", low={"img": 0.0, "tab": -2.0}, high={"img": 1.0, "tab": 2.0},
                           dtype=np.float64)
    assert [type(r).__name__ for r in ex.rules if r is not None][:3] == ["ZBox", "Norm", "ZBox"]
    res = ex.explain(x)
    assert min(r.min() for r in res.relevance.values()) >= 0
    total = sum(r.reshape(2, -1).sum(1) for r in res.relevance.values())
    np.testing.assert_allclose(total, res.output[[0, 1], res.target], rtol=1e-5)


@pytest.mark.parametrize("x, match", [({"img": np.zeros((1, 2, 4, 4))}, "expected inputs"),
                                      (np.zeros((1, 2, 4, 4)), "2 inputs"),
                                      ({"img": np.zeros((1, 2, 4, 4)), "tab": np.zeros((2, 3))}, "batch size")])
def test_two_inputs_errors(x, match):
    with pytest.raises(onnxdtd.InputError, match=match):
        onnxdtd.Explainer(two_inputs()).explain(x)


def two_outputs():
    rng = np.random.default_rng(1)
    proto = model([node("Gemm", ["x", "w1"], "h"), node("Relu", ["h"], "r"), node("Gemm", ["r", "w2"], "a"),
                   node("Gemm", ["r", "w3"], "b")],
                  {"w1": rng.normal(size=(4, 6)), "w2": rng.normal(size=(6, 3)), "w3": rng.normal(size=(6, 2))},
                  (4,), output="a")
    proto.graph.output.append(onnx.helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, ["N", 2]))
    return proto


@pytest.mark.parametrize("output, name, classes", [(None, "a", 3), (0, "a", 3), (1, "b", 2), ("b", "b", 2),
                                                   ("h", "h", 6)])
def test_output_selects_the_explained_tensor(output, name, classes):
    ex = onnxdtd.Explainer(two_outputs(), rules="lrp0", output=output, dtype=np.float64)
    assert ex.model.output_name == name
    x = RNG.normal(size=(2, 4))
    res = ex.explain(x, init="one")
    assert res.output.shape == (2, classes)
    np.testing.assert_allclose(res.relevance.sum(1), 1.0, rtol=1e-4)


@pytest.mark.parametrize("output", [2, "nope"])
def test_bad_output(output):
    with pytest.raises(onnxdtd.ModelLoadError, match="output"):
        onnxdtd.Explainer(two_outputs(), output=output)


def test_explainer_leaves_the_model_proto_as_it_was():
    proto = two_inputs()
    before = proto.SerializeToString()
    ex = onnxdtd.Explainer(proto, rules="zplus")
    assert len(ex.forward.names) > 1  # intermediate tensors exposed in the session, not in the proto
    assert proto.SerializeToString() == before and ex.model.proto.SerializeToString() == before
