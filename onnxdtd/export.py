"""The explanation as one ONNX graph: the model's forward pass, the initial relevance at the target,
and the relevance pass under the chosen rules, for onnxruntime (the `ort` backend) or any runtime.

The relevance pass is the engine's backward walk run once on symbols (backends/onnx_graph.py), so
the exported graph follows the same layer list, rules and bounds as every other backend.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, version_converter

from .bounds import check_bounds, layer_bounds
from .backends.onnx_graph import OPSET, Graph, GraphBackend, Sym, zeros
from .engine import Walk, backward, reads, static_shapes
from .errors import ConfigError, ModelLoadError
from .graph import LayerList, load
from .graph.loader import ModelSource
from .rules import Composite, Rule, resolve

TARGET_MODES = ("input", "argmax", "init")
INPUT, TARGET, INIT, OUTPUT, EXPLAINED, RELEVANCE = "input", "target", "init", "output", "explained", "relevance"


def export(model: ModelSource | LayerList, path: str | Path | None = None, rules: str | Composite = "dtd",
           low=0.0, high=1.0, maxpool: str = "winner", target: str = "input", init: str = "logit",
           dtype=None, intermediate: Sequence[str] = (), strict: bool = True) -> onnx.ModelProto:
    """The explainer of `model` as an ONNX model (also written to `path` when given).

    Inputs: the model's input (named `input` when the model has one) and, with target="input", `target`
    (int64, one class per sample; a negative entry explains the sample's argmax), or with target="init"
    `init`, the initial relevance itself (float, the logits' shape (N, K)). Outputs: `output`
    (the explained logits, (N, K)), `explained` (the explained class per sample), `relevance` (the
    input's shape; `relevance/<name>` per input for several inputs) and `relevance/<name>` for every
    tensor in `intermediate`."""
    layers = model if isinstance(model, LayerList) else load(model, strict=strict)
    composite = resolve(rules)
    proto = build(layers, composite.assign(layers), low, high, maxpool, target, init, dtype, intermediate)
    if path is not None:
        onnx.save(proto, str(path))
    return proto


def build(model: LayerList, rules: list[Rule | None], low, high, maxpool: str, target: str = "input",
          init: str = "logit", dtype=None, intermediate: Sequence[str] = (),
          mode: str = "relevance") -> onnx.ModelProto:
    """The explainer graph of a loaded model under per-layer rules (see export); in the walk's
    gradient `mode` (engine.MODES) the `relevance` outputs are the gradient of the initial output."""
    if target not in TARGET_MODES:
        raise ConfigError(f"target must be one of {TARGET_MODES}, got {target!r}")
    base = _upgraded(model.proto)
    float_type = _float_type(base, model)
    dtype = np.dtype(dtype or helper.tensor_dtype_to_np_dtype(float_type))
    single = len(model.inputs) == 1
    names = _free_names(base, model, single)
    g = Graph(prefix="onnxdtd")
    shapes = {name: tuple(d if isinstance(d, int) and d > 0 else None for d in shape)
              for name, shape in static_shapes(model).items() if shape is not None}
    missing = sorted(set(intermediate) - set(shapes))
    if missing:
        raise ConfigError(f"no tensor {missing[0]!r} in the layer list (see onnxdtd.load(model))")
    _derived_nodes(g, model, names)
    symbol = lambda name: _activation(g, names.get(name, name), shapes.get(name, ()), float_type, dtype)  # noqa: E731
    acts = {name: symbol(name) for name in reads(model, rules, mode=mode)}
    output = symbol(model.output_name)
    logits = output.reshape((output.shape[0], -1))
    chosen = _target(g, logits, target)
    start = Sym(g, INIT, logits.shape, dtype) if target == "init" else _initial(g, logits, chosen, init)
    if output.ndim != 2:
        start = start.reshape(output.shape)
    walk = Walk(model, rules, GraphBackend(), acts, maxpool, _bounds(g, model, rules, low, high, dtype), shapes,
                mode=mode)
    found, kept = backward(walk, start, keep=bool(intermediate))
    outputs = {OUTPUT: logits, EXPLAINED: chosen}
    for name in model.inputs:
        value = found.get(name) or zeros(g, shapes[name], dtype, logits)
        outputs[RELEVANCE if single else f"{RELEVANCE}/{name}"] = value
    for name in intermediate:
        outputs[f"{RELEVANCE}/{name}"] = kept.get(name) or zeros(g, shapes[name], dtype, logits)
    return _assemble(base, model, g, outputs, target, single, names, dtype)


def _free_names(base: onnx.ModelProto, model: LayerList, single: bool) -> dict[str, str]:
    """Renames, in `base`, of the model's tensors whose names the explainer's inputs and outputs take."""
    graph = base.graph
    taken = {n for node in graph.node for n in [*node.input, *node.output]} | {i.name for i in graph.input}
    reserved = {OUTPUT, TARGET, INIT, EXPLAINED, RELEVANCE}
    reserved |= {INPUT} if single and model.input_name != INPUT else set()
    renames = {}
    for name in sorted(taken):
        if name in reserved or name.startswith(f"{RELEVANCE}/"):
            new = f"{name}:model"
            while new in taken:
                new += "_"
            renames[name] = new
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for vi in [*graph.input, *graph.output, *graph.value_info, *graph.initializer]:
        vi.name = renames.get(vi.name, vi.name)
    return renames


def _upgraded(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the model at opset OPSET or newer (ScatterElements' reduction needs 16, Split's
    sizes input 13)."""
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), OPSET)
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    if opset >= OPSET:
        return copy
    try:
        return version_converter.convert_version(copy, OPSET)
    except Exception as exc:  # onnx raises its own untyped errors
        raise ModelLoadError(f"cannot convert the model from opset {opset} to {OPSET} for export: "
                             f"{str(exc).strip().splitlines()[-1]}") from exc


def _float_type(proto: onnx.ModelProto, model: LayerList) -> int:
    declared = {vi.name: vi.type.tensor_type.elem_type for vi in proto.graph.input}
    return declared.get(model.input_name, onnx.TensorProto.FLOAT)


def _derived_nodes(g: Graph, model: LayerList, names: dict[str, str]) -> None:
    """The nodes of the tensors canonicalization derived from the model's own (graph.layer.Derived)."""
    for name, d in model.derived.items():
        name, source = names.get(name, name), names.get(d.source, d.source)
        if d.kind == "negpair":
            minus = g.op("Neg", [source], (), np.float32)
            g.nodes.append(helper.make_node("Concat", [minus.name, source], [name], axis=-1, name=g.name("concat")))
        else:
            shape = g.op("Shape", [names.get(d.like, d.like)], (), np.int64)
            g.nodes.append(helper.make_node("Reshape", [source, shape.name], [name], name=g.name("reshape")))


def _activation(g: Graph, name: str, shape: tuple, float_type: int, dtype: np.dtype) -> Sym:
    """The forward tensor `name` as a symbol in the computation dtype."""
    sym = Sym(g, name, shape, np.dtype(helper.tensor_dtype_to_np_dtype(float_type)))
    if sym.dtype == dtype:
        return sym
    return g.op("Cast", [sym], sym.shape, dtype, to=helper.np_dtype_to_tensor_dtype(dtype))


def _target(g: Graph, logits: Sym, mode: str) -> Sym:
    """(N,) int64: the `target` input where it is >= 0, else the argmax (first maximum)."""
    best = g.op("ArgMax", [logits], (logits.shape[0],), np.int64, axis=1, keepdims=0, select_last_index=0)
    if mode != "input":
        return best
    given = Sym(g, TARGET, (logits.shape[0],), np.dtype(np.int64))
    negative = g.op("Less", [given, g.ints([0])], given.shape, np.bool_)
    return g.op("Where", [negative, best, given], given.shape, np.int64)


def _initial(g: Graph, logits: Sym, chosen: Sym, init: str) -> Sym:
    """The initial relevance: the target's logit (or 1) at the target, zero elsewhere."""
    index = g.op("Unsqueeze", [chosen, g.ints([1])], (chosen.shape[0], 1), np.int64)
    if init == "logit":
        value = g.op("GatherElements", [logits, index], (logits.shape[0], 1), logits.dtype, axis=1)
    elif init == "one":
        value = g.op("Expand", [g.scalar(1.0, logits.dtype), index.shape_of()], (logits.shape[0], 1), logits.dtype)
    else:
        raise ConfigError(f"init must be 'logit' or 'one', got {init!r}")
    return g.op("ScatterElements", [zeros(g, logits.shape, logits.dtype, logits), index, value], logits.shape,
                logits.dtype, axis=1)


def _bounds(g: Graph, model: LayerList, rules: list[Rule | None], low, high, dtype: np.dtype) -> dict:
    """Every bounds-reading layer's z^B bounds as constants (one sample, broadcast over the batch)."""
    if not any(rule is not None and rule.uses_bounds for rule in rules):
        return {}
    shapes = {name: (1, *shape[1:]) for name, shape in static_shapes(model).items()
              if shape and all(isinstance(d, int) and d > 0 for d in shape[1:])}
    pick = lambda v, name, default: v.get(name, default) if isinstance(v, Mapping) else v  # noqa: E731
    given = {}
    for name in model.inputs:
        if name not in shapes:
            raise ConfigError(f"input {name!r} needs a fixed shape (but for the batch axis) to be exported")
        given[name] = check_bounds(pick(low, name, 0.0), pick(high, name, 1.0), shapes[name][1:])
    bounds = {}
    for layer, rule in zip(model, rules):
        if rule is not None and rule.uses_bounds:
            lo, hi = (rule.low, rule.high) if rule.low is not None and rule.high is not None else \
                layer_bounds(model, layer, given, shapes)
            bounds[layer.index] = (g.const(np.asarray(lo, dtype)), g.const(np.asarray(hi, dtype)))
    return bounds


def _assemble(base: onnx.ModelProto, model: LayerList, g: Graph, outputs: dict[str, Sym], target: str,
              single: bool, names: dict[str, str], dtype: np.dtype) -> onnx.ModelProto:
    """The model's graph with the explanation's nodes added, its inputs (the single one named `input`,
    and `target` or `init` (in `dtype`) by the target mode) and the explanation's outputs."""
    graph = base.graph
    own = names.get(model.input_name, model.input_name)
    if single and own != INPUT:
        graph.node.insert(0, helper.make_node("Identity", [INPUT], [own], name="onnxdtd/input"))
        for vi in graph.input:
            if vi.name == own:
                vi.name = INPUT
    if target == "input":
        graph.input.append(helper.make_tensor_value_info(TARGET, onnx.TensorProto.INT64, [_batch(graph)]))
    elif target == "init":
        logits = outputs[OUTPUT]
        graph.input.append(helper.make_tensor_value_info(INIT, helper.np_dtype_to_tensor_dtype(dtype),
                                                         [_batch(graph), logits.shape[1]]))
    graph.node.extend(g.nodes)
    graph.initializer.extend(g.initializers)
    for name, sym in outputs.items():
        graph.node.append(helper.make_node("Identity", [sym.name], [name], name=f"onnxdtd/{name}"))
    del graph.output[:]
    graph.output.extend(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(sym.dtype),
                                                      [None] * sym.ndim)  # rank only: sizes as computed
                        for name, sym in outputs.items())
    return base


def _batch(graph: onnx.GraphProto) -> str | int:
    """The batch dimension of the first input (a name, or a number for a fixed batch)."""
    dim = graph.input[0].type.tensor_type.shape.dim[0]
    return dim.dim_param or dim.dim_value or "N"
