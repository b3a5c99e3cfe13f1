"""Max and average pooling, windowed and global."""
from __future__ import annotations

from ..ir import Node
from ..layer import Layer
from ..registry import BuildContext, register, single_activation


def _window(node: Node) -> dict:
    kernel = tuple(node.attr("kernel_shape"))
    nd = len(kernel)
    return dict(kernel=kernel, strides=tuple(node.attr("strides", [1] * nd)),
                dilations=tuple(node.attr("dilations", [1] * nd)),
                pads=tuple(node.attr("pads", [0] * 2 * nd)), auto_pad=node.attr("auto_pad", "NOTSET"),
                ceil_mode=int(node.attr("ceil_mode", 0)))


@register("MaxPool",
          note='maxpool="winner" routes relevance to the maximum, "proportional" splits it by the z-rule; pads, '
               "strides, dilations, ceil_mode")
def maxpool(node: Node, ctx: BuildContext) -> Layer:
    return ctx.layer(node, "maxpool", [single_activation(node, ctx)], **_window(node))


@register("AveragePool",
          note="linear with unit weights: the z-rule (Norm) by default, any rule; count_include_pad, ceil_mode")
def avgpool(node: Node, ctx: BuildContext) -> Layer:
    return ctx.layer(node, "avgpool", [single_activation(node, ctx)], **_window(node),
                     count_include_pad=int(node.attr("count_include_pad", 0)))


@register("GlobalMaxPool", note='as MaxPool over the whole spatial extent')
def global_maxpool(node: Node, ctx: BuildContext) -> Layer:
    return ctx.layer(node, "maxpool", [single_activation(node, ctx)], kernel=None)


@register("GlobalAveragePool", note='as ReduceMean over the spatial axes')
def global_avgpool(node: Node, ctx: BuildContext) -> Layer:
    x = single_activation(node, ctx)
    return ctx.layer(node, "reduce", [x], axes=tuple(range(2, ctx.rank(node, x))), keepdims=1, mean=True)
