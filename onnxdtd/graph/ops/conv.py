"""Conv (1-D, 2-D, N-D; strides, pads, auto_pad, dilations, groups) as a `conv` layer."""
from __future__ import annotations

from ..ir import Node
from ..layer import Layer
from ..registry import BuildContext, register


@register("Conv")
def conv(node: Node, ctx: BuildContext) -> Layer:
    if ctx.is_const(node.inputs[0]):
        raise ctx.unsupported(node, "the data input (input 0) must be an activation")
    weight = ctx.const(node, 1, "weight")
    bias = ctx.optional_const(node, 2, "bias")
    nd = weight.ndim - 2
    kernel = tuple(node.attr("kernel_shape", weight.shape[2:]))
    if kernel != tuple(weight.shape[2:]):
        raise ctx.unsupported(node, f"kernel_shape {kernel} does not match weight shape {weight.shape}")
    return ctx.layer(node, "conv", [node.inputs[0]], {"weight": weight, "bias": bias},
                     kernel=kernel, strides=tuple(node.attr("strides", [1] * nd)),
                     dilations=tuple(node.attr("dilations", [1] * nd)),
                     pads=tuple(node.attr("pads", [0] * 2 * nd)),
                     auto_pad=node.attr("auto_pad", "NOTSET"), group=int(node.attr("group", 1)))
