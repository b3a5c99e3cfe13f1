"""Backends implementing the kernel interface, and which of them work on this machine."""
from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Callable

from ..errors import ConfigError
from .base import Backend
from .numpy_backend import NumpyBackend


def _short_spins() -> None:
    """OpenMP threads (the C++ kernels', and numba's OpenMP layer) spin briefly, not for libgomp's
    default 300k rounds, between parallel regions: long spins take the cores from onnxruntime and from
    Python on a small machine; never spinning costs a wake-up per kernel call (ResNet18 on 2 cores:
    numba 162 ms spinning briefly, 182 ms passive). libgomp reads this when it starts."""
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")


def _cpp() -> Backend:
    _short_spins()
    import scipy_openblas32  # noqa: F401  (loads the OpenBLAS that the extension links)

    from .. import _core
    from .compiled import CompiledBackend

    return CompiledBackend("cpp", _core)


def _numba() -> Backend:
    _short_spins()
    from . import numba_kernels
    from .compiled import CompiledBackend

    return CompiledBackend("numba", numba_kernels)


def _cuda() -> Backend | None:
    """None where CuPy is not installed (no gpu extra, the usual case): left out without a warning. With
    the extra installed, a missing GPU or driver is worth the usual warning."""
    if importlib.util.find_spec("cupy") is None:
        return None
    from .cuda import CudaBackend

    return CudaBackend()


def _ort() -> Backend:
    from .ort import OrtBackend

    return OrtBackend()


# Preference order for backend="auto": fastest first (benchmarks/README.md has the measurements).
# A factory returns None for a backend whose optional packages are not installed.
FACTORIES: dict[str, Callable[[], Backend | None]] = {"cuda": _cuda, "cpp": _cpp, "numba": _numba, "ort": _ort,
                                                      "numpy": NumpyBackend}


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
