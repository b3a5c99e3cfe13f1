"""From an ONNX model to the canonical LayerList: read, infer shapes, canonicalize, convert per op type."""
from __future__ import annotations

from ..errors import ModelLoadError, UnsupportedOperatorError
from . import ops  # noqa: F401  (registers the op handlers)
from .ir import Graph
from .layer import Layer, LayerList
from .loader import ModelSource, read_model
from .passes import drop_no_ops, drop_non_float, fold_affine, fold_constants, model_output, prune, strip_final
from .registry import BuildContext, handler_for, supported_ops

__all__ = ["Layer", "LayerList", "load", "find_unsupported", "supported_ops"]


def _graph(model: ModelSource) -> tuple[Graph, str, object]:
    proto = read_model(model)
    g = Graph.from_proto(proto)
    fold_constants(g)
    drop_no_ops(g)
    drop_non_float(g)
    output = model_output(g)
    prune(g, output)
    return g, output, proto


def _convert(g: Graph, errors: list[UnsupportedOperatorError] | None = None) -> list[Layer]:
    """One Layer per node; unsupported nodes raise, or are collected into `errors` when given."""
    ctx, layers = BuildContext(g), []
    for node in g.nodes:
        handler = handler_for(node.op_type, g.opset) if node.domain in ("", "ai.onnx") else None
        try:
            if handler is None:
                raise UnsupportedOperatorError(node.op_type, node.name, "no handler for this op type",
                                               supported_ops())
            layers.append(handler(node, ctx))
        except UnsupportedOperatorError as exc:
            if errors is None:
                raise
            errors.append(exc)
    return layers


def load(model: ModelSource) -> LayerList:
    """Parse and canonicalize an ONNX model (path, bytes or ModelProto) into a LayerList."""
    g, output, proto = _graph(model)
    float_inputs = [name for name in g.inputs if g.is_float(name)]
    if len(float_inputs) != 1:
        raise ModelLoadError(f"expected exactly one floating-point model input, got {float_inputs}")
    layers, output, stripped = strip_final(_convert(g), output)
    layers = fold_affine(layers, output)
    return LayerList(layers, float_inputs[0], g.shapes.get(float_inputs[0]), output, g.shapes.get(output),
                     proto, stripped)


def find_unsupported(model: ModelSource) -> list[UnsupportedOperatorError]:
    """Every node of `model` that onnxdtd cannot explain (empty when the whole graph is supported)."""
    g, output, _ = _graph(model)
    errors: list[UnsupportedOperatorError] = []
    layers = _convert(g, errors)
    try:
        strip_final(layers, output)
    except UnsupportedOperatorError as exc:
        errors.append(exc)
    return errors
