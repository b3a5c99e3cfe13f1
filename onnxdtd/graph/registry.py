"""Op-type handlers: each turns one ONNX node into one canonical Layer (pattern of onnx2torch's converters)."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import UnsupportedOperatorError
from .ir import Graph, Node
from .layer import Layer

Handler = Callable[[Node, "BuildContext"], Layer]
_HANDLERS: dict[str, list[tuple[int, Handler]]] = {}
NOTES: dict[str, str] = {}  # op type -> how relevance goes through it, and its conditions


def register(*op_types: str, note: str, since: int = 1) -> Callable[[Handler], Handler]:
    """Register a handler for `op_types` from opset `since` on (a later `since` wins for newer opsets);
    `note` says how relevance goes through the op, for the support table."""
    def wrap(fn: Handler) -> Handler:
        for op in op_types:
            _HANDLERS.setdefault(op, []).append((since, fn))
            _HANDLERS[op].sort(key=lambda entry: entry[0])
            NOTES[op] = note
        return fn
    return wrap


def handler_for(op_type: str, opset: int) -> Handler | None:
    """The handler of `op_type` valid at `opset`, or None when the op is not supported."""
    found = [fn for since, fn in _HANDLERS.get(op_type, []) if since <= opset]
    return found[-1] if found else None


def supported_ops() -> list[str]:
    """All op types that have a handler."""
    return sorted(_HANDLERS)


# What is missing for common ops that have no handler, shown by errors and `onnxdtd inspect`.
HINTS = {
    "LayerNormalization": "normalizes by the statistics of its own input; no LRP rule yet (the usual "
                          "treatment holds the standard deviation constant, as for BatchNorm)",
    "GroupNormalization": "normalizes by the statistics of its own input; no LRP rule yet",
    "InstanceNormalization": "normalizes by the statistics of its own input; no LRP rule yet",
    "LSTM": "recurrent cells need rules for their multiplicative gates (not implemented)",
    "GRU": "recurrent cells need rules for their multiplicative gates (not implemented)",
    "RNN": "recurrent cells are not supported",
    "Attention": "attention multiplies activations with each other (needs AH-LRP-style rules, not implemented)",
    "MultiHeadAttention": "attention multiplies activations with each other (not implemented)",
}


class BuildContext:
    """What a handler may ask about the graph: constants, shapes, ranks and the opset."""

    def __init__(self, graph: Graph, strict: bool = True):
        self.graph, self.strict = graph, strict
        self.opset = graph.opset

    def is_const(self, name: str) -> bool:
        return name in self.graph.constants

    def const(self, node: Node, index: int, what: str) -> np.ndarray:
        """Input `index` of `node` as a constant array; raises when it is computed at run time."""
        name = node.inputs[index] if index < len(node.inputs) else ""
        if name not in self.graph.constants:
            raise self.unsupported(node, f"its {what} (input {index}) must be a constant initializer")
        return self.graph.constants[name]

    def optional_const(self, node: Node, index: int, what: str) -> np.ndarray | None:
        """Like const(), but None when the optional input is absent."""
        if index >= len(node.inputs) or not node.inputs[index]:
            return None
        return self.const(node, index, what)

    def activations(self, node: Node) -> list[str]:
        """The float inputs of `node` computed from the model's input (not constants, not shape tensors)."""
        return [i for i in node.inputs if i and i not in self.graph.constants and self.graph.is_float(i)]

    def rank(self, node: Node, name: str) -> int:
        shape = self.graph.shapes.get(name)
        if shape is None:
            raise self.unsupported(node, f"the rank of tensor {name!r} is unknown after shape inference")
        return len(shape)

    def unsupported(self, node: Node, reason: str) -> UnsupportedOperatorError:
        return UnsupportedOperatorError(node.op_type, node.name, reason)

    def layer(self, node: Node, kind: str, inputs: Sequence[str], params: dict | None = None,
              outputs: Sequence[str] | None = None, **attrs: Any) -> Layer:
        """A Layer for `node` (its first output unless `outputs` says) with shapes from shape inference."""
        shapes = self.graph.shapes
        outputs = list(outputs or node.outputs[:1])
        return Layer(name=node.name, kind=kind, op_type=node.op_type, inputs=list(inputs), outputs=outputs,
                     params=params or {}, attrs=attrs, input_shapes=[shapes.get(i) for i in inputs],
                     output_shapes=[shapes.get(o) for o in outputs])


def single_activation(node: Node, ctx: BuildContext) -> str:
    """The one activation input of `node`; raises when there is none or several."""
    acts = ctx.activations(node)
    if len(acts) != 1:
        raise ctx.unsupported(node, f"expected one activation input, got {len(acts)}")
    return acts[0]
