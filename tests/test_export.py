"""onnxdtd.export and `onnxdtd export`: the explanation as one ONNX graph that runs without onnxdtd."""
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxdtd
from builders import model, node
from onnxdtd.cli import main

SHIPPED = "models/mnist_cnn.onnx"
RNG = np.random.default_rng(7)
X = RNG.random((3, 1, 28, 28), dtype=np.float32)


def _run(proto_or_path, x, target=None):
    data = proto_or_path.SerializeToString() if isinstance(proto_or_path, onnx.ModelProto) else str(proto_or_path)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    feeds = {"input": x} | ({"target": np.asarray(target, np.int64)} if target is not None else {})
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def _reference(x, target=None, **kwargs):
    return onnxdtd.Explainer(SHIPPED, backend="numpy", **kwargs).explain(x, target)


def _close(got, expected):
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("rules, maxpool", [("dtd", "winner"), ("epsilon-gamma-box", "proportional"),
                                            ("epsilon-alpha2-beta1", "winner")])
def test_exported_graph_passes_the_full_check_and_round_trips(tmp_path, rules, maxpool):
    path = tmp_path / "explainer.onnx"
    proto = onnxdtd.export(SHIPPED, path, rules=rules, maxpool=maxpool, low=-0.5, high=2.0)
    onnx.checker.check_model(onnx.load(path), full_check=True)
    assert min(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    out = _run(path, X, [3, 1, -1])
    expected = _reference(X, [3, 1, int(_reference(X[2:]).target[0])], rules=rules, maxpool=maxpool, low=-0.5,
                          high=2.0)
    _close(out["relevance"], expected.relevance)
    np.testing.assert_array_equal(out["explained"], expected.target)
    _close(out["output"], expected.output)


def test_argmax_mode_has_no_target_input():
    proto = onnxdtd.export(SHIPPED, target="argmax")
    assert [i.name for i in proto.graph.input if i.name in ("input", "target")] == ["input"]
    expected = _reference(X)
    out = _run(proto, X)
    _close(out["relevance"], expected.relevance)
    np.testing.assert_array_equal(out["explained"], expected.target)


def test_init_mode_takes_the_initial_relevance_as_input():
    proto = onnxdtd.export(SHIPPED, target="init")
    init = RNG.uniform(-1, 1, (3, 10)).astype(np.float32)
    assert [i.name for i in proto.graph.input if i.name in ("input", "target", "init")] == ["input", "init"]
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    relevance = session.run(["relevance"], {"input": X, "init": init})[0]
    _close(relevance, onnxdtd.Explainer(SHIPPED, backend="numpy").explain(X, init=init).relevance)


def test_relevance_at_named_intermediate_tensors():
    ref = onnxdtd.Explainer(SHIPPED, backend="numpy").explain(X, keep=True)
    names = sorted(name for name in ref.intermediate if name != "input")[:3]
    out = _run(onnxdtd.export(SHIPPED, intermediate=names), X, [-1, -1, -1])
    for name in names:
        _close(out[f"relevance/{name}"], ref.intermediate[name])


def test_runs_in_a_process_with_only_onnxruntime_and_numpy(tmp_path):
    onnxdtd.export(SHIPPED, tmp_path / "explainer.onnx")
    np.save(tmp_path / "x.npy", X)
    script = textwrap.dedent("""
        import sys
        import numpy as np
        import onnxruntime as ort
        session = ort.InferenceSession(sys.argv[1] + "/explainer.onnx", providers=["CPUExecutionProvider"])
        x = np.load(sys.argv[1] + "/x.npy")
        relevance, = session.run(["relevance"], {"input": x, "target": np.array([0, 5, -1], np.int64)})
        np.save(sys.argv[1] + "/relevance.npy", relevance)
        assert not any(name.startswith("onnxdtd") for name in sys.modules)
    """)
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, cwd=tmp_path)
    expected = _reference(X, [0, 5, int(_reference(X[2:]).target[0])]).relevance
    _close(np.load(tmp_path / "relevance.npy"), expected)


def test_model_tensors_named_like_the_explainer_outputs_are_renamed():
    w = RNG.normal(size=(4, 6)).astype(np.float32)
    proto = model([node("Gemm", ["x", "w"], "relevance", transB=1), node("Relu", ["relevance"], "output"),
                   node("Gemm", ["output", "w2"], "y", transB=1)], {"w": w, "w2": w[:3, :4]}, (6,))
    x = RNG.random((2, 6), dtype=np.float32)
    expected = onnxdtd.Explainer(proto, backend="numpy", rules="zplus").explain(x, [0, 2])
    before = proto.SerializeToString()
    out = _run(onnxdtd.export(proto, rules="zplus"), x, [0, 2])
    assert proto.SerializeToString() == before
    _close(out["relevance"], expected.relevance)


def test_cli_writes_a_runnable_explainer(tmp_path, capsys):
    path = tmp_path / "e.onnx"
    assert main(["export", SHIPPED, "-o", str(path), "--rules", "zplus", "--maxpool", "proportional",
                 "--argmax"]) == 0
    assert "wrote" in capsys.readouterr().out
    _close(_run(path, X)["relevance"], _reference(X, rules="zplus", maxpool="proportional").relevance)


@pytest.mark.parametrize("kwargs, match", [({"target": "random"}, "target must be one of"),
                                           ({"intermediate": ["nope"]}, "no tensor 'nope'"),
                                           ({"init": "zero"}, "init must be")])
def test_bad_options_are_clear_errors(kwargs, match):
    with pytest.raises(onnxdtd.ConfigError, match=match):
        onnxdtd.export(SHIPPED, **kwargs)


@pytest.mark.parametrize("batch", [1, 4])
def test_one_explainer_serves_every_batch_size(batch):
    x = RNG.random((batch, 1, 28, 28), dtype=np.float32)
    targets = np.arange(batch) % 10
    got = onnxdtd.Explainer(SHIPPED, backend="ort").explain(x, targets)
    _close(got.relevance, _reference(x, targets).relevance)


def test_every_parity_model_passes_the_full_check(tmp_path):
    pytest.importorskip("torch")
    from parity import _zoo

    for name, (_, shape) in _zoo.MODELS.items():
        path = _zoo.export(_zoo.build(name), shape, tmp_path / f"{name}.onnx", "torchscript")
        for preset in ("dtd", "epsilon-gamma-box"):
            onnx.checker.check_model(onnxdtd.export(str(path), rules=preset), full_check=True)


@pytest.mark.parametrize("rules, match", [("dtd", "needs a fixed shape"), ("zplus", "spatial size .* must be known")])
def test_unknown_spatial_sizes_are_clear_errors(rules, match):
    w = RNG.normal(size=(2, 1, 3, 3)).astype(np.float32)
    proto = model([node("Conv", ["x", "w"], "c"), node("Relu", ["c"], "r"),
                   node("ReduceSum", ["r", "axes"], "y", keepdims=0)],
                  {"w": w, "axes": np.array([2, 3], np.int64)}, (1, "H", "W"))
    with pytest.raises(onnxdtd.ConfigError, match=match):
        onnxdtd.export(proto, rules=rules)


def test_nonnegative_denominators_take_epsilon_in_the_bias():
    """z⁺ denominators of Conv and Gemm layers are D + ε with ε folded into the modified forward's bias:
    no separate Add of a scalar (one pass fewer over each layer's output), the same relevance."""
    proto = onnxdtd.export(SHIPPED, rules="zplus")
    scalars = {i.name for i in proto.graph.initializer if not i.dims}
    assert not [n.name for n in proto.graph.node if n.op_type == "Add" and scalars & set(n.input)]
    _close(_run(proto, X, [0, 1, 2])["relevance"], _reference(X, [0, 1, 2], rules="zplus").relevance)
