"""The canonical layer list: what onnxdtd explains, independent of the exporter that wrote the graph."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

LINEAR_KINDS = frozenset({"dense", "conv", "convtranspose"})
POOLING_KINDS = frozenset({"avgpool", "reduce"})
ROUTING_KINDS = frozenset({"concat", "split", "reshape", "transpose", "pad", "index", "broadcast"})
PASS_KINDS = frozenset({"elementwise", "affine"})

Shape = tuple  # entries are ints, or None/str for dynamic dimensions


@dataclass
class Layer:
    """One step of the canonical network: a kind, its tensors, parameters and attributes."""

    name: str
    kind: str
    op_type: str
    inputs: list[str]
    outputs: list[str]
    params: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    input_shapes: list[Shape] = field(default_factory=list)
    output_shapes: list[Shape] = field(default_factory=list)
    index: int = -1
    nonnegative_input: bool = False  # the graph proves the first input >= 0 (see graph.signs)
    cache: dict = field(default_factory=dict, repr=False, compare=False)  # per-input-shape derived data

    @property
    def output(self) -> str:
        """The single output tensor of this layer."""
        return self.outputs[0]

    @property
    def num_params(self) -> int:
        """Number of parameter values (weights and biases) this layer holds."""
        return int(sum(p.size for p in self.params.values() if p is not None))


def _fmt_shape(shape: Shape | None) -> str:
    if shape is None:
        return "?"
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


@dataclass(frozen=True)
class Derived:
    """A tensor that canonicalization created and the forward pass computes from the model's own:
    'negpair' is (-source, source) along the last axis (the logits of a binary sigmoid head),
    'reshape' is source reshaped to the shape of `like` (a linear layer folded through a reshape)."""

    kind: str
    source: str
    like: str = ""


@dataclass
class LayerList:
    """A topologically ordered list of layers plus the model it came from."""

    layers: list[Layer]
    inputs: dict[str, Shape]  # the model's floating-point inputs and their declared shapes, in graph order
    output_name: str
    output_shape: Shape
    proto: onnx.ModelProto
    stripped: str | None = None  # op type of a final Softmax/LogSoftmax/Sigmoid that was removed
    derived: dict[str, "Derived"] = field(default_factory=dict)  # tensors computed from onnxruntime's

    def __post_init__(self) -> None:
        from .signs import nonnegative

        known = nonnegative(self.layers)
        for i, layer in enumerate(self.layers):
            layer.index = i
            layer.nonnegative_input = bool(layer.inputs) and layer.inputs[0] in known

    @property
    def input_name(self) -> str:
        """The first (for most models the only) input."""
        return next(iter(self.inputs))

    @property
    def input_shape(self) -> Shape:
        return self.inputs[self.input_name]

    @property
    def lenient(self) -> list[Layer]:
        """Layers whose op has no relevance rule and that pass relevance through (lenient mode)."""
        return [layer for layer in self.layers if layer.attrs.get("lenient")]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __getitem__(self, i: int) -> Layer:
        return self.layers[i]

    def table(self, rules: list[str] | None = None) -> str:
        """The layer table; with `rules`, one extra column naming the rule of each layer."""
        head = ["#", "name", "kind", "op", "input shape", "output shape", "params"]
        if rules is not None:
            head.append("rule")
        rows = []
        for layer in self.layers:
            ins = ", ".join(_fmt_shape(s) for s in layer.input_shapes) or "?"
            row = [str(layer.index), layer.name, layer.kind, layer.op_type, ins,
                   _fmt_shape(layer.output_shapes[0] if layer.output_shapes else None),
                   str(layer.num_params)]
            if rules is not None:
                row.append(rules[layer.index])
            rows.append(row)
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *rows]]
        lines.insert(1, "  ".join("-" * w for w in widths))
        ins = ", ".join(f"{name!r} {_fmt_shape(shape)}" for name, shape in self.inputs.items())
        footer = f"input {ins} -> output {self.output_name!r} {_fmt_shape(self.output_shape)}"
        if self.stripped:
            footer += f" (final {self.stripped} stripped: the logit is explained)"
        total = sum(layer.num_params for layer in self.layers)
        return "\n".join([*lines, footer, f"{len(self.layers)} layers, {total} parameters"])

    def __str__(self) -> str:
        return self.table()
