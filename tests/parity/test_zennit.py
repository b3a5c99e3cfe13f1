"""Peer parity: onnxdtd on torch-exported ONNX models vs zennit on the same torch models (float64).

max|R_onnxdtd - R_zennit| <= 1e-4 * max|R_zennit|, and onnxdtd's output equals torch's logits.
"""
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("zennit")
pytest.importorskip("onnxscript")  # the dynamo exporter needs it

import onnxdtd  # noqa: E402  (the package under test: never skipped)

from . import _zoo  # noqa: E402

PRESETS = ("dtd", "dtd-w2", "zplus", "lrp0", "epsilon", "epsilon-plus", "epsilon-gamma-box",
           "epsilon-alpha2-beta1", "epsilon-plus-flat")
CASES = sorted(
    {(m, p) for m in _zoo.MODELS for p in ("dtd", "epsilon-plus", "epsilon-gamma-box")}
    | {(m, p) for m in ("lenet", "resnet") for p in PRESETS})
TARGET = np.array([3, 5])
# per-channel z^B bounds, shape (1, C, 1, 1) (e.g. normalized inputs)
LOW_C = np.array([-0.5, -1.0, 0.0]).reshape(1, 3, 1, 1)
HIGH_C = np.array([1.0, 0.5, 2.0]).reshape(1, 3, 1, 1)


@pytest.fixture(scope="session")
def onnx_model(tmp_path_factory):
    """(model name, exporter) -> (torch model, path of the .onnx); each pair is built and exported once."""
    cache = {}

    def get(name, exporter):
        if (name, exporter) not in cache:
            model = _zoo.build(name)
            path = tmp_path_factory.mktemp("parity") / f"{name}-{exporter}.onnx"
            cache[name, exporter] = model, _zoo.export(model, _zoo.MODELS[name][1], path, exporter)
        return cache[name, exporter]

    return get


def check(onnx_model, name, exporter, preset, low, high):
    model, path = onnx_model(name, exporter)
    shape = _zoo.MODELS[name][1]
    rng = np.random.default_rng(1)
    x = (low + (high - low) * rng.random(shape)).astype(np.float32)   # in [low, high], float32-exact

    r_ref, logits = _zoo.zennit_explain(model, x, TARGET, preset, low, high)

    ex = onnxdtd.Explainer(str(path), rules=preset, low=low, high=high, maxpool="winner", backend="numpy",
                           dtype=np.float64)
    res = ex.explain(x, target=TARGET)

    np.testing.assert_array_equal(res.target, TARGET)
    np.testing.assert_allclose(res.output, logits, rtol=1e-4, atol=1e-6 * np.abs(logits).max())
    assert res.relevance.shape == x.shape
    rel = np.asarray(res.relevance, dtype=np.float64)
    assert np.isfinite(rel).all()
    scale = np.abs(r_ref).max()
    assert scale > 0
    err = np.abs(rel - r_ref).max() / scale
    assert err <= 1e-4, f"{name}/{preset}/{exporter}: max|dR| / max|R_zennit| = {err:.3e}"


@pytest.mark.parametrize("exporter", _zoo.EXPORTERS)
@pytest.mark.parametrize("name, preset", CASES)
def test_parity(onnx_model, name, preset, exporter):
    check(onnx_model, name, exporter, preset, 0.0, 1.0)


@pytest.mark.parametrize("exporter", _zoo.EXPORTERS)
@pytest.mark.parametrize("preset", ("dtd", "epsilon-gamma-box"))
@pytest.mark.parametrize("name", ("vgg", "resnet"))
def test_parity_per_channel_bounds(onnx_model, name, preset, exporter):
    check(onnx_model, name, exporter, preset, LOW_C, HIGH_C)
