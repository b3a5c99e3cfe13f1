"""From an ONNX model to the canonical LayerList: read, infer shapes, canonicalize, convert per op type."""
from __future__ import annotations

from ..errors import ModelLoadError, UnsupportedOperatorError
from . import ops  # noqa: F401  (registers the op handlers)
from .ir import Graph
from .layer import Layer, LayerList
from .loader import ModelSource, read_model
from .passes import (binary_head, drop_no_ops, drop_non_float, fold_affine, fold_affine_right, fold_constants,
                     model_output, prune, strip_final)
from .registry import HINTS, BuildContext, handler_for, supported_ops

__all__ = ["Layer", "LayerList", "load", "find_unsupported", "supported_ops"]


def _graph(model: ModelSource, output: str | int | None) -> tuple[Graph, str]:
    g = Graph.from_proto(read_model(model))
    fold_constants(g)
    drop_no_ops(g)
    drop_non_float(g)
    name = model_output(g, output)
    prune(g, name)
    return g, name


def _convert(g: Graph, strict: bool, errors: list[UnsupportedOperatorError] | None = None) -> list[Layer]:
    """One Layer per node; unsupported nodes raise, or are collected into `errors` when given."""
    ctx, layers = BuildContext(g, strict), []
    for node in g.nodes:
        handler = handler_for(node.op_type, g.opset) if node.domain in ("", "ai.onnx") else None
        try:
            if handler is None:
                reason = HINTS.get(node.op_type, "no handler for this op type")
                raise UnsupportedOperatorError(node.op_type, node.name, reason, supported_ops())
            layers.append(handler(node, ctx))
        except UnsupportedOperatorError as exc:
            if errors is None:
                raise
            errors.append(exc)
    return layers


def load(model: ModelSource, strict: bool = True, output: str | int | None = None) -> LayerList:
    """Parse and canonicalize an ONNX model (path, bytes or ModelProto) into a LayerList.

    `output` picks the explained tensor (a graph output's index or name, or any tensor's name; default:
    the first floating-point output). With `strict=False`, nonlinear elementwise ops that have no
    relevance rule (Tanh, GELU, a Sigmoid inside the graph, ...) pass relevance through unchanged."""
    g, output = _graph(model, output)
    inputs = {name: g.shapes.get(name) for name in g.inputs if any(name in n.inputs for n in g.nodes)}
    others = [name for name in inputs if not g.is_float(name)]
    if others or not inputs:
        raise ModelLoadError(f"every model input the output depends on must be floating-point; got "
                             f"{list(inputs) or 'none'} (not float: {others})")
    layers, output, stripped, derived = _canonical(g, output, strict)
    return LayerList(layers, inputs, output, g.shapes.get(output), g.proto, stripped, derived)


def _canonical(g: Graph, output: str, strict: bool, errors: list[UnsupportedOperatorError] | None = None
               ) -> tuple[list[Layer], str, str | None, dict]:
    """Layers with affine layers folded, the binary head turned into logits and a final squashing op
    stripped: (layers, explained tensor, stripped op type, derived tensors)."""
    layers, derived = fold_affine(_convert(g, strict, errors), output)
    layers, output, head = binary_head(fold_affine_right(layers, g.inputs), output)
    layers, output, stripped = strip_final(layers, output, strict, errors)
    return layers, output, "Sigmoid" if head else stripped, {**derived, **head}


def find_unsupported(model: ModelSource, strict: bool = True,
                     output: str | int | None = None) -> list[UnsupportedOperatorError]:
    """Every node of `model` that onnxdtd cannot explain (empty when the whole graph is supported)."""
    g, output = _graph(model, output)
    errors: list[UnsupportedOperatorError] = []
    _canonical(g, output, strict, errors)
    return errors
