"""Bad input gets a typed onnxdtd error with a message naming the problem; input files stay untouched."""
import hashlib

import numpy as np
import onnx
import pytest

import onnxdtd
from builders import model, node

RNG = np.random.default_rng(4)


def small(extra=(), extra_inits=None):
    """Conv → Relu → [extra nodes] → Flatten → Gemm, input (N, 2, 4, 4), 3 outputs."""
    nodes = [node("Conv", ["x", "w"], "c", pads=[1, 1, 1, 1]), node("Relu", ["c"], "r"), *extra,
             node("Flatten", [extra[-1].output[0] if extra else "r"], "f"), node("Gemm", ["f", "w2"], "y")]
    rng = np.random.default_rng(0)  # the same weights on every call
    inits = {"w": rng.normal(size=(2, 2, 3, 3)), "w2": rng.normal(size=(32, 3)), **(extra_inits or {})}
    return model(nodes, inits, (2, 4, 4))


def test_unsupported_op_names_op_node_and_supported_list():
    proto = small([node("LRN", ["r"], "n", size=3)])
    with pytest.raises(onnxdtd.UnsupportedOperatorError) as info:
        onnxdtd.Explainer(proto)
    err = info.value
    assert err.op_type == "LRN" and err.node == "LRN_n" and "Conv" in err.supported
    assert "'LRN'" in str(err) and "'LRN_n'" in str(err) and "MaxPool" in str(err)


def test_find_unsupported_lists_every_bad_node_and_says_what_is_missing():
    proto = small([node("Erf", ["r"], "e"), node("LRN", ["e"], "n", size=3),
                   node("LayerNormalization", ["n", "gamma"], "ln", axis=-1)], {"gamma": np.ones(4)})
    found = onnxdtd.find_unsupported(proto)
    assert [(e.op_type, e.node) for e in found] == [("Erf", "Erf_e"), ("LRN", "LRN_n"),
                                                    ("LayerNormalization", "LayerNormalization_ln")]
    assert "strict=False" in found[0].reason and "statistics" in found[2].reason
    assert onnxdtd.find_unsupported(small()) == []


def test_lenient_mode_passes_relevance_through_ops_without_rule_and_warns():
    proto = small([node("Tanh", ["r"], "t"), node("Sigmoid", ["t"], "s")])
    with pytest.raises(onnxdtd.UnsupportedOperatorError, match="Tanh.*strict=False"):
        onnxdtd.Explainer(proto)
    with pytest.warns(onnxdtd.LenientWarning, match="Tanh 'Tanh_t', Sigmoid 'Sigmoid_s'"):
        ex = onnxdtd.Explainer(proto, strict=False, rules="zplus")
    x = RNG.uniform(size=(2, 2, 4, 4)).astype(np.float32)
    res = ex.explain(x, keep=True)
    np.testing.assert_allclose(res.intermediate["r"], res.intermediate["s"])


def test_unsupported_variant_of_a_supported_op():
    proto = model([node("Mul", ["x", "x"], "y")], {}, (3,))
    with pytest.raises(onnxdtd.UnsupportedOperatorError, match="Mul.*one activation and one constant"):
        onnxdtd.load(proto)


@pytest.mark.parametrize("shape, match", [((2, 4, 4), "rank 4"), ((1, 3, 4, 4), "axis 1: expected 2, got 3"),
                                          ((1, 2, 5, 4), "axis 2: expected 4, got 5")])
def test_wrong_input_rank_or_shape(shape, match):
    with pytest.raises(onnxdtd.InputError, match=match):
        onnxdtd.Explainer(small()).explain(np.zeros(shape, np.float32))


@pytest.mark.parametrize("x", [np.zeros((1, 2, 4, 4), np.int64), np.zeros((1, 2, 4, 4), bool),
                               np.array([["a"]])])
def test_non_float_input(x):
    with pytest.raises(onnxdtd.InputError, match="floating-point"):
        onnxdtd.Explainer(small()).explain(x)


def test_nan_input():
    x = np.zeros((1, 2, 4, 4), np.float32)
    x[0, 0, 0, 0] = np.nan
    with pytest.raises(onnxdtd.InputError, match="NaN"):
        onnxdtd.Explainer(small()).explain(x)


@pytest.mark.parametrize("cut", [0.5, 0.9])
def test_truncated_file(tmp_path, cut):
    data = small().SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(onnxdtd.ModelLoadError):
        onnxdtd.load(path)


@pytest.mark.parametrize("blob", [b"", b"not an onnx model at all", bytes(range(256)) * 4])
def test_corrupt_bytes_and_files(tmp_path, blob):
    path = tmp_path / "bad.onnx"
    path.write_bytes(blob)
    for source in (path, blob):
        with pytest.raises(onnxdtd.ModelLoadError):
            onnxdtd.Explainer(source)


def test_missing_file_and_wrong_source_type(tmp_path):
    with pytest.raises(onnxdtd.ModelLoadError, match="no such model file"):
        onnxdtd.load(tmp_path / "missing.onnx")
    with pytest.raises(onnxdtd.ModelLoadError, match="expected a path, bytes or onnx.ModelProto"):
        onnxdtd.load(42)


def test_model_onnxruntime_cannot_run(tmp_path):
    proto = small()
    proto.ir_version = 99
    with pytest.raises(onnxdtd.ModelLoadError):
        onnxdtd.Explainer(proto)


@pytest.mark.parametrize("target, match", [(3, r"out of range.*3 outputs"), (-1, "out of range"),
                                           ([0, 1, 2], "2 ints"), (1.5, "int"), ("cat", "int")])
def test_bad_target(target, match):
    with pytest.raises(onnxdtd.TargetError, match=match):
        onnxdtd.Explainer(small()).explain(np.zeros((2, 2, 4, 4), np.float32), target=target)


@pytest.mark.parametrize("low, high, match", [
    (np.zeros(3), 1.0, r"low of shape \(3,\)"),
    (0.0, np.ones((1, 3, 1, 1)), r"high of shape \(1, 3, 1, 1\)"),
    (1.0, 0.0, "must not exceed"),
])
def test_bounds_of_wrong_shape_or_order(low, high, match):
    with pytest.raises(onnxdtd.BoundsError, match=match):
        onnxdtd.Explainer(small(), low=low, high=high)


def test_per_channel_and_full_bounds_are_accepted():
    x = RNG.uniform(size=(1, 2, 4, 4)).astype(np.float32)
    scalar = onnxdtd.Explainer(small(), low=0.0, high=1.0, dtype=np.float64).explain(x).relevance
    for low, high in [(np.zeros((1, 2, 1, 1)), np.ones((1, 2, 1, 1))), (np.zeros((2, 4, 4)), np.ones((2, 4, 4)))]:
        np.testing.assert_allclose(onnxdtd.Explainer(small(), low=low, high=high, dtype=np.float64)
                                   .explain(x).relevance, scalar)


@pytest.mark.parametrize("kwargs, match", [({"rules": "nope"}, "unknown rules 'nope'"),
                                           ({"backend": "nope"}, "unknown backend 'nope'"),
                                           ({"maxpool": "average"}, "maxpool must be one of"),
                                           ({"dtype": np.int32}, "dtype must be float32 or float64")])
def test_bad_options(kwargs, match):
    with pytest.raises(onnxdtd.ConfigError, match=match):
        onnxdtd.Explainer(small(), **kwargs)


def test_bad_init_and_composites():
    with pytest.raises(onnxdtd.ConfigError, match="init must be one of"):
        onnxdtd.Explainer(small()).explain(np.zeros((1, 2, 4, 4), np.float32), init="two")
    with pytest.raises(onnxdtd.ConfigError, match="no rule to layer"):
        onnxdtd.Explainer(small(), rules=onnxdtd.rules.Composite(kinds={"conv": onnxdtd.rules.ZPlus()}))
    with pytest.raises(onnxdtd.ConfigError, match="unknown layer kind"):
        onnxdtd.rules.Composite(kinds={"convolution": onnxdtd.rules.ZPlus()})
    with pytest.raises(onnxdtd.ConfigError, match="alpha - beta = 1"):
        onnxdtd.rules.AlphaBeta(2.0, 2.0)


def test_zbox_away_from_the_input_needs_its_own_bounds():
    x = RNG.uniform(size=(1, 2, 4, 4)).astype(np.float32)
    rules = onnxdtd.rules.Composite(kinds={"linear": onnxdtd.rules.ZBox()})
    with pytest.raises(onnxdtd.ConfigError, match="ZBox"):
        onnxdtd.Explainer(small(), rules=rules).explain(x)
    own = onnxdtd.rules.Composite(kinds={"linear": onnxdtd.rules.ZPlus()}, indices={3: onnxdtd.rules.ZBox(-5.0, 5.0)},
                                  first=onnxdtd.rules.ZBox())
    assert np.isfinite(onnxdtd.Explainer(small(), rules=own).explain(x).relevance).all()


def test_input_file_is_never_modified(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(small(), path)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    proto = onnx.load(path)
    snapshot = proto.SerializeToString()
    for source in (path, proto):
        onnxdtd.Explainer(source).explain(RNG.uniform(size=(2, 2, 4, 4)).astype(np.float32), keep=True)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert proto.SerializeToString() == snapshot


def test_bounds_that_cannot_follow_a_reshape_of_the_batch_axis():
    proto = model([node("Reshape", ["x", "pairs"], "r"), node("Gemm", ["r", "w"], "d", transB=1),
                   node("Reshape", ["d", "rows"], "y")],
                  {"pairs": np.array([-1, 2], np.int64), "w": np.ones((3, 2)), "rows": np.array([-1, 6], np.int64)},
                  (4,))
    with pytest.raises(onnxdtd.BoundsError, match="cannot map the z\\^B bounds through layer 0"):
        onnxdtd.Explainer(proto, rules="dtd").explain(np.ones((2, 4), np.float32))
