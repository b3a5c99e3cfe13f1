"""Rule denominators computed once: by onnxruntime in the forward pass, or per sample before a walk of
several passes.

A group's denominator is a modified forward pass, D = Σ_t sign_t · (conv(in_t, mod_t(W)) + mod_t(b)):
as much arithmetic as the layer's own forward. For conv layers whose group inputs are the activation
or its positive or negative part (z⁺, α/β, γ), these passes become extra nodes and outputs of the
forward session, so onnxruntime's convolutions compute them in the same run and the backend kernels
only divide and run the transposed pass. Everything else keeps its denominator from the kernels:
other layer kinds (dense layers at small batches are memory-bound, and the kernels stream their
weights once for both passes), the z^B bounds and the all-ones input of w²/flat, a computation dtype
other than the tensor's own, and tensors that canonicalization derived.

A walk of several passes per sample (several targets, or a method's passes) repeats every activation
for each pass; the denominators do not depend on the pass, so the dense layers' are computed once per
sample before the repetition (`shared`, a BLAS product in the numpy reference), instead of once per
pass by the kernels. Conv layers' come from onnxruntime where they read the activation; the rest
(z^B, w², flat: first layers with few input channels) stay in the kernels, which compute them faster
than the numpy reference's im2col would.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper

from .backends.numpy_backend import OPS, broadcast_terms, modified_forward
from .backends.onnx_graph import Conv, Graph, Sym, bind_group, denominator
from .backends.terms import bind
from .graph.layer import LayerList
from .rules.base import Rule

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
        g = Graph(prefix=f"{PREFIX}/{layer.index}")
        a = Sym(g, layer.inputs[0], tuple(d if isinstance(d, int) else None for d in layer.input_shapes[0] or ()),
                np.dtype(dtype))
        for index, group in enumerate(rule.groups):
            if not group.is_plain and all(t.input in INPUTS for t in group.terms):
                bound = bind_group(layer, rule, group, a, None, None)
                if bound:
                    result.names.setdefault(layer.index, {})[index] = denominator(Conv(layer, a), bound).name
        result.nodes += g.nodes
        result.initializers += g.initializers
    return result


def shared(model: LayerList, rules: Sequence[Rule | None], acts: dict[str, np.ndarray], bounds: dict[int, tuple],
           planned: dict[int, dict[int, str]],
           dtype: np.dtype, host: Callable[[Any], np.ndarray] = np.asarray,
           ) -> tuple[dict[int, dict[int, str]], dict[str, np.ndarray]]:
    """The denominators of every divided group of a dense layer that is not the layer's own output nor
    computed by onnxruntime (`planned`), for the batch of `acts` (moved to the host by `host`): their
    names by layer and group index, and the arrays by name."""
    names: dict[int, dict[int, str]] = {}
    arrays: dict[str, np.ndarray] = {}
    for layer, rule in zip(model, rules):
        a = acts.get(layer.inputs[0]) if rule is not None and layer.kind == "dense" else None
        if a is None:
            continue
        a = np.asarray(host(a), dtype)
        op = OPS[layer.kind](layer, a.shape)
        low, high = (None if b is None else np.asarray(b, dtype) for b in bounds.get(layer.index, (None, None)))
        for bound in bind(layer, rule, a, None, low, high):
            index = next(i for i, group in enumerate(rule.groups) if group is bound.group)
            if bound.group.is_plain or not bound.group.divide or index in planned.get(layer.index, {}):
                continue
            name = f"{PREFIX}/shared/{layer.index}/{index}"
            arrays[name] = modified_forward(op, broadcast_terms(bound.terms, a.shape))
            names.setdefault(layer.index, {})[index] = name
    return names, arrays


def _elem_types(proto: onnx.ModelProto) -> dict[str, int]:
    """The element type of every tensor that shape inference or the graph declares."""
    graph = proto.graph
    return {vi.name: vi.type.tensor_type.elem_type for vi in [*graph.value_info, *graph.input, *graph.output]}
