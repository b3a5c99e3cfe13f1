"""Ops that only move values: Concat, Transpose and the reshaping family (relevance routed like the gradient)."""
from __future__ import annotations

from ..ir import Node
from ..layer import Layer
from ..registry import BuildContext, register, single_activation


@register("Flatten", "Reshape", "Squeeze", "Unsqueeze", note='relevance reshaped back like the gradient')
def reshape(node: Node, ctx: BuildContext) -> Layer:
    return ctx.layer(node, "reshape", [single_activation(node, ctx)])


@register("Transpose", note='relevance transposed back like the gradient')
def transpose(node: Node, ctx: BuildContext) -> Layer:
    x = single_activation(node, ctx)
    perm = node.attr("perm") or list(reversed(range(ctx.rank(node, x))))
    return ctx.layer(node, "transpose", [x], perm=tuple(int(p) for p in perm))


@register("Concat", note='relevance split back like the gradient')
def concat(node: Node, ctx: BuildContext) -> Layer:
    acts = ctx.activations(node)
    if len(acts) != len(node.inputs):
        raise ctx.unsupported(node, "all inputs must be activations (a constant input is not supported)")
    axis = int(node.attr("axis")) % ctx.rank(node, acts[0])
    if axis == 0:
        raise ctx.unsupported(node, "it concatenates along the batch axis 0")
    return ctx.layer(node, "concat", acts, axis=axis)


@register("Split", note='relevance concatenated back like the gradient')
def split(node: Node, ctx: BuildContext) -> Layer:
    x = single_activation(node, ctx)
    axis = int(node.attr("axis", 0)) % ctx.rank(node, x)
    if axis == 0:
        raise ctx.unsupported(node, "it splits along the batch axis 0")
    return ctx.layer(node, "split", [x], outputs=node.outputs, axis=axis)
