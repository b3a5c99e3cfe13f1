"""The `ort` backend: relevance passes as ONNX graphs run by onnxruntime.

An Explainer on this backend builds the whole explanation as one graph (onnxdtd.export) and runs it
in one onnxruntime session per call: forward, modified forward and transposed passes all on
onnxruntime's own kernels, on any execution provider. Called layer by layer with numpy arrays (the
kernel interface, as the backend tests do), each kernel builds and runs its own small graph.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from .base import Backend
from .onnx_graph import OPSET, Graph, GraphBackend, Sym

PROVIDERS = ["CPUExecutionProvider"]


def session(model: onnx.ModelProto | bytes, providers: Sequence | None = None,
            spinning: bool = False) -> ort.InferenceSession:
    """An onnxruntime session of `model` (a proto, or one already serialized, so that the caller need
    not hold both while the session loads) with every graph optimization (its NCHWc convolutions are
    its fastest; graph outputs are never fused away). Its threads spin between ops
    only with `spinning`: right for a whole explanation in one run, wrong where Python work follows
    each run (spinning idle threads take its cores)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, options, providers=list(providers or PROVIDERS))


def _symbols(g: Graph, value: Any, feeds: dict[str, np.ndarray]) -> Any:
    """`value` with every numpy array (also inside lists and dicts) replaced by a graph input."""
    if isinstance(value, np.ndarray):
        name = f"in{len(feeds)}"
        feeds[name] = value
        return Sym(g, name, value.shape, value.dtype)
    if isinstance(value, (list, tuple)):
        return type(value)(_symbols(g, v, feeds) for v in value)
    if isinstance(value, dict):
        return {k: _symbols(g, v, feeds) for k, v in value.items()}
    return value


def _eager(method: Callable) -> Callable:
    """Run a GraphBackend kernel on numpy arrays: its nodes as a graph of their own, in onnxruntime."""

    @functools.wraps(method)
    def run(self, *args: Any) -> Any:
        g, feeds = Graph(prefix="kernel"), {}
        result = method(self, *_symbols(g, list(args), feeds))
        outs = result if isinstance(result, list) else [result]
        names = [f"out{i}" for i in range(len(outs))]
        g.nodes += [helper.make_node("Identity", [o.name], [n]) for o, n in zip(outs, names)]
        graph = helper.make_graph(
            g.nodes, "kernel",
            [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for n, v in feeds.items()],
            [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(o.dtype), None)
             for n, o in zip(names, outs)], g.initializers)
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        values = session(proto).run(names, feeds)
        return values if isinstance(result, list) else values[0]

    return run


class OrtBackend(GraphBackend):
    """The kernel interface on numpy arrays through onnxruntime; Explainers compile whole graphs."""

    name = "ort"
    whole_graph = True
    float64 = False  # onnxruntime's CPU provider has no float64 Conv, ConvTranspose or MaxPool

    def asarray(self, x, dtype):
        return np.asarray(x, dtype=dtype)

    def to_numpy(self, x):
        return np.asarray(x)

    zeros = Backend.zeros  # arrays again, not GraphBackend's symbols

    linear = _eager(GraphBackend.linear)
    maxpool = _eager(GraphBackend.maxpool)
    add = _eager(GraphBackend.add)
    derivative = _eager(GraphBackend.derivative)
    unbroadcast = _eager(GraphBackend.unbroadcast)
    route = _eager(GraphBackend.route)
