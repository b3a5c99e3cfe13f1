"""Elementwise activations (relevance passes unchanged) and final squashing functions (stripped)."""
from __future__ import annotations

import numpy as np

from ..ir import Node
from ..layer import Layer
from ..registry import BuildContext, register, single_activation

FINAL_OPS = ("Softmax", "LogSoftmax", "Sigmoid")
# Nonlinear elementwise ops with no relevance rule: an error, or passed through in lenient mode.
NO_RULE = ("Tanh", "Erf", "Gelu", "Elu", "Selu", "Celu", "Softplus", "Softsign", "HardSigmoid", "HardSwish",
           "Mish", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal", "Sin", "Cos", "ThresholdedRelu")


@register("Relu", "LeakyRelu", note='elementwise: relevance passes unchanged')
def relu(node: Node, ctx: BuildContext) -> Layer:
    return ctx.layer(node, "elementwise", [single_activation(node, ctx)], function=node.op_type,
                     alpha=node.attr("alpha", 0.01 if node.op_type == "LeakyRelu" else 0.0))


@register("PRelu", note='elementwise (constant slope): relevance passes unchanged')
def prelu(node: Node, ctx: BuildContext) -> Layer:
    return ctx.layer(node, "elementwise", [node.inputs[0]], function="PRelu", alpha=ctx.const(node, 1, "slope"))


@register(*NO_RULE, note='no relevance rule: an error, or passed through unchanged with strict=False (--lenient)')
def no_rule(node: Node, ctx: BuildContext) -> Layer:
    """A nonlinear elementwise op with no rule: relevance passes through when not strict."""
    x = single_activation(node, ctx)
    if ctx.strict:
        raise ctx.unsupported(node, "a nonlinear elementwise op with no relevance rule; "
                                    "Explainer(strict=False) / --lenient passes relevance through it unchanged")
    return ctx.layer(node, "elementwise", [x], function=node.op_type, lenient=True)


@register("Max", "Min",
          note="with constants (jnp.maximum(x, 0) as ReLU): elementwise, relevance passes unchanged")
def max_min(node: Node, ctx: BuildContext) -> Layer:
    x = single_activation(node, ctx)
    constants = [ctx.graph.constants[name] for name in node.inputs if name != x]
    pick = np.maximum.reduce if node.op_type == "Max" else np.minimum.reduce
    return ctx.layer(node, "elementwise", [x], function=node.op_type, bound=pick(np.broadcast_arrays(*constants)))


@register("Clip", note='elementwise (ReLU6 and friends): relevance passes unchanged')
def clip(node: Node, ctx: BuildContext) -> Layer:
    low, high = node.attr("min"), node.attr("max")
    if ctx.opset >= 11:
        bounds = [ctx.optional_const(node, i, what) for i, what in ((1, "min"), (2, "max"))]
        low, high = (None if b is None else float(b) for b in bounds)
    return ctx.layer(node, "elementwise", [node.inputs[0]], function="Clip", min=low, max=high)


@register(*FINAL_OPS,
          note="stripped as the last op, so the logit is explained; a Sigmoid inside the graph only with "
               "strict=False; the binary head of scikit-learn classifiers becomes the logits (-z, z)")
def final(node: Node, ctx: BuildContext) -> Layer:
    """Stripped when it ends the model (see passes.strip_final); a Sigmoid elsewhere is lenient-only."""
    return ctx.layer(node, "final", [single_activation(node, ctx)], function=node.op_type)
