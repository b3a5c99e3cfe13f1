"""Canonicalization: constants, no-ops, BatchNorm and bias folding, final softmax, input normalization,
external weights, and the layer table."""
import numpy as np
import onnx
import pytest

import onnxdtd
from builders import model, node, run
from onnxdtd.backends.numpy_backend import OPS

RNG = np.random.default_rng(2)


def convnet(prefix_nodes=(), prefix_inits=None, conv_input="x", final=None):
    """[prefix] → Conv → BatchNormalization → Relu → Flatten → MatMul + Add → logits [→ final → y]."""
    rng = np.random.default_rng(7)  # the same weights on every call
    inits = {"w1": rng.normal(size=(3, 2, 3, 3)), "b1": rng.normal(size=3), "gamma": rng.uniform(0.5, 2, 3),
             "beta": rng.normal(size=3), "mean": rng.normal(size=3), "var": rng.uniform(0.5, 2, 3),
             "w2": rng.normal(size=(3 * 4 * 4, 5)), "b2": rng.normal(size=5), **(prefix_inits or {})}
    nodes = [*prefix_nodes, node("Conv", [conv_input, "w1", "b1"], "c", pads=[1, 1, 1, 1]),
             node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], "bn"), node("Relu", ["bn"], "r"),
             node("Flatten", ["r"], "f"), node("MatMul", ["f", "w2"], "m"), node("Add", ["m", "b2"], "logits")]
    if final:
        nodes.append(node(final, ["logits"], "y"))
    return model(nodes, inits, (2, 4, 4), output="y" if final else "logits")


def test_batchnorm_and_bias_add_are_folded():
    m = onnxdtd.load(convnet())
    assert [layer.kind for layer in m] == ["conv", "elementwise", "reshape", "dense"]
    assert m[0].op_type == "Conv+BatchNormalization" and m[3].op_type == "MatMul+Add"
    assert m[3].params["bias"].shape == (5,)


def test_folded_model_gives_same_output_and_relevance_as_onnxruntime():
    proto = convnet()
    x = RNG.uniform(size=(3, 2, 4, 4)).astype(np.float32)
    res = onnxdtd.Explainer(proto, rules="epsilon", dtype=np.float64).explain(x)
    np.testing.assert_allclose(res.output, run(proto, x), rtol=1e-5)


@pytest.mark.parametrize("final", ["Softmax", "LogSoftmax", "Sigmoid"])
def test_final_squashing_is_stripped_and_logit_explained(final):
    proto = convnet(final=final)
    m = onnxdtd.load(proto)
    assert m.stripped == final and m.output_name == "logits"
    x = RNG.uniform(size=(2, 2, 4, 4)).astype(np.float32)
    res = onnxdtd.Explainer(proto, rules="zplus").explain(x)
    logits = onnxdtd.Explainer(convnet(), rules="zplus").explain(x).output
    np.testing.assert_allclose(res.output, logits, rtol=1e-5)


def test_softmax_inside_the_graph_is_unsupported():
    proto = model([node("Softmax", ["x"], "s"), node("Relu", ["s"], "y")], {}, (4,))
    with pytest.raises(onnxdtd.UnsupportedOperatorError, match="Softmax.*Softmax_s"):
        onnxdtd.load(proto)


def test_constants_identity_dropout_cast_and_shape_arithmetic_are_removed():
    w = RNG.normal(size=(6, 3)).astype(np.float32)
    nodes = [node("Constant", [], "w", value=onnx.numpy_helper.from_array(w)),
             node("Identity", ["x"], "i"), node("Dropout", ["i"], "d"),
             node("Cast", ["d"], "cast", to=onnx.TensorProto.FLOAT),
             node("Shape", ["cast"], "shape"), node("Gather", ["shape", "zero"], "n", axis=0),
             node("Unsqueeze", ["n", "axes"], "n1"), node("Concat", ["n1", "minus1"], "target_shape", axis=0),
             node("Reshape", ["cast", "target_shape"], "flat"), node("MatMul", ["flat", "w"], "y")]
    proto = model(nodes, {"zero": np.array(0, np.int64), "axes": np.array([0], np.int64),
                          "minus1": np.array([-1], np.int64)}, (2, 3))
    m = onnxdtd.load(proto)
    assert [layer.kind for layer in m] == ["reshape", "dense"]
    x = RNG.normal(size=(2, 2, 3)).astype(np.float32)
    res = onnxdtd.Explainer(proto, rules="lrp0", dtype=np.float64).explain(x, init="one")
    np.testing.assert_allclose(res.output, run(proto, x), rtol=1e-5)
    assert res.relevance.shape == x.shape


def test_input_normalization_keeps_bounds_in_pixel_space():
    """z^B with bounds [0, 1] on a model that normalizes inside equals z^B on the bare model fed the
    normalized input with the normalized bounds."""
    mean, std = np.array([0.4, 0.6]).reshape(1, 2, 1, 1), np.array([0.2, 0.3]).reshape(1, 2, 1, 1)
    normalizing = convnet([node("Sub", ["x", "mean_"], "centred"), node("Div", ["centred", "std_"], "xn")],
                          {"mean_": mean, "std_": std}, conv_input="xn")
    bare = convnet(conv_input="x")
    x = RNG.uniform(size=(2, 2, 4, 4))
    ours = onnxdtd.Explainer(normalizing, rules="dtd", low=0.0, high=1.0, dtype=np.float64).explain(x)
    layers = onnxdtd.load(normalizing)
    assert [layer.kind for layer in layers][:3] == ["affine", "affine", "conv"]
    xn = ((x.astype(np.float32) - mean) / std)
    ref = onnxdtd.Explainer(bare, rules="dtd", low=(0 - mean) / std, high=(1 - mean) / std,
                            dtype=np.float64).explain(xn)
    np.testing.assert_allclose(ours.relevance, ref.relevance, atol=1e-5 * np.abs(ref.relevance).max())
    np.testing.assert_allclose(ours.relevance.reshape(2, -1).sum(1), ours.output[[0, 1], ours.target], rtol=1e-4)


def test_weights_in_external_data_file(tmp_path):
    proto = convnet()
    path = tmp_path / "model.onnx"
    onnx.save_model(proto, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=0)
    assert (tmp_path / "model.onnx.data").exists()
    x = RNG.uniform(size=(1, 2, 4, 4)).astype(np.float32)
    from_file = onnxdtd.Explainer(str(path)).explain(x)
    in_memory = onnxdtd.Explainer(convnet()).explain(x)  # save_model moved proto's weights out
    np.testing.assert_allclose(from_file.relevance, in_memory.relevance)


def test_sources_path_bytes_and_proto_agree(tmp_path):
    proto = convnet()
    path = tmp_path / "m.onnx"
    onnx.save(proto, path)
    x = RNG.uniform(size=(1, 2, 4, 4)).astype(np.float32)
    results = [onnxdtd.Explainer(src).explain(x).relevance for src in (path, str(path), path.read_bytes(), proto)]
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


def test_table_shows_index_name_kind_shapes_and_params():
    table = str(onnxdtd.load(convnet()))
    lines = table.splitlines()
    assert lines[0].split() == ["#", "name", "kind", "op", "input", "shape", "output", "shape", "params"]
    assert "Conv+BatchNormalization" in table and "(N, 2, 4, 4)" in table and "(N, 3, 4, 4)" in table
    assert str(3 * 2 * 9 + 3) in lines[2]


def test_keep_returns_relevance_of_every_tensor_and_each_layer_conserves():
    proto = convnet()
    x = RNG.uniform(size=(2, 2, 4, 4)).astype(np.float32)
    res = onnxdtd.Explainer(proto, rules="zplus", dtype=np.float64).explain(x, keep=True)
    assert set(res.intermediate) == {"x", "bn", "r", "f", "logits"}
    logits = res.output[[0, 1], res.target]
    for name, rel in res.intermediate.items():
        np.testing.assert_allclose(rel.reshape(2, -1).sum(1), logits, rtol=1e-4, err_msg=name)
    np.testing.assert_array_equal(res.intermediate["x"], res.relevance)


def bn_before(linear_nodes, linear_inits, relu=False, in_shape=(2, 4, 4)):
    """x → BatchNormalization [→ Relu] → linear nodes → y, with non-trivial statistics."""
    rng = np.random.default_rng(8)
    c = in_shape[0]
    stats = {"g": rng.uniform(0.5, 2, c), "be": rng.normal(size=c), "mu": rng.normal(size=c),
             "var": rng.uniform(0.5, 2, c)}
    nodes = [node("BatchNormalization", ["x", "g", "be", "mu", "var"], "bn")]
    if relu:
        nodes.append(node("Relu", ["bn"], "r"))
    return model([*nodes, *linear_nodes], {**stats, **linear_inits}, in_shape)


@pytest.mark.parametrize("relu, pads, folded", [(False, [0, 0, 0, 0], True), (False, [1, 1, 1, 1], False),
                                                (True, [0, 0, 0, 0], False)])
def test_batchnorm_before_conv_is_folded_right_only_where_exact(relu, pads, folded):
    rng = np.random.default_rng(9)
    src = "r" if relu else "bn"
    proto = bn_before([node("Conv", [src, "w", "b"], "c", pads=pads), node("Flatten", ["c"], "y")],
                      {"w": rng.normal(size=(3, 2, 3, 3)), "b": rng.normal(size=3)}, relu)
    m = onnxdtd.load(proto)
    assert (m[0].op_type == "BatchNormalization+Conv") == folded
    assert any(layer.kind == "affine" for layer in m) != folded
    x = RNG.normal(size=(2, 2, 4, 4)).astype(np.float32)
    res = onnxdtd.Explainer(proto, rules="lrp0", dtype=np.float64).explain(x, keep=True)
    np.testing.assert_allclose(res.output, run(proto, x).reshape(2, -1), rtol=1e-5, atol=1e-5)


def test_batchnorm_before_dense_is_folded_right():
    rng = np.random.default_rng(10)
    proto = bn_before([node("Gemm", ["bn", "w", "b"], "y")], {"w": rng.normal(size=(5, 3)), "b": rng.normal(size=3)},
                      in_shape=(5,))
    m = onnxdtd.load(proto)
    assert [layer.op_type for layer in m] == ["BatchNormalization+Gemm"]
    x = RNG.normal(size=(3, 5)).astype(np.float32)
    ex = onnxdtd.Explainer(proto, rules="epsilon", dtype=np.float64)
    res = ex.explain(x)
    np.testing.assert_allclose(res.output, run(proto, x), rtol=1e-5, atol=1e-6)
    layer = m[0]  # folded: the layer computes the model on the raw input
    np.testing.assert_allclose(x.astype(np.float64) @ layer.params["weight"].T + layer.params["bias"], run(proto, x),
                               rtol=1e-5, atol=1e-5)


def test_bias_and_batchnorm_fold_through_a_channel_keeping_reshape():
    """tf2onnx's Conv1D: Unsqueeze → Conv → Squeeze → Add(bias) → Mul → Add (BatchNorm); the folded
    conv's output, which the model never computes, is derived from the last folded tensor."""
    rng = np.random.default_rng(11)
    per_channel = lambda: rng.normal(size=(1, 3, 1))  # noqa: E731
    proto = model([node("Unsqueeze", ["x", "ax"], "u"), node("Conv", ["u", "w"], "c", pads=[0, 1, 0, 1]),
                   node("Squeeze", ["c", "ax"], "s"), node("Add", ["s", "bias"], "b"), node("Mul", ["b", "scale"], "m"),
                   node("Add", ["m", "shift"], "bn"), node("Relu", ["bn"], "r"), node("Flatten", ["r"], "f"),
                   node("Gemm", ["f", "w2"], "y")],
                  {"ax": np.array([2], np.int64), "w": rng.normal(size=(3, 2, 1, 3)), "bias": per_channel(),
                   "scale": per_channel(), "shift": per_channel(), "w2": rng.normal(size=(24, 4))}, (2, 8))
    m = onnxdtd.load(proto)
    assert [layer.kind for layer in m] == ["reshape", "conv", "reshape", "elementwise", "reshape", "dense"]
    conv = m[1]
    assert conv.op_type == "Conv+Add+Mul+Add"
    x = RNG.normal(size=(2, 2, 8)).astype(np.float32)
    ex = onnxdtd.Explainer(proto, rules="epsilon", dtype=np.float64)
    acts = ex.forward.run({"x": x})
    op = OPS["conv"](conv, acts[conv.inputs[0]].shape)
    folded = op.forward(acts[conv.inputs[0]].astype(np.float64), conv.params["weight"], conv.params["bias"])
    np.testing.assert_allclose(acts[conv.output], folded, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ex.explain(x).output, run(proto, x), rtol=1e-5, atol=1e-5)


def test_batchnorm_written_as_mul_add_after_an_activation_folds_right():
    rng = np.random.default_rng(12)
    proto = model([node("Gemm", ["x", "w1"], "h"), node("Relu", ["h"], "r"), node("Mul", ["r", "scale"], "m"),
                   node("Add", ["m", "shift"], "bn"), node("Gemm", ["bn", "w2", "b2"], "y")],
                  {"w1": rng.normal(size=(5, 6)), "scale": rng.normal(size=6), "shift": rng.normal(size=6),
                   "w2": rng.normal(size=(6, 3)), "b2": rng.normal(size=3)}, (5,))
    m = onnxdtd.load(proto)
    assert [layer.op_type for layer in m] == ["Gemm", "Relu", "Mul+Add+Gemm"]
    x = RNG.normal(size=(4, 5)).astype(np.float32)
    r = np.maximum(x.astype(np.float64) @ m[0].params["weight"].T, 0)
    np.testing.assert_allclose(r @ m[2].params["weight"].T + m[2].params["bias"], run(proto, x), rtol=1e-5, atol=1e-5)
