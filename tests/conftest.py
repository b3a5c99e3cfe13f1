"""Shared fixtures: the backends under test."""
import pytest

import onnxdtd


@pytest.fixture(params=onnxdtd.available_backends())
def backend(request) -> str:
    """Every backend that works on this machine; each is checked against the numpy reference."""
    return request.param
