"""The kernel interface: everything the engine asks of a backend, and nothing about which one it is."""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, Sequence

import numpy as np

from ..graph.layer import Layer
from ..rules.base import Rule

Array = Any  # a backend's array type (numpy.ndarray for the CPU backends)


class Backend(ABC):
    """Relevance kernels for each family of layer kinds."""

    name: str = ""
    whole_graph: bool = False  # Explainers run the whole explanation as one graph (see backends/ort.py)
    float64: bool = True  # computes every kernel in float64 when asked
    providers: Sequence[str] | None = None  # onnxruntime providers of the forward pass when none are given

    def forward_binding(self) -> tuple[str, Callable[[Any], Array]] | None:
        """Where the forward pass leaves its outputs: None for host arrays (plain session runs); else
        onnxruntime's device type for I/O binding and the conversion of its OrtValues to this
        backend's arrays (so that activations never cross the bus)."""
        return None

    @abstractmethod
    def asarray(self, x: np.ndarray, dtype: np.dtype) -> Array:
        """Move a host array to the backend, in `dtype`."""

    @abstractmethod
    def to_numpy(self, x: Array) -> np.ndarray:
        """Move a backend array back to the host."""

    def zeros(self, shape: tuple, dtype: np.dtype, like: Array) -> Array:
        """Zeros of `shape` (its batch axis as `like`'s, for backends that trace unknown batch sizes)."""
        return self.asarray(np.zeros(shape), dtype)

    @abstractmethod
    def linear(self, layer: Layer, rule: Rule, a: Array, z: Array, relevance: Array,
               low: Array | None, high: Array | None, denoms: Mapping[int, Array] | None = None) -> Array:
        """Relevance at the input of a dense, conv, avgpool or reduce layer under `rule`; `z` is the
        layer's output from the forward pass (the denominator of plain groups and the sign of γ's
        masks), `low`/`high` the z^B bounds of its input, `denoms` the denominators of other groups
        that the forward pass computed, by group index (see onnxdtd.denominators)."""

    @abstractmethod
    def maxpool(self, layer: Layer, a: Array, relevance: Array, mode: str) -> Array:
        """Relevance at the input of a max-pooling layer: 'winner' routing or 'proportional' z-rule."""

    @abstractmethod
    def add(self, inputs: Sequence[Array], relevance: Array) -> list[Array]:
        """Split the relevance of a sum of activations by the z-rule R_k = x_k R / s(Σ x)."""

    @abstractmethod
    def derivative(self, layer: Layer, a: Array | None, relevance: Array) -> Array:
        """The gradient `relevance` at the output of an elementwise or affine layer times the layer's
        derivative at its input `a` (rules.gradient.derivative; affine layers: their scale, `a` unused)."""

    @abstractmethod
    def unbroadcast(self, x: Array, shape: tuple[int, ...]) -> Array:
        """`x` summed down to `shape` over the axes that broadcasting expanded (the gradient of a
        broadcast); `x` itself where the shapes agree."""

    @abstractmethod
    def route(self, layer: Layer, relevance: Array | list[Array], in_shapes: Sequence[tuple[int, ...]]) -> list[Array]:
        """Send relevance back through concat/split/reshape/transpose/pad/index layers as the gradient
        would; `relevance` is a list for layers with several outputs (split)."""
