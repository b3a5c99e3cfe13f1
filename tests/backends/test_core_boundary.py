"""The pybind11 boundary of the C++ kernels (onnxdtd._core): bad arguments raise the right Python
exception naming the argument, never crash; and each kernel agrees with a direct numpy computation
on a few shapes (tests/backends/test_kernels.py holds the large parametrized grid)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

try:
    import scipy_openblas32  # noqa: F401  (loads the OpenBLAS that the extension links)

    from onnxdtd import _core
except ImportError as exc:  # not built (e.g. a source checkout without the extension)
    pytest.skip(f"onnxdtd._core is not available: {exc}", allow_module_level=True)


# --------------------------------------------------------------------------------------------------
# Direct numpy computations (independent of the backends).

def _stab(d, eps):
    return np.where(d >= 0, d + d.dtype.type(eps), d - d.dtype.type(eps))


def _window(in_size, kernel, strides, dilations, pads):
    sd = len(in_size)
    return tuple((in_size[i] + pads[i] + pads[sd + i] - dilations[i] * (kernel[i] - 1) - 1) // strides[i] + 1
                 for i in range(sd))


def _slices(off, dilations, strides, out_size):
    return tuple(slice(o * d, o * d + s * (n - 1) + 1, s) for o, d, s, n in zip(off, dilations, strides, out_size))


def _pad(x, pads, value=0.0):
    sd = x.ndim - 2
    return np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[sd + i]) for i in range(sd)], constant_values=value)


def _crop(x, pads, in_size):
    return x[(..., *(slice(p, p + n) for p, n in zip(pads, in_size)))]


def conv(x, w, b, strides, dilations, pads, group):
    n, c, sd, cout = x.shape[0], x.shape[1], x.ndim - 2, w.shape[0]
    kernel = w.shape[2:]
    out_size = _window(x.shape[2:], kernel, strides, dilations, pads)
    xp = _pad(x, pads)
    out = np.zeros((n, cout, *out_size), x.dtype)
    for off in itertools.product(*(range(k) for k in kernel)):
        patch = xp[(..., *_slices(off, dilations, strides, out_size))].reshape(n, group, c // group, *out_size)
        wk = w[(..., *off)].reshape(group, cout // group, c // group)
        out += np.einsum("ngc...,goc->ngo...", patch, wk).reshape(n, cout, *out_size)
    return out if b is None else out + b.reshape(-1, *(1,) * sd)


def conv_t(s, w, in_shape, strides, dilations, pads, group):
    n, c = in_shape[:2]
    cout, kernel, out_size = w.shape[0], w.shape[2:], s.shape[2:]
    sd = len(kernel)
    padded = tuple(i + pads[k] + pads[sd + k] for k, i in enumerate(in_shape[2:]))
    grad = np.zeros((n, c, *padded), s.dtype)
    sg = s.reshape(n, group, cout // group, *out_size)
    for off in itertools.product(*(range(k) for k in kernel)):
        wk = w[(..., *off)].reshape(group, cout // group, c // group)
        part = np.einsum("ngo...,goc->ngc...", sg, wk).reshape(n, c, *out_size)
        grad[(..., *_slices(off, dilations, strides, out_size))] += part
    return _crop(grad, pads, in_shape[2:])


def group_ref(kind, xs, ws, bs, signs, relevance, denom, z, mask, coeff, eps, out_shape, geometry=None):
    if kind == "conv":
        fwd = lambda x, w, b: conv(np.broadcast_to(x, out_shape), w, b, *geometry)  # noqa: E731
        bwd = lambda s, w: conv_t(s, w, out_shape, *geometry)  # noqa: E731
    else:
        fwd = lambda x, w, b: np.broadcast_to(x, out_shape) @ w.T + (0 if b is None else b)  # noqa: E731
        bwd = lambda s, w: s @ w  # noqa: E731
    d = denom if denom is not None else sum(s * fwd(x, w, b) for x, w, b, s in zip(xs, ws, bs, signs))
    sv = relevance / _stab(d, eps)
    if mask:
        sv = sv * ((z > 0) if mask > 0 else (z < 0))
    out = np.zeros(out_shape, relevance.dtype)
    for x, w, s in zip(xs, ws, signs):
        out += (coeff * s) * x * bwd(sv, w)
    return out


def _close(got, want, dtype):
    scale = max(float(np.abs(want).max()), 1e-30)
    tol = 2e-6 if dtype == np.float32 else 1e-12
    assert got.shape == want.shape and got.dtype == want.dtype
    assert float(np.abs(got - want).max()) <= tol * scale


# --------------------------------------------------------------------------------------------------
# Correctness on a few shapes.

DTYPES = [np.float32, np.float64]
CONV_CASES = [  # (N, C, Cout, group, spatial, kernel, strides, dilations, pads)
    (2, 4, 6, 2, (9, 8), (3, 2), (2, 1), (1, 2), (1, 0, 2, 1)),
    (3, 3, 5, 1, (11,), (3,), (2,), (1,), (1, 1)),
    (1, 6, 6, 6, (7, 7), (3, 3), (1, 1), (1, 1), (1, 1, 1, 1)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_group_matches_numpy(case, dtype):
    n, c, cout, group, spatial, kernel, strides, dilations, pads = case
    rng = np.random.default_rng(0)
    geometry = (strides, dilations, pads, group)
    out_size = _window(spatial, kernel, strides, dilations, pads)
    x = rng.uniform(0.1, 1.0, (n, c, *spatial)).astype(dtype)
    low = -rng.uniform(0.1, 1.0, (1, c, *spatial)).astype(dtype)  # a bound broadcast over the batch
    w = rng.standard_normal((cout, c // group, *kernel)).astype(dtype)
    wp = np.abs(w) + dtype(0.1)
    b = rng.uniform(0.1, 1.0, cout).astype(dtype)
    r = rng.standard_normal((n, cout, *out_size)).astype(dtype)
    z = conv(x, wp, b, *geometry)
    zm = rng.standard_normal(z.shape).astype(dtype)
    groups = [  # xs, ws, bs, signs, denom, z, mask, coeff
        ([x], [wp], [b], [1.0], None, None, 0, 1.0),
        ([x], [wp], [b], [1.0], z, zm, 1, 1.0),  # the forward pass's own output as denominator
        ([x, low], [wp, wp], [None, None], [1.0, -1.0], None, zm, -1, 0.5),  # z^B-like: D = conv(x - low)
    ]
    for xs, ws, bs, signs, denom, zz, mask, coeff in groups:
        got = np.zeros_like(x)
        _core.conv_group(xs, ws, bs, signs, r, denom, zz, mask, coeff, 1e-6, strides, dilations, pads, group, got)
        want = group_ref("conv", xs, ws, bs, signs, r, denom, zz, mask, coeff, 1e-6, x.shape, geometry)
        _close(got, want, dtype)
    # It accumulates into out.
    got = np.ones_like(x)
    _core.conv_group([x], [wp], [b], [1.0], r, None, None, 0, 1.0, 1e-6, strides, dilations, pads, group, got)
    want = 1 + group_ref("conv", [x], [wp], [b], [1.0], r, None, None, 0, 1.0, 1e-6, x.shape, geometry)
    _close(got, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_group_large_image_tiles(dtype):
    """An image whose im2col columns exceed the buffer budget is processed in runs of columns."""
    rng = np.random.default_rng(1)
    x = rng.uniform(0.1, 1.0, (1, 64, 96, 96)).astype(dtype)
    w = rng.uniform(0.0, 1.0, (32, 64, 3, 3)).astype(dtype)
    r = rng.standard_normal((1, 32, 96, 96)).astype(dtype)
    geometry = ((1, 1), (1, 1), (1, 1, 1, 1), 1)
    got = np.zeros_like(x)
    _core.conv_group([x], [w], [None], [1.0], r, None, None, 0, 1.0, 1e-6, *geometry, got)
    _close(got, group_ref("conv", [x], [w], [None], [1.0], r, None, None, 0, 1.0, 1e-6, x.shape, geometry), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_group_matches_numpy(dtype):
    rng = np.random.default_rng(2)
    m, k, j = 7, 5, 4
    x = rng.uniform(0.1, 1.0, (m, k)).astype(dtype)
    low = -rng.uniform(0.1, 1.0, (1, k)).astype(dtype)
    w = np.abs(rng.standard_normal((j, k))).astype(dtype) + dtype(0.1)
    b = rng.uniform(0.1, 1.0, j).astype(dtype)
    r = rng.standard_normal((m, j)).astype(dtype)
    z = x @ w.T + b
    zm = rng.standard_normal(z.shape).astype(dtype)
    for xs, ws, bs, signs, denom, zz, mask, coeff in [
        ([x], [w], [b], [1.0], None, None, 0, 1.0),
        ([x], [w], [b], [1.0], z, zm, 1, 2.0),
        ([x, low], [w, w], [b, None], [1.0, -1.0], None, zm, -1, 0.5),
    ]:
        got = np.zeros_like(x)
        _core.dense_group(xs, ws, bs, signs, r, denom, zz, mask, coeff, 1e-6, got)
        _close(got, group_ref("dense", xs, ws, bs, signs, r, denom, zz, mask, coeff, 1e-6, x.shape), dtype)


POOL_CASES = [  # spatial, kernel, strides, dilations, pads (ends include any ceil-mode overhang)
    ((9, 8), (3, 2), (2, 2), (1, 1), (1, 0, 1, 1)),
    ((10,), (3,), (2,), (2,), (1, 2)),
    ((7, 7), (2, 2), (2, 2), (1, 1), (0, 0, 1, 1)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", POOL_CASES)
def test_pooling_matches_numpy(case, dtype):
    spatial, kernel, strides, dilations, pads = case
    sd = len(spatial)
    rng = np.random.default_rng(3)
    out_size = _window(spatial, kernel, strides, dilations, pads)
    a = rng.standard_normal((2, 3, *spatial)).astype(dtype)
    a[0, 0].flat[:5] = 1.0  # ties go to the first maximum
    r = rng.standard_normal((2, 3, *out_size)).astype(dtype)
    offsets = list(itertools.product(*(range(k) for k in kernel)))
    windows = [(k, _slices(off, dilations, strides, out_size)) for k, off in enumerate(offsets)]

    padded = _pad(a, pads, -np.inf)
    arg = np.stack([padded[(..., *sl)] for _, sl in windows]).argmax(axis=0)
    grad = np.zeros_like(padded)
    for k, sl in windows:
        grad[(..., *sl)] += (arg == k) * r
    _close(_core.maxpool_winner(a, r, kernel, strides, dilations, pads), _crop(grad, pads[:sd], spatial), dtype)

    sums = sum(_pad(a, pads)[(..., *sl)] for _, sl in windows)
    _close(_core.sumpool(a, kernel, strides, dilations, pads), sums, dtype)

    def unpool(s):
        out = np.zeros_like(_pad(a, pads))
        for _, sl in windows:
            out[(..., *sl)] += s
        return _crop(out, pads[:sd], spatial)

    _close(_core.unpool(r, kernel, strides, dilations, pads, spatial), unpool(r), dtype)
    want = a * unpool(r / _stab(sums, 1e-6))
    _close(_core.maxpool_proportional(a, r, kernel, strides, dilations, pads, 1e-6), want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_split_matches_numpy(dtype):
    rng = np.random.default_rng(4)
    xs = [rng.standard_normal((2, 3, 4)).astype(dtype) for _ in range(3)]
    r = rng.standard_normal((2, 3, 4)).astype(dtype)
    got = _core.add_split(xs, r, 1e-6)
    s = r / _stab(xs[0] + xs[1] + xs[2], 1e-6)
    assert isinstance(got, list) and len(got) == 3
    for g, x in zip(got, xs):
        _close(g, x * s, dtype)


def test_build_info():
    info = _core.build_info()
    assert {"openmp", "max_threads", "blas", "blas_threads"} <= set(info)


# --------------------------------------------------------------------------------------------------
# The boundary: bad arguments.

def conv_args(dtype=np.float32, **change):
    """Valid conv_group arguments (a 2-D conv, 2 groups), with some replaced."""
    rng = np.random.default_rng(5)
    x = rng.random((2, 4, 6, 6)).astype(dtype)
    args = dict(xs=[x], ws=[rng.random((6, 2, 3, 3)).astype(dtype)], bs=[None], signs=[1.0],
                relevance=rng.random((2, 6, 6, 6)).astype(dtype), denom=None, z=None, mask=0, coeff=1.0,
                stabilizer=1e-6, strides=(1, 1), dilations=(1, 1), pads=(1, 1, 1, 1), group=2,
                out=np.zeros_like(x))
    args.update(change)
    return args


def dense_args(dtype=np.float32, **change):
    rng = np.random.default_rng(6)
    x = rng.random((3, 5)).astype(dtype)
    args = dict(xs=[x], ws=[rng.random((4, 5)).astype(dtype)], bs=[rng.random(4).astype(dtype)], signs=[1.0],
                relevance=rng.random((3, 4)).astype(dtype), denom=None, z=None, mask=0, coeff=1.0,
                stabilizer=1e-6, out=np.zeros_like(x))
    args.update(change)
    return args


def raises(exc, names, fn, *args, **kwargs):
    """`fn` raises `exc` and its message names the argument (and, optionally, more)."""
    with pytest.raises(exc) as info:
        fn(*args, **kwargs)
    for name in ([names] if isinstance(names, str) else names):
        assert name in str(info.value), str(info.value)
    return str(info.value)


def test_valid_arguments_pass():
    _core.conv_group(**conv_args())
    _core.conv_group(**conv_args(np.float64))
    _core.dense_group(**dense_args())
    _core.conv_group(**conv_args(strides=[1, 1], pads=np.array([1, 1, 1, 1])))  # any int sequence


def test_wrong_dtype_raises_type_error():
    a = conv_args()
    raises(TypeError, ["relevance", "float32 or float64", "float16"], _core.conv_group,
           **conv_args(relevance=a["relevance"].astype(np.float16)))
    raises(TypeError, ["xs[0]", "int64"], _core.conv_group, **conv_args(xs=[a["xs"][0].astype(np.int64)]))
    raises(TypeError, ["out"], _core.dense_group, **dense_args(out=np.zeros((3, 5), np.complex64)))
    raises(TypeError, ["relevance", "numpy.ndarray", "list"], _core.dense_group,
           **dense_args(relevance=[[1.0] * 4] * 3))
    raises(TypeError, ["a", "float32 or float64"], _core.maxpool_winner,
           np.zeros((1, 1, 4, 4), np.int32), np.zeros((1, 1, 2, 2), np.int32), (2, 2), (2, 2), (1, 1), (0, 0, 0, 0))
    big_endian = np.zeros((1, 1, 4, 4), ">f4")
    raises(TypeError, ["x", ">f4"], _core.sumpool, big_endian, (2, 2), (2, 2), (1, 1), (0, 0, 0, 0))


def test_mixed_dtypes_raise_type_error():
    a = conv_args()
    raises(TypeError, ["ws[0]", "float64", "float32"], _core.conv_group,
           **conv_args(ws=[a["ws"][0].astype(np.float64)]))
    raises(TypeError, ["out", "float64"], _core.conv_group, **conv_args(out=a["out"].astype(np.float64)))
    raises(TypeError, ["bs[0]"], _core.dense_group, **dense_args(bs=[np.zeros(4, np.float64)]))
    raises(TypeError, ["denom"], _core.dense_group, **dense_args(denom=np.ones((3, 4), np.float64)))
    raises(TypeError, ["relevance"], _core.maxpool_winner, np.zeros((1, 1, 4, 4), np.float32),
           np.zeros((1, 1, 2, 2), np.float64), (2, 2), (2, 2), (1, 1), (0, 0, 0, 0))
    raises(TypeError, ["inputs[1]"], _core.add_split, [np.zeros(3, np.float32), np.zeros(3, np.float64)],
           np.zeros(3, np.float32), 1e-6)


def test_non_contiguous_raises_value_error():
    a = conv_args()
    wide = np.zeros((2, 4, 6, 12), np.float32)
    raises(ValueError, ["xs[0]", "C-contiguous"], _core.conv_group, **conv_args(xs=[wide[..., ::2]]))
    raises(ValueError, ["out", "C-contiguous"], _core.conv_group, **conv_args(out=np.zeros((6, 6, 4, 2), np.float32).T))
    raises(ValueError, ["ws[0]", "C-contiguous"], _core.dense_group,
           **dense_args(ws=[np.asfortranarray(np.zeros((4, 5), np.float32))]))
    raises(ValueError, ["relevance", "C-contiguous"], _core.maxpool_winner, np.zeros((1, 1, 4, 4), np.float32),
           np.zeros((1, 1, 2, 4), np.float32)[..., ::2], (2, 2), (2, 2), (1, 1), (0, 0, 0, 0))
    assert a["relevance"].flags.c_contiguous


def test_wrong_rank_raises_value_error():
    a = conv_args()
    raises(ValueError, ["relevance", "rank 3 or 4"], _core.conv_group, **conv_args(relevance=a["relevance"][0, 0]))
    raises(ValueError, ["relevance", "rank 3 or 4"], _core.conv_group,
           **conv_args(relevance=np.zeros((2, 6, 6, 6, 1), np.float32)))
    raises(ValueError, ["xs[0]", "rank 4"], _core.conv_group, **conv_args(xs=[a["xs"][0][0]]))
    raises(ValueError, ["ws[0]", "rank 4"], _core.conv_group, **conv_args(ws=[a["ws"][0][..., 0].copy()]))
    raises(ValueError, ["out", "rank 4"], _core.conv_group, **conv_args(out=a["out"][0]))
    raises(ValueError, ["relevance", "rank 2"], _core.dense_group, **dense_args(relevance=np.zeros(4, np.float32)))
    raises(ValueError, ["xs[0]", "rank 2"], _core.dense_group, **dense_args(xs=[np.zeros((3, 5, 1), np.float32)]))
    raises(ValueError, ["a", "rank 3 or 4"], _core.maxpool_winner, np.zeros((4, 4), np.float32),
           np.zeros((2, 2), np.float32), (2, 2), (2, 2), (1, 1), (0, 0, 0, 0))
    raises(ValueError, ["s", "rank 3 or 4"], _core.unpool, np.zeros((2, 2), np.float32), (2, 2), (2, 2), (1, 1),
           (0, 0, 0, 0), (4, 4))


def test_mismatched_shapes_raise_value_error():
    a = conv_args()
    x = a["xs"][0]
    raises(ValueError, ["xs[0]", "(2, 4, 6, 6)", "(2, 4, 6, 5)"], _core.conv_group,
           **conv_args(xs=[np.zeros((2, 4, 6, 5), np.float32)]))
    raises(ValueError, ["xs[0]"], _core.conv_group, **conv_args(xs=[np.zeros((3, 4, 6, 6), np.float32)]))
    raises(ValueError, ["ws[0]", "(6, 2, 3, 3)", "(6, 4, 3, 3)"], _core.conv_group,
           **conv_args(ws=[np.zeros((6, 4, 3, 3), np.float32)]))
    raises(ValueError, ["ws[1]", "(6, 2, 3, 3)"], _core.conv_group,
           **conv_args(xs=[x, x], ws=[a["ws"][0], np.zeros((6, 2, 3, 1), np.float32)], bs=[None, None],
                       signs=[1.0, 1.0]))
    raises(ValueError, ["bs[0]", "(6,)", "(5,)"], _core.conv_group, **conv_args(bs=[np.zeros(5, np.float32)]))
    raises(ValueError, ["denom", "(2, 6, 6, 6)"], _core.conv_group,
           **conv_args(denom=np.zeros((2, 6, 6, 5), np.float32)))
    raises(ValueError, ["z", "(2, 6, 6, 6)"], _core.conv_group,
           **conv_args(z=np.zeros((2, 6, 6), np.float32), mask=1))
    raises(ValueError, ["out", "samples"], _core.conv_group, **conv_args(out=np.zeros((3, 4, 6, 6), np.float32)))
    raises(ValueError, ["relevance", "(2, 6, 3, 3)", "(2, 6, 6, 6)"], _core.conv_group, **conv_args(strides=(2, 2)))
    raises(ValueError, ["ws[0]", "(4, 5)", "(4, 6)"], _core.dense_group,
           **dense_args(ws=[np.zeros((4, 6), np.float32)]))
    raises(ValueError, ["xs[0]"], _core.dense_group, **dense_args(xs=[np.zeros((2, 5), np.float32)]))
    raises(ValueError, ["bs[0]", "(4,)"], _core.dense_group, **dense_args(bs=[np.zeros(3, np.float32)]))
    raises(ValueError, ["out", "rows"], _core.dense_group, **dense_args(out=np.zeros((2, 5), np.float32)))
    a4 = np.zeros((1, 2, 4, 4), np.float32)
    raises(ValueError, ["relevance", "(1, 2, 2, 2)", "(1, 2, 3, 3)"], _core.maxpool_winner, a4,
           np.zeros((1, 2, 3, 3), np.float32), (2, 2), (2, 2), (1, 1), (0, 0, 0, 0))
    raises(ValueError, ["relevance"], _core.maxpool_proportional, a4, np.zeros((1, 3, 2, 2), np.float32),
           (2, 2), (2, 2), (1, 1), (0, 0, 0, 0), 1e-6)
    raises(ValueError, ["s", "(1, 2, 2, 2)"], _core.unpool, np.zeros((1, 2, 3, 3), np.float32), (2, 2), (2, 2),
           (1, 1), (0, 0, 0, 0), (4, 4))
    raises(ValueError, ["inputs[1]", "(3,)", "(4,)"], _core.add_split,
           [np.zeros(3, np.float32), np.zeros(4, np.float32)], np.zeros(3, np.float32), 1e-6)


def test_wrong_list_lengths_raise_value_error():
    a = conv_args()
    raises(ValueError, ["ws", "2 entries", "1"], _core.conv_group, **conv_args(xs=[a["xs"][0]] * 2, bs=[None] * 2,
                                                                            signs=[1.0, 1.0]))
    raises(ValueError, ["bs", "1 entries", "2"], _core.conv_group, **conv_args(bs=[None, None]))
    raises(ValueError, ["signs", "1 entries", "0"], _core.dense_group, **dense_args(signs=[]))
    raises(TypeError, ["xs", "list"], _core.dense_group, **dense_args(xs=np.zeros((3, 5), np.float32)))
    raises(TypeError, ["signs[0]", "float"], _core.dense_group, **dense_args(signs=["1"]))
    raises(ValueError, ["inputs", "at least one"], _core.add_split, [], np.zeros(3, np.float32), 1e-6)


def test_bad_geometry_raises():
    raises(ValueError, ["pads", "4 entries", "3"], _core.conv_group, **conv_args(pads=(1, 1, 1)))
    raises(ValueError, ["pads", ">= 0"], _core.conv_group, **conv_args(pads=(-1, 1, 1, 1)))
    raises(ValueError, ["strides", "2 entries"], _core.conv_group, **conv_args(strides=(1, 1, 1)))
    raises(ValueError, ["strides", ">= 1"], _core.conv_group, **conv_args(strides=(0, 1)))
    raises(ValueError, ["dilations", ">= 1"], _core.conv_group, **conv_args(dilations=(1, 0)))
    raises(TypeError, ["strides[0]", "int"], _core.conv_group, **conv_args(strides=(1.0, 1)))
    raises(TypeError, ["pads"], _core.conv_group, **conv_args(pads="1111"))
    raises(ValueError, ["kernel", "2 entries"], _core.maxpool_winner, np.zeros((1, 1, 4, 4), np.float32),
           np.zeros((1, 1, 2, 2), np.float32), (2,), (2, 2), (1, 1), (0, 0, 0, 0))
    raises(TypeError, ["kernel", "sequence"], _core.sumpool, np.zeros((1, 1, 4), np.float32), None, (2,), (1,), (0, 0))
    raises(ValueError, ["pads", "2 entries"], _core.sumpool, np.zeros((1, 1, 4), np.float32), (2,), (2,), (1,),
           (0, 0, 0, 0))
    raises(ValueError, ["in_size", "2 entries"], _core.unpool, np.zeros((1, 1, 2, 2), np.float32), (2, 2), (2, 2),
           (1, 1), (0, 0, 0, 0), (4,))


def test_group_not_dividing_channels_raises_value_error():
    raises(ValueError, ["group", "3", "4 input channels"], _core.conv_group,
           **conv_args(group=3, ws=[np.zeros((6, 1, 3, 3), np.float32)]))
    raises(ValueError, ["group", "output channels"], _core.conv_group,
           **conv_args(group=4, ws=[np.zeros((6, 1, 3, 3), np.float32)]))
    raises(ValueError, ["group", ">= 1"], _core.conv_group, **conv_args(group=0))
    raises(TypeError, ["group", "int"], _core.conv_group, **conv_args(group=2.0))


def test_mask_and_out_checks():
    raises(ValueError, ["mask", "0, 1 or -1", "2"], _core.conv_group, **conv_args(mask=2))
    raises(ValueError, ["z", "None"], _core.conv_group, **conv_args(mask=-1))
    raises(TypeError, ["coeff", "float"], _core.dense_group, **dense_args(coeff=None))
    raises(TypeError, ["stabilizer", "float"], _core.dense_group, **dense_args(stabilizer="x"))
    a = dense_args()
    frozen = a["out"].copy()
    frozen.flags.writeable = False
    raises(ValueError, ["out", "read-only"], _core.dense_group, **dense_args(out=frozen))
    raises(ValueError, ["out", "must not share memory with xs[0]"], _core.dense_group,
           **dense_args(xs=a["xs"], out=a["xs"][0]))
    relevance = conv_args()["relevance"]
    inside = relevance.reshape(-1)[:288].reshape(2, 4, 6, 6)  # out's shape, relevance's memory
    raises(ValueError, ["out", "must not share memory with relevance"], _core.conv_group,
           **conv_args(relevance=relevance, out=inside))


def test_errors_leave_out_untouched():
    """Arguments are all checked before anything is written."""
    a = conv_args()
    out = np.full_like(a["out"], 7.0)
    with pytest.raises(ValueError):
        _core.conv_group(**conv_args(out=out, pads=(1, 1, 1)))
    assert (out == 7.0).all()


def test_zero_sized_batches():
    rng = np.random.default_rng(7)
    x = np.zeros((0, 2, 5, 5), np.float64)
    w = rng.random((3, 2, 3, 3))
    _core.conv_group([x], [w], [None], [1.0], np.zeros((0, 3, 3, 3)), None, None, 0, 1.0, 1e-6, (1, 1), (1, 1),
                     (0, 0, 0, 0), 1, np.zeros_like(x))
    assert _core.sumpool(x, (3, 3), (1, 1), (1, 1), (0, 0, 0, 0)).shape == (0, 2, 3, 3)
    assert _core.dense_group([], [], [], [], np.zeros((2, 3)), None, None, 0, 1.0, 1e-6, np.zeros((2, 4))) is None
