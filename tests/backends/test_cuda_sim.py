"""The `cuda` backend without a GPU: every Numba CUDA kernel against the numpy reference under the CUDA
simulator, every kernel compiled to PTX for float32 and float64, and the backend's whole walk.

NUMBA_ENABLE_CUDASIM must be set before numba.cuda is first imported, and it then replaces numba.cuda
for the whole process; so the simulated tests (TestSimulated) run in a child pytest of this file with
the variable set, started by test_simulator, and the PTX tests run here with the real numba.cuda (its
NVVM comes from the nvidia-nvvm wheel; compiling needs no driver). In a run that has the variable set
itself, TestSimulated runs in place and the rest is not collected.

The kernel cases are test_kernels.py's (small integers: exact denominators), its properties with
fewer examples: the simulator runs every thread in Python. Launches use 4 threads x 2 blocks, so every
grid-stride loop goes round; each launch's argument types are checked against SIGNATURES, the types
the PTX tests compile."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

if os.environ.get("ONNXDTD_REQUIRE_CUDASIM") != "1":  # CI sets it: there a missing numba-cuda is an error
    pytest.importorskip("numba_cuda", reason="numba-cuda is not installed (the test extra has it)")

from numba import typeof  # noqa: E402
from numba.core.sigutils import normalize_signature  # noqa: E402

import onnxdtd  # noqa: E402
from builders import model, node  # noqa: E402
from onnxdtd import backends  # noqa: E402
from onnxdtd.backends import cuda_kernels  # noqa: E402
from onnxdtd.backends.cuda import CudaBackend  # noqa: E402
from onnxdtd.backends.numpy_backend import _Dense  # noqa: E402
from test_kernels import (BROKEN, CONVS, POOLS, TERM_SETS, check_group, check_pools, conv_case,  # noqa: E402
                          conv_configs, ints, layer, pool_configs, rng_for)

SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
DTYPES = [np.float32, np.float64]
PROPERTY = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# kernel -> argument types, T standing for the call's float type
T4, T1, I4 = "T[:, :, :, ::1]", "T[::1]", "int32[:, :, :, ::1]"
WINDOW = ("int64",) * 8  # kh, kw, sh, sw, dh, dw, pt, pl
SIGNATURES = {
    "_conv_forward": (T4, "boolean", T4, *WINDOW, "T", "boolean", T4),
    "_conv_transpose": (T4, T4, T4, "boolean", *WINDOW, "T", T4),
    "_quotient": (T1, T1, T1, "boolean", "int64", T1, "int64", "T", T1),
    "_axpy": (T1, "T", "boolean", T1),
    "_product": (T1, T1, T1),
    "_sumpool": (T4, *WINDOW, T4),
    "_unpool": (T4, T4, "boolean", *WINDOW, T4),
    "_argmax": (T4, *WINDOW, I4),
    "_winner": (I4, T4, *WINDOW, T4),
}


def signature(name: str, dtype) -> str:
    """The PTX signature of kernel `name` for float type `dtype`."""
    return "void(" + ", ".join(arg.replace("T", np.dtype(dtype).name) for arg in SIGNATURES[name]) + ")"


# ----------------------------------------------------------------------------------------------------
# Under the simulator.

def checked_launch(launch):
    """cuda_kernels._launch, asserting that the argument types are one of the kernel's SIGNATURES."""
    names = {getattr(cuda_kernels, name): name for name in SIGNATURES}

    def run(kernel, *args):
        name = names[kernel]
        got = tuple(typeof(a.copy_to_host() if hasattr(a, "copy_to_host") else a) for a in args)
        expected = [normalize_signature(signature(name, dtype))[0] for dtype in DTYPES]
        assert got in expected, f"{name} launched with {got}, SIGNATURES has {expected}"
        launch(kernel, *args)

    return run


@pytest.fixture
def simulated(monkeypatch):
    """Small launches (every grid-stride loop goes round), each checked against SIGNATURES."""
    monkeypatch.setattr(cuda_kernels, "THREADS", 4)
    monkeypatch.setattr(cuda_kernels, "MAX_BLOCKS", 2)
    monkeypatch.setattr(cuda_kernels, "_launch", checked_launch(cuda_kernels._launch))
    return cuda_kernels


def tiny_model():
    """Conv, residual Add, ReLU, max and average pooling, Gemm: every kernel and a host fallback."""
    rng = np.random.default_rng(0)
    inits = {"w1": rng.normal(size=(3, 2, 3, 3)), "b1": rng.normal(size=3) - 0.5, "w2": rng.normal(size=(3, 3, 3, 3)),
             "w3": rng.normal(size=(4, 3)), "b3": rng.normal(size=4)}
    nodes = [node("Conv", ["x", "w1", "b1"], "c1", pads=[1, 1, 1, 1]), node("Relu", ["c1"], "r1"),
             node("Conv", ["r1", "w2"], "c2", pads=[1, 1, 1, 1]), node("Add", ["r1", "c2"], "s"),
             node("Relu", ["s"], "r2"), node("MaxPool", ["r2"], "p", kernel_shape=[2, 2], strides=[2, 2]),
             node("AveragePool", ["p"], "q", kernel_shape=[2, 2]), node("Flatten", ["q"], "f"),
             node("Gemm", ["f", "w3", "b3"], "y", transB=1)]
    return model(nodes, inits, (2, 5, 5))


class TestSimulated:
    """The kernels and the backend under the CUDA simulator (numpy arrays as device arrays)."""

    __test__ = SIMULATED

    @pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
    @pytest.mark.parametrize("terms", TERM_SETS)
    @pytest.mark.parametrize("config", CONVS, ids=range(len(CONVS)))
    def test_conv_group(self, simulated, config, terms, dtype):
        conv_case(simulated, dtype, rng_for(config, terms), config, terms)

    @PROPERTY
    @given(config=conv_configs(), terms=st.sampled_from(TERM_SETS), dtype=st.sampled_from(DTYPES),
           seed=st.integers(0, 2**32 - 1))
    def test_conv_group_property(self, simulated, config, terms, dtype, seed):
        conv_case(simulated, dtype, np.random.default_rng(seed), config, terms)

    @pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
    @pytest.mark.parametrize("terms", TERM_SETS)
    @pytest.mark.parametrize("m, k, j", [(1, 7, 5), (3, 6, 4), (4, 1, 3)])
    def test_dense_group(self, simulated, dtype, m, k, j, terms):
        rng = rng_for(m, k, j, terms)
        x, w, b = ints(rng, (m, k), dtype), ints(rng, (j, k), dtype), ints(rng, (j,), dtype)
        check_group(simulated, "dense", _Dense(layer("dense", {}), x.shape), dtype, rng, x, w, b, terms)

    @pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
    @pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
    @pytest.mark.parametrize("config", POOLS)
    def test_pooling(self, simulated, dtype, config, ties):
        check_pools(simulated, dtype, rng_for(config, ties), config, ties)

    @PROPERTY
    @given(config=pool_configs(), ties=st.booleans(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**32 - 1))
    def test_pooling_property(self, simulated, config, ties, dtype, seed):
        check_pools(simulated, dtype, np.random.default_rng(seed), config, ties)

    @pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
    def test_maxpool_winner_ties_and_padding(self, simulated, dtype):
        a = np.array([[[[-1, -1, -3], [-1, -2, -2]]]], dtype)
        relevance = np.array([[[[1, 10], [100, 1000]]]], dtype)
        got = simulated.maxpool_winner(a, relevance, (2, 2), (1, 2), (1, 1), (1, 0, 0, 1))
        np.testing.assert_array_equal(got, np.array([[[[101, 0, 10], [0, 0, 1000]]]], dtype))

    @pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
    @pytest.mark.parametrize("count", [1, 3])
    @pytest.mark.parametrize("shape", [(2, 3, 4, 5), (7,)])
    def test_add_split(self, simulated, dtype, count, shape):
        rng = np.random.default_rng(count)
        inputs = [rng.normal(size=shape).astype(dtype) for _ in range(count)]
        relevance = rng.normal(size=shape).astype(dtype)
        got = simulated.add_split(inputs, relevance, 1e-6)
        reference = backends.NumpyBackend().add(inputs, relevance)
        assert len(got) == count
        for r, ref in zip(got, reference):
            np.testing.assert_allclose(r, ref, rtol=1e-5 if dtype == np.float32 else 1e-12)

    @pytest.mark.parametrize("function, valid, change, error, name", BROKEN,
                             ids=[f"{b[0]}-{i}" for i, b in enumerate(BROKEN)])
    def test_argument_errors(self, simulated, function, valid, change, error, name):
        getattr(simulated, function)(**valid())
        args = valid()
        change(args)
        with pytest.raises(error, match=name):
            getattr(simulated, function)(**args)

    @pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
    @pytest.mark.parametrize("preset, maxpool, method", [("dtd", "winner", "lrp"),
                                                         ("epsilon-gamma-box", "proportional", "lrp"),
                                                         ("epsilon-alpha2-beta1", "winner", "lrp"),
                                                         ("dtd", "winner", "gradient")])
    def test_backend_walk_equals_numpy(self, simulated, monkeypatch, dtype, preset, maxpool, method):
        """CudaBackend through the Explainer, numpy as its array module, against the numpy backend."""
        monkeypatch.setitem(backends.FACTORIES, "cuda", lambda: CudaBackend(np))
        proto, x = tiny_model(), np.random.default_rng(1).random((2, 2, 5, 5)).astype(np.float32)
        got, ref = (onnxdtd.Explainer(proto, rules=preset, maxpool=maxpool, backend=name, dtype=dtype, method=method)
                    .explain(x, target=[0, 3]).relevance for name in ("cuda", "numpy"))
        np.testing.assert_allclose(got, ref, rtol=0, atol=(1e-5 if dtype == np.float32 else 1e-12) * np.abs(ref).max())


    def test_forward_outputs_come_through_the_binding(self, simulated, monkeypatch):
        """The forward pass's outputs reach the backend as OrtValues that it converts itself (on a GPU
        they stay in device memory); every pass of a multi-target call equals the numpy backend's."""
        converted = []
        backend = CudaBackend(np)
        convert = backend._from_ort
        monkeypatch.setattr(backend, "_from_ort", lambda value: converted.append(value) or convert(value))
        monkeypatch.setitem(backends.FACTORIES, "cuda", lambda: backend)
        proto, x = tiny_model(), np.random.default_rng(2).random((2, 2, 5, 5)).astype(np.float32)
        got, ref = (onnxdtd.Explainer(proto, backend=name).explain(x, target="all").relevance
                    for name in ("cuda", "numpy"))
        assert converted and all(value.device_name().lower() == "cpu" for value in converted)
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


# ----------------------------------------------------------------------------------------------------
# Without the simulator: the child run, PTX, and what works without a GPU.

class TestCompiled:
    """The simulated tests in a child process, and the kernels through the real CUDA compiler."""

    __test__ = not SIMULATED

    def test_simulator(self, tmp_path):
        """TestSimulated in a child pytest under NUMBA_ENABLE_CUDASIM=1 (run from tmp_path, so that the
        onnxdtd under test is this process's, not a source tree on the working directory)."""
        env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
        child = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                                f"{Path(__file__)}::TestSimulated"], cwd=tmp_path, env=env, capture_output=True,
                               text=True, timeout=600)
        assert child.returncode == 0, f"simulated tests failed:\n{child.stdout[-8000:]}\n{child.stderr[-2000:]}"
        assert " passed" in child.stdout

    def test_every_kernel_has_a_signature(self):
        from numba.cuda.dispatcher import CUDADispatcher

        kernels = {name for name, value in vars(cuda_kernels).items()
                   if isinstance(value, CUDADispatcher) and not value.targetoptions.get("device")}
        assert kernels == set(SIGNATURES)

    @pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
    @pytest.mark.parametrize("name", SIGNATURES)
    def test_kernel_compiles_to_ptx(self, name, dtype):
        """The CUDA compiler accepts the kernel for an H100/H200 (sm_90); float32 kernels compute in
        float32 only (no float64 instruction in the PTX)."""
        from numba import cuda

        ptx, _ = cuda.compile_ptx(getattr(cuda_kernels, name).py_func, signature(name, dtype), cc=(9, 0))
        assert ".entry" in ptx
        if dtype == np.float32:
            assert ".f64" not in ptx

    def test_host_arrays_are_refused(self):
        """Off the simulator the kernels take device arrays only, with the usual message."""
        with pytest.raises(TypeError, match=r"relevance must be a device array \(__cuda_array_interface__"):
            cuda_kernels.add_split([np.ones(3, np.float32)], np.ones(3, np.float32), 1e-6)

    @pytest.mark.parametrize("array", [np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.arange(5.0),
                                       np.arange(6, dtype=np.int64).reshape(3, 2), np.zeros((0, 3), np.float32)],
                             ids=["f32", "f64", "i64", "empty"])
    def test_device_view_reads_the_ortvalue_in_place(self, array):
        """_device_view wraps an OrtValue's memory (pointer, size, element type, shape) without a copy
        and keeps the OrtValue alive; checked on host memory with a CuPy stand-in whose arrays read
        the pointer they are given."""
        import ctypes
        import gc
        from types import SimpleNamespace

        import onnxruntime as ort

        from onnxdtd.backends.cuda import _device_view

        class Unowned:
            def __init__(self, ptr, size, owner):
                self.ptr, self.size, self.owner = ptr, size, owner

        def ndarray(shape, dtype, memptr):
            mem, offset = memptr
            buffer = (ctypes.c_char * mem.size).from_address(mem.ptr + offset)
            view = np.frombuffer(buffer, dtype, count=int(np.prod(shape))).reshape(shape)
            return SimpleNamespace(data=view, memory=mem)

        stand_in = SimpleNamespace(cuda=SimpleNamespace(UnownedMemory=Unowned, MemoryPointer=lambda m, o: (m, o)),
                                   ndarray=ndarray, empty=lambda shape, dtype: SimpleNamespace(data=np.empty(shape,
                                                                                                             dtype)))
        value = ort.OrtValue.ortvalue_from_numpy(array.copy())
        view = _device_view(stand_in, value)
        del value
        gc.collect()
        assert view.data.dtype == array.dtype and view.data.shape == array.shape
        np.testing.assert_array_equal(view.data, array)
        if array.size:
            assert view.memory.owner.data_ptr() == view.memory.ptr

    def test_without_cupy_cuda_is_left_out_quietly(self, recwarn):
        """Without the gpu extra (no CuPy) `cuda` is neither listed nor warned about; asking for it by
        name is a ConfigError."""
        if importlib.util.find_spec("cupy") is not None:
            pytest.skip("CuPy is installed here")
        assert "cuda" not in onnxdtd.available_backends()
        assert backends.get_backend("auto").name != "cuda"
        assert not [w for w in recwarn if "'cuda'" in str(w.message)]
        with pytest.raises(onnxdtd.ConfigError, match="'cuda' is not available"):
            backends.get_backend("cuda")
