"""Conv (1-D, 2-D, N-D; strides, pads, auto_pad, dilations, groups) as a `conv` layer, and ConvTranspose."""
from __future__ import annotations

from ..ir import Node
from ..layer import Layer
from ..registry import BuildContext, register


@register("Conv",
          note="conv layer under any rule: 1-D, 2-D, N-D, strides, pads, auto_pad, dilations, groups (depthwise)")
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


@register("ConvTranspose",
          note="linear layer under any rule: strides, explicit pads, output_padding, dilations, groups")
def conv_transpose(node: Node, ctx: BuildContext) -> Layer:
    if ctx.is_const(node.inputs[0]):
        raise ctx.unsupported(node, "the data input (input 0) must be an activation")
    if node.attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID") or node.attr("output_shape") is not None:
        raise ctx.unsupported(node, "auto_pad SAME_* and output_shape are not supported; export explicit pads")
    weight = ctx.const(node, 1, "weight")
    nd = weight.ndim - 2
    pads = (0,) * 2 * nd if node.attr("auto_pad") == "VALID" else tuple(node.attr("pads", [0] * 2 * nd))
    return ctx.layer(node, "convtranspose", [node.inputs[0]],
                     {"weight": weight, "bias": ctx.optional_const(node, 2, "bias")},
                     kernel=tuple(weight.shape[2:]), strides=tuple(node.attr("strides", [1] * nd)),
                     dilations=tuple(node.attr("dilations", [1] * nd)), pads=pads,
                     output_padding=tuple(node.attr("output_padding", [0] * nd)), group=int(node.attr("group", 1)))
