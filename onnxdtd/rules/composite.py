"""Composites: which rule each layer gets, by layer index, node name, first linear layer, or kind."""
from __future__ import annotations

from collections.abc import Mapping
from fnmatch import fnmatchcase

from ..errors import ConfigError
from ..graph.layer import LINEAR_KINDS, POOLING_KINDS, Layer, LayerList
from .base import Rule
from .epsilon import Norm

# Kind aliases a composite may use besides the layer kinds themselves.
KIND_GROUPS = {"linear": LINEAR_KINDS, "pooling": POOLING_KINDS, "conv": frozenset({"conv", "convtranspose"})}
RULED_KINDS = LINEAR_KINDS | POOLING_KINDS


def _kinds(key: str) -> frozenset[str]:
    """The layer kinds that a composite key names."""
    if key in KIND_GROUPS:  # checked first: 'conv' covers ConvTranspose too
        return KIND_GROUPS[key]
    if key in RULED_KINDS:
        return frozenset({key})
    raise ConfigError(f"unknown layer kind {key!r} in composite; use one of {sorted(RULED_KINDS | set(KIND_GROUPS))}")


class Composite:
    """Maps layers to rules. Precedence: `indices`, then `names` (exact or glob pattern), then
    `first` (the first layers of a kind in `first_kinds` on each input: dense or conv unless narrowed,
    as zennit's EpsilonGammaBox narrows it to conv), then `kinds` ('dense', 'conv', 'linear', 'avgpool',
    'reduce', 'pooling'). Pooling layers default to the z-rule (Norm)."""

    def __init__(self, kinds: Mapping[str, Rule] | None = None, first: Rule | None = None,
                 names: Mapping[str, Rule] | None = None, indices: Mapping[int, Rule] | None = None,
                 first_kinds: str = "linear"):
        self.kinds, self.first = dict(kinds or {}), first
        self.names, self.indices = dict(names or {}), dict(indices or {})
        self.first_kinds = _kinds(first_kinds)
        for key in self.kinds:
            _kinds(key)

    def first_layers(self, model: LayerList) -> set[int]:
        """Indices of the layers that get the `first` rule: those of `first_kinds` that read an input
        domain (a model input through no other linear layer). For a chain that is the first linear
        layer; every input branch, and every parallel branch on an input, has its own."""
        domain, first = set(model.inputs), set()
        for layer in model:
            reads = any(name in domain for name in layer.inputs)
            if reads and layer.kind in self.first_kinds:
                first.add(layer.index)
            elif reads and layer.kind not in LINEAR_KINDS:
                domain.update(layer.outputs)
        return first

    def rule_for(self, layer: Layer, first: set[int]) -> Rule | None:
        """The rule of `layer`, or None for layers that no rule applies to (routing, activations)."""
        if layer.kind not in RULED_KINDS:
            return None
        if layer.index in self.indices:
            return self.indices[layer.index]
        for pattern, rule in self.names.items():
            if fnmatchcase(layer.name, pattern):
                return rule
        if self.first is not None and layer.index in first:
            return self.first
        for key, rule in self.kinds.items():
            if layer.kind in _kinds(key):
                return rule
        return Norm() if layer.kind in POOLING_KINDS else None

    def assign(self, model: LayerList) -> list[Rule | None]:
        """One rule per layer; raises when a dense/conv layer is left without one."""
        first = self.first_layers(model)
        rules = [self.rule_for(layer, first) for layer in model]
        missing = [f"{layer.index}:{layer.name} ({layer.kind})" for layer, rule in zip(model, rules)
                   if rule is None and layer.kind in LINEAR_KINDS]
        if missing:
            raise ConfigError(f"the composite gives no rule to layer(s) {', '.join(missing)}")
        return rules

    def __repr__(self) -> str:
        parts = [f"{k}={v!r}" for k, v in (("indices", self.indices), ("names", self.names),
                                            ("first", self.first), ("kinds", self.kinds)) if v]
        return f"Composite({', '.join(parts)})"
