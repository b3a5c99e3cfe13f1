"""Backend selection: only working backends are listed, a failing one is dropped with a warning,
'auto' takes the fastest that works, and unknown names are a ConfigError."""
import os

import pytest

import onnxdtd
from onnxdtd import backends
from onnxdtd.errors import ConfigError


def broken():
    raise ImportError("no compiler here")


@pytest.fixture
def with_broken(monkeypatch):
    """A backend that fails to start, placed first in the preference order."""
    monkeypatch.setattr(backends, "FACTORIES", {"broken": broken, **backends.FACTORIES})


def test_numpy_always_works():
    assert "numpy" in onnxdtd.available_backends()


def test_a_failing_backend_is_dropped_with_a_warning(with_broken):
    with pytest.warns(RuntimeWarning, match="'broken' is unavailable: no compiler here"):
        names = onnxdtd.available_backends()
    assert "broken" not in names and "numpy" in names


def test_auto_takes_the_first_backend_that_works(with_broken):
    with pytest.warns(RuntimeWarning):
        chosen = backends.get_backend("auto")
        working = onnxdtd.available_backends()
    assert chosen.name == working[0] != "broken"


def test_auto_prefers_the_gpu_then_compiled_backends():
    expected = onnxdtd.available_backends()[0]
    assert backends.get_backend("auto").name == expected
    assert list(backends.FACTORIES) == ["cuda", "cpp", "numba", "ort", "numpy"]


def test_asking_for_a_failing_backend_is_a_config_error(with_broken):
    with pytest.warns(RuntimeWarning), pytest.raises(ConfigError, match="'broken' is not available"):
        backends.get_backend("broken")


def test_unknown_backend_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown backend 'fortran'"):
        onnxdtd.Explainer("models/mnist_cnn.onnx", backend="fortran")


REQUIRED = [name for name in os.environ.get("ONNXDTD_REQUIRE_BACKENDS", "").split(",") if name]


@pytest.mark.skipif(not REQUIRED, reason="ONNXDTD_REQUIRE_BACKENDS is not set (CI sets it)")
def test_the_required_backends_work_here():
    assert set(REQUIRED) <= set(onnxdtd.available_backends())
