"""Elementwise activations (relevance passes unchanged) and final squashing functions (stripped)."""
from __future__ import annotations

from ..ir import Node
from ..layer import Layer
from ..registry import BuildContext, register, single_activation

FINAL_OPS = ("Softmax", "LogSoftmax", "Sigmoid")


@register("Relu", "LeakyRelu")
def relu(node: Node, ctx: BuildContext) -> Layer:
    return ctx.layer(node, "elementwise", [single_activation(node, ctx)], function=node.op_type,
                     alpha=node.attr("alpha", 0.01 if node.op_type == "LeakyRelu" else 0.0))


@register("Clip")
def clip(node: Node, ctx: BuildContext) -> Layer:
    low, high = node.attr("min"), node.attr("max")
    if ctx.opset >= 11:
        bounds = [ctx.optional_const(node, i, what) for i, what in ((1, "min"), (2, "max"))]
        low, high = (None if b is None else float(b) for b in bounds)
    return ctx.layer(node, "elementwise", [node.inputs[0]], function="Clip", min=low, max=high)


@register(*FINAL_OPS)
def final(node: Node, ctx: BuildContext) -> Layer:
    return ctx.layer(node, "final", [single_activation(node, ctx)], function=node.op_type)
