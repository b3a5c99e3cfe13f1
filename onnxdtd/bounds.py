"""z^B bounds: from the model's input space to the input space of the layer whose rule uses them.

Bounds are given for the model input (pixels). Layers between the input and the first linear layer
that act pointwise or only move values (input normalization as Sub/Div/Mul, BatchNorm, Relu, Reshape,
Transpose, Pad) map them forward, so a normalizing model keeps its bounds in pixel space; this is
exact, where folding the normalization into a zero-padded conv would not be.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .errors import BoundsError, ConfigError
from .graph.layer import Layer, LayerList
from .graph.ops.index import source_index

Bounds = tuple[np.ndarray, np.ndarray]


def _ordered(a: np.ndarray, b: np.ndarray) -> Bounds:
    return np.minimum(a, b), np.maximum(a, b)


def _elementwise(layer: Layer, x: np.ndarray) -> np.ndarray:
    fn = layer.attrs["function"]
    if fn == "Clip":
        return np.clip(x, layer.attrs.get("min"), layer.attrs.get("max"))
    if fn in ("Max", "Min"):
        return (np.maximum if fn == "Max" else np.minimum)(x, layer.attrs["bound"])
    return np.where(x >= 0, x, layer.attrs.get("alpha", 0.0) * x)  # Relu, LeakyRelu, PRelu


def _pad(layer: Layer, x: np.ndarray) -> np.ndarray:
    pads, rank = layer.attrs["pads"], x.ndim
    widths = [(max(b, 0), max(e, 0)) for b, e in zip(pads[:rank], pads[rank:])]
    x = np.pad(x, widths, constant_values=layer.attrs.get("value", 0.0))
    return x[tuple(slice(-min(b, 0), x.shape[i] + min(e, 0)) for i, (b, e) in enumerate(zip(pads[:rank], pads[rank:])))]


# kind -> (layer, low, high, shape of the layer's output for one sample) -> (low, high)
MAPS: dict[str, Callable[[Layer, np.ndarray, np.ndarray, tuple], Bounds]] = {
    "affine": lambda l, lo, hi, _: _ordered(lo * l.params["scale"] + l.params["shift"],
                                            hi * l.params["scale"] + l.params["shift"]),
    "elementwise": lambda l, lo, hi, _: (_elementwise(l, lo), _elementwise(l, hi)),
    "reshape": lambda l, lo, hi, shape: (lo.reshape(shape), hi.reshape(shape)),
    "transpose": lambda l, lo, hi, _: (lo.transpose(l.attrs["perm"]), hi.transpose(l.attrs["perm"])),
    "pad": lambda l, lo, hi, _: (_pad(l, lo), _pad(l, hi)),
    "broadcast": lambda l, lo, hi, shape: (np.broadcast_to(lo, shape), np.broadcast_to(hi, shape)),
    "index": lambda l, lo, hi, _: (lo.reshape(-1)[source_index(l, lo.shape)],
                                   hi.reshape(-1)[source_index(l, hi.shape)]),
}


def check_bounds(low, high, sample_shape: tuple[int, ...]) -> Bounds:
    """Bounds as float64 arrays of shape (1, *sample_shape); raises BoundsError naming the shapes."""
    full = (1, *sample_shape)
    out = []
    for name, value in (("low", low), ("high", high)):
        arr = np.asarray(value, dtype=np.float64)
        try:
            out.append(np.broadcast_to(arr, full).copy())
        except ValueError:
            raise BoundsError(f"{name} of shape {arr.shape} does not broadcast to one sample of shape "
                              f"{full} (use a scalar, per-channel values shaped to broadcast over one sample, "
                              "or the full shape)") from None
    if np.any(out[0] > out[1]):
        raise BoundsError("low must not exceed high anywhere")
    return out[0], out[1]


def layer_bounds(model: LayerList, layer: Layer, bounds: dict[str, Bounds],
                 shapes: dict[str, tuple[int, ...]]) -> Bounds:
    """The bounds of the model input that `layer` reads, mapped to `layer`'s input; `bounds` are
    per model input, `shapes` the run-time shape of each tensor."""
    producers = {l.output: l for l in model}
    chain, name = [], layer.inputs[0]
    while name not in model.inputs:
        prod = producers.get(name)
        if prod is None or prod.kind not in MAPS or not _maps(prod):
            raise ConfigError(f"layer {layer.index}:{layer.name} uses z^B bounds, but its input is not a pointwise "
                              f"image of the model input (via {prod.kind if prod else name!r}); give the rule "
                              "its own bounds, e.g. ZBox(low=..., high=...)")
        chain.append(prod)
        name = prod.inputs[0]
    low, high = bounds[name]
    for prod in reversed(chain):
        try:
            low, high = MAPS[prod.kind](prod, low, high, (1, *shapes[prod.output][1:]))
        except ValueError as exc:  # e.g. a Reshape that folds the batch axis into another
            raise BoundsError(f"cannot map the z^B bounds through layer {prod.index}:{prod.name} ({prod.op_type}): "
                              f"{exc}; give the rule its own bounds, e.g. ZBox(low=..., high=...)") from exc
    return low, high


def _maps(layer: Layer) -> bool:
    """Whether bounds can be pushed through `layer` (monotone elementwise functions only)."""
    return layer.kind != "elementwise" or layer.attrs.get("function") in MONOTONE


MONOTONE = ("Relu", "LeakyRelu", "Clip", "PRelu", "Max", "Min")
