"""The `numpy` reference backend: readable, float32 or float64, every rule as modified forward, divide,
transposed pass, multiply."""
from __future__ import annotations

import functools
import math
from dataclasses import replace
from types import ModuleType
from typing import Sequence

import numpy as np

from ..graph.layer import Layer
from ..graph.ops.index import source_index
from ..rules.base import Rule, stabilize
from ..rules.gradient import derivative
from .base import Backend
from .geometry import Window, window
from .terms import BoundTerm, bind


def _pad(x: np.ndarray, win: Window, value: float = 0.0) -> np.ndarray:
    widths = [(0, 0), (0, 0)] + [(b, e + x_) for b, e, x_ in zip(win.begin, win.end, win.extra)]
    return np.pad(x, widths, constant_values=value)


def _crop(x: np.ndarray, win: Window) -> np.ndarray:
    return x[(..., *(slice(b, b + n) for b, n in zip(win.begin, win.in_size)))]


def _sumpool(xp: np.ndarray, win: Window) -> np.ndarray:
    """Window sums of an already padded input."""
    out = np.zeros(xp.shape[:2] + win.out_size, xp.dtype)
    for off in win.offsets():
        out += xp[(..., *win.slices(off))]
    return out


def _unpool(s: np.ndarray, win: Window) -> np.ndarray:
    """Transpose of _sumpool: scatter every output back over its window (padded layout)."""
    out = np.zeros(s.shape[:2] + win.padded_size, s.dtype)
    for off in win.offsets():
        out[(..., *win.slices(off))] += s
    return out


class _Dense:
    """y = x @ Wᵀ + b over axis -1 (or 0 for Gemm with transA)."""

    def __init__(self, layer: Layer, shape: tuple[int, ...]):
        self.axis = layer.attrs.get("axis", -1)

    def forward(self, x, w, b):
        y = np.moveaxis(x, self.axis, -1) @ w.T
        return y if b is None else y + b

    def transpose(self, s, w):
        return np.moveaxis(s @ w, -1, self.axis)


class _Conv:
    """Grouped N-D convolution as one matrix product per group over im2col columns."""

    def __init__(self, layer: Layer, shape: tuple[int, ...]):
        self.win, self.group, self.shape = window(layer, shape[2:]), layer.attrs["group"], shape
        self.size = math.prod(self.win.out_size)
        self.offsets = self.win.offsets()

    def _grouped(self, w):
        """(Cout, Cin/g, *k) -> (g, Cout/g, Cin/g·K), matching the column layout."""
        return w.reshape(self.group, w.shape[0] // self.group, -1)

    def _columns(self, x):
        """(g, Cin/g·K, N·P): every receptive field as a column."""
        n, c, g = x.shape[0], x.shape[1], self.group
        xp = _pad(x, self.win)
        cols = np.stack([xp[(..., *self.win.slices(off))] for off in self.offsets], axis=2)
        return cols.reshape(n, g, -1, self.size).transpose(1, 2, 0, 3).reshape(g, -1, n * self.size)

    def forward(self, x, w, b):
        n, cout = x.shape[0], w.shape[0]
        out = self._grouped(w) @ self._columns(x)
        out = out.reshape(cout, n, *self.win.out_size).swapaxes(0, 1)
        return out if b is None else out + b.reshape(-1, *(1,) * len(self.win.out_size))

    def transpose(self, s, w):
        n, c, g = self.shape[0], self.shape[1], self.group
        sg = s.reshape(n, g, -1, self.size).transpose(1, 2, 0, 3).reshape(g, -1, n * self.size)
        cols = (self._grouped(w).swapaxes(1, 2) @ sg).reshape(g, c // g, len(self.offsets), n, self.size)
        cols = cols.transpose(3, 0, 1, 2, 4).reshape(n, c, len(self.offsets), *self.win.out_size)
        grad = np.zeros((n, c, *self.win.padded_size), s.dtype)
        for k, off in enumerate(self.offsets):
            grad[(..., *self.win.slices(off))] += cols[:, :, k]
        return _crop(grad, self.win)


class _ConvTranspose:
    """ConvTranspose as the transpose of the conv that maps its output space back onto its input space."""

    def __init__(self, layer: Layer, shape: tuple[int, ...]):
        a, weight = layer.attrs, layer.params["weight"]
        nd = len(shape) - 2
        size = [s * (i - 1) + p + d * (k - 1) + 1 - b - e for s, i, p, d, k, b, e in zip(
            a["strides"], shape[2:], a["output_padding"], a["dilations"], a["kernel"], a["pads"][:nd], a["pads"][nd:])]
        self.conv = _Conv(layer, (shape[0], weight.shape[1] * a["group"], *size))

    def forward(self, x, w, b):
        y = self.conv.transpose(x, w)
        return y if b is None else y + b.reshape(-1, *(1,) * (y.ndim - 2))

    def transpose(self, s, w):
        return self.conv.forward(s, w, None)


def avgpool_divisor(layer: Layer, win: Window) -> np.ndarray:
    """(1, 1, *out) counts of every average-pooling window: explicit pads count with
    count_include_pad, the ceil_mode overhang never does, as ONNX says."""
    if layer.attrs.get("count_include_pad"):
        mask = np.ones((1, 1) + tuple(i + b + e for i, b, e in zip(win.in_size, win.begin, win.end)))
        mask = np.pad(mask, [(0, 0), (0, 0)] + [(0, x) for x in win.extra])
    else:
        mask = _pad(np.ones((1, 1) + win.in_size), win)
    return _sumpool(mask, win)


class _AvgPool:
    """Average pooling as a linear map with unit weight, over avgpool_divisor."""

    def __init__(self, layer: Layer, shape: tuple[int, ...]):
        self.win = window(layer, shape[2:])
        self.divisor = avgpool_divisor(layer, self.win)

    def forward(self, x, w, b):
        return w * _sumpool(_pad(x, self.win), self.win) / self.divisor.astype(x.dtype)

    def transpose(self, s, w):
        return w * _crop(_unpool(s / self.divisor.astype(s.dtype), self.win), self.win)


class _Reduce:
    """ReduceSum/ReduceMean/GlobalAveragePool over fixed axes as a linear map with unit weight."""

    def __init__(self, layer: Layer, shape: tuple[int, ...]):
        self.axes, self.shape = layer.attrs["axes"], shape
        self.keepdims = bool(layer.attrs.get("keepdims", 1))
        count = math.prod(shape[a] for a in self.axes)
        self.scale = 1.0 / count if layer.attrs.get("mean") else 1.0

    def forward(self, x, w, b):
        return x.sum(axis=self.axes, keepdims=self.keepdims) * (w * self.scale)

    def transpose(self, s, w):
        kept = tuple(1 if i in self.axes else d for i, d in enumerate(self.shape))
        return np.broadcast_to(s.reshape(kept) * (w * self.scale), self.shape).copy()


COMPARE = {">": np.greater, "<": np.less}  # the comparisons of rules.gradient.derivative

OPS = {"dense": _Dense, "conv": _Conv, "convtranspose": _ConvTranspose, "avgpool": _AvgPool, "reduce": _Reduce}


def _reduce_max(layer: Layer, a: np.ndarray, relevance: np.ndarray, mode: str) -> np.ndarray:
    """ReduceMax: winner routing to the first maximum over the reduced axes, or the z-rule over them."""
    axes = layer.attrs["axes"]
    kept = tuple(1 if i in axes else d for i, d in enumerate(a.shape))
    r = relevance.reshape(kept)
    if mode == "proportional":
        return a * (r / stabilize(a.sum(axis=axes, keepdims=True), 1e-6))
    moved = np.moveaxis(a, axes, range(a.ndim - len(axes), a.ndim))
    flat = moved.reshape(*moved.shape[:a.ndim - len(axes)], -1)
    winner = np.zeros(flat.shape, a.dtype)
    np.put_along_axis(winner, flat.argmax(axis=-1)[..., None], 1, axis=-1)
    winner = np.moveaxis(winner.reshape(moved.shape), range(a.ndim - len(axes), a.ndim), axes)
    return winner * r


def broadcast_terms(terms: list[BoundTerm], shape: tuple[int, ...]) -> list[BoundTerm]:
    """The terms with every input broadcast to the layer input's `shape` (bounds and ones are one sample)."""
    return [t if t.x.shape == shape else replace(t, x=np.broadcast_to(t.x, shape)) for t in terms]


def modified_forward(op, terms: list[BoundTerm]) -> np.ndarray:
    """A group's denominator D = Σ_t sign_t · f(x_t; w_t, b_t), the modified forward pass."""
    return sum(t.sign * op.forward(t.x, t.w, t.b) for t in terms)


def _unbroadcast(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum `x` down to `shape` over the axes that broadcasting expanded (`x` itself if none did)."""
    if x.shape == tuple(shape):
        return x
    lead = x.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, d in enumerate(shape) if d == 1 and x.shape[lead + i] != 1)
    return x.sum(axis=axes, keepdims=True).reshape(shape)


class NumpyBackend(Backend):
    """The reference implementation of the kernel interface."""

    name = "numpy"
    xp: ModuleType = np  # the module of this backend's arrays, for the constants its code makes

    def asarray(self, x, dtype):
        return np.asarray(x, dtype=dtype)

    def to_numpy(self, x):
        return np.asarray(x)

    def linear(self, layer: Layer, rule: Rule, a, z, relevance, low, high, denoms=None):
        op = OPS[layer.kind](layer, a.shape)
        result = np.zeros_like(a)
        for bound in bind(layer, rule, a, z, low, high, denoms):
            group = bound.group
            terms = broadcast_terms(bound.terms, a.shape)
            s = relevance
            if group.divide:
                # A denominator from the forward pass (the plain group's is the layer's own output) is reused:
                # consistent with the activations that the relevance arriving here is proportional to.
                denom = bound.denom if bound.denom is not None else modified_forward(op, terms)
                s = relevance / stabilize(denom, rule.stabilizer)
            if group.mask is not None:
                s = s * ((z > 0) if group.mask == "pos" else (z < 0))
            for t in terms:
                result += (group.coeff * t.sign) * t.x * op.transpose(s, t.w)
        return result

    def maxpool(self, layer: Layer, a, relevance, mode: str):
        if layer.kind == "reducemax":
            return _reduce_max(layer, a, relevance, mode)
        win = window(layer, a.shape[2:])
        if mode == "proportional":
            s = relevance / stabilize(_sumpool(_pad(a, win), win), 1e-6)
            return a * _crop(_unpool(s, win), win)
        padded = _pad(a, win, -np.inf)
        offsets = win.offsets()
        # argmax keeps the first maximum in row-major window order, as PyTorch's gradient does.
        arg = np.stack([padded[(..., *win.slices(off))] for off in offsets]).argmax(axis=0)
        grad = np.zeros_like(padded)
        for k, off in enumerate(offsets):
            grad[(..., *win.slices(off))] += (arg == k) * relevance
        return _crop(grad, win)

    def add(self, inputs: Sequence[np.ndarray], relevance):
        total = sum(inputs[1:], inputs[0])
        s = relevance / stabilize(total, 1e-6)
        return [_unbroadcast(x * s, x.shape) for x in inputs]

    def derivative(self, layer: Layer, a, relevance):
        if layer.kind == "affine":
            return _scaled(relevance, layer.params["scale"], self.xp)
        tests, slope = derivative(layer)
        inside = functools.reduce(np.logical_and, [COMPARE[op](a, self.xp.asarray(v, dtype=a.dtype))
                                                   for op, v in tests], True)
        if not np.any(slope):
            return relevance * inside
        return np.where(inside, relevance, _scaled(relevance, slope, self.xp))

    def unbroadcast(self, x, shape):
        return _unbroadcast(x, shape)

    def route(self, layer: Layer, relevance, in_shapes):
        return ROUTES[layer.kind](layer, relevance, in_shapes)


def _scaled(x: np.ndarray, scale, xp: ModuleType = np) -> np.ndarray:
    """x times a constant in x's dtype, made by x's array module `xp` (x itself for a scale of 1)."""
    return x if np.all(np.asarray(scale) == 1) else x * xp.asarray(scale, dtype=x.dtype)


def _unconcat(layer: Layer, r: np.ndarray, in_shapes) -> list[np.ndarray]:
    axis = layer.attrs["axis"]
    return np.split(r, np.cumsum([s[axis] for s in in_shapes])[:-1], axis=axis)


def _unindex(layer: Layer, r: np.ndarray, in_shapes) -> list[np.ndarray]:
    """Scatter-add every output element's relevance onto the input element it copies."""
    total = np.bincount(source_index(layer, in_shapes[0]).ravel(), weights=r.ravel(),
                        minlength=math.prod(in_shapes[0]))
    return [total.astype(r.dtype).reshape(in_shapes[0])]


# Routing kinds: relevance goes back the way the gradient would.
ROUTES = {
    "reshape": lambda layer, r, shapes: [r.reshape(shapes[0])],
    "transpose": lambda layer, r, shapes: [r.transpose(np.argsort(layer.attrs["perm"]))],
    "concat": _unconcat,
    "split": lambda layer, rs, shapes: [np.concatenate(rs, axis=layer.attrs["axis"])],
    "broadcast": lambda layer, r, shapes: [_unbroadcast(r, shapes[0])],
    "index": _unindex,
    "pad": lambda layer, r, shapes: [_unpad(r, layer.attrs["pads"], shapes[0])],
}


def _unpad(r: np.ndarray, pads: Sequence[int], shape: tuple[int, ...]) -> np.ndarray:
    """Transpose of a constant Pad (negative pads crop): take the input's window back out of `r`."""
    rank = r.ndim
    begin, end = pads[:rank], pads[rank:]
    r = np.pad(r, [(max(-b, 0), max(-e, 0)) for b, e in zip(begin, end)])
    return r[tuple(slice(max(b, 0), max(b, 0) + n) for b, n in zip(begin, shape))]
