"""ReduceMean and ReduceSum (axes as attribute or as input, both opset styles) as `reduce` layers, and
ReduceMax as `reducemax` (max pooling over the reduced axes)."""
from __future__ import annotations

from ..ir import Node
from ..layer import Layer
from ..registry import BuildContext, register, single_activation

# The opset from which each op takes its axes as an input instead of an attribute.
AXES_AS_INPUT = {"ReduceSum": 13, "ReduceMean": 18, "ReduceMax": 18}


@register("ReduceMean", "ReduceSum", "ReduceMax",
          note="ReduceMean/ReduceSum: linear with unit weights, the z-rule (Norm) by default, any rule; "
               "ReduceMax: as max pooling; axes as attribute or input")
def reduce(node: Node, ctx: BuildContext) -> Layer:
    x = single_activation(node, ctx)
    rank = ctx.rank(node, x)
    if ctx.opset >= AXES_AS_INPUT[node.op_type]:
        given = ctx.optional_const(node, 1, "axes")
        axes = [] if given is None else [int(a) for a in given.reshape(-1)]
    else:
        axes = list(node.attr("axes", []))
    if not axes:
        if node.attr("noop_with_empty_axes", 0):
            return ctx.layer(node, "reshape", [x])
        axes = list(range(rank))
    axes = sorted(int(a) % rank for a in axes)
    if 0 in axes:
        raise ctx.unsupported(node, "it reduces over the batch axis 0")
    return ctx.layer(node, "reducemax" if node.op_type == "ReduceMax" else "reduce", [x], axes=tuple(axes),
                     keepdims=int(node.attr("keepdims", 1)), mean=node.op_type == "ReduceMean")
