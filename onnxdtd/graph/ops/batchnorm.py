"""BatchNormalization (inference) as a per-channel `affine` layer; a later pass folds it into a linear layer."""
from __future__ import annotations

import numpy as np

from ..ir import Node
from ..layer import Layer
from ..registry import BuildContext, register
from .arith import affine


@register("BatchNormalization",
          note="inference mode: folded into the Conv/Gemm before it, or the dense layer / unpadded conv after it; "
               "else a per-channel affine layer that passes relevance")
def batchnorm(node: Node, ctx: BuildContext) -> Layer:
    if node.attr("training_mode", 0):
        raise ctx.unsupported(node, "training_mode=1 (export the model in eval mode)")
    gamma, beta, mean, var = (ctx.const(node, i, what).astype(np.float64)
                              for i, what in enumerate(("scale", "bias", "mean", "var"), start=1))
    scale = gamma / np.sqrt(var + node.attr("epsilon", 1e-5))
    shape = (1, -1) + (1,) * (ctx.rank(node, node.inputs[0]) - 2)
    return affine(ctx, node, node.inputs[0], scale.reshape(shape), (beta - mean * scale).reshape(shape))
