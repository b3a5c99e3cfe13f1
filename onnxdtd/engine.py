"""The backward walk: relevance per tensor name, layers in reverse order, one backend kernel per layer."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .backends.base import Array, Backend
from .graph.layer import LINEAR_KINDS, PASS_KINDS, POOLING_KINDS, ROUTING_KINDS, Layer, LayerList
from .rules.base import Rule


@dataclass
class Walk:
    """Everything one backward walk reads: the model, its rules, the forward activations, bounds."""

    model: LayerList
    rules: list[Rule | None]
    backend: Backend
    acts: dict[str, Array]
    maxpool: str
    bounds: dict[int, tuple[Array, Array]]


def _linear(w: Walk, layer: Layer, r: Array) -> list[Array]:
    low, high = w.bounds.get(layer.index, (None, None))
    return [w.backend.linear(layer, w.rules[layer.index], w.acts[layer.inputs[0]], w.acts[layer.output], r,
                             low, high)]


def _maxpool(w: Walk, layer: Layer, r: Array) -> list[Array]:
    return [w.backend.maxpool(layer, w.acts[layer.inputs[0]], r, w.maxpool)]


def _add(w: Walk, layer: Layer, r: Array) -> list[Array]:
    return w.backend.add([w.acts[name] for name in layer.inputs], r)


def _route(w: Walk, layer: Layer, r: Array | list[Array]) -> list[Array]:
    return w.backend.route(layer, r, [tuple(w.acts[name].shape) for name in layer.inputs])


def _pass(w: Walk, layer: Layer, r: Array) -> list[Array]:
    return [r]


PROPAGATE: dict[str, Callable[[Walk, Layer, Array], list[Array]]] = {
    **dict.fromkeys(LINEAR_KINDS | POOLING_KINDS, _linear), "maxpool": _maxpool, "reducemax": _maxpool,
    "add": _add, **dict.fromkeys(ROUTING_KINDS, _route), **dict.fromkeys(PASS_KINDS, _pass),
}


def backward(walk: Walk, initial: Array, keep: bool = False) -> tuple[dict[str, Array], dict[str, Any]]:
    """Propagate `initial` (relevance at the model output) to the model inputs.

    Relevance reaching a tensor from several readers is summed; a tensor's relevance is complete when
    the walk reaches its producer. Returns the relevance of every input that the output depends on
    and, with `keep`, every tensor's."""
    model = walk.model
    relevance: dict[str, Array] = {model.output_name: initial}
    kept: dict[str, np.ndarray] = {}
    for layer in reversed(model.layers):
        parts = [relevance.pop(name, None) for name in layer.outputs]
        if all(p is None for p in parts):
            continue
        parts = [walk.acts[name] * 0 if p is None else p for name, p in zip(layer.outputs, parts)]
        if keep:
            kept.update((name, walk.backend.to_numpy(p)) for name, p in zip(layer.outputs, parts))
        r = parts[0] if len(parts) == 1 else parts
        for name, part in zip(layer.inputs, PROPAGATE[layer.kind](walk, layer, r)):
            relevance[name] = part if name not in relevance else relevance[name] + part
    result = {name: relevance[name] for name in model.inputs if name in relevance}
    if keep:
        kept.update((name, walk.backend.to_numpy(r)) for name, r in result.items())
    return result, kept
