"""Backends implementing the kernel interface, and which of them work on this machine."""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable

from ..errors import ConfigError
from .base import Backend
from .numpy_backend import NumpyBackend


def _cpp() -> Backend:
    # OpenMP threads spin briefly, not for libgomp's default 300k rounds, between the kernels' parallel
    # regions: on a busy or small machine long spins take the cores from onnxruntime and from Python.
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")
    import scipy_openblas32  # noqa: F401  (loads the OpenBLAS that the extension links)

    from .. import _core
    from .compiled import CompiledBackend

    return CompiledBackend("cpp", _core)


def _numba() -> Backend:
    from . import numba_kernels
    from .compiled import CompiledBackend

    return CompiledBackend("numba", numba_kernels)


# Preference order for backend="auto": fastest first (benchmarks/README.md has the measurements).
FACTORIES: dict[str, Callable[[], Backend]] = {"cpp": _cpp, "numba": _numba, "numpy": NumpyBackend}


def _try(name: str) -> Backend | None:
    try:
        return FACTORIES[name]()
    except Exception as exc:  # a backend that fails to start is left out, never fatal
        warnings.warn(f"onnxdtd backend {name!r} is unavailable: {exc}", RuntimeWarning, stacklevel=3)
        return None


def available_backends() -> list[str]:
    """Names of the backends that work on this machine, fastest first."""
    return [name for name in FACTORIES if _try(name) is not None]


def get_backend(name: str = "auto") -> Backend:
    """The backend called `name`, or the fastest available one for 'auto'."""
    if name == "auto":
        for candidate in FACTORIES:
            backend = _try(candidate)
            if backend is not None:
                return backend
    if name not in FACTORIES:
        raise ConfigError(f"unknown backend {name!r}; available: {', '.join(available_backends())}")
    backend = _try(name)
    if backend is None:
        raise ConfigError(f"backend {name!r} is not available on this machine")
    return backend
