"""Shared fixtures: the backends under test."""
import pytest

import onnxdtd
from onnxdtd.backends import get_backend

# The shared backend tests compare against float64 references; `ort` computes conv-family layers in
# float32 only (onnxruntime has no float64 Conv) and has its own tests (tests/backends/test_ort.py).
FLOAT64 = [name for name in onnxdtd.available_backends() if get_backend(name).float64]


@pytest.fixture(params=FLOAT64)
def backend(request) -> str:
    """Every backend that works on this machine and computes in float64; each is checked against the
    numpy reference."""
    return request.param
