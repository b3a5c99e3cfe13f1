"""Backends whose kernels are compiled (`numba`, `cpp`): both export the function set of
docs/kernels.md, so one class drives either. Conv (1-D, 2-D), dense, max pooling and residual sums
run in the kernels; the rarer layer kinds (pooling as a linear map, ConvTranspose, N-D conv, routing)
are cheap or uncommon and go through the numpy reference."""
from __future__ import annotations

from types import ModuleType
from typing import Sequence

import numpy as np

from ..graph.layer import Layer
from ..rules.base import STABILIZER, Rule
from .geometry import Window, window
from .numpy_backend import NumpyBackend
from .terms import BoundTerm, bind

MASKS = {None: 0, "pos": 1, "neg": -1}


def _c(x: np.ndarray | None) -> np.ndarray | None:
    return None if x is None else np.ascontiguousarray(x)


def _geometry(layer: Layer, in_size: tuple[int, ...]) -> Window:
    """The layer's window for this input size, resolved once."""
    key = ("window", in_size)
    if key not in layer.cache:
        layer.cache[key] = window(layer, in_size)
    return layer.cache[key]


class CompiledBackend(NumpyBackend):
    """The kernel interface on a module of compiled kernels (see docs/kernels.md)."""

    def __init__(self, name: str, kernels: ModuleType):
        self.name, self.kernels = name, kernels

    def linear(self, layer: Layer, rule: Rule, a, z, relevance, low, high, denoms=None):
        run = self._conv if layer.kind == "conv" and a.ndim in (3, 4) else \
            self._dense if layer.kind == "dense" and layer.attrs.get("axis", -1) in (-1, a.ndim - 1) else None
        if run is None:
            return super().linear(layer, rule, a, z, relevance, low, high, denoms)
        out = np.zeros_like(a)
        relevance = _c(relevance)
        for bound in bind(layer, rule, a, z, low, high, denoms):
            group = bound.group
            # No division: the kernels divide by a denominator of ones without stabilizer, which is exact.
            denom, stabilizer = (_c(bound.denom), rule.stabilizer) if group.divide else (np.ones_like(relevance), 0.0)
            run(layer, bound.terms, relevance, denom, _c(z) if group.mask else None, MASKS[group.mask],
                group.coeff, stabilizer, out)
        return out

    def _conv(self, layer: Layer, terms: list[BoundTerm], relevance, denom, z, mask, coeff, stabilizer, out):
        win = _geometry(layer, out.shape[2:])
        self.kernels.conv_group([_c(t.x) for t in terms], [t.w for t in terms], [t.b for t in terms],
                                [t.sign for t in terms], relevance, denom, z, mask, coeff, stabilizer,
                                list(win.strides), list(win.dilations), [*win.begin, *win.end],
                                layer.attrs["group"], out)

    def _dense(self, layer: Layer, terms: list[BoundTerm], relevance, denom, z, mask, coeff, stabilizer, out):
        k, j = out.shape[-1], relevance.shape[-1]
        flat = lambda x: None if x is None else x.reshape(-1, j)  # noqa: E731
        xs = [_c(t.x if out.ndim == 2 or len(t.x) == len(out) else np.broadcast_to(t.x, out.shape)).reshape(-1, k)
              for t in terms]
        self.kernels.dense_group(xs, [t.w for t in terms], [t.b for t in terms], [t.sign for t in terms],
                                 flat(relevance), flat(denom), flat(z), mask, coeff, stabilizer, out.reshape(-1, k))

    def maxpool(self, layer: Layer, a, relevance, mode: str):
        if layer.kind != "maxpool" or a.ndim not in (3, 4):
            return super().maxpool(layer, a, relevance, mode)
        win = _geometry(layer, a.shape[2:])
        geometry = (list(win.kernel), list(win.strides), list(win.dilations),
                    [*win.begin, *(e + x for e, x in zip(win.end, win.extra))])
        if mode == "proportional":
            return self.kernels.maxpool_proportional(_c(a), _c(relevance), *geometry, STABILIZER)
        return self.kernels.maxpool_winner(_c(a), _c(relevance), *geometry)

    def add(self, inputs: Sequence[np.ndarray], relevance):
        if any(x.shape != relevance.shape for x in inputs):
            return super().add(inputs, relevance)
        return self.kernels.add_split([_c(x) for x in inputs], _c(relevance), STABILIZER)
