"""The gradient as rules: the transposed pass alone on linear and pooling layers, and the derivative of
activations as data, for the engine's gradient mode (engine.MODES)."""
from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from ..graph.layer import Layer, LayerList
from .base import Group, Rule, Term
from .composite import Composite


class Gradient(Rule):
    """g_in = Wᵀ g_out: no denominator, no bias, the all-ones input; exact for dense, conv and pooling
    layers (whose transposed pass divides by the pooling count as the forward pass does)."""

    def __init__(self) -> None:
        super().__init__((Group((Term("one", "w"),), divide=False),), stabilizer=0.0)


def assign(model: LayerList) -> list[Rule | None]:
    """Gradient on every linear and pooling layer, None elsewhere: the rules of a gradient-mode walk."""
    rule = Gradient()
    return Composite(kinds={"linear": rule, "pooling": rule}).assign(model)


def derivative(layer: Layer) -> tuple[list[tuple[str, Any]], Any]:
    """An elementwise layer's derivative as data, for every backend to evaluate: 1 where the input
    passes every comparison ('>' or '<' a bound), else the returned slope (0, or LeakyRelu's and
    PRelu's alpha). At the kinks it is PyTorch's: Relu'(0) = 0, 0 at Clip's bounds; 0 at Max/Min ties."""
    f, attrs = layer.attrs["function"], layer.attrs
    if f in ("Relu", "LeakyRelu", "PRelu"):
        return [(">", 0.0)], attrs["alpha"]
    if f == "Clip":
        return [(op, attrs[key]) for op, key in ((">", "min"), ("<", "max")) if attrs[key] is not None], 0.0
    if f in ("Max", "Min"):
        return [(">" if f == "Max" else "<", attrs["bound"])], 0.0
    raise ConfigError(f"layer {layer.name!r} ({layer.op_type}): no derivative for the elementwise function {f!r}")
