"""Whole models: every compiled backend and `ort` against the numpy reference, every preset, both
max-pool modes, float32 (1e-5 of max |R|) and float64, on a batch with a different target per sample."""
import numpy as np
import pytest

import onnxdtd
from onnxdtd.rules.presets import PRESETS

pytest.importorskip("torch")
from parity import _zoo  # noqa: E402  (tests/ is on sys.path through its conftest)

COMPILED = [name for name in onnxdtd.available_backends() if name != "numpy"]
SHIPPED = "models/mnist_cnn.onnx"
TOLERANCE = {np.float32: 1e-5, np.float64: 1e-10}
WINDOWED = ("conv", "convtranspose", "avgpool", "maxpool")  # layers whose ONNX ops lack float64 onnxruntime kernels


@pytest.fixture(scope="module")
def model_paths(tmp_path_factory):
    """Name -> (ONNX path, input shape): the parity zoo exported once, and the shipped CNN."""
    folder = tmp_path_factory.mktemp("models")
    paths = {name: (_zoo.export(_zoo.build(name), shape, folder / f"{name}.onnx", "torchscript"), shape)
             for name, (_, shape) in _zoo.MODELS.items()}
    return {**paths, "mnist_cnn": (SHIPPED, (3, 1, 28, 28))}


@pytest.mark.skipif(not COMPILED, reason="no compiled backend works on this machine")
@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("model", [*_zoo.MODELS, "mnist_cnn"])
@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("maxpool", ["winner", "proportional"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backend_equals_numpy_on_whole_models(model_paths, backend, model, preset, maxpool, dtype):
    path, shape = model_paths[model]
    x = np.random.default_rng(3).random(shape, dtype=np.float32)
    target = np.arange(shape[0]) % 3
    ref = onnxdtd.Explainer(str(path), rules=preset, maxpool=maxpool, backend="numpy", dtype=dtype)
    if backend == "ort" and dtype == np.float64 and any(layer.kind in WINDOWED for layer in ref.model):
        with pytest.raises(onnxdtd.ConfigError, match="float64 kernel for a node"):  # onnxruntime has no float64 Conv
            onnxdtd.Explainer(str(path), rules=preset, maxpool=maxpool, backend=backend, dtype=dtype)
        return
    got = onnxdtd.Explainer(str(path), rules=preset, maxpool=maxpool, backend=backend, dtype=dtype)
    expected, result = ref.explain(x, target).relevance, got.explain(x, target).relevance
    assert result.dtype == dtype
    scale = np.abs(expected).max()
    assert scale > 0
    np.testing.assert_allclose(result, expected, rtol=0, atol=TOLERANCE[dtype] * scale)
