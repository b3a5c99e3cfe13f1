"""Rule denominators computed by onnxruntime in the forward pass.

A group's denominator is a modified forward pass, D = Σ_t sign_t · (conv(in_t, mod_t(W)) + mod_t(b)):
as much arithmetic as the layer's own forward. For conv layers whose group inputs are the activation
or its positive or negative part (z⁺, α/β, γ), these passes become extra nodes and outputs of the
forward session, so onnxruntime's convolutions compute them in the same run and the backend kernels
only divide and run the transposed pass. Everything else keeps its denominator from the kernels:
other layer kinds (dense layers at small batches are memory-bound, and the kernels stream their
weights once for both passes), the z^B bounds and the all-ones input of w²/flat, a computation dtype
other than the tensor's own, and tensors that canonicalization derived.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .backends.terms import modified_param
from .graph.layer import Layer, LayerList
from .rules.base import Group, Rule

PREFIX = "onnxdtd::denominator"
INPUTS = ("x", "pos", "neg")  # the term inputs expressible on the activation alone


@dataclass
class Denominators:
    """The extra nodes of the forward session, and which of its outputs is which denominator."""

    names: dict[int, dict[int, str]] = field(default_factory=dict)  # layer index -> group index -> output
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)


def plan(model: LayerList, rules: Sequence[Rule | None], dtype: np.dtype) -> Denominators:
    """The denominators onnxruntime computes for `model` under `rules` in computation type `dtype`."""
    types = _elem_types(model.proto)
    want = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    result = Denominators()
    for layer, rule in zip(model, rules):
        if rule is None or layer.kind != "conv" or layer.inputs[0] in model.derived \
                or types.get(layer.inputs[0]) != want:
            continue
        builder = _LayerNodes(layer, rule, np.dtype(dtype))
        for index, group in enumerate(rule.groups):
            if not group.is_plain and all(t.input in INPUTS for t in group.terms):
                name = builder.group(index, group)
                if name is not None:
                    result.names.setdefault(layer.index, {})[index] = name
        result.nodes += builder.nodes
        result.initializers += builder.initializers
    return result


def _elem_types(proto: onnx.ModelProto) -> dict[str, int]:
    """The element type of every tensor that shape inference or the graph declares."""
    graph = proto.graph
    return {vi.name: vi.type.tensor_type.elem_type for vi in [*graph.value_info, *graph.input, *graph.output]}


class _LayerNodes:
    """The nodes of one conv layer's denominators; the modified inputs and weights are made once."""

    def __init__(self, layer: Layer, rule: Rule, dtype: np.dtype):
        self.layer, self.rule, self.dtype = layer, rule, dtype
        self.prefix = f"{PREFIX}/{layer.index}"
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.made: set[str] = set()  # names of the nodes and initializers made so far

    def group(self, index: int, group: Group) -> str | None:
        """The output holding Σ sign·(conv(in, W') + b') over the group's terms; None when every term
        reads a part of the input that the graph proves zero."""
        parts = []
        for term in group.terms:
            if term.input == "neg" and self.layer.nonnegative_input and term.bias is None:
                continue
            y = self._conv(self._input(term.input), term.weight, term.bias)
            parts.append(y if term.sign == 1 else self._node("Neg", [y], f"neg/{y}"))
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else self._node("Sum", parts, f"sum/{index}")

    def _input(self, modifier: str) -> str:
        """The tensor of a term input: the activation, its positive part or its negative part."""
        a = self.layer.inputs[0]
        if modifier == "x" or (modifier == "pos" and self.layer.nonnegative_input):
            return a
        if modifier == "pos":
            return self._node("Relu", [a], "pos")
        return self._node("Neg", [self._node("Relu", [self._node("Neg", [a], "minus")], "relu_minus")], "neg")

    def _conv(self, x: str, weight: str, bias: str | None) -> str:
        """conv(x, mod(W)) (+ mod(b)) with the layer's window."""
        args = [x, self._param("weight", weight)]
        if bias is not None and self.layer.params.get("bias") is not None:
            args.append(self._param("bias", bias))
        a = self.layer.attrs
        window = {"auto_pad": a["auto_pad"]} if a.get("auto_pad", "NOTSET") != "NOTSET" else {"pads": list(a["pads"])}
        return self._node("Conv", args, f"conv/{x}/{weight}/{bias}", kernel_shape=list(a["kernel"]),
                          strides=list(a["strides"]), dilations=list(a["dilations"]), group=a["group"], **window)

    def _param(self, key: str, modifier: str) -> str:
        """An initializer with the modified weight or bias (the array the kernels use as well)."""
        name = f"{self.prefix}/{key}/{modifier}"
        if name not in self.made:
            value = modified_param(self.layer, key, modifier, self.rule.gamma, self.dtype)
            self.initializers.append(numpy_helper.from_array(value, name))
            self.made.add(name)
        return name

    def _node(self, op: str, inputs: list[str], key: str, **attrs) -> str:
        """The output of an `op` node on `inputs`, made once per key."""
        name = f"{self.prefix}/{key}"
        if name not in self.made:
            self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
            self.made.add(name)
        return name
