"""The backward walk: relevance per tensor name, layers in reverse order, one backend kernel per layer.

Each layer kind declares which forward tensors its kernel reads (READS); the forward pass exposes
only those, and the walk releases each one as soon as the last layer that reads it is done, so the
memory held stays near the forward pass's."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .backends.base import Array, Backend
from .graph.layer import LINEAR_KINDS, PASS_KINDS, POOLING_KINDS, ROUTING_KINDS, Layer, LayerList, Shape
from .rules.base import Rule


@dataclass
class Walk:
    """Everything one backward walk reads: the model, its rules, the forward activations, bounds, and
    the run-time shape of every tensor (kept after its activation is released)."""

    model: LayerList
    rules: list[Rule | None]
    backend: Backend
    acts: dict[str, Array]
    maxpool: str
    bounds: dict[int, tuple[Array, Array]]
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    denominators: dict[int, dict[int, str]] = field(default_factory=dict)  # see onnxdtd.denominators


def _linear(w: Walk, layer: Layer, r: Array) -> list[Array]:
    low, high = w.bounds.get(layer.index, (None, None))
    denoms = {group: w.acts[name] for group, name in w.denominators.get(layer.index, {}).items()}
    return [w.backend.linear(layer, w.rules[layer.index], w.acts[layer.inputs[0]], w.acts.get(layer.output), r,
                             low, high, denoms)]


def _maxpool(w: Walk, layer: Layer, r: Array) -> list[Array]:
    return [w.backend.maxpool(layer, w.acts[layer.inputs[0]], r, w.maxpool)]


def _add(w: Walk, layer: Layer, r: Array) -> list[Array]:
    return w.backend.add([w.acts[name] for name in layer.inputs], r)


def _route(w: Walk, layer: Layer, r: Array | list[Array]) -> list[Array]:
    return w.backend.route(layer, r, [w.shapes[name] for name in layer.inputs])


def _pass(w: Walk, layer: Layer, r: Array) -> list[Array]:
    return [r]


PROPAGATE: dict[str, Callable[[Walk, Layer, Array], list[Array]]] = {
    **dict.fromkeys(LINEAR_KINDS | POOLING_KINDS, _linear), "maxpool": _maxpool, "reducemax": _maxpool,
    "add": _add, **dict.fromkeys(ROUTING_KINDS, _route), **dict.fromkeys(PASS_KINDS, _pass),
}


def _linear_reads(layer: Layer, rule: Rule | None) -> list[str]:
    """The input, and the output z where a plain group (its denominator) or a mask (its sign) needs it."""
    needs_z = rule is not None and any(g.is_plain or g.mask for g in rule.groups)
    return [layer.inputs[0], *([layer.output] if needs_z else [])]


# kind -> (layer, its rule) -> the forward tensors its kernel reads
READS: dict[str, Callable[[Layer, Rule | None], list[str]]] = {
    **dict.fromkeys(LINEAR_KINDS | POOLING_KINDS, _linear_reads),
    "maxpool": lambda layer, rule: layer.inputs[:1], "reducemax": lambda layer, rule: layer.inputs[:1],
    "add": lambda layer, rule: list(layer.inputs),
}


def reads(model: LayerList, rules: list[Rule | None],
          denominators: dict[int, dict[int, str]] | None = None) -> dict[str, int]:
    """Every forward tensor the walk reads, the denominators the forward pass computed included, with
    the index of the earliest layer that reads it (the walk releases the tensor after that layer)."""
    last: dict[str, int] = {}
    for layer, rule in zip(model, rules):
        own = (denominators or {}).get(layer.index, {}).values()
        for name in [*READS.get(layer.kind, lambda *_: [])(layer, rule), *own]:
            last.setdefault(name, layer.index)
    return last


def static_shapes(model: LayerList) -> dict[str, Shape]:
    """The shape inference's shape of every tensor of the layer list, by name."""
    shapes: dict[str, Shape] = dict(model.inputs)
    for layer in model:
        shapes.update(zip(layer.inputs, layer.input_shapes))
        shapes.update(zip(layer.outputs, layer.output_shapes))
    return shapes


def run_shapes(static: dict[str, Shape], batch: Any, n: int, names: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """Run-time shapes for batch size `n` of the tensors in `names` whose static shape is fixed but
    for a leading batch dimension `batch`; tensors that are not are left out."""
    known = {}
    for name in names:
        shape = static.get(name)
        if shape and all(isinstance(d, int) and d > 0 for d in shape[1:]):
            if shape[0] == batch and batch is not None:
                known[name] = (n, *shape[1:])
            elif isinstance(shape[0], int) and shape[0] > 0:
                known[name] = tuple(shape)
    return known


def backward(walk: Walk, initial: Array, keep: bool = False) -> tuple[dict[str, Array], dict[str, Any]]:
    """Propagate `initial` (relevance at the model output) to the model inputs.

    Relevance reaching a tensor from several readers is summed; a tensor's relevance is complete when
    the walk reaches its producer. Returns the relevance of every input that the output depends on
    and, with `keep`, every tensor's. Activations leave `walk.acts` once no earlier layer reads them."""
    model = walk.model
    release: dict[int, list[str]] = {}
    for name, index in reads(model, walk.rules, walk.denominators).items():
        release.setdefault(index, []).append(name)
    relevance: dict[str, Array] = {model.output_name: initial}
    kept: dict[str, np.ndarray] = {}
    for layer in reversed(model.layers):
        parts = [relevance.pop(name, None) for name in layer.outputs]
        if any(p is not None for p in parts):
            parts = [walk.backend.zeros(walk.shapes[name], initial.dtype, initial) if p is None else p
                     for name, p in zip(layer.outputs, parts)]
            if keep:
                kept.update((name, walk.backend.to_numpy(p)) for name, p in zip(layer.outputs, parts))
            r = parts[0] if len(parts) == 1 else parts
            for name, part in zip(layer.inputs, PROPAGATE[layer.kind](walk, layer, r)):
                relevance[name] = part if name not in relevance else relevance[name] + part
        for name in release.get(layer.index, ()):
            walk.acts.pop(name, None)
    result = {name: relevance[name] for name in model.inputs if name in relevance}
    if keep:
        kept.update((name, walk.backend.to_numpy(r)) for name, r in result.items())
    return result, kept
