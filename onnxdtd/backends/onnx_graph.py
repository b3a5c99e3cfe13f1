"""The kernel interface written as ONNX nodes: every rule pass expressed with standard ONNX ops.

Arrays are symbols (`Sym`: a tensor name with its static shape, the batch axis possibly unknown)
of a `Graph` under construction. The engine's backward walk run on symbols records the whole
relevance pass as a graph (onnxdtd.export); called on numpy arrays, each kernel builds its own small
graph and runs it in onnxruntime (the `ort` backend's per-layer form, which the backend tests use).

Conventions follow the numpy reference operation by operation: D = Σ_t sign_t·(f(in_t, W_t) + b_t),
S = R / (D + ε·sgn(D)) (sgn(0) = +1), masked by the sign of z, R_in = Σ coeff·sign_t·in_t·f_tᵀ(S, W_t).
The transposed passes are ConvTranspose with explicit pads and output_padding (strided conv; at
stride 1 a Conv with the flipped kernel), Conv (ConvTranspose layers), MatMul (dense) and Expand
(reductions); max-pool winners are routed with MaxPool's indices and ScatterElements(reduction="add"),
correct for overlapping windows.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import ConfigError
from ..graph.layer import Layer
from ..graph.ops.index import source_index
from ..rules.base import Group, Rule, Term
from ..rules.gradient import derivative
from .base import Backend
from .geometry import Window, window
from .numpy_backend import avgpool_divisor
from .terms import modified_param

OPSET = 18
Shape = tuple  # ints, None for an unknown (batch) dimension


class Graph:
    """Nodes and initializers under unique names."""

    def __init__(self, prefix: str = "onnxdtd"):
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.count = 0
        self.constants: dict[Any, tuple[Any, Sym]] = {}

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{self.prefix}/{hint}_{self.count}"

    def op(self, op: str, inputs: Sequence[Sym | str], shape: Shape, dtype: Any, outputs: int = 1,
           **attrs: Any) -> Sym | list[Sym]:
        """The output symbol(s) of a new `op` node; `shape`/`dtype` describe the first output."""
        names = [self.name(op.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op, [i.name if isinstance(i, Sym) else i for i in inputs], names,
                                           name=names[0], **attrs))
        syms = [Sym(self, n, shape, np.dtype(dtype)) for n in names]
        return syms[0] if outputs == 1 else syms

    def const(self, value: np.ndarray, key: Any = None, anchor: Any = None) -> Sym:
        """An initializer; one per `key` when a key is given. A key may hold id(anchor): the graph keeps
        a reference to the anchor, so that no other array takes its id meanwhile."""
        if key is not None and key in self.constants:
            return self.constants[key][1]
        array = np.asarray(value)
        name = self.name("const")
        self.initializers.append(numpy_helper.from_array(array, name))
        sym = Sym(self, name, array.shape, array.dtype)
        if key is not None:
            self.constants[key] = (anchor, sym)
        return sym

    def param(self, array: np.ndarray, transposed: bool = False) -> Sym:
        """A weight or bias array (or its transpose) as an initializer, made once per array."""
        value = np.ascontiguousarray(array.T) if transposed else array
        return self.const(value, ("param", id(array), transposed), anchor=array)

    def ints(self, values: Sequence[int]) -> Sym:
        return self.const(np.asarray(values, np.int64), ("ints", tuple(values)))

    def scalar(self, value: float, dtype: np.dtype) -> Sym:
        return self.const(np.asarray(value, dtype), ("scalar", float(value), np.dtype(dtype).str))


@dataclass(eq=False)
class Sym:
    """A tensor of a Graph: its name, static shape (None: unknown) and element type."""

    g: Graph
    name: str
    shape: Shape
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def _binary(self, op: str, other: Sym | float) -> Sym:
        other = other if isinstance(other, Sym) else self.g.scalar(other, self.dtype)
        return self.g.op(op, [self, other], _broadcast(self.shape, other.shape), self.dtype)

    def __add__(self, other: Sym | float) -> Sym:
        return self._binary("Add", other)

    def __sub__(self, other: Sym | float) -> Sym:
        return self._binary("Sub", other)

    def __mul__(self, other: Sym | float) -> Sym:
        return self._binary("Mul", other)

    def __truediv__(self, other: Sym | float) -> Sym:
        return self._binary("Div", other)

    def unary(self, op: str, **attrs: Any) -> Sym:
        return self.g.op(op, [self], self.shape, self.dtype, **attrs)

    def shape_of(self) -> Sym:
        return self.g.op("Shape", [self], (self.ndim,), np.int64)

    def reshape(self, shape: Shape) -> Sym:
        """Reshape to `shape`; an unknown leading dimension is copied from this tensor's (ONNX's 0)."""
        if any(d is None for d in shape[1:]):
            raise ConfigError(f"cannot express a reshape to {shape} with an unknown inner dimension in ONNX")
        dims = [0 if d is None else d for d in shape]
        rest = [d for d in shape[1:] if d != -1]
        inferred = math.prod(self.shape[1:]) // math.prod(rest) if None not in (*self.shape[1:], *rest) else None
        return self.g.op("Reshape", [self, self.g.ints(dims)], tuple(inferred if d == -1 else d for d in shape),
                         self.dtype)


def _broadcast(a: Shape, b: Shape) -> Shape:
    """The numpy broadcast of two static shapes (unknown dimensions stay unknown)."""
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + tuple(a), (1,) * (n - len(b)) + tuple(b)
    return tuple(y if x == 1 else x if y == 1 or x is not None else y for x, y in zip(a, b))


# Signs of term inputs and of weight/bias modifiers that hold for any value (0: either sign).
INPUT_SIGNS = {"pos": 1, "neg": -1, "one": 1}
PARAM_SIGNS = {"pos": 1, "neg": -1, "sq": 1, "one": 1}


def nonnegative_denominator(layer: Layer, group: Group) -> bool:
    """Whether every term of the group, and so its denominator, is >= 0 whatever the input (z⁺, w²,
    flat, ...): then the sign-aligned stabilizer is plain D + ε."""
    def sign(term: Term) -> bool:
        x = 1 if term.input == "x" and layer.nonnegative_input else INPUT_SIGNS.get(term.input, 0)
        w = PARAM_SIGNS.get(term.weight, 0)
        b = 1 if term.bias is None else PARAM_SIGNS.get(term.bias, 0) * np.sign(term.sign)
        return x * w * np.sign(term.sign) > 0 and b > 0
    return not group.is_plain and all(sign(t) for t in group.terms)


def stabilize(d: Sym, epsilon: float) -> Sym:
    """d + ε·sgn(d) with sgn(0) = +1 (rules.base.stabilize)."""
    g = d.g  # three passes over d, which on large tensors is what these ops cost
    nonneg = g.op("GreaterOrEqual", [d, g.scalar(0.0, d.dtype)], d.shape, np.bool_)
    return d + g.op("Where", [nonneg, g.scalar(epsilon, d.dtype), g.scalar(-epsilon, d.dtype)], d.shape, d.dtype)


def _mask(z: Sym, sign: str) -> Sym:
    g = z.g
    test = g.op("Greater" if sign == "pos" else "Less", [z, g.scalar(0.0, z.dtype)], z.shape, np.bool_)
    return g.op("Cast", [test], z.shape, z.dtype, to=helper.np_dtype_to_tensor_dtype(z.dtype))


def zeros(g: Graph, shape: Shape, dtype: np.dtype, like: Sym | None = None) -> Sym:
    """Zeros of `shape`; an unknown leading dimension is taken from `like`'s."""
    fill = numpy_helper.from_array(np.zeros(1, dtype))
    if all(d is not None for d in shape):
        dims = g.ints(list(shape))
    else:
        if like is None or any(d is None for d in shape[1:]):
            raise ConfigError(f"cannot make zeros of shape {shape} in ONNX: unknown inner dimensions")
        batch = g.op("Slice", [like.shape_of(), g.ints([0]), g.ints([1])], (1,), np.int64)
        dims = g.op("Concat", [batch, g.ints(list(shape[1:]))], (len(shape),), np.int64, axis=0)
    return g.op("ConstantOfShape", [dims], tuple(shape), dtype, value=fill)


def _pads(win: Window, extra: bool = False) -> list[int]:
    end = [e + x for e, x in zip(win.end, win.extra)] if extra else list(win.end)
    return [*win.begin, *end]


def _output_padding(win: Window, extra: bool = False) -> list[int]:
    """output_padding of the ConvTranspose that maps the window's outputs back onto its input size."""
    pads = _pads(win, extra)
    nd = len(win.kernel)
    return [i - ((o - 1) * s + d * (k - 1) + 1 - pads[a] - pads[a + nd])
            for a, (i, o, s, d, k) in enumerate(zip(win.in_size, win.out_size, win.strides, win.dilations, win.kernel))]


def _spatial(layer: Layer, a: Sym) -> tuple[int, ...]:
    size = a.shape[2:]
    if any(d is None for d in size):
        raise ConfigError(f"layer {layer.name!r} ({layer.op_type}): its spatial size {a.shape} must be known to "
                          "express its relevance pass in ONNX")
    return tuple(size)


class _Dense:
    """y = x @ Wᵀ + b over the last axis (or axis 0, Gemm's transA)."""

    def __init__(self, layer: Layer, a: Sym):
        self.axis = layer.attrs.get("axis", -1) % a.ndim
        self.perm = [i for i in range(a.ndim) if i != self.axis] + [self.axis]

    def _moved(self, x: Sym, inverse: bool = False) -> Sym:
        if self.axis == x.ndim - 1:
            return x
        perm = list(np.argsort(self.perm)) if inverse else self.perm
        return x.g.op("Transpose", [x], tuple(x.shape[p] for p in perm), x.dtype, perm=[int(p) for p in perm])

    def forward(self, x: Sym, w: np.ndarray, b: np.ndarray | None) -> Sym:
        """Gemm with transB on 2-D inputs: the weight's one initializer serves both passes (a
        transposed copy of VGG16's first dense layer is 400 MB, three times over while a session loads)."""
        x = self._moved(x)
        g, shape = x.g, (*x.shape[:-1], w.shape[0])
        if x.ndim == 2:
            return g.op("Gemm", [x, g.param(w)] + ([g.param(b)] if b is not None else []), shape, x.dtype, transB=1)
        y = g.op("MatMul", [x, g.param(w, transposed=True)], shape, x.dtype)
        return y if b is None else y + g.param(b)

    def transpose(self, s: Sym, w: np.ndarray) -> Sym:
        y = s.g.op("MatMul", [s, s.g.param(w)], (*s.shape[:-1], w.shape[1]), s.dtype)
        return self._moved(y, inverse=True)


class Conv:
    """Conv forward (the layer's own attributes, any input size); ConvTranspose with the conv's pads
    and the output_padding that restores the input size, or a Conv at stride 1."""

    def __init__(self, layer: Layer, a: Sym):
        self.layer, self.a = layer, a
        at = layer.attrs
        self.attrs = dict(strides=list(at["strides"]), dilations=list(at["dilations"]), group=int(at["group"]),
                          kernel_shape=list(at["kernel"]))

    @functools.cached_property
    def win(self) -> Window:
        return window(self.layer, _spatial(self.layer, self.a))

    def forward(self, x: Sym, w: np.ndarray, b: np.ndarray | None) -> Sym:
        g, at = x.g, self.layer.attrs
        args = [x, g.param(w)] + ([g.param(b)] if b is not None else [])
        padding = {"auto_pad": at["auto_pad"]} if at.get("auto_pad", "NOTSET") != "NOTSET" else {"pads": list(at["pads"])}
        return g.op("Conv", args, (x.shape[0], w.shape[0], *[None] * (x.ndim - 2)), x.dtype, **padding, **self.attrs)

    def transpose(self, s: Sym, w: np.ndarray) -> Sym:
        """With stride 1 the transpose is itself a convolution (flipped kernel, channels swapped per
        group, pads d·(k−1) − p), which onnxruntime runs about twice as fast as ConvTranspose."""
        win = self.win
        full = [d * (k - 1) for d, k in zip(win.dilations, win.kernel)]
        pads = [f - p for f, p in zip(full * 2, _pads(win))]
        if all(st == 1 for st in win.strides) and min(pads) >= 0:
            g = s.g
            flipped = g.const(_flipped(w, self.attrs["group"]), ("flipped", id(w)), anchor=w)
            return g.op("Conv", [s, flipped], self.a.shape, s.dtype, pads=pads, **self.attrs)
        return s.g.op("ConvTranspose", [s, s.g.param(w)], self.a.shape, s.dtype,
                      pads=_pads(win), output_padding=_output_padding(win), **self.attrs)


def _flipped(w: np.ndarray, group: int) -> np.ndarray:
    """The kernel of the transposed convolution as a convolution: (Cout, Cin/g, *k) -> (Cin, Cout/g, *k),
    input and output channels swapped within each group, spatial axes reversed."""
    cout, cin_g, *kernel = w.shape
    grouped = w.reshape(group, cout // group, cin_g, *kernel).swapaxes(1, 2)
    flipped = grouped.reshape(group * cin_g, cout // group, *kernel)[(..., *[slice(None, None, -1)] * len(kernel))]
    return np.ascontiguousarray(flipped)


class _ConvTranspose:
    """ConvTranspose forward; its transpose is the Conv with the same window."""

    def __init__(self, layer: Layer, a: Sym):
        self.attrs = {k: list(v) if isinstance(v, tuple) else v for k, v in layer.attrs.items()
                      if k in ("strides", "dilations", "pads", "group")}
        self.attrs["kernel_shape"] = list(layer.attrs["kernel"])
        self.output_padding = list(layer.attrs["output_padding"])
        self.a = a

    def forward(self, x: Sym, w: np.ndarray, b: np.ndarray | None) -> Sym:
        g = x.g
        args = [x, g.param(w)] + ([g.param(b)] if b is not None else [])
        shape = (x.shape[0], w.shape[1] * self.attrs["group"], *([None] * (x.ndim - 2)))
        return g.op("ConvTranspose", args, shape, x.dtype, output_padding=self.output_padding, **self.attrs)

    def transpose(self, s: Sym, w: np.ndarray) -> Sym:
        return s.g.op("Conv", [s, s.g.param(w)], self.a.shape, s.dtype, **self.attrs)


def _scaled(x: Sym, w: Any) -> Sym:
    """x times the weight of a pooling layer (unit, or modified or folded), broadcast as numpy does."""
    return x if np.all(np.asarray(w) == 1) else x * x.g.const(np.asarray(w, x.dtype))


class _AvgPool:
    """Average pooling as a depthwise conv with unit weights over the divisor that ONNX's pooling uses
    (without the divisor: window sums, the denominator of max pooling's proportional rule)."""

    def __init__(self, layer: Layer, a: Sym, divide: bool = True):
        self.a = a
        self.win = window(layer, _spatial(layer, a))
        self.divisor = avgpool_divisor(layer, self.win) if divide else None
        channels = a.shape[1]
        self.ones = np.ones((channels, 1, *self.win.kernel))
        self.attrs = dict(strides=list(self.win.strides), dilations=list(self.win.dilations), group=channels,
                          kernel_shape=list(self.win.kernel), pads=_pads(self.win, extra=True))

    def _divided(self, x: Sym) -> Sym:
        return x if self.divisor is None else x / x.g.const(self.divisor.astype(x.dtype))

    def forward(self, x: Sym, w: Any, b: np.ndarray | None) -> Sym:
        g = x.g
        ones = g.const(self.ones.astype(x.dtype), ("ones", self.ones.shape, x.dtype.str))
        total = g.op("Conv", [x, ones], (x.shape[0], x.shape[1], *self.win.out_size), x.dtype, **self.attrs)
        return self._divided(_scaled(total, w))

    def transpose(self, s: Sym, w: Any) -> Sym:
        g = s.g
        ones = g.const(self.ones.astype(s.dtype), ("ones", self.ones.shape, s.dtype.str))
        return g.op("ConvTranspose", [_scaled(self._divided(s), w), ones], self.a.shape, s.dtype,
                    output_padding=_output_padding(self.win, extra=True), **self.attrs)


class _Reduce:
    """ReduceSum/ReduceMean over fixed axes; the transpose expands back over them."""

    def __init__(self, layer: Layer, a: Sym):
        self.a, self.axes = a, list(layer.attrs["axes"])
        self.keepdims = int(bool(layer.attrs.get("keepdims", 1)))
        self.scale = 1.0
        if layer.attrs.get("mean"):
            if not all(a.shape[i] for i in self.axes):
                raise ConfigError(f"layer {layer.name!r}: the reduced axes of {a.shape} must be known for a mean")
            self.scale = 1.0 / math.prod(a.shape[i] for i in self.axes)

    def forward(self, x: Sym, w: np.ndarray, b: np.ndarray | None) -> Sym:
        g = x.g
        kept = tuple(1 if i in self.axes else d for i, d in enumerate(x.shape))
        shape = kept if self.keepdims else tuple(d for i, d in enumerate(x.shape) if i not in self.axes)
        total = g.op("ReduceSum", [x, g.ints(self.axes)], shape, x.dtype, keepdims=self.keepdims)
        return _scaled(total, w * self.scale)

    def transpose(self, s: Sym, w: np.ndarray) -> Sym:
        g = s.g
        if not self.keepdims:
            s = g.op("Unsqueeze", [s, g.ints(self.axes)], tuple(1 if i in self.axes else None
                                                                 for i in range(self.a.ndim)), s.dtype)
        return g.op("Expand", [_scaled(s, w * self.scale), self.a.shape_of()], self.a.shape, s.dtype)


OPS: dict[str, Callable[[Layer, Sym], Any]] = {"dense": _Dense, "conv": Conv, "convtranspose": _ConvTranspose,
                                                "avgpool": _AvgPool, "reduce": _Reduce}


def _term_input(layer: Layer, which: str, a: Sym, low: Sym | None, high: Sym | None) -> Sym:
    """A term's input (rules.base.INPUTS) on the symbol of the layer input."""
    if which == "x" or (which == "pos" and layer.nonnegative_input):
        return a
    if which == "pos":
        return a.unary("Relu")
    if which == "neg":
        return a.unary("Neg").unary("Relu").unary("Neg")
    if which in ("above", "below"):
        return a - (low if which == "above" else high)
    return a.g.const(np.ones((1, *a.shape[1:]), a.dtype), ("ones_like", a.name))


def _unbroadcast(x: Sym, shape: Shape) -> Sym:
    """Sum `x` down to `shape` over the axes that broadcasting expanded."""
    lead = x.ndim - len(shape)
    axes = list(range(lead)) + [lead + i for i, d in enumerate(shape) if d == 1 and x.shape[lead + i] != 1]
    if not axes:
        return x
    g = x.g
    kept = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
    total = g.op("ReduceSum", [x, g.ints(axes)], kept, x.dtype, keepdims=1)
    return total.reshape(tuple(shape)) if lead else total


def bind_group(layer: Layer, rule: Rule, group: Group, a: Sym, low: Sym | None,
               high: Sym | None) -> list[tuple[Sym, np.ndarray, np.ndarray | None, float]]:
    """The group's terms as (input, modified weight, modified bias, sign); terms on a⁻ of an input
    the graph proves non-negative are dropped (they add nothing)."""
    return [(_term_input(layer, t.input, a, low, high), modified_param(layer, "weight", t.weight, rule.gamma, a.dtype),
             None if t.bias is None else modified_param(layer, "bias", t.bias, rule.gamma, a.dtype), t.sign)
            for t in group.terms if not (t.input == "neg" and layer.nonnegative_input and t.bias is None)]


BIASED = (_Dense, Conv)  # ops whose forward takes a bias, into which a constant can be folded


def denominator(op: Any, bound: list[tuple[Sym, np.ndarray, np.ndarray | None, float]], shift: float = 0.0) -> Sym:
    """Σ_t sign_t · (f(in_t, W_t) + b_t) + shift, in term order; the shift goes into the first term's
    bias where the op has one (Conv and Gemm add it for free; a separate Add is one more pass)."""
    total = None
    for i, (x, w, b, sign) in enumerate(bound):
        if i == 0 and shift and isinstance(op, BIASED) and sign == 1:
            b = _shifted(b, shift, w.shape[0], x.dtype)
            shift = 0.0
        part = op.forward(x, w, b)
        part = part if sign == 1 else part * float(sign)
        total = part if total is None else total + part
    return total + shift if shift else total


def _shifted(b: np.ndarray | None, shift: float, channels: int, dtype: np.dtype) -> np.ndarray:
    """The bias b + shift (b absent: zero), one value per output channel."""
    return (np.zeros(channels, dtype) if b is None else b.astype(dtype)) + np.asarray(shift, dtype)


def _stabilized(layer: Layer, rule: Rule, group: Group, op: Any, bound: list, z: Sym) -> Sym:
    """The group's stabilized denominator; a known non-negative one is D + ε with ε in the bias."""
    if group.is_plain:
        return stabilize(z, rule.stabilizer)
    if nonnegative_denominator(layer, group):
        return denominator(op, bound, shift=rule.stabilizer)
    return stabilize(denominator(op, bound), rule.stabilizer)


class GraphBackend(Backend):
    """The kernel interface on symbols: each call adds the nodes of one layer's relevance pass."""

    name = "onnx-graph"

    def asarray(self, x, dtype):
        raise ConfigError("GraphBackend works on symbols of a Graph; use Graph.const for constants")

    def to_numpy(self, x):
        return x

    def zeros(self, shape, dtype, like=None):
        return zeros(like.g, shape, np.dtype(dtype), like)

    def linear(self, layer: Layer, rule: Rule, a, z, relevance, low, high, denoms=None):
        op = OPS[layer.kind](layer, a)
        result = None
        for group in rule.groups:
            bound = bind_group(layer, rule, group, a, low, high)
            if not bound:
                continue
            s = relevance
            if group.divide:
                s = relevance / _stabilized(layer, rule, group, op, bound, z)
            if group.mask is not None:
                s = s * _mask(z, group.mask)
            for x, w, _, sign in bound:
                part = (x * float(group.coeff * sign)) * op.transpose(s, w)
                result = part if result is None else result + part
        return result if result is not None else zeros(a.g, a.shape, a.dtype, a)

    def maxpool(self, layer: Layer, a, relevance, mode: str):
        if layer.kind == "reducemax":
            return _reduce_max(layer, a, relevance, mode)
        win = window(layer, _spatial(layer, a))
        g = a.g
        if mode == "proportional":
            pool = _AvgPool(layer, a, divide=False)
            return a * pool.transpose(relevance / stabilize(pool.forward(a, 1.0, None), 1e-6), 1.0)
        _, indices = g.op("MaxPool", [a], relevance.shape, a.dtype, outputs=2, kernel_shape=list(win.kernel),
                          strides=list(win.strides), dilations=list(win.dilations), pads=_pads(win),
                          ceil_mode=int(layer.attrs.get("ceil_mode", 0)))
        flat = g.op("Reshape", [indices, g.ints([-1])], (None,), np.int64)
        updates = g.op("Reshape", [relevance, g.ints([-1])], (None,), a.dtype)
        size = g.op("Size", [a], (), np.int64)
        empty = g.op("ConstantOfShape", [g.op("Reshape", [size, g.ints([1])], (1,), np.int64)], (None,), a.dtype,
                     value=numpy_helper.from_array(np.zeros(1, a.dtype)))
        routed = g.op("ScatterElements", [empty, flat, updates], (None,), a.dtype, axis=0, reduction="add")
        return g.op("Reshape", [routed, a.shape_of()], a.shape, a.dtype)

    def add(self, inputs: Sequence, relevance):
        total = inputs[0]
        for x in inputs[1:]:
            total = total + x
        s = relevance / stabilize(total, 1e-6)
        return [_unbroadcast(x * s, x.shape) for x in inputs]

    def derivative(self, layer: Layer, a, relevance):
        if layer.kind == "affine":
            return _scaled(relevance, layer.params["scale"])
        g = relevance.g
        tests, slope = derivative(layer)
        inside = None
        for op, v in tests:
            bound = g.const(np.asarray(v, a.dtype))
            test = g.op(COMPARE[op], [a, bound], _broadcast(a.shape, bound.shape), np.bool_)
            inside = test if inside is None else g.op("And", [inside, test], _broadcast(inside.shape, test.shape),
                                                       np.bool_)
        if inside is None:
            return relevance
        other = _scaled(relevance, slope) if np.any(slope) else g.scalar(0.0, relevance.dtype)
        return g.op("Where", [inside, relevance, other], _broadcast(inside.shape, relevance.shape), relevance.dtype)

    def unbroadcast(self, x, shape):
        return _unbroadcast(x, tuple(shape))

    def route(self, layer: Layer, relevance, in_shapes):
        return ROUTES[layer.kind](layer, relevance, [tuple(s) for s in in_shapes])


COMPARE = {">": "Greater", "<": "Less"}  # the comparisons of rules.gradient.derivative as ONNX ops


def _reduce_max(layer: Layer, a: Sym, relevance: Sym, mode: str) -> Sym:
    """ReduceMax over fixed axes: winner (first maximum in row-major order) or the z-rule."""
    g, axes = a.g, list(layer.attrs["axes"])
    kept = tuple(1 if i in axes else d for i, d in enumerate(a.shape))
    r = relevance.reshape(kept)
    if mode == "proportional":
        total = g.op("ReduceSum", [a, g.ints(axes)], kept, a.dtype, keepdims=1)
        return a * (r / stabilize(total, 1e-6))
    rest = [i for i in range(a.ndim) if i not in axes]
    perm = rest + axes
    moved = g.op("Transpose", [a], tuple(a.shape[p] for p in perm), a.dtype, perm=perm)
    count = math.prod(a.shape[i] for i in axes)
    flat_shape = (*[a.shape[i] for i in rest], count)
    flat = moved.reshape(flat_shape)
    arg = g.op("ArgMax", [flat], (*flat_shape[:-1], 1), np.int64, axis=-1, keepdims=1, select_last_index=0)
    rr = g.op("Transpose", [r], tuple(kept[p] for p in perm), a.dtype, perm=perm).reshape((*flat_shape[:-1], 1))
    routed = g.op("ScatterElements", [zeros(g, flat_shape, a.dtype, a), arg, rr], flat_shape, a.dtype, axis=-1)
    back = routed.reshape(tuple(a.shape[p] for p in perm))
    return g.op("Transpose", [back], a.shape, a.dtype, perm=[int(p) for p in np.argsort(perm)])


def _unconcat(layer: Layer, r: Sym, shapes: list[Shape]) -> list[Sym]:
    axis = layer.attrs["axis"] % r.ndim
    sizes = [s[axis] for s in shapes]
    if any(d is None for d in sizes):
        raise ConfigError(f"layer {layer.name!r}: concatenation along an unknown dimension")
    outs = r.g.op("Split", [r, r.g.ints(sizes)], shapes[0], r.dtype, outputs=len(sizes), axis=axis)
    outs = outs if isinstance(outs, list) else [outs]
    for out, shape in zip(outs, shapes):
        out.shape = tuple(shape)
    return outs


def _unindex(layer: Layer, r: Sym, shapes: list[Shape]) -> list[Sym]:
    """Scatter-add every output element's relevance onto the input element it copies. With an unknown
    batch size the index map of one sample must repeat per sample (the op does not mix samples)."""
    g, shape = r.g, shapes[0]
    if all(d is not None for d in shape):
        index = source_index(layer, shape).reshape(-1)
        flat = g.op("Reshape", [r, g.ints([-1])], (index.size,), r.dtype)
        out = g.op("ScatterElements", [zeros(g, (math.prod(shape),), r.dtype), g.const(index), flat],
                   (math.prod(shape),), r.dtype, axis=0, reduction="add")
        return [out.reshape(shape)]
    one, two = source_index(layer, (1, *shape[1:])), source_index(layer, (2, *shape[1:]))
    size = math.prod(shape[1:])
    if two.shape[0] != 2 or not np.array_equal(two.reshape(2, -1), np.stack([one.reshape(-1),
                                                                             one.reshape(-1) + size])):
        raise ConfigError(f"layer {layer.name!r} ({layer.op_type}) moves values across samples: export it with "
                          "a fixed batch size")
    per = one.reshape(1, -1)
    rows = r.reshape((None, per.shape[1]))
    index = g.op("Expand", [g.const(per), rows.shape_of()], rows.shape, np.int64)
    out = g.op("ScatterElements", [zeros(g, (None, size), r.dtype, rows), index, rows], (None, size), r.dtype,
               axis=1, reduction="add")
    return [out.reshape(shape)]


def _unpad(layer: Layer, r: Sym, shapes: list[Shape]) -> list[Sym]:
    """Transpose of a constant Pad (negative pads crop)."""
    g, pads, shape = r.g, layer.attrs["pads"], shapes[0]
    rank = r.ndim
    begin, end = pads[:rank], pads[rank:]
    grow = [max(-b, 0) for b in begin] + [max(-e, 0) for e in end]
    if any(grow):
        r = g.op("Pad", [r, g.ints(grow)], r.shape, r.dtype)
    starts = [max(b, 0) for b in begin]
    ends = [s + n if n is not None else np.iinfo(np.int64).max for s, n in zip(starts, shape)]
    return [g.op("Slice", [r, g.ints(starts), g.ints(ends)], shape, r.dtype)]


ROUTES = {
    "reshape": lambda layer, r, shapes: [r.reshape(shapes[0])],
    "transpose": lambda layer, r, shapes: [r.g.op("Transpose", [r], shapes[0], r.dtype,
                                                  perm=[int(p) for p in np.argsort(layer.attrs["perm"])])],
    "concat": _unconcat,
    "split": lambda layer, rs, shapes: [rs[0].g.op("Concat", rs, shapes[0], rs[0].dtype, axis=layer.attrs["axis"])],
    "broadcast": lambda layer, r, shapes: [_unbroadcast(r, shapes[0])],
    "index": _unindex,
    "pad": _unpad,
}
