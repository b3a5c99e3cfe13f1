"""Pad (constant mode) as a `pad` layer: relevance of padded positions is dropped, like the gradient."""
from __future__ import annotations

from ..ir import Node
from ..layer import Layer
from ..registry import BuildContext, register


@register("Pad", note='constant mode: relevance routed back like the gradient (padding gets none)')
def pad(node: Node, ctx: BuildContext) -> Layer:
    mode = node.attr("mode", "constant")
    if mode != "constant":
        raise ctx.unsupported(node, f"mode={mode!r} (only 'constant' padding is supported)")
    rank = ctx.rank(node, node.inputs[0])
    if ctx.opset < 11:
        pads, value = list(node.attr("pads")), float(node.attr("value", 0.0))
    else:
        fill = ctx.optional_const(node, 2, "constant_value")
        value = 0.0 if fill is None else float(fill)
        pads = [int(p) for p in ctx.const(node, 1, "pads")]
        axes = ctx.optional_const(node, 3, "axes")
        if axes is not None:
            full = [0] * (2 * rank)
            for j, ax in enumerate(int(a) % rank for a in axes):
                full[ax], full[ax + rank] = pads[j], pads[j + len(axes)]
            pads = full
    return ctx.layer(node, "pad", [node.inputs[0]], pads=tuple(pads), value=value)
