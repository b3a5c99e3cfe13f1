"""The backward walk: relevance per tensor name, layers in reverse order, one backend kernel per layer.

Each layer kind declares which forward tensors its kernel reads (READS); the forward pass exposes
only those, and the walk releases each one as soon as the last layer that reads it is done, so the
memory held stays near the forward pass's.

The walk has two modes (MODES): "relevance" propagates relevance by the layers' rules (LRP/DTD);
"gradient" propagates the gradient of the output w.r.t. every tensor, with the rules of
rules.gradient.assign on linear and pooling layers (g_in = Wᵀ g), winner routing through max
pooling, copies into sums, and the derivative of activations and constant scalings."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .backends.base import Array, Backend
from .errors import ConfigError
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
    mode: str = "relevance"  # a key of MODES


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


def _winner(w: Walk, layer: Layer, r: Array) -> list[Array]:
    """Max pooling's gradient: to the first maximum of each window, whatever the walk's maxpool mode."""
    return [w.backend.maxpool(layer, w.acts[layer.inputs[0]], r, "winner")]


def _copy(w: Walk, layer: Layer, r: Array) -> list[Array]:
    """A sum's gradient: the output's, summed over the axes along which each input was broadcast."""
    return [w.backend.unbroadcast(r, w.shapes[name]) for name in layer.inputs]


def _derivative(w: Walk, layer: Layer, r: Array) -> list[Array]:
    """An activation's or constant scaling's gradient: times its derivative at the layer input, summed
    over broadcast axes; ops without a rule (lenient) pass it unchanged, as they pass relevance."""
    if layer.attrs.get("lenient"):
        return [r]
    name = layer.inputs[0]
    return [w.backend.unbroadcast(w.backend.derivative(layer, w.acts.get(name), r), w.shapes[name])]


Handler = Callable[[Walk, Layer, Array], list[Array]]

PROPAGATE: dict[str, Handler] = {
    **dict.fromkeys(LINEAR_KINDS | POOLING_KINDS, _linear), "maxpool": _maxpool, "reducemax": _maxpool,
    "add": _add, **dict.fromkeys(ROUTING_KINDS, _route), **dict.fromkeys(PASS_KINDS, _pass),
}

GRADIENT: dict[str, Handler] = {
    **PROPAGATE, "maxpool": _winner, "reducemax": _winner, "add": _copy, **dict.fromkeys(PASS_KINDS, _derivative),
}


def _linear_reads(layer: Layer, rule: Rule | None) -> list[str]:
    """The input, and the output z where a plain group (its denominator) or a mask (its sign) needs it."""
    needs_z = rule is not None and any(g.is_plain or g.mask for g in rule.groups)
    return [layer.inputs[0], *([layer.output] if needs_z else [])]


Reader = Callable[[Layer, Rule | None], list[str]]

# kind -> (layer, its rule) -> the forward tensors its kernel reads
READS: dict[str, Reader] = {
    **dict.fromkeys(LINEAR_KINDS | POOLING_KINDS, _linear_reads),
    "maxpool": lambda layer, rule: layer.inputs[:1], "reducemax": lambda layer, rule: layer.inputs[:1],
    "add": lambda layer, rule: list(layer.inputs),
}

# The gradient reads no sum's inputs, and the input of every activation that has a derivative.
GRADIENT_READS: dict[str, Reader] = {
    **{kind: read for kind, read in READS.items() if kind != "add"},
    "elementwise": lambda layer, rule: [] if layer.attrs.get("lenient") else layer.inputs[:1],
}


@dataclass(frozen=True)
class Mode:
    """What a walk propagates: a handler per layer kind, and the forward tensors each kind reads."""

    propagate: dict[str, Handler]
    reads: dict[str, Reader]


MODES = {"relevance": Mode(PROPAGATE, READS), "gradient": Mode(GRADIENT, GRADIENT_READS)}


def walk_mode(name: str) -> Mode:
    """The walk mode called `name`."""
    if name not in MODES:
        raise ConfigError(f"mode must be one of {tuple(MODES)}, got {name!r}")
    return MODES[name]


def reads(model: LayerList, rules: list[Rule | None], denominators: dict[int, dict[int, str]] | None = None,
          mode: str = "relevance") -> dict[str, int]:
    """Every forward tensor the walk in `mode` reads, the denominators the forward pass computed
    included, with the index of the earliest layer that reads it (the walk releases the tensor after
    that layer)."""
    table = walk_mode(mode).reads
    last: dict[str, int] = {}
    for layer, rule in zip(model, rules):
        own = (denominators or {}).get(layer.index, {}).values()
        for name in [*table.get(layer.kind, lambda *_: [])(layer, rule), *own]:
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
    """Propagate `initial` (relevance, or the gradient in gradient mode, at the model output) to the
    model inputs.

    Relevance reaching a tensor from several readers is summed; a tensor's relevance is complete when
    the walk reaches its producer. Returns the relevance of every input that the output depends on
    and, with `keep`, every tensor's. Activations leave `walk.acts` once no earlier layer reads them."""
    model, propagate = walk.model, walk_mode(walk.mode).propagate
    release: dict[int, list[str]] = {}
    for name, index in reads(model, walk.rules, walk.denominators, walk.mode).items():
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
            for name, part in zip(layer.inputs, propagate[layer.kind](walk, layer, r)):
                relevance[name] = part if name not in relevance else relevance[name] + part
        for name in release.get(layer.index, ()):
            walk.acts.pop(name, None)
    result = {name: relevance[name] for name in model.inputs if name in relevance}
    if keep:
        kept.update((name, walk.backend.to_numpy(r)) for name, r in result.items())
    return result, kept
