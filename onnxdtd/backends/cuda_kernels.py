"""The compiled kernel API (docs/kernels.md) as Numba CUDA kernels: the kernels of the `cuda` backend.

Arrays are device arrays: CuPy arrays, numba device arrays or anything else with
`__cuda_array_interface__`; under the simulator (NUMBA_ENABLE_CUDASIM=1) numpy arrays instead. Arrays
that a function returns, and its scratch buffers, come from the library of its first array argument
(CuPy's memory pool for CuPy arrays). Every kernel runs on the default stream, as CuPy's work does by
default, so calls are ordered without synchronizing; arrays are imported without the stream sync of
the array interface for that reason.

Each kernel is one grid-stride loop over the elements it writes (`_launch`: THREADS per block, at most
MAX_BLOCKS blocks), so that no two threads write the same element (no atomics: results do not depend
on scheduling) and the summation order is the numba backend's wherever it is one result:
- conv_group and dense_group (a dense layer is a 1x1 conv over 1x1 images) run as three passes: the
  modified forward pass `_conv_forward` into the denominator, the stabilized division `_quotient`,
  and the transposed pass fused with the input product `_conv_transpose`, one thread per output
  element of each. The two products are direct loops over the receptive field for this first
  milestone. On a GPU they become cuBLAS GEMMs through CuPy (cupy.matmul over im2col columns, the
  numpy reference's `_Conv` layout; the dense layer's directly), where they are the bottleneck: a
  direct loop reads every input once per output channel from global memory, while a GEMM tiles it
  through shared memory and tensor cores. Which one wins at VGG16/ResNet50 sizes is measured on the
  GPU (benchmarks/bench_gpu.py); `_forward` and `_transpose` are the two functions to replace.
- max pooling's winner pass finds each window's first maximum (`_argmax`), then every input element
  gathers the relevance of the windows it won (`_winner`), in the order of the numba backend's
  scatter; sums and unpooling gather the same way.

Argument checks and messages are the numba backend's (its window and list checks are reused; array
checks read the array interface instead of numpy's flags)."""
from __future__ import annotations

import math
import sys
from typing import Any, NamedTuple, Sequence

import numpy as np
from numba import cuda
from numba.cuda.core.config import ENABLE_CUDASIM

from .numba_kernels import (FLOATS, _as4, _Checks, _conv_args, _dense_args, _fmt, _out_shape, _pool_args,
                            _split_args, _unpool_args, _Win, _window)

__all__ = ["conv_group", "dense_group", "maxpool_winner", "maxpool_proportional", "sumpool", "unpool",
           "add_split"]

THREADS = 256  # threads per block
MAX_BLOCKS = 4096  # blocks per launch; larger problems loop (grid stride)


# ----------------------------------------------------------------------------------------------------
# Device arrays: reading their interface, allocating alike, viewing them for the kernels.

class _Desc(NamedTuple):
    """What the checks read off an array's interface."""

    shape: tuple[int, ...]
    dtype: np.dtype
    contiguous: bool
    writable: bool


def _interface(a) -> dict | None:
    """The CUDA array interface of a device array (numpy's array interface under the simulator)."""
    if isinstance(a, np.ndarray):
        return a.__array_interface__ if ENABLE_CUDASIM else None
    return getattr(a, "__cuda_array_interface__", None)


def _describe(a) -> _Desc | None:
    """Shape, dtype, C-contiguity and writability of an array; None for anything that is not one."""
    face = _interface(a)
    if face is None:
        return None
    shape, dtype, strides = tuple(face["shape"]), np.dtype(face["typestr"]), face.get("strides")
    contiguous, step = True, dtype.itemsize
    for size, stride in zip(reversed(shape), reversed(strides or ())):
        contiguous &= size <= 1 or stride == step
        step *= size
    return _Desc(shape, dtype, contiguous, not face["data"][1])


KIND = "a device array or, under the simulator, a numpy array" if ENABLE_CUDASIM else \
    "a device array (__cuda_array_interface__: CuPy, numba)"  # what the checks ask for


def _dtype(fn: str, name: str, a) -> np.dtype:
    """The call's dtype, read off its first array: float32 or float64."""
    desc = _describe(a)
    if desc is None:
        raise TypeError(f"{fn}: {name} must be {KIND}, got {type(a).__name__}")
    if desc.dtype not in FLOATS:
        raise TypeError(f"{fn}: {name} must have dtype float32 or float64, got {desc.dtype}")
    return desc.dtype


def _check(fn: str, name: str, a, dtype: np.dtype, shape: Sequence[int | None] | None,
           writable: bool = False) -> _Desc:
    """`a` must be a C-contiguous `dtype` array of `shape` (None matches any size; shape None any shape);
    returns its description."""
    desc = _describe(a)
    if desc is None:
        raise TypeError(f"{fn}: {name} must be {KIND} of dtype {dtype}, got {type(a).__name__}")
    if desc.dtype != dtype:
        raise TypeError(f"{fn}: {name} must have dtype {dtype} (the call's dtype), got {desc.dtype}")
    if shape is not None and len(desc.shape) != len(shape):
        raise ValueError(f"{fn}: {name} must have rank {len(shape)}, shape {_fmt(shape)}, got shape {desc.shape}")
    if shape is not None and any(e is not None and e != g for e, g in zip(shape, desc.shape)):
        raise ValueError(f"{fn}: {name} must have shape {_fmt(shape)}, got {desc.shape}")
    if not desc.contiguous:
        raise ValueError(f"{fn}: {name} must be C-contiguous, got a strided view of shape {desc.shape}")
    if writable and not desc.writable:
        raise ValueError(f"{fn}: {name} must be writable")
    return desc


def _spatial_rank(fn: str, name: str, a) -> int:
    """The number of spatial axes of a pooling or conv array: 1 or 2."""
    desc = _describe(a)
    if desc is None or len(desc.shape) not in (3, 4):
        got = type(a).__name__ if desc is None else desc.shape
        raise ValueError(f"{fn}: {name} must have rank 3 or 4 (N, C, *spatial with 1 or 2 spatial axes), got {got}")
    return len(desc.shape) - 2


DEVICE = _Checks(_dtype, _check, _spatial_rank)  # numba_kernels' argument checks, on device arrays


def _empty(like, shape: tuple[int, ...], dtype) -> Any:
    """An uninitialized array on `like`'s device, from `like`'s library (CuPy's pool for CuPy arrays)."""
    if isinstance(like, np.ndarray):
        return np.empty(shape, dtype)
    cupy = sys.modules.get("cupy")
    if cupy is not None and isinstance(like, cupy.ndarray):
        return cupy.empty(shape, dtype)
    return cuda.device_array(shape, dtype)


def _view(a, shape: tuple[int, ...] | None = None):
    """`a` as a kernel argument, reshaped to `shape`: a zero-copy numba view of a device array (no
    stream sync, see the module docstring); under the simulator a numpy array as it is, or a device
    copy of a read-only one (the simulator copies every numpy argument back after a launch)."""
    if isinstance(a, np.ndarray):
        v = a if a.flags.writeable else cuda.to_device(a)
    else:
        v = cuda.as_cuda_array(a, sync=False)
    return v if shape is None else v.reshape(shape)


def _flat(a):
    """`a` as a flat kernel view."""
    return _view(a, (math.prod(_describe(a).shape),))


def _as4v(a):
    """A rank-3 or rank-4 array as a rank-4 kernel view (1-D windows have height 1)."""
    return _as4(_view(a))


def _launch(kernel, *args) -> None:
    """Run a grid-stride kernel over the elements of the array it writes, its last argument."""
    total = args[-1].size
    if total > 0:
        kernel[min(MAX_BLOCKS, -(-total // THREADS)), THREADS](*args)


# ----------------------------------------------------------------------------------------------------
# Kernels. Integer geometry as in numba_kernels: kernel (kh, kw), strides (sh, sw), dilations (dh, dw),
# begin pads (pt, pl); output (oy, ox) at kernel offset (ky, kx) reads input (oy*sh + ky*dh - pt,
# ox*sw + kx*dw - pl). An input coordinate i is read by offset k of output (i + p - k*d) / s where
# that divides exactly and lies in range.

@cuda.jit(device=True, inline="always")
def _stab(d, eps):
    """The stabilized denominator d + ε·sgn(d), sgn(0) = +1."""
    return d + eps if d >= 0 else d - eps


@cuda.jit(device=True, inline="always")
def _tap(o, k, s, d, p, size):
    """The input coordinate that window offset k of output o reads, or -1 in the padding."""
    i = o * s + k * d - p
    return i if 0 <= i < size else -1


@cuda.jit(device=True, inline="always")
def _source(i, k, d, p, s, count):
    """The output whose window offset k reads input coordinate i, or -1."""
    t = i + p - k * d
    if t < 0 or t % s != 0 or t // s >= count:
        return -1
    return t // s


@cuda.jit
def _conv_forward(x, bcast, w, kh, kw, sh, sw, dh, dw, pt, pl, sign, first, d):
    """d = (first) or += sign * conv(x, w); x (N', C, H, W) with N' = 1 when bcast, w (Cout, C/group,
    KH, KW), d (N, Cout, OH, OW). One thread per output element."""
    cout, oh, ow = d.shape[1], d.shape[2], d.shape[3]
    h, wd, cg = x.shape[2], x.shape[3], w.shape[1]
    coutg = cout // (x.shape[1] // cg)
    for item in range(cuda.grid(1), d.size, cuda.gridsize(1)):
        ox, rest = item % ow, item // ow
        oy, rest = rest % oh, rest // oh
        co, n = rest % cout, rest // cout
        nx, c0 = 0 if bcast else n, (co // coutg) * cg
        acc = d.dtype.type(0)
        for cl in range(cg):
            for ky in range(kh):
                iy = _tap(oy, ky, sh, dh, pt, h)
                if iy < 0:
                    continue
                for kx in range(kw):
                    ix = _tap(ox, kx, sw, dw, pl, wd)
                    if ix >= 0:
                        acc += x[nx, c0 + cl, iy, ix] * w[co, cl, ky, kx]
        if first:
            d[n, co, oy, ox] = sign * acc
        else:
            d[n, co, oy, ox] += sign * acc


@cuda.jit
def _conv_transpose(s, w, x, bcast, kh, kw, sh, sw, dh, dw, pt, pl, cs, out):
    """out += (cs * x) ⊙ convᵀ(s, w); s (N, Cout, OH, OW), out (N, C, H, W), x (N', C, H, W). One
    thread per input element."""
    c_all, h, wd = out.shape[1], out.shape[2], out.shape[3]
    oh, ow, cg = s.shape[2], s.shape[3], w.shape[1]
    coutg = w.shape[0] // (c_all // cg)
    for item in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        ix, rest = item % wd, item // wd
        iy, rest = rest % h, rest // h
        c, n = rest % c_all, rest // c_all
        cl, co0 = c % cg, (c // cg) * coutg
        acc = out.dtype.type(0)
        for co in range(co0, co0 + coutg):
            for ky in range(kh):
                oy = _source(iy, ky, dh, pt, sh, oh)
                if oy < 0:
                    continue
                for kx in range(kw):
                    ox = _source(ix, kx, dw, pl, sw, ow)
                    if ox >= 0:
                        acc += s[n, co, oy, ox] * w[co, cl, ky, kx]
        out[n, c, iy, ix] += (cs * x[0 if bcast else n, c, iy, ix]) * acc


@cuda.jit
def _quotient(rel, d, bias, has_bias, p, z, mask, eps, s):
    """s = rel / stab(d + bias[channel]) (flat arrays, channel = (i // p) % len(bias)), then zero where
    not z > 0 (mask 1) or not z < 0 (mask -1). s may be d; the arrays whose flag is off are
    placeholders and never read."""
    nb = bias.size
    for i in range(cuda.grid(1), s.size, cuda.gridsize(1)):
        v = d[i] + bias[(i // p) % nb] if has_bias else d[i]
        q = rel[i] / _stab(v, eps)
        if (mask > 0 and not z[i] > 0) or (mask < 0 and not z[i] < 0):
            q = s.dtype.type(0)
        s[i] = q


@cuda.jit
def _axpy(x, alpha, first, y):
    """y = alpha * x (first) or y += alpha * x, flat arrays."""
    for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        y[i] = alpha * x[i] if first else y[i] + alpha * x[i]


@cuda.jit
def _product(x, s, out):
    """out = x ⊙ s, flat arrays."""
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[i] = x[i] * s[i]


@cuda.jit
def _sumpool(x, kh, kw, sh, sw, dh, dw, pt, pl, out):
    """Window sums with zero padding in kernel-offset order; x (N, C, H, W), out (N, C, OH, OW)."""
    h, w, oh, ow = x.shape[2], x.shape[3], out.shape[2], out.shape[3]
    for item in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        ox, rest = item % ow, item // ow
        oy, plane = rest % oh, rest // oh
        acc = out.dtype.type(0)
        for ky in range(kh):
            iy = _tap(oy, ky, sh, dh, pt, h)
            if iy < 0:
                continue
            for kx in range(kw):
                ix = _tap(ox, kx, sw, dw, pl, w)
                if ix >= 0:
                    acc += x[plane // x.shape[1], plane % x.shape[1], iy, ix]
        out[plane // x.shape[1], plane % x.shape[1], oy, ox] = acc


@cuda.jit
def _unpool(s, x, has_x, kh, kw, sh, sw, dh, dw, pt, pl, out):
    """out = unpool(s) (the transpose of _sumpool, cropped), times x when has_x (else x is a placeholder);
    contributions add in kernel-offset order. s (N, C, OH, OW), x and out (N, C, H, W)."""
    c_, h, w, oh, ow = out.shape[1], out.shape[2], out.shape[3], s.shape[2], s.shape[3]
    for item in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        ix, rest = item % w, item // w
        iy, plane = rest % h, rest // h
        n, c = plane // c_, plane % c_
        acc = out.dtype.type(0)
        for ky in range(kh):
            oy = _source(iy, ky, dh, pt, sh, oh)
            if oy < 0:
                continue
            for kx in range(kw):
                ox = _source(ix, kx, dw, pl, sw, ow)
                if ox >= 0:
                    acc += s[n, c, oy, ox]
        out[n, c, iy, ix] = x[n, c, iy, ix] * acc if has_x else acc


@cuda.jit
def _argmax(a, kh, kw, sh, sw, dh, dw, pt, pl, idx):
    """idx = the flat index iy*W + ix of each window's first maximum in row-major offset order (padding
    never wins; NaN does, as in numpy's argmax), -1 for a window wholly in the padding."""
    c_, h, w, oh, ow = a.shape[1], a.shape[2], a.shape[3], idx.shape[2], idx.shape[3]
    for item in range(cuda.grid(1), idx.size, cuda.gridsize(1)):
        ox, rest = item % ow, item // ow
        oy, plane = rest % oh, rest // oh
        n, c = plane // c_, plane % c_
        arg, best = -1, a[n, c, 0, 0]
        for ky in range(kh):
            iy = _tap(oy, ky, sh, dh, pt, h)
            if iy < 0:
                continue
            for kx in range(kw):
                ix = _tap(ox, kx, sw, dw, pl, w)
                if ix >= 0:
                    v = a[n, c, iy, ix]
                    if arg < 0 or v > best or (v != v and best == best):
                        arg, best = iy * w + ix, v
        idx[n, c, oy, ox] = arg


@cuda.jit
def _winner(idx, rel, kh, kw, sh, sw, dh, dw, pt, pl, out):
    """out = the relevance of every window whose maximum (idx) is this element, added in the order of
    the windows (row-major outputs, the numba backend's scatter order)."""
    c_, h, w, oh, ow = out.shape[1], out.shape[2], out.shape[3], rel.shape[2], rel.shape[3]
    for item in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        ix, rest = item % w, item // w
        iy, plane = rest % h, rest // h
        n, c = plane // c_, plane % c_
        me, acc = iy * w + ix, out.dtype.type(0)
        for ky in range(kh - 1, -1, -1):  # descending offsets: ascending outputs
            oy = _source(iy, ky, dh, pt, sh, oh)
            if oy < 0:
                continue
            for kx in range(kw - 1, -1, -1):
                ox = _source(ix, kx, dw, pl, sw, ow)
                if ox >= 0 and idx[n, c, oy, ox] == me:
                    acc += rel[n, c, oy, ox]
        out[n, c, iy, ix] = acc


# ----------------------------------------------------------------------------------------------------
# Rule passes.

def conv_group(xs, ws, bs, signs, relevance, denom, z, mask, coeff, stabilizer, strides, dilations, pads,
               group, out) -> None:
    """One group of a rule through a convolution; accumulates into `out` (docs/kernels.md)."""
    dtype, _, win, _, denom, z, mask = _conv_args(DEVICE, xs, ws, bs, signs, relevance, denom, z, mask, strides,
                                                  dilations, pads, group, out)
    _group(win, dtype, [(_as4v(x), _as4v(w), b, float(sg)) for x, w, b, sg in zip(xs, ws, bs, signs)],
           relevance, denom, z, mask, float(coeff), stabilizer, _as4v(out))


def dense_group(xs, ws, bs, signs, relevance, denom, z, mask, coeff, stabilizer, out) -> None:
    """One group of a rule through a dense layer y = x Wᵀ + b, run as a 1x1 conv over 1x1 images;
    accumulates into `out` (docs/kernels.md)."""
    dtype, (m, k, j), denom, z, mask = _dense_args(DEVICE, xs, ws, bs, signs, relevance, denom, z, mask, out)
    win = _window("dense_group", (1, 1), (1, 1), (1, 1), (1, 1), (0, 0, 0, 0))
    terms = [(_view(x, (_describe(x).shape[0], k, 1, 1)), _view(w, (j, k, 1, 1)), b, float(sg))
             for x, w, b, sg in zip(xs, ws, bs, signs)]
    _group(win, dtype, terms, relevance, denom, z, mask, float(coeff), stabilizer, _view(out, (m, k, 1, 1)))


def _group(win: _Win, dtype: np.dtype, terms, relevance, denom, z, mask: int, coeff: float, stabilizer,
           out4) -> None:
    """S = relevance / stab(D) (masked), then out4 += coeff Σ_t sign_t x_t ⊙ convᵀ(S, w_t); terms are
    (rank-4 view of x, rank-4 view of w, bias array or None, sign), out4 a rank-4 view."""
    shape = (*_describe(relevance).shape[:2], win.oh, win.ow)
    s = _view(_empty(relevance, shape, dtype))
    bias = None
    if denom is None:
        _forward(win, dtype, terms, s)
        bias = _bias_sum(relevance, dtype, terms)
    flat_s = s.reshape((s.size,))
    _divide(_flat(relevance), flat_s if denom is None else _flat(denom), dtype.type(stabilizer), flat_s, bias,
            win.oh * win.ow, None if z is None else _flat(z), mask)
    _transpose(win, dtype, terms, s, coeff, out4)


def _divide(relevance, d, eps, s, bias=None, p: int = 1, z=None, mask: int = 0) -> None:
    """s = relevance / stab(d + bias) (bias per channel of p positions), masked by z; flat views."""
    _launch(_quotient, relevance, d, s if bias is None else bias, bias is not None, p, s if z is None else z, mask,
            eps, s)


def _forward(win: _Win, dtype: np.dtype, terms, d) -> None:
    """d = Σ_t sign_t conv(x_t, w_t): the modified forward pass (the first product to hand to a GEMM)."""
    for t, (x, w, _, sign) in enumerate(terms):
        _launch(_conv_forward, x, x.shape[0] == 1, w, *win.args, dtype.type(sign), t == 0, d)


def _transpose(win: _Win, dtype: np.dtype, terms, s, coeff: float, out) -> None:
    """out += coeff Σ_t sign_t x_t ⊙ convᵀ(s, w_t): the transposed pass (the second product)."""
    for x, w, _, sign in terms:
        _launch(_conv_transpose, s, w, x, x.shape[0] == 1, *win.args, dtype.type(coeff * sign), out)


def _bias_sum(like, dtype: np.dtype, terms):
    """Σ_t sign_t b_t over the terms that have a bias, as a flat kernel view, or None."""
    biased = [(b, sign) for _, _, b, sign in terms if b is not None]
    if not biased:
        return None
    total = _flat(_empty(like, _describe(biased[0][0]).shape, dtype))
    for i, (b, sign) in enumerate(biased):
        _launch(_axpy, _flat(b), dtype.type(sign), i == 0, total)
    return total


# ----------------------------------------------------------------------------------------------------
# Pooling and sums.

def maxpool_winner(a, relevance, kernel, strides, dilations, pads):
    """Max pooling's winner-take-all: each output's relevance to the first maximum of its window."""
    fn = "maxpool_winner"
    dtype, win, shape = _pool_args(fn, "a", a, kernel, strides, dilations, pads, DEVICE)
    _check(fn, "relevance", relevance, dtype, _out_shape(shape, win))
    idx = _as4v(_empty(a, _out_shape(shape, win), np.int32))
    _launch(_argmax, _as4v(a), *win.args, idx)
    out = _empty(a, shape, dtype)
    _launch(_winner, idx, _as4v(relevance), *win.args, _as4v(out))
    return out


def maxpool_proportional(a, relevance, kernel, strides, dilations, pads, stabilizer):
    """Max pooling's proportional (z-rule) pass: a ⊙ unpool(relevance / stab(sumpool(a)))."""
    fn = "maxpool_proportional"
    dtype, win, shape = _pool_args(fn, "a", a, kernel, strides, dilations, pads, DEVICE)
    _check(fn, "relevance", relevance, dtype, _out_shape(shape, win))
    q = _as4v(_empty(a, _out_shape(shape, win), dtype))
    a4 = _as4v(a)
    _launch(_sumpool, a4, *win.args, q)
    flat_q = q.reshape((q.size,))
    _divide(_flat(relevance), flat_q, dtype.type(stabilizer), flat_q)
    out = _empty(a, shape, dtype)
    _launch(_unpool, q, a4, True, *win.args, _as4v(out))
    return out


def sumpool(x, kernel, strides, dilations, pads):
    """Window sums with zero padding: (N, C, *O)."""
    dtype, win, shape = _pool_args("sumpool", "x", x, kernel, strides, dilations, pads, DEVICE)
    out = _empty(x, _out_shape(shape, win), dtype)
    _launch(_sumpool, _as4v(x), *win.args, _as4v(out))
    return out


def unpool(s, kernel, strides, dilations, pads, in_size):
    """The transpose of sumpool for an input of spatial size `in_size`: (N, C, *in_size)."""
    dtype, in_size, win, shape = _unpool_args(s, kernel, strides, dilations, pads, in_size, DEVICE)
    out = _empty(s, (*shape[:2], *in_size), dtype)
    out4 = _as4v(out)
    _launch(_unpool, _as4v(s), out4, False, *win.args, out4)  # out4 also stands in for the absent x
    return out


def add_split(inputs, relevance, stabilizer) -> list:
    """R_k = x_k ⊙ relevance / stab(Σ_k x_k) for inputs of the relevance's shape."""
    dtype, shape = _split_args(inputs, relevance, DEVICE)
    flat = [_flat(x) for x in inputs]
    total = _flat(_empty(relevance, shape, dtype))
    for i, x in enumerate(flat):
        _launch(_axpy, x, dtype.type(1), i == 0, total)
    _divide(_flat(relevance), total, dtype.type(stabilizer), total)
    results = [_empty(relevance, shape, dtype) for _ in inputs]
    for x, r in zip(flat, results):
        _launch(_product, x, total, _flat(r))
    return results
