"""Canonicalization passes: on the ONNX view (constants, no-ops, shape arithmetic) and on the layer list."""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..errors import ModelLoadError, UnsupportedOperatorError
from .ir import FLOAT_TYPES, Graph, Node
from .layer import LINEAR_KINDS, Derived, Layer

FOLDS_INTO = frozenset({"dense", "conv"})  # layers whose output channels are the weight's first axis

# Ops whose output carries its input's values: readers read the input instead. ZipMap only repackages
# a classifier's probabilities as a sequence of maps.
IDENTITY_OPS = frozenset({"Identity", "Dropout", "ZipMap"})


def fold_constants(g: Graph) -> None:
    """Constant nodes, and nodes whose inputs are all constants, become constants."""
    kept = []
    for node in g.nodes:
        if node.op_type == "Constant":
            g.constants[node.outputs[0]] = _constant_value(node)
        elif node.inputs and all(i in g.constants for i in node.inputs if i):
            for name, value in zip(node.outputs, _evaluate(node, g)):
                g.constants[name] = value
        else:
            kept.append(node)
    g.nodes = kept


def _constant_value(node: Node) -> np.ndarray:
    for key, value in node.attrs.items():
        if key.startswith("value"):
            return np.asarray(value)
    raise UnsupportedOperatorError("Constant", node.name, f"attribute(s) {sorted(node.attrs)} hold no value")


def _evaluate(node: Node, g: Graph) -> list[np.ndarray]:
    """Run one all-constant node."""
    try:
        return node.evaluate(g.constants, g.opset)
    except Exception as exc:  # the evaluator raises many types; report them as the node's problem
        raise UnsupportedOperatorError(node.op_type, node.name, f"cannot fold constant node: {exc}") from exc


def drop_no_ops(g: Graph) -> None:
    """Identity, Dropout, ZipMap and float-to-float Cast nodes disappear; readers read their input."""
    kept = []
    for node in g.nodes:
        float_cast = node.op_type == "Cast" and node.attr("to") in FLOAT_TYPES and g.is_float(node.inputs[0])
        if node.op_type in IDENTITY_OPS or float_cast:
            g.rename(node.outputs[0], node.inputs[0])
        else:
            kept.append(node)
    g.nodes = kept


def drop_non_float(g: Graph) -> None:
    """Nodes that only compute integer tensors (shapes, indices) carry no relevance and are dropped."""
    g.nodes = [n for n in g.nodes if any(g.is_float(o) for o in n.outputs if o)]


def prune(g: Graph, output: str) -> None:
    """Keep only the nodes that the explained output depends on."""
    needed, kept = {output}, []
    for node in reversed(g.nodes):
        if needed.intersection(node.outputs):
            kept.append(node)
            needed.update(node.inputs)
    g.nodes = kept[::-1]


def strip_final(layers: list[Layer], output: str, strict: bool = True,
                errors: list[UnsupportedOperatorError] | None = None) -> tuple[list[Layer], str, str | None]:
    """Remove a trailing Softmax/LogSoftmax/Sigmoid so that the logit is explained; a Sigmoid elsewhere
    passes relevance through in lenient mode. Misplaced ones raise, or are collected into `errors`."""
    stripped = None
    while layers and layers[-1].kind == "final" and layers[-1].output == output:
        stripped = layers[-1].op_type
        output = layers[-1].inputs[0]
        layers = layers[:-1]
    for layer in layers:
        if layer.kind != "final":
            continue
        if strict or layer.op_type != "Sigmoid":
            exc = UnsupportedOperatorError(layer.op_type, layer.name, "only supported as the model's last op (it "
                                           "is stripped and the logit is explained)" + (
                                               "; Explainer(strict=False) passes relevance through a Sigmoid"
                                               if layer.op_type == "Sigmoid" else ""))
            if errors is None:
                raise exc
            errors.append(exc)
        layer.kind = "elementwise"
        layer.attrs["lenient"] = True
    return layers, output, stripped


def binary_head(layers: list[Layer], output: str) -> tuple[list[Layer], str, dict[str, Derived]]:
    """Concat(1 - Sigmoid(z), Sigmoid(z)) after a one-unit dense layer (scikit-learn's binary classifier)
    becomes a two-unit dense layer with the logits (-z, z): each class's logit, its sign folded into the
    weights so that sign-sensitive rules (z⁺, γ, α/β) see that class's own weights. Returns the layers,
    the new output and the new tensor for the forward pass to compute."""
    by_output = {layer.output: layer for layer in layers}
    concat = by_output.get(output)
    if concat is None or concat.kind != "concat" or len(concat.inputs) != 2:
        return layers, output, {}
    minus, sigmoid = (by_output.get(name) for name in concat.inputs)
    if not (sigmoid is not None and sigmoid.op_type == "Sigmoid" and minus is not None and minus.kind == "affine"
            and minus.inputs == [sigmoid.output] and np.all(minus.params["scale"] == -1)
            and np.all(minus.params["shift"] == 1)):
        return layers, output, {}
    dense = by_output.get(sigmoid.inputs[0])
    if dense is None or dense.kind != "dense" or dense.params["weight"].shape[0] != 1:
        return layers, output, {}
    weight, bias = dense.params["weight"], dense.params.get("bias")
    logits = f"{dense.output}/binary_logits"
    dense.params = {"weight": np.concatenate([-weight, weight]),
                    "bias": None if bias is None else np.concatenate([-bias, bias])}
    source, dense.outputs = dense.output, [logits]
    dense.output_shapes = [concat.output_shapes[0]]
    dense.op_type += "+Sigmoid+Sub+Concat"
    kept = [layer for layer in layers if layer not in (sigmoid, minus, concat)]
    return kept, logits, {logits: Derived("negpair", source)}


def _per_channel(value: np.ndarray, rank: int, axis: int, channels: int) -> np.ndarray | None:
    """`value` as a vector over `axis` when it broadcasts along that axis only, else None."""
    if value.ndim > rank:
        return None
    full = value.reshape((1,) * (rank - value.ndim) + value.shape)
    axis %= rank
    if any(d != 1 for i, d in enumerate(full.shape) if i != axis):
        return None
    vec = full.reshape(-1)
    return np.broadcast_to(vec, (channels,)) if vec.size in (1, channels) else None


def _readers(layers: list[Layer]) -> dict[str, list[Layer]]:
    readers: dict[str, list[Layer]] = {}
    for layer in layers:
        for name in layer.inputs:
            readers.setdefault(name, []).append(layer)
    return readers


def fold_affine(layers: list[Layer], output: str) -> tuple[list[Layer], dict[str, Derived]]:
    """Fold per-output-channel affine layers (BatchNorm, bias Add, Mul/Div/Sub by constants) into the
    dense/conv layer before them when nothing else reads its output, also through a reshape that keeps
    the channel axis (tf2onnx's Conv1D: Conv → Squeeze → Add). Through a reshape, the folded layer's
    output is a tensor derived from the affine layer's (the model itself never computes it)."""
    derived: dict[str, Derived] = {}
    while True:
        producers, readers = {layer.output: layer for layer in layers}, _readers(layers)
        single = lambda layer: layer is not None and len(readers.get(layer.output, [])) == 1  # noqa: E731
        for affine in (layer for layer in layers if layer.kind == "affine"):
            step = producers.get(affine.inputs[0])
            via = step if single(step) and step.kind == "reshape" else None
            linear = producers.get(via.inputs[0]) if via else step
            if not (single(linear) and linear.kind in FOLDS_INTO and linear.output != output
                    and (via is None or _keeps_channels(linear, via))
                    and _merge(linear, affine)):
                continue
            if via is None:
                linear.outputs, linear.output_shapes = list(affine.outputs), list(affine.output_shapes)
            else:
                like = derived.pop(linear.output).like if linear.output in derived else linear.output
                name = f"{like}+{affine.name}"
                derived[name] = Derived("reshape", affine.output, like)
                linear.outputs = via.inputs = [name]
                via.outputs, via.output_shapes = list(affine.outputs), list(affine.output_shapes)
            layers = [layer for layer in layers if layer is not affine]
            break
        else:
            return layers, derived


def _channel_axis(linear: Layer) -> int:
    """The channel axis of a conv's or dense layer's activations."""
    return 1 if linear.kind == "conv" else -1


def _keeps_channels(linear: Layer, reshape: Layer) -> bool:
    """Whether `reshape` keeps the batch axis and the channel axis of `linear`'s output."""
    before, after = linear.output_shapes[0], reshape.output_shapes[0]
    if before is None or after is None or len(before) < 2 or len(after) < 2:
        return False
    axis = _channel_axis(linear)
    return before[0] == after[0] and isinstance(before[axis], int) and before[axis] == after[axis]


def _channel_affine(affine: Layer, linear: Layer, channels: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, shift) of `affine` as vectors over `linear`'s channel axis, or None when they vary along
    another axis (then no fold is exact)."""
    shape = affine.input_shapes[0]
    rank = len(shape) if shape is not None else (linear.params["weight"].ndim if linear.kind == "conv" else 2)
    vectors = [_per_channel(affine.params[key], rank, _channel_axis(linear), channels) for key in ("scale", "shift")]
    return None if vectors[0] is None or vectors[1] is None else (vectors[0], vectors[1])


def _bias(linear: Layer) -> np.ndarray:
    """The layer's bias in float64, zeros when it has none."""
    bias = linear.params.get("bias")
    return np.zeros(linear.params["weight"].shape[0]) if bias is None else bias.astype(np.float64)


def _merge(linear: Layer, affine: Layer) -> bool:
    """Merge `affine` into the output side of `linear` in place; False when it is not per output channel."""
    weight = linear.params["weight"]
    found = _channel_affine(affine, linear, weight.shape[0])
    if found is None:
        return False
    scale, shift = found
    linear.params["bias"] = _bias(linear) * scale + shift
    linear.params["weight"] = weight.astype(np.float64) * scale.reshape((-1,) + (1,) * (weight.ndim - 1))
    linear.op_type = f"{linear.op_type}+{affine.op_type}"
    return True


def fold_affine_right(layers: list[Layer], inputs: Iterable[str]) -> list[Layer]:
    """Fold a per-channel affine layer (a BatchNorm, also one that an exporter wrote as Mul and Add)
    into the dense layer or unpadded conv that alone reads it, where that is exact. Sub/Mul/Div on
    the input domain are kept: they are the input normalization, through which z^B bounds are mapped.
    Other affine layers stay and pass relevance through."""
    domain = set(inputs)
    for layer in layers:
        if layer.kind not in LINEAR_KINDS and any(name in domain for name in layer.inputs):
            domain.update(layer.outputs)
    while True:
        readers = _readers(layers)
        for affine in reversed(layers):
            after = readers.get(affine.output, [])
            movable = affine.op_type == "BatchNormalization" or affine.output not in domain
            if affine.kind == "affine" and movable and len(after) == 1 and _merge_right(affine, after[0]):
                layers = [layer for layer in layers if layer is not affine]
                break
        else:
            return layers


def _merge_right(affine: Layer, linear: Layer) -> bool:
    """Merge `affine` into the input side of `linear` in place; False where that is not exact."""
    if linear.kind not in FOLDS_INTO or linear.attrs.get("axis", -1) != -1:
        return False
    if linear.kind == "conv" and (linear.attrs["group"] != 1 or any(linear.attrs["pads"])
                                  or linear.attrs["auto_pad"] not in ("NOTSET", "VALID")):
        return False
    w = linear.params["weight"].astype(np.float64)
    found = _channel_affine(affine, linear, w.shape[1])
    if found is None:
        return False
    scale, shift = found
    spread = (1, -1) + (1,) * (w.ndim - 2)
    linear.params["bias"] = _bias(linear) + (w * shift.reshape(spread)).reshape(w.shape[0], -1).sum(axis=1)
    linear.params["weight"] = w * scale.reshape(spread)
    linear.inputs = list(affine.inputs)
    linear.input_shapes = list(affine.input_shapes)
    linear.op_type = f"{affine.op_type}+{linear.op_type}"
    return True


def model_output(g: Graph, output: str | int | None = None) -> str:
    """The tensor that is explained: `output` (a graph output's index, or any tensor's name), or by
    default the first floating-point graph output."""
    if isinstance(output, int):
        if not -len(g.outputs) <= output < len(g.outputs):
            raise ModelLoadError(f"output index {output} out of range: the model has outputs {g.outputs}")
        output = g.outputs[output]
    candidates = [g.resolve(output)] if output is not None else g.outputs
    for name in candidates:
        if g.is_float(name) and (name in g.outputs or any(name in n.outputs for n in g.nodes)):
            return name
    if output is not None:
        raise ModelLoadError(f"cannot explain {output!r}: not a floating-point tensor of the model "
                             f"(graph outputs: {g.outputs})")
    raise ModelLoadError(f"the model has no floating-point output (outputs: {g.outputs})")
