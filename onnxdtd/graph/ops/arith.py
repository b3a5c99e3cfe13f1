"""Add/Sub/Mul/Div by constants as `affine` layers y = x * scale + shift; Add of two activations as `add`."""
from __future__ import annotations

import numpy as np

from ..ir import Node
from ..layer import Layer
from ..registry import BuildContext, register


def affine(ctx: BuildContext, node: Node, x: str, scale: np.ndarray | float, shift: np.ndarray | float) -> Layer:
    """An `affine` layer; constants are kept in float64 and broadcast against the activation."""
    params = {"scale": np.asarray(scale, np.float64), "shift": np.asarray(shift, np.float64)}
    return ctx.layer(node, "affine", [x], params)


def _split(node: Node, ctx: BuildContext) -> tuple[str, np.ndarray, bool]:
    """(activation, constant, whether the constant is the first operand)."""
    acts = ctx.activations(node)
    if len(acts) != 1 or len(node.inputs) != 2:
        raise ctx.unsupported(node, "expected one activation and one constant operand; "
                                    f"got {len(acts)} activation inputs")
    first = node.inputs[0] != acts[0]
    return acts[0], ctx.graph.constants[node.inputs[0 if first else 1]], first


@register("Add", "Sum",
          note="activations: z-rule split R_k = x_k R / s(Σx); a constant: a bias, folded into the layer before")
def add(node: Node, ctx: BuildContext) -> Layer:
    acts = ctx.activations(node)
    if len(acts) >= 2 and len(acts) == len(node.inputs):
        return ctx.layer(node, "add", acts)
    x, c, _ = _split(node, ctx)
    return affine(ctx, node, x, 1.0, c)


@register("Sub",
          note="by a constant: folded into the linear layer before or after it; on the input (normalization) it "
               "passes relevance and z^B bounds are mapped through")
def sub(node: Node, ctx: BuildContext) -> Layer:
    x, c, first = _split(node, ctx)
    return affine(ctx, node, x, -1.0, c) if first else affine(ctx, node, x, 1.0, -c)


@register("Mul",
          note="by a constant: folded into the linear layer before or after it; on the input (normalization) it "
               "passes relevance and z^B bounds are mapped through")
def mul(node: Node, ctx: BuildContext) -> Layer:
    x, c, _ = _split(node, ctx)
    return affine(ctx, node, x, c, 0.0)


@register("Div",
          note="by a constant: folded into the linear layer before or after it; on the input (normalization) it "
               "passes relevance and z^B bounds are mapped through")
def div(node: Node, ctx: BuildContext) -> Layer:
    x, c, first = _split(node, ctx)
    if first:
        raise ctx.unsupported(node, "division of a constant by an activation is not linear")
    return affine(ctx, node, x, 1.0 / c.astype(np.float64), 0.0)
