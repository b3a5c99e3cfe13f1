"""The compiled kernel API (docs/kernels.md) of the numba and C++ backends against the numpy reference
backend's ops, in float32 and float64: fixed grids of layer configurations and term sets, hypothesis
properties over random geometry, and the argument checks.

Inputs, weights and biases are small integers, so every denominator is exact in both precisions and
kernels and reference divide by the same numbers; only the transposed passes round."""
import importlib
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from onnxdtd.backends.geometry import window
from onnxdtd.backends.numpy_backend import NumpyBackend, _Conv, _crop, _Dense, _pad, _sumpool, _unpool
from onnxdtd.graph.layer import Layer
from onnxdtd.rules.base import stabilize

MODULES = {"numba": "onnxdtd.backends.numba_kernels", "cpp": "onnxdtd._core"}
RTOL = {np.float32: 1e-5, np.float64: 1e-12}
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module", params=list(MODULES), ids=list(MODULES))
def kernels(request):
    """Every kernel module that imports on this machine."""
    try:
        return importlib.import_module(MODULES[request.param])
    except ImportError as exc:
        pytest.skip(f"{MODULES[request.param]} does not import: {exc}")


@pytest.fixture(scope="module", params=[np.float32, np.float64], ids=["f32", "f64"])
def dtype(request):
    return request.param


def assert_close(got, ref, dtype):
    """Equal to RTOL of the largest reference magnitude."""
    assert got.dtype == dtype and got.shape == ref.shape
    scale = max(float(np.abs(ref).max()), 1e-30)
    np.testing.assert_allclose(got, ref, rtol=0, atol=RTOL[dtype] * scale)


def rng_for(*parts):
    """A generator seeded by a test's parameters (stable across processes, unlike hash())."""
    return np.random.default_rng(zlib.crc32(repr(parts).encode()))


def ints(rng, shape, dtype, low=-3, high=3):
    return rng.integers(low, high + 1, size=shape).astype(dtype)


def layer(kind, attrs, weight=None):
    return Layer("l", kind, kind, ["x"], ["y"], params={} if weight is None else {"weight": weight},
                 attrs={"auto_pad": "NOTSET"} | attrs)


# ----------------------------------------------------------------------------------------------------
# Rule passes: term sets shared by conv and dense.

def term_set(name, rng, x, w, b, dtype):
    """(xs, ws, bs, signs, mask, coeff, use_denom) of a named rule-like group over x, w, b."""
    pos, neg = np.maximum, np.minimum
    if name == "plain":  # one term, no bias
        return [x], [w], [None], [1.0], 0, 1.0, False
    if name == "bias":  # z⁺ with bias: a⁺ w⁺ + a⁻ w⁻ + b⁺
        return [pos(x, 0), neg(x, 0)], [pos(w, 0), neg(w, 0)], [pos(b, 0), None], [1.0, 1.0], 0, 1.0, False
    if name == "zbox":  # z^B: bounds of leading dim 1, signs -1
        low = -ints(rng, (1, *x.shape[1:]), dtype, 0, 2)
        high = ints(rng, (1, *x.shape[1:]), dtype, 0, 2)
        return [x, low, high], [w, pos(w, 0), neg(w, 0)], [None] * 3, [1.0, -1.0, -1.0], 0, 1.0, False
    if name == "denom":  # plain group: the forward output is the denominator
        return [x], [w], [b], [1.0], 0, 1.0, True
    if name in ("maskpos", "maskneg"):  # γ-like half with coeff ≠ 1
        up = (w + 0.25 * pos(w, 0)).astype(dtype)
        down = (w + 0.25 * neg(w, 0)).astype(dtype)
        mask = 1 if name == "maskpos" else -1
        return [pos(x, 0), neg(x, 0)], [up, down], [b, None], [1.0, 1.0], mask, (1.5 if mask > 0 else -0.5), False
    raise AssertionError(name)


TERM_SETS = ["plain", "bias", "zbox", "denom", "maskpos", "maskneg"]


def reference_group(op, xs, ws, bs, signs, relevance, denom, z, mask, coeff, eps, out):
    """The numpy backend's group evaluation (NumpyBackend.linear) on bound terms."""
    if denom is None:
        denom = sum(sign * op.forward(x, w, b) for x, w, b, sign in zip(xs, ws, bs, signs))
    s = relevance / stabilize(denom, eps)
    if mask:
        s = s * ((z > 0) if mask > 0 else (z < 0))
    result = out.copy()
    for x, w, sign in zip(xs, ws, signs):
        result += (coeff * sign) * x * op.transpose(s, w)
    return result


def check_group(kernels, kind, op, dtype, rng, x, w, b, terms, geometry=()):
    """Run one term set through `kernels.<kind>_group` and the reference; accumulation into a non-zero out."""
    xs, ws, bs, signs, mask, coeff, use_denom = term_set(terms, rng, x, w, b, dtype)
    z = np.ascontiguousarray(op.forward(x, w, b))
    relevance = rng.normal(size=z.shape).astype(dtype)
    denom = z if use_denom else None
    out = rng.normal(size=x.shape).astype(dtype)
    eps = 0.25  # |stab(D)| >= 1/4 for integer D: no quotient blows up and cancels later (ill-conditioned)
    ref = reference_group(op, xs, ws, bs, signs, relevance, denom, z, mask, coeff, eps, out)
    getattr(kernels, f"{kind}_group")(xs, ws, bs, signs, relevance, denom, z if mask else None, mask, coeff, eps,
                                      *geometry, out)
    assert_close(out, ref, dtype)


# Conv configurations: (C, Cout, group, size, kernel, strides, dilations, pads, batch).
CONVS = [
    (3, 4, 1, (7, 6), (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), 1),
    (4, 6, 2, (8, 7), (3, 3), (2, 2), (1, 1), (0, 0, 0, 0), 3),
    (4, 4, 4, (7, 7), (3, 3), (1, 1), (2, 2), (2, 1, 1, 2), 2),
    (3, 5, 1, (9, 8), (2, 3), (3, 2), (1, 2), (1, 0, 0, 1), 3),
    (6, 6, 3, (5, 5), (1, 1), (1, 1), (1, 1), (0, 0, 0, 0), 1),
    (2, 3, 1, (6, 6), (1, 1), (2, 2), (1, 1), (1, 1, 1, 1), 3),
    (4, 5, 1, (4, 6), (1, 1), (1, 1), (1, 1), (0, 0, 0, 0), 2),
    (8, 16, 8, (6, 5), (3, 3), (2, 1), (1, 1), (1, 1, 1, 1), 1),
    (3, 2, 1, (5, 5), (3, 3), (3, 3), (2, 2), (2, 2, 2, 2), 2),
    (3, 4, 1, (9,), (3,), (1,), (1,), (1, 1), 1),
    (4, 6, 2, (11,), (3,), (2,), (2,), (0, 1), 3),
    (5, 5, 5, (8,), (2,), (3,), (1,), (1, 0), 2),
    (2, 3, 1, (6,), (1,), (1,), (1,), (0, 0), 3),
]


def conv_case(kernels, dtype, rng, config, terms):
    c, cout, group, size, kernel, strides, dilations, pads, batch = config
    x = ints(rng, (batch, c, *size), dtype)
    w = ints(rng, (cout, c // group, *kernel), dtype)
    b = ints(rng, (cout,), dtype)
    attrs = {"kernel": kernel, "strides": strides, "pads": pads, "dilations": dilations, "group": group}
    op = _Conv(layer("conv", attrs, w), x.shape)
    check_group(kernels, "conv", op, dtype, rng, x, w, b, terms, (strides, dilations, pads, group))


@pytest.mark.parametrize("terms", TERM_SETS)
@pytest.mark.parametrize("config", CONVS, ids=lambda c: f"{c[0]}-{c[1]}g{c[2]}k{'x'.join(map(str, c[4]))}"
                         f"s{c[5][0]}d{c[6][0]}p{''.join(map(str, c[7]))}n{c[8]}")
def test_conv_group(kernels, dtype, config, terms):
    conv_case(kernels, dtype, rng_for(config, terms), config, terms)


@pytest.mark.parametrize("direct", [0, 10**9], ids=["gemm", "direct"])
@pytest.mark.parametrize("budget", [64, 2000, 10**5])
@pytest.mark.parametrize("terms", ["plain", "zbox", "maskneg"])
def test_numba_conv_plans(dtype, monkeypatch, direct, budget, terms):
    """The numba driver's plans on every configuration: GEMM or direct loops (DIRECT_MAX), in bands of
    output rows, one sample or several samples at a time (COLUMN_BYTES)."""
    module = importlib.import_module(MODULES["numba"])
    monkeypatch.setattr(module, "COLUMN_BYTES", budget)
    monkeypatch.setattr(module, "DIRECT_MAX", direct)
    for config in CONVS:
        conv_case(module, dtype, rng_for(config, terms), config, terms)


@pytest.mark.parametrize("parts", [1, 2, 3, 7])
@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("m, n, k", [(5, 9, 4), (9, 5, 4), (1, 6, 3), (6, 1, 3), (4, 4, 1)])
def test_numba_gemm_blocks(dtype, parts, trans_a, trans_b, m, n, k):
    """The numba backend's BLAS product in `parts` blocks of columns or rows, on views whose rows
    are longer than the matrix (leading dimension > columns), against numpy."""
    module = importlib.import_module(MODULES["numba"])
    rng = rng_for(parts, trans_a, trans_b, m, n, k)
    a = ints(rng, (k + 2, m + 3) if trans_a else (m + 2, k + 3), dtype)[1:-1, 1:-2]
    b = ints(rng, (n + 2, k + 3) if trans_b else (k + 2, n + 3), dtype)[1:-1, 1:-2]
    out = np.full((m + 1, n + 4), 7, dtype)
    c = out[1:, 2:-2]
    (fa, lda), (fb, ldb), (fc, ldc) = module._rows_view(a), module._rows_view(b), module._rows_view(c)
    module._gemm(trans_a, trans_b, m, n, k, fa, lda, fb, ldb, fc, ldc, parts)
    np.testing.assert_array_equal(c, (a.T if trans_a else a) @ (b.T if trans_b else b))
    border = np.ones(out.shape, bool)
    border[1:, 2:-2] = False
    assert (out[border] == 7).all()  # nothing written outside the view


@pytest.mark.parametrize("terms", TERM_SETS)
@pytest.mark.parametrize("m, k, j", [(1, 7, 5), (3, 6, 4), (4, 1, 3)])
def test_dense_group(kernels, dtype, m, k, j, terms):
    rng = rng_for(m, k, j, terms)
    x, w, b = ints(rng, (m, k), dtype), ints(rng, (j, k), dtype), ints(rng, (j,), dtype)
    check_group(kernels, "dense", _Dense(layer("dense", {}), x.shape), dtype, rng, x, w, b, terms)


@st.composite
def conv_configs(draw):
    sd = draw(st.sampled_from([1, 2]))
    group = draw(st.sampled_from([1, 2, 3]))
    c, cout = group * draw(st.integers(1, 3)), group * draw(st.integers(1, 3))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(sd))
    strides = tuple(draw(st.integers(1, 3)) for _ in range(sd))
    dilations = tuple(draw(st.integers(1, 2)) for _ in range(sd))
    pads = tuple(draw(st.integers(0, 2)) for _ in range(2 * sd))
    span = [d * (k - 1) + 1 for d, k in zip(dilations, kernel)]
    size = tuple(draw(st.integers(max(1, s - pads[i] - pads[i + sd]), 9)) for i, s in enumerate(span))
    return c, cout, group, size, kernel, strides, dilations, pads, draw(st.integers(1, 3))


@PROPERTY
@given(config=conv_configs(), terms=st.sampled_from(TERM_SETS), seed=st.integers(0, 2**32 - 1))
def test_conv_group_property(kernels, dtype, config, terms, seed):
    conv_case(kernels, dtype, np.random.default_rng(seed), config, terms)


# ----------------------------------------------------------------------------------------------------
# Pooling and sums.

# (size, kernel, strides, dilations, pads, ceil_mode)
POOLS = [
    ((6, 6), (2, 2), (2, 2), (1, 1), (0, 0, 0, 0), 0),
    ((7, 7), (3, 3), (2, 2), (1, 1), (1, 1, 1, 1), 0),
    ((7, 6), (3, 2), (2, 3), (1, 1), (0, 0, 0, 0), 1),
    ((8, 8), (3, 3), (1, 1), (2, 2), (1, 2, 2, 1), 0),
    ((5, 5), (2, 2), (3, 3), (1, 1), (1, 0, 0, 1), 1),
    ((9,), (3,), (2,), (1,), (1, 1), 0),
    ((10,), (2,), (3,), (2,), (0, 0), 1),
]


def pool_case(rng, dtype, size, kernel, strides, dilations, pads, ceil_mode, batch=2, channels=3, ties=False):
    """(layer, input, kernel pads incl. ceil overhang, window); `ties` draws from few values."""
    attrs = {"kernel": kernel, "strides": strides, "dilations": dilations, "pads": pads, "ceil_mode": ceil_mode}
    shape = (batch, channels, *size)
    a = ints(rng, shape, dtype, -2, 2) if ties else rng.normal(size=shape).astype(dtype)
    pool = layer("maxpool", attrs)
    win = window(pool, size)
    return pool, a, (*win.begin, *(e + x for e, x in zip(win.end, win.extra))), win


def pool_ids(p):
    return f"{'x'.join(map(str, p[0]))}k{'x'.join(map(str, p[1]))}s{p[2][0]}d{p[3][0]}p{''.join(map(str, p[4]))}c{p[5]}"


def check_pools(kernels, dtype, rng, config, ties):
    """maxpool winner and proportional, sumpool and unpool against the numpy backend on one config."""
    pool, a, pads, win = pool_case(rng, dtype, *config, ties=ties)
    _, kernel, strides, dilations = config[:4]
    geometry = (kernel, strides, dilations, pads)
    relevance = rng.normal(size=(*a.shape[:2], *win.out_size)).astype(dtype)
    backend = NumpyBackend()
    assert_close(kernels.maxpool_winner(a, relevance, *geometry), backend.maxpool(pool, a, relevance, "winner"), dtype)
    positive = np.abs(a) + 0.5  # the proportional rule's denominators well away from zero
    assert_close(kernels.maxpool_proportional(positive, relevance, *geometry, 1e-6),
                 backend.maxpool(pool, positive, relevance, "proportional"), dtype)
    assert_close(kernels.sumpool(a, *geometry), _sumpool(_pad(a, win), win), dtype)
    assert_close(kernels.unpool(relevance, *geometry, a.shape[2:]), _crop(_unpool(relevance, win), win), dtype)


@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("config", POOLS, ids=pool_ids)
def test_pooling(kernels, dtype, config, ties):
    check_pools(kernels, dtype, rng_for(config, ties), config, ties)


def test_maxpool_winner_ties_and_padding(kernels, dtype):
    """A hand-checked case: the first maximum in row-major order wins; padding never does, not even
    over negative inputs; overlapping windows add up."""
    a = np.array([[[[-1, -1, -3], [-1, -2, -2]]]], dtype)
    relevance = np.array([[[[1, 10], [100, 1000]]]], dtype)
    got = kernels.maxpool_winner(a, relevance, (2, 2), (1, 2), (1, 1), (1, 0, 0, 1))
    # Windows: rows {-1, 0} or {0, 1} by columns {0, 1} or {2, 3}; row -1 and column 3 are padding.
    np.testing.assert_array_equal(got, np.array([[[[101, 0, 10], [0, 0, 1000]]]], dtype))


@st.composite
def pool_configs(draw):
    sd = draw(st.sampled_from([1, 2]))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(sd))
    strides = tuple(draw(st.integers(1, 3)) for _ in range(sd))
    dilations = tuple(draw(st.integers(1, 2)) for _ in range(sd))
    pads = tuple(draw(st.integers(0, k - 1)) for k in kernel * 2)
    span = [d * (k - 1) + 1 for d, k in zip(dilations, kernel)]
    size = tuple(draw(st.integers(max(1, s - pads[i] - pads[i + sd]), 9)) for i, s in enumerate(span))
    return size, kernel, strides, dilations, pads, draw(st.integers(0, 1))


@PROPERTY
@given(config=pool_configs(), ties=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_pooling_property(kernels, dtype, config, ties, seed):
    check_pools(kernels, dtype, np.random.default_rng(seed), config, ties)


@pytest.mark.parametrize("count", [2, 3])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (7,), (3, 16)])
def test_add_split(kernels, dtype, count, shape):
    rng = np.random.default_rng(count)
    inputs = [rng.normal(size=shape).astype(dtype) for _ in range(count)]
    relevance = rng.normal(size=shape).astype(dtype)
    got = kernels.add_split(inputs, relevance, 1e-6)
    assert len(got) == count
    for r, ref in zip(got, NumpyBackend().add(inputs, relevance)):
        assert_close(r, ref, dtype)


# ----------------------------------------------------------------------------------------------------
# Argument checks: each case breaks one argument of a valid call and names it.

def conv_args(dtype=np.float32):
    rng = np.random.default_rng(0)
    x, w = ints(rng, (2, 4, 5, 5), dtype), ints(rng, (6, 2, 3, 3), dtype)
    return dict(xs=[x], ws=[w], bs=[None], signs=[1.0], relevance=np.ones((2, 6, 5, 5), dtype), denom=None, z=None,
                mask=0, coeff=1.0, stabilizer=1e-6, strides=(1, 1), dilations=(1, 1), pads=(1, 1, 1, 1), group=2,
                out=np.zeros(x.shape, dtype))


def dense_args(dtype=np.float32):
    return dict(xs=[np.ones((3, 5), dtype)], ws=[np.ones((4, 5), dtype)], bs=[np.ones(4, dtype)], signs=[1.0],
                relevance=np.ones((3, 4), dtype), denom=None, z=None, mask=0, coeff=1.0, stabilizer=1e-6,
                out=np.zeros((3, 5), dtype))


def pool_args():
    return dict(a=np.ones((2, 3, 6, 6), np.float32), relevance=np.ones((2, 3, 3, 3), np.float32), kernel=(2, 2),
                strides=(2, 2), dilations=(1, 1), pads=(0, 0, 0, 0))


def strided(a):
    """A non-contiguous view with a's shape and values."""
    return np.repeat(a, 2, axis=-1)[..., ::2]


BROKEN = [  # (function, valid arguments, change, error, word the message must name)
    ("conv_group", conv_args, lambda a: a.update(relevance=a["relevance"].astype(np.int32)), TypeError, "relevance"),
    ("conv_group", conv_args, lambda a: a.update(xs=[a["xs"][0].astype(np.float64)]), TypeError, "xs"),
    ("conv_group", conv_args, lambda a: a.update(out=a["out"].astype(np.float64)), TypeError, "out"),
    ("conv_group", conv_args, lambda a: a.update(ws=[a["ws"][0][:, :1].copy()]), ValueError, "ws"),
    ("conv_group", conv_args, lambda a: a.update(relevance=a["relevance"][:, :, :4].copy()), ValueError, "relevance"),
    ("conv_group", conv_args, lambda a: a.update(xs=[a["xs"][0][:, :, :4].copy()]), ValueError, "xs"),
    ("conv_group", conv_args, lambda a: a.update(bs=[np.ones(5, np.float32)]), ValueError, "bs"),
    ("conv_group", conv_args, lambda a: a.update(denom=np.ones((2, 6, 5), np.float32)), ValueError, "denom"),
    ("conv_group", conv_args, lambda a: a.update(out=strided(a["out"])), ValueError, "out"),
    ("conv_group", conv_args, lambda a: a.update(xs=[strided(a["xs"][0])]), ValueError, "xs"),
    ("conv_group", conv_args, lambda a: a.update(ws=a["ws"] * 2), ValueError, "ws"),
    ("conv_group", conv_args, lambda a: a.update(mask=1, z=np.ones((2, 6, 4, 5), np.float32)), ValueError, "z"),
    ("dense_group", dense_args, lambda a: a.update(ws=[np.ones((4, 6), np.float64)]), TypeError, "ws"),
    ("dense_group", dense_args, lambda a: a.update(ws=[np.ones((4, 6), np.float32)]), ValueError, "ws"),
    ("dense_group", dense_args, lambda a: a.update(xs=[np.ones((2, 5), np.float32)]), ValueError, "xs"),
    ("dense_group", dense_args, lambda a: a.update(relevance=strided(a["relevance"])), ValueError, "relevance"),
    ("maxpool_winner", pool_args, lambda a: a.update(a=a["a"].astype(np.int64)), TypeError, "a"),
    ("maxpool_winner", pool_args, lambda a: a.update(relevance=a["relevance"].astype(np.float64)), TypeError,
     "relevance"),
    ("maxpool_winner", pool_args, lambda a: a.update(relevance=np.ones((2, 3, 2, 3), np.float32)), ValueError,
     "relevance"),
    ("maxpool_winner", pool_args, lambda a: a.update(a=strided(a["a"])), ValueError, "a"),
]


@pytest.mark.parametrize("function, valid, change, error, name", BROKEN,
                         ids=[f"{b[0]}-{i}" for i, b in enumerate(BROKEN)])
def test_argument_errors(kernels, function, valid, change, error, name):
    args = valid()
    getattr(kernels, function)(**args)  # the valid call runs
    args = valid()
    change(args)
    with pytest.raises(error, match=name):
        getattr(kernels, function)(**args)


@pytest.mark.parametrize("inputs, relevance, error", [
    ([np.ones(4, np.float32), np.ones(4, np.float64)], np.ones(4, np.float32), TypeError),
    ([np.ones(4, np.float32), np.ones(5, np.float32)], np.ones(4, np.float32), ValueError),
])
def test_add_split_errors(kernels, inputs, relevance, error):
    with pytest.raises(error, match="inputs"):
        kernels.add_split(inputs, relevance, 1e-6)
