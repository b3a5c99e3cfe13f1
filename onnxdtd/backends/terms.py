"""A rule bound to one layer: every group's terms as (input, weight, bias, sign) arrays, with the
modified weights cached per layer and the terms on a vanishing input part dropped, and the group's
denominator where the forward pass already holds it. Every backend evaluates what this returns;
none of them interprets rules on its own."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..graph.layer import Layer
from ..rules.base import PARAMS, Group, Rule


@dataclass(frozen=True)
class BoundTerm:
    """One modified forward pass on arrays: x has the layer input's shape or a leading 1 (bounds)."""

    x: Any
    w: Any
    b: Any
    sign: float


@dataclass(frozen=True)
class BoundGroup:
    """A group's terms on arrays, and its denominator when the forward pass computed it (else None:
    the backend computes Σ sign·(f(x, w) + b) over the terms)."""

    group: Group
    terms: list[BoundTerm]
    denom: Any


def modified_param(layer: Layer, key: str, modifier: str, gamma: float, dtype: np.dtype) -> np.ndarray | None:
    """The modified weight or bias, computed once per (layer, modifier, γ, dtype) and cached."""
    raw = layer.params.get(key)
    if raw is None and key == "weight":
        raw = np.float64(1.0)  # pooling layers: unit weight
    if raw is None:
        return None
    cached = layer.cache.get((key, modifier, gamma, dtype.str))
    if cached is None:
        cached = np.ascontiguousarray(PARAMS[modifier](np.asarray(raw, dtype), gamma))
        layer.cache[(key, modifier, gamma, dtype.str)] = cached
    return cached


def _vanishing(layer: Layer, a: np.ndarray) -> set[str]:
    """Input parts that are all zero: a⁻ of a tensor the graph proves non-negative (or that is), a⁺
    of a non-positive one."""
    if layer.nonnegative_input or a.min() >= 0:
        return {"neg"}
    return {"pos"} if a.max() <= 0 else set()


def bind(layer: Layer, rule: Rule, a: np.ndarray, z: Any, low: np.ndarray | None, high: np.ndarray | None,
         denoms: Mapping[int, Any] | None = None) -> list[BoundGroup]:
    """Every group of `rule` with its terms bound to arrays; groups left without terms are dropped.
    The denominator of a plain group is the layer's output `z`; `denoms` holds, by group index, those
    that the forward pass computed for other groups (see onnxdtd.denominators)."""
    vanishing = _vanishing(layer, a)
    sample = (1, *a.shape[1:])
    inputs = {"x": lambda: a,
              "pos": lambda: a if "neg" in vanishing else a.clip(min=0),
              "neg": lambda: np.zeros(sample, a.dtype) if "neg" in vanishing else a.clip(max=0),
              "above": lambda: a - low, "below": lambda: a - high, "one": lambda: np.ones(sample, a.dtype)}
    bound = []
    for index, group in enumerate(rule.groups):
        terms = [BoundTerm(inputs[t.input](), modified_param(layer, "weight", t.weight, rule.gamma, a.dtype),
                           None if t.bias is None else modified_param(layer, "bias", t.bias, rule.gamma, a.dtype),
                           t.sign)
                 for t in group.terms if not (t.input in vanishing and t.bias is None)]
        if terms:
            bound.append(BoundGroup(group, terms, z if group.is_plain else (denoms or {}).get(index)))
    return bound
