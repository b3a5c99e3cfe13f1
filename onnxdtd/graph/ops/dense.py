"""Gemm and MatMul with a constant weight as `dense` layers: y = x @ weight.T + bias over one axis."""
from __future__ import annotations

import numpy as np

from ..ir import Node
from ..layer import Layer
from ..registry import BuildContext, register


@register("Gemm", note='dense layer under any rule: transA, transB, alpha, beta; a following bias Add is folded in')
def gemm(node: Node, ctx: BuildContext) -> Layer:
    if ctx.is_const(node.inputs[0]):
        raise ctx.unsupported(node, "input A must be an activation and input B a constant")
    b = ctx.const(node, 1, "weight B").astype(np.float64)
    weight = (b if node.attr("transB", 0) else b.T) * node.attr("alpha", 1.0)
    c = ctx.optional_const(node, 2, "bias C")
    bias = None
    if c is not None:
        if c.size not in (1, weight.shape[0]) or (c.ndim == 2 and c.shape[0] != 1):
            raise ctx.unsupported(node, f"bias C of shape {c.shape} is not a per-output vector")
        bias = np.broadcast_to(c.reshape(-1) * node.attr("beta", 1.0), (weight.shape[0],)).copy()
    return ctx.layer(node, "dense", [node.inputs[0]], {"weight": weight, "bias": bias},
                     axis=0 if node.attr("transA", 0) else -1)


@register("Einsum", note="'...i,ij->...j' with a constant matrix: a dense layer under any rule")
def einsum(node: Node, ctx: BuildContext) -> Layer:
    lhs, _, out = node.attr("equation", "").replace(" ", "").partition("->")
    terms = lhs.split(",")
    dense = (len(terms) == 2 and len(terms[1]) == 2 and terms[0][-1:] == terms[1][0]
             and out == terms[0][:-1] + terms[1][1] and terms[1][0] not in out)
    if not dense or ctx.is_const(node.inputs[0]):
        raise ctx.unsupported(node, f"equation {node.attr('equation')!r}: only 'x...i,ij->x...j' with a constant "
                                    "matrix (a dense layer) is supported")
    return ctx.layer(node, "dense", [node.inputs[0]], {"weight": ctx.const(node, 1, "matrix").T.copy(), "bias": None},
                     axis=-1)


@register("MatMul", note='dense layer under any rule when the right operand is a constant matrix')
def matmul(node: Node, ctx: BuildContext) -> Layer:
    b = ctx.const(node, 1, "right operand B")
    if ctx.is_const(node.inputs[0]) or b.ndim != 2:
        raise ctx.unsupported(node, f"only activation @ constant matrix is supported, got B of shape {b.shape}")
    return ctx.layer(node, "dense", [node.inputs[0]], {"weight": b.T.copy(), "bias": None}, axis=-1)
