"""Backends whose kernels are compiled (`numba`, `cpp`): both export the function set of
docs/kernels.md, so one class drives either. Conv (1-D, 2-D), dense, max pooling and residual sums
run in the kernels; the rarer layer kinds (pooling as a linear map, ConvTranspose, N-D conv, routing)
are cheap or uncommon and go through the numpy reference."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from types import ModuleType

import numpy as np

from ..graph.layer import Layer
from ..rules.base import STABILIZER, Rule
from .geometry import Window, window
from .numpy_backend import NumpyBackend
from .terms import BoundTerm, bind

MASKS = {None: 0, "pos": 1, "neg": -1}


def _geometry(layer: Layer, in_size: tuple[int, ...]) -> Window:
    """The layer's window for this input size, resolved once."""
    key = ("window", in_size)
    if key not in layer.cache:
        layer.cache[key] = window(layer, in_size)
    return layer.cache[key]


class CompiledBackend(NumpyBackend):
    """The kernel interface on a module of compiled kernels (see docs/kernels.md). The array module
    `xp` and the hooks `_c`, `_terms` and `_reference` let a device backend (cuda) drive its kernels
    the same way."""

    def __init__(self, name: str, kernels: ModuleType):
        self.name, self.kernels = name, kernels

    def _c(self, x):
        """`x` as the kernels take it: C-contiguous (None stays None)."""
        return None if x is None else np.ascontiguousarray(x)

    def _terms(self, layer: Layer, terms: list[BoundTerm]) -> list[BoundTerm]:
        """The terms as the kernels take them."""
        return [replace(t, x=self._c(t.x)) for t in terms]

    def _reference(self, method: Callable, dtype: np.dtype, *arrays, **rest):
        """A numpy reference method, for the layer kinds that have no kernel."""
        return method(*arrays, **rest)

    def linear(self, layer: Layer, rule: Rule, a, z, relevance, low, high, denoms=None):
        run = self._conv if layer.kind == "conv" and a.ndim in (3, 4) else \
            self._dense if layer.kind == "dense" and layer.attrs.get("axis", -1) in (-1, a.ndim - 1) else None
        if run is None:
            return self._reference(partial(super().linear, layer, rule), a.dtype, a, z, relevance, low, high, denoms)
        a, z, relevance, low, high = map(self._c, (a, z, relevance, low, high))
        denoms = {index: self._c(d) for index, d in (denoms or {}).items()}
        out = self.xp.zeros_like(a)
        for bound in bind(layer, rule, a, z, low, high, denoms):
            group = bound.group
            # No division: the kernels divide by a denominator of ones without stabilizer, which is exact.
            denom, stabilizer = (self._c(bound.denom), rule.stabilizer) if group.divide else \
                (self.xp.ones_like(relevance), 0.0)
            run(layer, self._terms(layer, bound.terms), relevance, denom, z if group.mask else None,
                MASKS[group.mask], group.coeff, stabilizer, out)
        return out

    def _conv(self, layer: Layer, terms: list[BoundTerm], relevance, denom, z, mask, coeff, stabilizer, out):
        win = _geometry(layer, out.shape[2:])
        self.kernels.conv_group([t.x for t in terms], [t.w for t in terms], [t.b for t in terms],
                                [t.sign for t in terms], relevance, denom, z, mask, coeff, stabilizer,
                                list(win.strides), list(win.dilations), [*win.begin, *win.end],
                                layer.attrs["group"], out)

    def _dense(self, layer: Layer, terms: list[BoundTerm], relevance, denom, z, mask, coeff, stabilizer, out):
        k, j = out.shape[-1], relevance.shape[-1]
        flat = lambda x: None if x is None else x.reshape(-1, j)  # noqa: E731
        xs = [(t.x if out.ndim == 2 or len(t.x) == len(out) else self._c(self.xp.broadcast_to(t.x, out.shape)))
              .reshape(-1, k) for t in terms]
        self.kernels.dense_group(xs, [t.w for t in terms], [t.b for t in terms], [t.sign for t in terms],
                                 flat(relevance), flat(denom), flat(z), mask, coeff, stabilizer, out.reshape(-1, k))

    def maxpool(self, layer: Layer, a, relevance, mode: str):
        if layer.kind != "maxpool" or a.ndim not in (3, 4):
            return self._reference(partial(super().maxpool, layer), a.dtype, a, relevance, mode=mode)
        win = _geometry(layer, a.shape[2:])
        geometry = (list(win.kernel), list(win.strides), list(win.dilations),
                    [*win.begin, *(e + x for e, x in zip(win.end, win.extra))])
        if mode == "proportional":
            return self.kernels.maxpool_proportional(self._c(a), self._c(relevance), *geometry, STABILIZER)
        return self.kernels.maxpool_winner(self._c(a), self._c(relevance), *geometry)

    def add(self, inputs: Sequence[np.ndarray], relevance):
        if any(x.shape != relevance.shape for x in inputs):
            return super().add(inputs, relevance)
        return self.kernels.add_split([self._c(x) for x in inputs], self._c(relevance), STABILIZER)
