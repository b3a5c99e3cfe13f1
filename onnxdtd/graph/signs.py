"""Which tensors the graph itself proves non-negative (after a Relu, pooling of non-negative tensors,
...): the rules' terms on the negative part of such a tensor vanish and kernels skip them."""
from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from .layer import Layer


def _nonneg_param(value) -> bool:
    return value is None or bool(np.all(np.asarray(value) >= 0))


def _clamps_below(layer: Layer) -> bool:
    """Whether an elementwise activation's output is >= 0 whatever its input."""
    a, fn = layer.attrs, layer.attrs.get("function")
    if fn == "Relu":
        return a.get("alpha", 0.0) == 0.0
    if fn == "Clip":
        return a.get("min") is not None and a["min"] >= 0
    return fn == "Max" and _nonneg_param(a["bound"])


def _keeps_sign(layer: Layer) -> bool:
    """Whether an elementwise activation maps non-negative inputs to non-negative outputs."""
    a, fn = layer.attrs, layer.attrs.get("function")
    if fn == "Clip":
        return a.get("max") is None or a["max"] >= 0
    if fn == "Min":
        return _nonneg_param(a["bound"])
    return fn in ("Relu", "LeakyRelu", "PRelu", "Max")


# kind -> (layer, whether all its inputs are non-negative) -> whether its outputs are
KEEPS: dict[str, Callable[[Layer, bool], bool]] = {
    "elementwise": lambda layer, inputs: _clamps_below(layer) or (inputs and _keeps_sign(layer)),
    **dict.fromkeys(("maxpool", "reducemax", "concat", "split", "reshape", "transpose", "index", "broadcast",
                     "add"), lambda layer, inputs: inputs),
    **dict.fromkeys(("avgpool", "reduce"),
                    lambda layer, inputs: inputs and _nonneg_param(layer.params.get("weight"))),
    "pad": lambda layer, inputs: inputs and layer.attrs.get("value", 0.0) >= 0,
}


def nonnegative(layers: Iterable[Layer]) -> frozenset[str]:
    """Names of the tensors that are >= 0 for every input, by forward propagation over the layers."""
    known: set[str] = set()
    for layer in layers:
        keep = KEEPS.get(layer.kind)
        if keep is not None and keep(layer, all(name in known for name in layer.inputs)):
            known.update(layer.outputs)
    return frozenset(known)
