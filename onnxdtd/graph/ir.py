"""A small mutable view of an ONNX graph that the canonicalization passes rewrite."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

NOT_A_TENSOR = -1  # dtype marker of sequences and maps (e.g. ZipMap's output)
FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                         onnx.TensorProto.BFLOAT16})


@dataclass
class Node:
    """One ONNX node with decoded attributes."""

    op_type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    domain: str = ""

    def attr(self, key: str, default: Any = None) -> Any:
        """The attribute `key`, or `default` when the node does not set it."""
        return self.attrs.get(key, default)

    def evaluate(self, values: dict[str, np.ndarray], opset: int) -> list[np.ndarray]:
        """Run this node alone on `values` (every non-empty input by name) with onnx's reference evaluator."""
        proto = helper.make_node(self.op_type, self.inputs, self.outputs, domain=self.domain or None, **self.attrs)
        names = list(dict.fromkeys(i for i in self.inputs if i))
        inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(values[n].dtype), None)
                  for n in names]
        graph = helper.make_graph([proto], "node", inputs, [helper.make_empty_tensor_value_info(o)
                                                            for o in self.outputs])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        return [np.asarray(v) for v in ReferenceEvaluator(model).run(None, {n: values[n] for n in names})]


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _shape_of(type_proto: onnx.TypeProto) -> tuple | None:
    tensor = type_proto.tensor_type
    if not tensor.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                 for d in tensor.shape.dim)


@dataclass
class Graph:
    """Nodes in topological order, constants by name, and what is known of every tensor."""

    nodes: list[Node]
    constants: dict[str, np.ndarray]
    inputs: list[str]
    outputs: list[str]
    shapes: dict[str, tuple | None]
    dtypes: dict[str, int]
    opset: int
    proto: onnx.ModelProto  # the model read, for the forward pass
    aliases: dict[str, str] = field(default_factory=dict)  # names of removed no-op outputs -> their source

    @classmethod
    def from_proto(cls, proto: onnx.ModelProto) -> "Graph":
        """Read a (shape-inferred) model; initializers become constants, graph inputs stay inputs."""
        g = proto.graph
        constants = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        shapes: dict[str, tuple | None] = {}
        dtypes: dict[str, int] = {}
        for vi in [*g.input, *g.value_info, *g.output]:
            shapes[vi.name] = _shape_of(vi.type)
            dtypes[vi.name] = vi.type.tensor_type.elem_type if vi.type.HasField("tensor_type") else NOT_A_TENSOR
        nodes = [Node(n.op_type, n.name or f"{n.op_type}_{i}", list(n.input), list(n.output),
                      {a.name: _decode(helper.get_attribute_value(a)) for a in n.attribute}, n.domain)
                 for i, n in enumerate(g.node)]
        opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)
        inputs = [vi.name for vi in g.input if vi.name not in constants]
        return cls(nodes, constants, inputs, [vi.name for vi in g.output], shapes, dtypes, opset, proto)

    def is_float(self, name: str) -> bool:
        """Whether a tensor holds floating-point data (unknown types count as float)."""
        return self.dtypes.get(name, onnx.TensorProto.FLOAT) in FLOAT_TYPES | {onnx.TensorProto.UNDEFINED}

    def resolve(self, name: str) -> str:
        """The tensor that holds `name`'s values after no-op nodes were removed."""
        while name in self.aliases:
            name = self.aliases[name]
        return name

    def rename(self, old: str, new: str) -> None:
        """Make every reader of `old` (nodes and graph outputs) read `new` instead."""
        self.aliases[old] = new
        for node in self.nodes:
            node.inputs = [new if i == old else i for i in node.inputs]
        self.outputs = [new if o == old else o for o in self.outputs]
