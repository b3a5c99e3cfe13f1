"""The compiled kernels of the `numba` backend: the API of docs/kernels.md.

Matrix products call the OpenBLAS of the scipy-openblas32 wheel (the `cpp` backend's BLAS) through
ctypes from inside @njit code, single-threaded, split into one block per numba thread: numba's
thread pool is then the only one at work. numpy's matmul would bring numpy's own OpenBLAS threads,
which spin after every product and take the cores from numba's threads and from onnxruntime's
(numba's np.dot would need SciPy, which is not a dependency). Everything around the products (im2col,
the stabilized division, col2im fused with the input product, pooling, sums) is
@njit(parallel=True, cache=True) without fastmath, summing in the numpy reference's order wherever the
result is one.

conv_group runs per chunk of samples (several small images, one image, or a band of output rows of
a large one) so that the column buffer stays under `COLUMN_BYTES`; buffers are allocated once per
call. Grouped convs with small groups (depthwise) skip the GEMMs for direct loops. Spatial rank 1
runs as rank 2 with height 1.
"""
from __future__ import annotations

import ctypes
import operator
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import scipy_openblas32
from numba import get_num_threads, njit, prange

__all__ = ["conv_group", "dense_group", "maxpool_winner", "maxpool_proportional", "sumpool", "unpool",
           "add_split"]

COLUMN_BYTES = 16 << 20  # im2col buffer budget per chunk (the transposed pass's columns share it)
DIRECT_MAX = 32  # grouped convs with (C/group)·(Cout/group) up to this run direct loops, not GEMMs
FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


# ----------------------------------------------------------------------------------------------------
# BLAS: scipy-openblas32's row-major gemm, one thread per call (its symbols carry the prefix scipy_).

def _cblas_gemm(name: str, real: type) -> ctypes._CFuncPtr:
    """The CBLAS routine `name` (sgemm or dgemm) with its argument types declared for numba."""
    fn = getattr(scipy_openblas32.dll, f"scipy_cblas_{name}")
    c_int, ptr = ctypes.c_int, ctypes.c_void_p
    fn.argtypes = [c_int] * 6 + [real, ptr, c_int, ptr, c_int, real, ptr, c_int]
    fn.restype = None
    return fn


scipy_openblas32.dll.scipy_openblas_set_num_threads(1)  # as onnxdtd._core does: numba's threads split the work
_SGEMM, _DGEMM = _cblas_gemm("sgemm", ctypes.c_float), _cblas_gemm("dgemm", ctypes.c_double)
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_SPLIT_MIN = 1 << 16  # multiply-adds below which a product runs on one thread


@njit(parallel=True)  # not cache=True: the BLAS routines' addresses differ from process to process
def _gemm(ta, tb, m, n, k, a, lda, b, ldb, c, ldc, parts):
    """c = op(a) @ op(b), (m x n); a, b, c: 1-D views from each matrix's first element, row-major
    with leading dimensions lda, ldb, ldc. Split into `parts` blocks of columns (or of rows when
    there are more rows), one gemm call per block."""
    by_cols = n >= m
    size = n if by_cols else m
    step = (size + parts - 1) // parts
    for i in prange(parts):
        lo = i * step
        hi = min(size, lo + step)
        if lo >= hi:
            continue
        ao, bo, co = 0, 0, lo * ldc
        mm, nn = hi - lo, n
        if by_cols:
            bo, co, mm, nn = (lo * ldb if tb else lo), lo, m, hi - lo
        else:
            ao = lo if ta else lo * lda
        if c.itemsize == 4:  # float32
            _SGEMM(_ROW_MAJOR, _TRANS if ta else _NO_TRANS, _TRANS if tb else _NO_TRANS, mm, nn, k, 1.0,
                   a[ao:].ctypes, lda, b[bo:].ctypes, ldb, 0.0, c[co:].ctypes, ldc)
        else:
            _DGEMM(_ROW_MAJOR, _TRANS if ta else _NO_TRANS, _TRANS if tb else _NO_TRANS, mm, nn, k, 1.0,
                   a[ao:].ctypes, lda, b[bo:].ctypes, ldb, 0.0, c[co:].ctypes, ldc)


def _rows_view(a: np.ndarray) -> tuple[np.ndarray, int]:
    """A 2-D array with unit column stride as (1-D view from its first element, leading dimension)."""
    item = a.itemsize
    ld = a.strides[0] // item if a.shape[0] > 1 else a.shape[1]
    if a.strides[1] != item and a.shape[1] > 1:
        raise ValueError(f"a matrix operand must have unit column stride, got strides {a.strides}")
    span = (a.shape[0] - 1) * ld + a.shape[1]
    return np.lib.stride_tricks.as_strided(a, shape=(span,), strides=(item,)), max(ld, 1)


def _matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray, trans_a: bool = False, trans_b: bool = False):
    """out = op(a) @ op(b) with op transposing where asked; every operand a row-major view."""
    m, n = out.shape
    k = a.shape[0] if trans_a else a.shape[1]
    if m == 0 or n == 0:
        return out
    if k == 0:
        out[...] = 0
        return out
    (fa, lda), (fb, ldb), (fc, ldc) = _rows_view(a), _rows_view(b), _rows_view(out)
    parts = min(get_num_threads(), max(m, n)) if m * n * k >= _SPLIT_MIN else 1
    _gemm(trans_a, trans_b, m, n, k, fa, lda, fb, ldb, fc, ldc, parts)
    return out


# ----------------------------------------------------------------------------------------------------
# Argument checks: one checker, messages name the argument with expected and got.

def _fmt(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _dtype(fn: str, name: str, a) -> np.dtype:
    """The call's dtype, read off its first array: float32 or float64."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{fn}: {name} must be a numpy array, got {type(a).__name__}")
    if a.dtype not in FLOATS:
        raise TypeError(f"{fn}: {name} must have dtype float32 or float64, got {a.dtype}")
    return a.dtype


def _check(fn: str, name: str, a, dtype: np.dtype, shape: Sequence[int | None] | None, writable: bool = False):
    """`a` must be a C-contiguous `dtype` array of `shape` (None matches any size; shape None any shape);
    returns it."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{fn}: {name} must be a numpy array of dtype {dtype}, got {type(a).__name__}")
    if a.dtype != dtype:
        raise TypeError(f"{fn}: {name} must have dtype {dtype} (the call's dtype), got {a.dtype}")
    if shape is not None and a.ndim != len(shape):
        raise ValueError(f"{fn}: {name} must have rank {len(shape)}, shape {_fmt(shape)}, got shape {a.shape}")
    if shape is not None and any(e is not None and e != g for e, g in zip(shape, a.shape)):
        raise ValueError(f"{fn}: {name} must have shape {_fmt(shape)}, got {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{fn}: {name} must be C-contiguous, got strides {a.strides} for shape {a.shape}")
    if writable and not a.flags.writeable:
        raise ValueError(f"{fn}: {name} must be writable")
    return a


def _ints(fn: str, name: str, values, count: int, minimum: int) -> tuple[int, ...]:
    """A sequence of `count` ints, each at least `minimum`."""
    try:
        out = tuple(operator.index(v) for v in values)
    except TypeError:
        raise TypeError(f"{fn}: {name} must be a sequence of {count} ints, got {values!r}") from None
    if len(out) != count or any(v < minimum for v in out):
        raise ValueError(f"{fn}: {name} must be {count} ints >= {minimum}, got {list(out)}")
    return out


def _spatial_rank(fn: str, name: str, a) -> int:
    if not isinstance(a, np.ndarray) or a.ndim not in (3, 4):
        got = a.shape if isinstance(a, np.ndarray) else type(a).__name__
        raise ValueError(f"{fn}: {name} must have rank 3 or 4 (N, C, *spatial with 1 or 2 spatial axes), got {got}")
    return a.ndim - 2


class _Checks(NamedTuple):
    """One kernel module's array checks (here numpy arrays; cuda_kernels' read the CUDA array
    interface), which the argument checks of every entry point below are written over. `array`
    returns something with the array's shape."""

    dtype: Callable[[str, str, Any], np.dtype]
    array: Callable[..., Any]
    spatial_rank: Callable[[str, str, Any], int]


HOST = _Checks(_dtype, _check, _spatial_rank)


class _Win(NamedTuple):
    """A window lifted to two spatial axes (1-D windows have height 1)."""

    kh: int
    kw: int
    sh: int
    sw: int
    dh: int
    dw: int
    pt: int
    pl: int
    h: int
    w: int
    oh: int
    ow: int

    @property
    def args(self) -> tuple[int, ...]:
        """The geometry arguments of the njit passes."""
        return self.kh, self.kw, self.sh, self.sw, self.dh, self.dw, self.pt, self.pl


def _window(fn: str, in_size: Sequence[int], kernel, strides, dilations, pads) -> _Win:
    """Checks the window arguments against the spatial input size; the output size is the floor one
    (pads' ends include any ceil_mode overhang)."""
    sd = len(in_size)
    kernel = _ints(fn, "kernel", kernel, sd, 1)
    strides = _ints(fn, "strides", strides, sd, 1)
    dilations = _ints(fn, "dilations", dilations, sd, 1)
    pads = _ints(fn, "pads", pads, 2 * sd, 0)
    out = [(i + b + e - d * (k - 1) - 1) // s + 1
           for i, b, e, k, s, d in zip(in_size, pads[:sd], pads[sd:], kernel, strides, dilations)]
    if min(out) < 1:
        raise ValueError(f"{fn}: the window (kernel {kernel}, dilations {dilations}, pads {pads}) "
                         f"does not fit the input size {tuple(in_size)}")

    def lift(v, fill=1):
        return (fill, *v) if sd == 1 else tuple(v)

    (kh, kw), (sh, sw), (dh, dw), (pt, pl) = lift(kernel), lift(strides), lift(dilations), lift(pads[:sd], 0)
    (h, w), (oh, ow) = lift(in_size), lift(out)
    return _Win(kh, kw, sh, sw, dh, dw, pt, pl, h, w, oh, ow)


def _as4(a: np.ndarray) -> np.ndarray:
    """(N, C, L) -> (N, C, 1, L) view; rank 4 unchanged."""
    return a.reshape(a.shape[0], a.shape[1], 1, a.shape[2]) if a.ndim == 3 else a


# ----------------------------------------------------------------------------------------------------
# njit passes. Integer geometry: kernel (kh, kw), strides (sh, sw), dilations (dh, dw), begin pads
# (pt, pl); output (oy, ox) at kernel offset (ky, kx) reads input (oy*sh + ky*dh - pt, ox*sw + kx*dw - pl).
# Inner loops run over 1-D row views, unit stride specialized, so that LLVM vectorizes them.

@njit(cache=True, inline="always")
def _span(off, stride, size, count):
    """Outputs 0 <= o < count whose input o*stride + off lies in [0, size): the range [lo, hi)."""
    lo = 0 if off >= 0 else (stride - 1 - off) // stride
    hi = min(count, (size - 1 - off) // stride + 1) if size - 1 - off >= 0 else 0
    return min(lo, hi), hi


@njit(cache=True, inline="always")
def _stab(d, eps):
    """The stabilized denominator d + ε·sgn(d), sgn(0) = +1."""
    return d + eps if d >= 0 else d - eps


@njit(cache=True, inline="always")
def _gather(dst, src, lo, hi, stride, off, weight):
    """dst[o] += weight * src[o*stride + off] for lo <= o < hi."""
    if stride == 1:
        d, s = dst[lo:hi], src[lo + off:hi + off]
        for i in range(hi - lo):
            d[i] += weight * s[i]
    else:
        for o in range(lo, hi):
            dst[o] += weight * src[o * stride + off]


@njit(cache=True, inline="always")
def _scatter(dst, src, lo, hi, stride, off, weight):
    """dst[o*stride + off] += weight * src[o] for lo <= o < hi."""
    if stride == 1:
        d, s = dst[lo + off:hi + off], src[lo:hi]
        for i in range(hi - lo):
            d[i] += weight * s[i]
    else:
        for o in range(lo, hi):
            dst[o * stride + off] += weight * src[o]


@njit(cache=True, inline="always")
def _rows(r0, nrows, sh, dh, pt, ky, h):
    """Output rows r0 <= oy < r0 + nrows whose kernel row ky reads an input row: the range [lo, hi)."""
    lo, hi = _span(ky * dh - pt + r0 * sh, sh, h, nrows)
    return r0 + lo, r0 + hi


@njit(cache=True, inline="always")
def _product_into(dst, x, acc, cs):
    """dst += (cs * x) ⊙ acc over rows."""
    for iy in range(dst.shape[0]):
        d, xs, a = dst[iy], x[iy], acc[iy]
        for ix in range(d.shape[0]):
            d[ix] += (cs * xs[ix]) * a[ix]


@njit(parallel=True, cache=True)
def _im2col(x, bcast, n0, nsamp, r0, nrows, kh, kw, sh, sw, dh, dw, pt, pl, ow, group, nterms, term, cols):
    """Columns of samples n0.. and output rows r0.. of x (N', C, H, W) into cols: row
    ((g*nterms + term)*C/group + c)*K + k (the w.reshape(Cout, -1) layout per group and term),
    column (sample, output row, output column) of the chunk."""
    c_all, h, w = x.shape[1], x.shape[2], x.shape[3]
    cg, kk, pc = c_all // group, kh * kw, nrows * ow
    for item in prange(nsamp * c_all * nrows):
        ns, rem = item // (c_all * nrows), item % (c_all * nrows)
        c, oyl = rem // nrows, rem % nrows
        n = 0 if bcast else n0 + ns
        rowbase = (((c // cg) * nterms + term) * cg + c % cg) * kk
        col0 = ns * pc + oyl * ow
        for ky in range(kh):
            iy = (r0 + oyl) * sh + ky * dh - pt
            for kx in range(kw):
                dst = cols[rowbase + ky * kw + kx, col0:col0 + ow]
                if iy < 0 or iy >= h:
                    dst[:] = 0
                    continue
                src = x[n, c, iy]
                off = kx * dw - pl
                lo, hi = _span(off, sw, w, ow)
                dst[:lo] = 0
                if sw == 1:
                    dst[lo:hi] = src[lo + off:hi + off]
                else:
                    for ox in range(lo, hi):
                        dst[ox] = src[ox * sw + off]
                dst[hi:] = 0


@njit(parallel=True, cache=True)
def _col2im(cols, n0, nsamp, r0, nrows, kh, kw, sh, sw, dh, dw, pt, pl, ow, group, nterms, term, x, bcast, cs, out):
    """out[n, c] += (cs * x[n, c]) ⊙ col2im(cols) for the chunk's samples and output rows; the
    columns add up in kernel-offset order, as the reference's scatter does. One (sample, channel)
    plane per thread: no two threads write the same element."""
    c_all, h, w = out.shape[1], out.shape[2], out.shape[3]
    cg, kk, pc = c_all // group, kh * kw, nrows * ow
    y0 = max(0, r0 * sh - pt)
    y1 = min(h, (r0 + nrows - 1) * sh + (kh - 1) * dh - pt + 1)
    if y1 <= y0:
        return
    one = out.dtype.type(1)
    for item in prange(nsamp * c_all):
        ns, c = item // c_all, item % c_all
        n = n0 + ns
        rowbase = (((c // cg) * nterms + term) * cg + c % cg) * kk
        acc = np.zeros((y1 - y0, w), out.dtype)
        for ky in range(kh):
            lo_y, hi_y = _rows(r0, nrows, sh, dh, pt, ky, h)
            for kx in range(kw):
                row = cols[rowbase + ky * kw + kx, ns * pc:(ns + 1) * pc]
                off = kx * dw - pl
                lo, hi = _span(off, sw, w, ow)
                for oy in range(lo_y, hi_y):
                    _scatter(acc[oy * sh + ky * dh - pt - y0], row[(oy - r0) * ow:(oy - r0 + 1) * ow],
                             lo, hi, sw, off, one)
        _product_into(out[n, c, y0:y1], x[0 if bcast else n, c, y0:y1], acc, cs)


@njit(parallel=True, cache=True)
def _direct_forward(x, bcast, n0, nsamp, r0, nrows, kh, kw, sh, sw, dh, dw, pt, pl, ow, w, sign, first, dst):
    """dst[co, chunk] = (first) or += (not first) sign * conv(x, w), computed directly: the path of
    groups too small for a GEMM. w: (Cout, C/group, KH, KW); dst as the GEMM path's (Cout, chunk)."""
    c_all, h, wd = x.shape[1], x.shape[2], x.shape[3]
    cout, cg = w.shape[0], w.shape[1]
    coutg, pc = cout // (c_all // cg), nrows * ow
    for item in prange(nsamp * cout):
        ns, co = item // cout, item % cout
        n = 0 if bcast else n0 + ns
        c0 = (co // coutg) * cg
        acc = np.zeros(pc, dst.dtype)
        for cl in range(cg):
            for ky in range(kh):
                lo_y, hi_y = _rows(r0, nrows, sh, dh, pt, ky, h)
                for kx in range(kw):
                    off = kx * dw - pl
                    lo, hi = _span(off, sw, wd, ow)
                    for oy in range(lo_y, hi_y):
                        _gather(acc[(oy - r0) * ow:(oy - r0 + 1) * ow], x[n, c0 + cl, oy * sh + ky * dh - pt],
                                lo, hi, sw, off, w[co, cl, ky, kx])
        d = dst[co, ns * pc:(ns + 1) * pc]
        if first:
            for i in range(pc):
                d[i] = sign * acc[i]
        else:
            for i in range(pc):
                d[i] += sign * acc[i]


@njit(parallel=True, cache=True)
def _direct_transpose(s, n0, nsamp, r0, nrows, kh, kw, sh, sw, dh, dw, pt, pl, ow, w, x, bcast, cs, out):
    """out[n, c] += (cs * x[n, c]) ⊙ convᵀ(s, w)[n, c] computed directly (small groups); s: (Cout, chunk)."""
    c_all, h, wd = out.shape[1], out.shape[2], out.shape[3]
    cout, cg = w.shape[0], w.shape[1]
    coutg, pc = cout // (c_all // cg), nrows * ow
    y0 = max(0, r0 * sh - pt)
    y1 = min(h, (r0 + nrows - 1) * sh + (kh - 1) * dh - pt + 1)
    if y1 <= y0:
        return
    for item in prange(nsamp * c_all):
        ns, c = item // c_all, item % c_all
        n = n0 + ns
        gi, cl = c // cg, c % cg
        acc = np.zeros((y1 - y0, wd), out.dtype)
        for co in range(gi * coutg, (gi + 1) * coutg):
            row = s[co, ns * pc:(ns + 1) * pc]
            for ky in range(kh):
                lo_y, hi_y = _rows(r0, nrows, sh, dh, pt, ky, h)
                for kx in range(kw):
                    off = kx * dw - pl
                    lo, hi = _span(off, sw, wd, ow)
                    for oy in range(lo_y, hi_y):
                        _scatter(acc[oy * sh + ky * dh - pt - y0], row[(oy - r0) * ow:(oy - r0 + 1) * ow],
                                 lo, hi, sw, off, w[co, cl, ky, kx])
        _product_into(out[n, c, y0:y1], x[0 if bcast else n, c, y0:y1], acc, cs)


@njit(parallel=True, cache=True)
def _conv_quotient(rel, n0, nsamp, p0, pcs, dg, has_dg, dconst, has_dconst, bias, has_bias, denom, has_denom,
                   z, mask, eps, s):
    """s[co, (sample, p)] = rel / stab(D) (masked) for the chunk, D = denom or dg + dconst + bias.
    rel, denom, z: (N, Cout, P); dg, s: (Cout, nsamp*pcs) (s may be dg); dconst: (Cout, P); the
    arrays whose flag is off are (1, ...) placeholders and never read."""
    cout = rel.shape[1]
    for item in prange(cout * nsamp):
        co, ns = item // nsamp, item % nsamp
        n = n0 + ns
        r, q = rel[n, co, p0:p0 + pcs], s[co, ns * pcs:(ns + 1) * pcs]
        if has_denom:
            d = denom[n, co, p0:p0 + pcs]
            for i in range(pcs):
                q[i] = r[i] / _stab(d[i], eps)
        else:
            if has_dg:
                g = dg[co, ns * pcs:(ns + 1) * pcs]
                for i in range(pcs):
                    q[i] = g[i]
            else:
                q[:] = 0
            if has_dconst:
                c = dconst[co, p0:p0 + pcs]
                for i in range(pcs):
                    q[i] += c[i]
            if has_bias:
                b = bias[co]
                for i in range(pcs):
                    q[i] += b
            for i in range(pcs):
                q[i] = r[i] / _stab(q[i], eps)
        if mask:
            _mask(q, z[n, co, p0:p0 + pcs], mask)


@njit(cache=True, inline="always")
def _mask(q, z, mask):
    """q = 0 where not z > 0 (mask 1) or not z < 0 (mask -1)."""
    if mask > 0:
        for i in range(q.shape[0]):
            if not z[i] > 0:
                q[i] = 0
    else:
        for i in range(q.shape[0]):
            if not z[i] < 0:
                q[i] = 0


@njit(parallel=True, cache=True)
def _dense_quotient(rel, d, bias, has_bias, z, mask, eps, s):
    """s = rel / stab(d + bias) (masked), all (M, J); bias (J,)."""
    for m in prange(rel.shape[0]):
        r, dd, q = rel[m], d[m], s[m]
        if has_bias:
            for j in range(q.shape[0]):
                q[j] = r[j] / _stab(dd[j] + bias[j], eps)
        else:
            for j in range(q.shape[0]):
                q[j] = r[j] / _stab(dd[j], eps)
        if mask:
            _mask(q, z[m], mask)


@njit(parallel=True, cache=True)
def _dense_accumulate(x, bcast, g, cs, out):
    """out += (cs * x) ⊙ g, all (M, K); x (1, K) when bcast."""
    step = 0 if bcast else 1  # (a conditional on the prange index would type it float)
    for m in prange(out.shape[0]):
        d, xs, gs = out[m], x[m * step], g[m]
        for k in range(d.shape[0]):
            d[k] += (cs * xs[k]) * gs[k]


@njit(parallel=True, cache=True)
def _sumpool(x, kh, kw, sh, sw, dh, dw, pt, pl, out):
    """Window sums with zero padding, added in kernel-offset order; x (N, C, H, W), out (N, C, OH, OW)."""
    n_, c_, h, w = x.shape
    oh, ow = out.shape[2], out.shape[3]
    one = x.dtype.type(1)
    for item in prange(n_ * c_):
        plane, dst = x[item // c_, item % c_], out[item // c_, item % c_]
        dst[:, :] = 0
        for ky in range(kh):
            lo_y, hi_y = _rows(0, oh, sh, dh, pt, ky, h)
            for kx in range(kw):
                lo, hi = _span(kx * dw - pl, sw, w, ow)
                for oy in range(lo_y, hi_y):
                    _gather(dst[oy], plane[oy * sh + ky * dh - pt], lo, hi, sw, kx * dw - pl, one)


@njit(parallel=True, cache=True)
def _unpool(s, kh, kw, sh, sw, dh, dw, pt, pl, out):
    """Transpose of _sumpool, cropped to out (N, C, H, W); contributions add in kernel-offset order."""
    n_, c_, h, w = out.shape
    oh, ow = s.shape[2], s.shape[3]
    one = s.dtype.type(1)
    for item in prange(n_ * c_):
        src, dst = s[item // c_, item % c_], out[item // c_, item % c_]
        dst[:, :] = 0
        for ky in range(kh):
            lo_y, hi_y = _rows(0, oh, sh, dh, pt, ky, h)
            for kx in range(kw):
                lo, hi = _span(kx * dw - pl, sw, w, ow)
                for oy in range(lo_y, hi_y):
                    _scatter(dst[oy * sh + ky * dh - pt], src[oy], lo, hi, sw, kx * dw - pl, one)


@njit(parallel=True, cache=True)
def _maxpool_winner(a, rel, kh, kw, sh, sw, dh, dw, pt, pl, out):
    """Each output's relevance to the first maximum of its window in row-major offset order (padding
    never wins; NaN does, as in numpy's argmax); overlapping windows add up."""
    n_, c_, h, w = a.shape
    oh, ow = rel.shape[2], rel.shape[3]
    for item in prange(n_ * c_):
        plane, r, dst = a[item // c_, item % c_], rel[item // c_, item % c_], out[item // c_, item % c_]
        dst[:, :] = 0
        for oy in range(oh):
            for ox in range(ow):
                by, bx, best = -1, -1, plane[0, 0]
                for ky in range(kh):
                    iy = oy * sh + ky * dh - pt
                    if iy < 0 or iy >= h:
                        continue
                    row = plane[iy]
                    for kx in range(kw):
                        ix = ox * sw + kx * dw - pl
                        if ix < 0 or ix >= w:
                            continue
                        v = row[ix]
                        if by < 0 or v > best or (v != v and best == best):
                            by, bx, best = iy, ix, v
                if by >= 0:
                    dst[by, bx] += r[oy, ox]


@njit(parallel=True, cache=True)
def _maxpool_proportional(a, rel, kh, kw, sh, sw, dh, dw, pt, pl, eps, out):
    """out = a ⊙ unpool(rel / stab(sumpool(a))), one plane per thread, sums in the reference's order."""
    n_, c_, h, w = a.shape
    oh, ow = rel.shape[2], rel.shape[3]
    one = a.dtype.type(1)
    for item in prange(n_ * c_):
        plane, r, dst = a[item // c_, item % c_], rel[item // c_, item % c_], out[item // c_, item % c_]
        q = np.zeros((oh, ow), a.dtype)
        acc = np.zeros((h, w), a.dtype)
        for ky in range(kh):
            lo_y, hi_y = _rows(0, oh, sh, dh, pt, ky, h)
            for kx in range(kw):
                lo, hi = _span(kx * dw - pl, sw, w, ow)
                for oy in range(lo_y, hi_y):
                    _gather(q[oy], plane[oy * sh + ky * dh - pt], lo, hi, sw, kx * dw - pl, one)
        for oy in range(oh):
            qr, rr = q[oy], r[oy]
            for ox in range(ow):
                qr[ox] = rr[ox] / _stab(qr[ox], eps)
        for ky in range(kh):
            lo_y, hi_y = _rows(0, oh, sh, dh, pt, ky, h)
            for kx in range(kw):
                lo, hi = _span(kx * dw - pl, sw, w, ow)
                for oy in range(lo_y, hi_y):
                    _scatter(acc[oy * sh + ky * dh - pt], q[oy], lo, hi, sw, kx * dw - pl, one)
        for iy in range(h):
            d, ar, ac = dst[iy], plane[iy], acc[iy]
            for ix in range(w):
                d[ix] = ar[ix] * ac[ix]


@njit(parallel=True, cache=True)
def _add_into(total, x):
    for i in prange(total.size):
        total[i] += x[i]


@njit(parallel=True, cache=True)
def _quotient_into(rel, total, eps):
    for i in prange(total.size):
        total[i] = rel[i] / _stab(total[i], eps)


@njit(parallel=True, cache=True)
def _product(x, s, out):
    for i in prange(out.size):
        out[i] = x[i] * s[i]


# ----------------------------------------------------------------------------------------------------
# Rule passes.

def _terms(fn: str, xs, ws, bs, signs) -> int:
    """The number of terms T; every list must have T entries."""
    lists = {"xs": xs, "ws": ws, "bs": bs, "signs": signs}
    for name, value in lists.items():
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{fn}: {name} must be a list, got {type(value).__name__}")
    count = len(xs)
    if count == 0:
        raise ValueError(f"{fn}: xs must hold at least one term, got 0")
    for name, value in lists.items():
        if len(value) != count:
            raise ValueError(f"{fn}: {name} must have {count} entries (one per term, as xs), got {len(value)}")
    return count


def _quotient_args(fn: str, shape: tuple, denom, z, mask, dtype, check: Callable):
    """Checks denom, z and mask against the relevance's `shape` with `check` (a _Checks.array);
    returns (denom or None, z or None, mask)."""
    if mask not in (0, 1, -1):
        raise ValueError(f"{fn}: mask must be 0, 1 or -1, got {mask!r}")
    if denom is not None:
        check(fn, "denom", denom, dtype, shape)
    if mask:
        check(fn, "z", z, dtype, shape)
    return denom, (z if mask else None), int(mask)


def _term_inputs(fn: str, xs, ws, bs, count: int, dtype, n: int, x_shape: tuple, w_shape: tuple, b_shape: tuple,
                 check: Callable) -> None:
    """Checks every term's input (of x_shape, or with a leading 1), weight and bias with `check`."""
    for t in range(count):
        check(fn, f"ws[{t}]", ws[t], dtype, w_shape)
        got = check(fn, f"xs[{t}]", xs[t], dtype, (None, *x_shape[1:])).shape
        if got[0] not in (1, n):
            raise ValueError(f"{fn}: xs[{t}] must have shape {_fmt((n, *x_shape[1:]))} or "
                             f"{_fmt((1, *x_shape[1:]))}, got {got}")
        if bs[t] is not None:
            check(fn, f"bs[{t}]", bs[t], dtype, b_shape)


def _bias_sum(terms, dtype) -> np.ndarray | None:
    """Σ_t sign_t b_t over the terms that have a bias, or None."""
    total = None
    for x, w, b, sign in terms:
        if b is not None:
            part = b * dtype.type(sign)
            total = part if total is None else total + part
    return total


def _conv_args(checks: _Checks, xs, ws, bs, signs, relevance, denom, z, mask, strides, dilations, pads, group,
               out):
    """conv_group's arguments checked: (dtype, group, window, (n, c, cout), denom, z, mask)."""
    fn = "conv_group"
    dtype = checks.dtype(fn, "relevance", relevance)
    count = _terms(fn, xs, ws, bs, signs)
    sd = checks.spatial_rank(fn, "out", out)
    n, c, *size = checks.array(fn, "out", out, dtype, (None,) * (sd + 2), writable=True).shape
    group = _ints(fn, "group", [group], 1, 1)[0]
    cout, _, *kernel = checks.array(fn, "ws[0]", ws[0], dtype, (None,) * (sd + 2)).shape
    if c % group or cout % group:
        raise ValueError(f"{fn}: group {group} must divide the input channels {c} and output channels {cout}")
    win = _window(fn, size, kernel, strides, dilations, pads)
    _term_inputs(fn, xs, ws, bs, count, dtype, n, (n, c, *size), (cout, c // group, *kernel), (cout,), checks.array)
    shape = checks.array(fn, "relevance", relevance, dtype, (n, cout, *_spatial_out(sd, win))).shape
    return dtype, group, win, (n, c, cout), *_quotient_args(fn, shape, denom, z, mask, dtype, checks.array)


def _dense_args(checks: _Checks, xs, ws, bs, signs, relevance, denom, z, mask, out):
    """dense_group's arguments checked: (dtype, (m, k, j), denom, z, mask)."""
    fn = "dense_group"
    dtype = checks.dtype(fn, "relevance", relevance)
    count = _terms(fn, xs, ws, bs, signs)
    m, k = checks.array(fn, "out", out, dtype, (None, None), writable=True).shape
    j = checks.array(fn, "ws[0]", ws[0], dtype, (None, k)).shape[0]
    _term_inputs(fn, xs, ws, bs, count, dtype, m, (m, k), (j, k), (j,), checks.array)
    shape = checks.array(fn, "relevance", relevance, dtype, (m, j)).shape
    return dtype, (m, k, j), *_quotient_args(fn, shape, denom, z, mask, dtype, checks.array)


def _spatial_out(sd: int, win: _Win) -> tuple[int, ...]:
    """The output's spatial size of a window over `sd` spatial axes."""
    return (win.ow,) if sd == 1 else (win.oh, win.ow)


def conv_group(xs, ws, bs, signs, relevance, denom, z, mask, coeff, stabilizer, strides, dilations, pads,
               group, out) -> None:
    """One group of a rule through a convolution; accumulates into `out` (docs/kernels.md)."""
    dtype, group, win, (n, c, cout), denom, z, mask = _conv_args(HOST, xs, ws, bs, signs, relevance, denom, z, mask,
                                                                 strides, dilations, pads, group, out)
    terms = [(_as4(x), _as4(w), b, float(sign)) for x, w, b, sign in zip(xs, ws, bs, signs)]
    _ConvPass(win, group, n, c, cout, dtype, terms).run(
        relevance, denom, z, mask, float(coeff), dtype.type(stabilizer), _as4(out))


class _ConvPass:
    """One conv_group call: chunk plan, buffers and the passes over them. Terms are (x, w, b, sign)
    with x and w of rank 4."""

    def __init__(self, win: _Win, group: int, n: int, c: int, cout: int, dtype: np.dtype, terms):
        self.win, self.group, self.n, self.cout, self.dtype, self.terms = win, group, n, cout, dtype, terms
        cg, self.coutg, kk = c // group, cout // group, win.kh * win.kw
        self.ckg, self.p = cg * kk, win.oh * win.ow
        # Small groups (depthwise and the like) run direct loops: their GEMMs would be tiny.
        self.direct = group > 1 and cg * self.coutg <= DIRECT_MAX
        # A pointwise conv's columns are its input: no im2col for a single term.
        self.pointwise = (win.kh, win.kw, win.sh, win.sw, win.pt, win.pl) == (1, 1, 1, 1, 0, 0) and \
            (win.oh, win.ow) == (win.h, win.w)
        # Column buffer: T terms x C·K rows (the transposed pass's columns of every term, which the
        # forward pass's never exceed) by as many output positions as fit the budget.
        rows = 0 if self.direct else len(terms) * c * kk
        fit = max(1, COLUMN_BYTES // ((rows or cout) * dtype.itemsize))
        if self.p <= fit:
            self.nsamp, self.nrows = max(1, min(n, fit // self.p)), win.oh
        else:
            self.nsamp, self.nrows = 1, max(1, min(win.oh, fit // win.ow))
        most = self.nsamp * self.nrows * win.ow
        self.columns = np.empty(rows * most, dtype)
        self.quotient = np.empty(cout * most, dtype)

    def chunks(self, n: int):
        """(first sample, samples, first output row, rows) covering n samples."""
        if self.nrows == self.win.oh:
            for n0 in range(0, n, self.nsamp):
                yield n0, min(self.nsamp, n - n0), 0, self.win.oh
        else:
            for n0 in range(n):
                for r0 in range(0, self.win.oh, self.nrows):
                    yield n0, 1, r0, min(self.nrows, self.win.oh - r0)

    def grouped(self, w: np.ndarray) -> np.ndarray:
        """(Cout, C/group, KH, KW) -> (group, Cout/group, C/group·K), the GEMM layout."""
        return w.reshape(self.group, self.coutg, self.ckg)

    def forward(self, terms, n0, nsamp, r0, nrows, dst):
        """dst (Cout, chunk) = Σ_t sign_t conv(x_t, w_t) over the chunk: one GEMM per group with the
        terms' signed weights side by side against their columns stacked, or the direct loops."""
        win, group, pc = self.win, self.group, nsamp * nrows * self.win.ow
        if self.direct:
            for t, (x, w, _, sign) in enumerate(terms):
                _direct_forward(x, x.shape[0] == 1, n0, nsamp, r0, nrows, *win.args, win.ow, w, self.dtype.type(sign),
                                t == 0, dst)
            return
        if self.pointwise and len(terms) == 1:
            x, w, _, sign = terms[0]
            weights = self.grouped(w) * self.dtype.type(sign) if sign != 1.0 else self.grouped(w)
            flat, cg, p0, pcs = x.reshape(x.shape[0], x.shape[1], -1), self.ckg, r0 * win.ow, nrows * win.ow
            for ns in range(nsamp):
                xn = flat[0 if x.shape[0] == 1 else n0 + ns]
                for g in range(group):
                    _matmul(weights[g], xn[g * cg:(g + 1) * cg, p0:p0 + pcs],
                            dst[g * self.coutg:(g + 1) * self.coutg, ns * pcs:(ns + 1) * pcs])
            return
        cols = self.columns[:group * len(terms) * self.ckg * pc].reshape(group * len(terms) * self.ckg, pc)
        for t, (x, _, _, _) in enumerate(terms):
            _im2col(x, x.shape[0] == 1, n0, nsamp, r0, nrows, *win.args, win.ow, group, len(terms), t, cols)
        if len(terms) == 1 and terms[0][3] == 1.0:
            weights = self.grouped(terms[0][1])
        else:
            weights = np.concatenate([self.grouped(w) * self.dtype.type(sign) for _, w, _, sign in terms], axis=2)
        cols = cols.reshape(group, len(terms) * self.ckg, pc)
        for g in range(group):
            _matmul(weights[g], cols[g], dst[g * self.coutg:(g + 1) * self.coutg])

    def transpose(self, s, n0, nsamp, r0, nrows, coeff, out):
        """out += coeff Σ_t sign_t x_t ⊙ convᵀ(s, w_t) over the chunk: one GEMM per group with every
        term's Wᵀ stacked, then col2im fused with the product per term; or the direct loops."""
        win, group, terms, pc = self.win, self.group, self.terms, nsamp * nrows * self.win.ow
        if self.direct:
            for x, w, _, sign in terms:
                _direct_transpose(s, n0, nsamp, r0, nrows, *win.args, win.ow, w, x, x.shape[0] == 1,
                                  self.dtype.type(coeff * sign), out)
            return
        cols = self.columns[:group * len(terms) * self.ckg * pc].reshape(group, len(terms) * self.ckg, pc)
        for g in range(group):
            _matmul(self.stacked[g], s[g * self.coutg:(g + 1) * self.coutg], cols[g], trans_a=True)
        cols = cols.reshape(-1, pc)
        for t, (x, _, _, sign) in enumerate(terms):
            _col2im(cols, n0, nsamp, r0, nrows, *win.args, win.ow, group, len(terms), t, x, x.shape[0] == 1,
                    self.dtype.type(coeff * sign), out)

    def run(self, relevance, denom, z, mask, coeff, eps, out):
        win, n, cout, dtype, terms = self.win, self.n, self.cout, self.dtype, self.terms
        rel = relevance.reshape(n, cout, self.p)
        dummy2, dummy3 = np.zeros((1, 1), dtype), np.zeros((1, 1, 1), dtype)
        bias, dconst, own = None, None, terms
        if denom is None:
            bias = _bias_sum(terms, dtype)
            shared = [t for t in terms if t[0].shape[0] == 1] if n > 1 else []
            own = [t for t in terms if not (n > 1 and t[0].shape[0] == 1)]
            if shared:  # the bounds' part of the denominator is the same for every sample: once
                dconst = np.empty((cout, self.p), dtype)
                for _, _, r0, nrows in self.chunks(1):
                    part = self.quotient[:cout * nrows * win.ow].reshape(cout, nrows * win.ow)
                    self.forward(shared, 0, 1, r0, nrows, part)
                    dconst[:, r0 * win.ow:(r0 + nrows) * win.ow] = part
        if not self.direct:  # every term's W side by side: (group, Cout/group, T·C/group·K), used transposed
            grouped = [self.grouped(w) for _, w, _, _ in terms]
            self.stacked = grouped[0] if len(terms) == 1 else np.concatenate(grouped, axis=2)
        for n0, nsamp, r0, nrows in self.chunks(n):
            pcs = nrows * win.ow
            s = self.quotient[:cout * nsamp * pcs].reshape(cout, nsamp * pcs)
            if denom is None and own:
                self.forward(own, n0, nsamp, r0, nrows, s)
            _conv_quotient(rel, n0, nsamp, r0 * win.ow, pcs, s, denom is None and bool(own),
                           dummy2 if dconst is None else dconst, dconst is not None,
                           dummy2[0] if bias is None else bias, bias is not None,
                           dummy3 if denom is None else denom.reshape(rel.shape), denom is not None,
                           dummy3 if z is None else z.reshape(rel.shape), mask, eps, s)
            self.transpose(s, n0, nsamp, r0, nrows, coeff, out)


def dense_group(xs, ws, bs, signs, relevance, denom, z, mask, coeff, stabilizer, out) -> None:
    """One group of a rule through a dense layer y = x Wᵀ + b; accumulates into `out` (docs/kernels.md)."""
    dtype, (m, k, j), denom, z, mask = _dense_args(HOST, xs, ws, bs, signs, relevance, denom, z, mask, out)
    terms = list(zip(xs, ws, bs, (float(s) for s in signs)))
    bias = None
    if denom is None:
        bias = _bias_sum(terms, dtype)
        denom = np.zeros((m, j), dtype)
        for x, w, _, sign in terms:
            part = _matmul(x, w, np.empty((x.shape[0], j), dtype), trans_b=True)
            if sign != 1.0:
                part *= dtype.type(sign)
            denom += part
    s = np.empty((m, j), dtype)
    _dense_quotient(relevance, denom, np.zeros(1, dtype) if bias is None else bias, bias is not None,
                    np.zeros((1, 1), dtype) if z is None else z, mask, dtype.type(stabilizer), s)
    g = np.empty((m, k), dtype)
    for x, w, _, sign in terms:
        _matmul(s, w, g)
        _dense_accumulate(x, x.shape[0] == 1, g, dtype.type(float(coeff) * sign), out)


# ----------------------------------------------------------------------------------------------------
# Pooling and sums.

def _pool_args(fn: str, name: str, a, kernel, strides, dilations, pads, checks: _Checks = HOST):
    """dtype, window and shape of a pooling input."""
    dtype = checks.dtype(fn, name, a)
    sd = checks.spatial_rank(fn, name, a)
    shape = checks.array(fn, name, a, dtype, (None,) * (sd + 2)).shape
    return dtype, _window(fn, shape[2:], kernel, strides, dilations, pads), shape


def _out_shape(shape: tuple[int, ...], win: _Win) -> tuple[int, ...]:
    """The pooled shape of an input of `shape`."""
    return (*shape[:2], *_spatial_out(len(shape) - 2, win))


def _unpool_args(s, kernel, strides, dilations, pads, in_size, checks: _Checks = HOST):
    """unpool's arguments checked: (dtype, in_size, window, shape of s)."""
    fn = "unpool"
    dtype = checks.dtype(fn, "s", s)
    sd = checks.spatial_rank(fn, "s", s)
    in_size = _ints(fn, "in_size", in_size, sd, 1)
    win = _window(fn, in_size, kernel, strides, dilations, pads)
    return dtype, in_size, win, checks.array(fn, "s", s, dtype, (None, None, *_spatial_out(sd, win))).shape


def _split_args(inputs, relevance, checks: _Checks = HOST):
    """add_split's arguments checked: (dtype, the relevance's shape)."""
    fn = "add_split"
    dtype = checks.dtype(fn, "relevance", relevance)
    shape = checks.array(fn, "relevance", relevance, dtype, None).shape
    if not isinstance(inputs, (list, tuple)) or not inputs:
        raise ValueError(f"{fn}: inputs must be a non-empty list of arrays, got {inputs!r:.80}")
    for i, x in enumerate(inputs):
        checks.array(fn, f"inputs[{i}]", x, dtype, shape)
    return dtype, shape


def maxpool_winner(a, relevance, kernel, strides, dilations, pads) -> np.ndarray:
    """Max pooling's winner-take-all: each output's relevance to the first maximum of its window."""
    fn = "maxpool_winner"
    dtype, win, shape = _pool_args(fn, "a", a, kernel, strides, dilations, pads)
    _check(fn, "relevance", relevance, dtype, _out_shape(shape, win))
    a4 = _as4(a)
    out = np.empty(a.shape, dtype)
    _maxpool_winner(a4, _as4(relevance), *win.args, _as4(out))
    return out


def maxpool_proportional(a, relevance, kernel, strides, dilations, pads, stabilizer) -> np.ndarray:
    """Max pooling's proportional (z-rule) pass: a ⊙ unpool(relevance / stab(sumpool(a)))."""
    fn = "maxpool_proportional"
    dtype, win, shape = _pool_args(fn, "a", a, kernel, strides, dilations, pads)
    _check(fn, "relevance", relevance, dtype, _out_shape(shape, win))
    a4 = _as4(a)
    out = np.empty(a.shape, dtype)
    _maxpool_proportional(a4, _as4(relevance), *win.args, dtype.type(stabilizer), _as4(out))
    return out


def sumpool(x, kernel, strides, dilations, pads) -> np.ndarray:
    """Window sums with zero padding: (N, C, *O)."""
    dtype, win, shape = _pool_args("sumpool", "x", x, kernel, strides, dilations, pads)
    out = np.empty(_out_shape(shape, win), dtype)
    _sumpool(_as4(x), *win.args, _as4(out))
    return out


def unpool(s, kernel, strides, dilations, pads, in_size) -> np.ndarray:
    """The transpose of sumpool for an input of spatial size `in_size`: (N, C, *in_size)."""
    dtype, in_size, win, shape = _unpool_args(s, kernel, strides, dilations, pads, in_size)
    out = np.empty((*shape[:2], *in_size), dtype)
    _unpool(_as4(s), *win.args, _as4(out))
    return out


def add_split(inputs, relevance, stabilizer) -> list[np.ndarray]:
    """R_k = x_k ⊙ relevance / stab(Σ_k x_k) for inputs of the relevance's shape."""
    dtype, shape = _split_args(inputs, relevance)
    flat = [x.reshape(-1) for x in inputs]
    total = flat[0].copy()
    for x in flat[1:]:
        _add_into(total, x)
    _quotient_into(relevance.reshape(-1), total, dtype.type(stabilizer))
    results = [np.empty(shape, dtype) for _ in inputs]
    for x, r in zip(flat, results):
        _product(x, total, r.reshape(-1))
    return results
