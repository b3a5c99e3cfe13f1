"""The `cuda` backend: the kernel interface with every array on the GPU (CuPy arrays) for the whole
backward walk, conv/dense/max pooling/residual sums in the Numba CUDA kernels of cuda_kernels.

It is a CompiledBackend (the same layer kinds, geometry and term lists) with its hooks on the device:
contiguity goes through the array module (numpy's ascontiguousarray does not dispatch to CuPy: it
asks for a host copy, which CuPy refuses), every term's input, weight and bias is moved to the device
(rules bind weights on the host, cached per layer; their device copies are cached beside them), and
the numpy reference runs on host copies where CuPy cannot run its code.

The rest reuses the numpy reference's code on device arrays where CuPy dispatches every numpy call
it makes (numpy functions through __array_function__, ufuncs through __array_ufunc__): the residual
split with broadcasting, unbroadcast, the reshape/transpose/concat/split/broadcast/pad routes, and
the activation derivatives of gradient mode (their constants made by the array module `xp`: CuPy
refuses host arrays in ufuncs). Where it does not, the layer runs in the numpy reference on host
copies (one round trip for that layer): linear kinds without a kernel (pooling as a linear map,
ConvTranspose, N-D conv; their numpy code allocates host scratch), ReduceMax and the index route
(np.bincount with a host index).

The forward pass feeds the walk through I/O binding (forward_binding): onnxruntime's CUDA provider
leaves every activation in GPU memory, which CuPy reads in place.

The backend starts only with CuPy, numba-cuda and a CUDA GPU present; the array module can be numpy
instead for the simulator (NUMBA_ENABLE_CUDASIM=1), which is how the tests without a GPU run it."""
from __future__ import annotations

from dataclasses import replace
from functools import partial
from types import ModuleType
from typing import Any

import numpy as np
from onnx import helper

from ..graph.layer import Layer
from .compiled import CompiledBackend
from .numpy_backend import NumpyBackend
from .terms import BoundTerm

CUDA_PROVIDER = "CUDAExecutionProvider"
HOST_ROUTES = frozenset({"index"})  # routes whose numpy code CuPy cannot run (see the module docstring)


def _cupy() -> ModuleType:
    """CuPy, on a machine where it sees a CUDA GPU; otherwise an error saying what is missing."""
    try:
        import cupy
    except ImportError as exc:
        raise RuntimeError(f"CuPy does not import ({exc}); see the gpu extra: pip install 'onnxdtd[gpu]'") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError as exc:
        raise RuntimeError(f"no usable CUDA GPU: {exc}") from None
    if count == 0:
        raise RuntimeError("no CUDA GPU")
    return cupy


def _kernels() -> ModuleType:
    """The Numba CUDA kernels, if numba-cuda is installed and the driver works."""
    try:
        from numba import cuda

        from . import cuda_kernels
    except ImportError as exc:
        raise RuntimeError(f"numba-cuda is not installed ({exc}); see the gpu extra: pip install 'onnxdtd[gpu]'") \
            from None
    if not cuda.is_available():
        raise RuntimeError(f"numba-cuda cannot use the GPU: {cuda.cuda_error()}")
    return cuda_kernels


def _device_view(cupy: ModuleType, value: Any) -> Any:
    """A CuPy array over an OrtValue's GPU memory, without a copy; the array keeps the OrtValue (the
    owner of the memory) alive."""
    dtype, shape = np.dtype(helper.tensor_dtype_to_np_dtype(value.element_type())), tuple(value.shape())
    if value.tensor_size_in_bytes() == 0:  # no memory to point at (its pointer may be null)
        return cupy.empty(shape, dtype)
    memory = cupy.cuda.UnownedMemory(value.data_ptr(), value.tensor_size_in_bytes(), value)
    return cupy.ndarray(shape, dtype, memptr=cupy.cuda.MemoryPointer(memory, 0))


def _providers() -> list[str] | None:
    """onnxruntime's CUDA provider first, where the installed onnxruntime has it (onnxruntime-gpu)."""
    import onnxruntime as ort

    return [CUDA_PROVIDER, "CPUExecutionProvider"] if CUDA_PROVIDER in ort.get_available_providers() else None


def _map(fn, value):
    """`fn` on every array of `value`: an array, None, or a list or dict of them."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [_map(fn, v) for v in value]
    if isinstance(value, dict):
        return {k: _map(fn, v) for k, v in value.items()}
    return fn(value)


class CudaBackend(CompiledBackend):
    """The kernel interface on the GPU: CuPy arrays, Numba CUDA kernels."""

    def __init__(self, xp: ModuleType | None = None):
        """`xp`: the array module, CuPy (the default, on a GPU) or numpy (under the simulator)."""
        array_module = _cupy() if xp is None else xp
        super().__init__("cuda", _kernels())
        self.xp = array_module
        self.providers = None if array_module is np else _providers()
        self._host = getattr(self.xp, "asnumpy", np.asarray)

    def forward_binding(self):
        """onnxruntime's CUDA provider writes the activations into GPU memory that CuPy reads in place
        (the simulator's numpy arrays come from the host)."""
        return ("cpu" if self.xp is np else "cuda"), self._from_ort

    def _from_ort(self, value: Any) -> Any:
        """An OrtValue as this backend's array: a view of GPU memory, or a host tensor moved over."""
        if value.device_name().lower() == "cpu":
            return self.xp.asarray(value.numpy())
        return _device_view(self.xp, value)

    def asarray(self, x, dtype):
        return self.xp.asarray(x, dtype=dtype)

    def to_numpy(self, x):
        return self._host(x)

    def zeros(self, shape, dtype, like):
        return self.xp.zeros(shape, dtype)

    def _c(self, x):
        """`x` on the device, C-contiguous (None stays None)."""
        return None if x is None else self.xp.ascontiguousarray(self.xp.asarray(x))

    def _param(self, layer: Layer, host) -> Any:
        """The device copy of a (modified) weight or bias, cached per layer beside the host array."""
        if host is None:
            return None
        key = ("cuda", id(host))
        cached = layer.cache.get(key)
        if cached is None or cached[0] is not host:
            cached = layer.cache[key] = (host, self._c(host))
        return cached[1]

    def _terms(self, layer: Layer, terms: list[BoundTerm]) -> list[BoundTerm]:
        """The terms with input, weight and bias on the device."""
        return [replace(t, x=self._c(t.x), w=self._param(layer, t.w), b=self._param(layer, t.b)) for t in terms]

    def _reference(self, method, dtype, *arrays, **rest):
        """A numpy reference method on host copies of `arrays`; its result back on the device."""
        result = method(*_map(self.to_numpy, list(arrays)), **rest)
        return _map(lambda r: self.asarray(r, dtype), result)

    def route(self, layer: Layer, relevance, in_shapes):
        if layer.kind in HOST_ROUTES:
            dtype = (relevance[0] if isinstance(relevance, list) else relevance).dtype
            return self._reference(partial(NumpyBackend.route, self, layer), dtype, relevance, in_shapes=in_shapes)
        return super().route(layer, relevance, in_shapes)
