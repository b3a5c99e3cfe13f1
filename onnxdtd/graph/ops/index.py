"""Ops that copy values by index (Slice; Gather, GatherElements, GatherND with constant indices; nearest
Resize/Upsample; DepthToSpace, SpaceToDepth, Tile): relevance is routed back like the gradient, by an index map
obtained by running the node itself on the positions of its input. Expand sums over broadcast axes."""
from __future__ import annotations

import numpy as np

from ..ir import Node
from ..layer import Layer
from ..registry import BuildContext, register, single_activation

NEAREST_ONLY = ("Resize", "Upsample")


@register("Slice", "Gather", "GatherElements", "GatherND", "Resize", "Upsample", "DepthToSpace", "SpaceToDepth",
          "Tile",
          note="copies values: relevance routed back like the gradient; Gather with constant indices, "
               "Resize/Upsample in nearest mode")
def index(node: Node, ctx: BuildContext) -> Layer:
    x = single_activation(node, ctx)
    if node.inputs[0] != x:
        raise ctx.unsupported(node, "the data input (input 0) must be the activation")
    if node.op_type in NEAREST_ONLY and node.attr("mode", "nearest") != "nearest":
        raise ctx.unsupported(node, f"mode={node.attr('mode')!r}: only 'nearest' resizing copies values "
                                    "(linear and cubic resizing have no relevance rule yet)")
    constants = {name: ctx.const(node, i, f"input {i}") for i, name in enumerate(node.inputs) if i and name}
    return ctx.layer(node, "index", [x], source=node, constants=constants, opset=ctx.opset)


@register("Expand", note="broadcasting: relevance summed back over the broadcast axes, like the gradient")
def expand(node: Node, ctx: BuildContext) -> Layer:
    return ctx.layer(node, "broadcast", [single_activation(node, ctx)])


def source_index(layer: Layer, shape: tuple[int, ...]) -> np.ndarray:
    """For every output element, the flat index of the input element it copies (cached per shape)."""
    key = ("source_index", shape)
    if key not in layer.cache:
        node: Node = layer.attrs["source"]
        positions = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape)
        out = node.evaluate({node.inputs[0]: positions, **layer.attrs["constants"]}, layer.attrs["opset"])[0]
        layer.cache[key] = out.astype(np.int64)
    return layer.cache[key]
