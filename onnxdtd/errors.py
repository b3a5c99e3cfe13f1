"""Typed errors: every user-facing failure of onnxdtd is one of these, with a message naming the problem."""
from __future__ import annotations

from collections.abc import Iterable


class OnnxdtdError(Exception):
    """Base class of all onnxdtd errors."""


class ModelLoadError(OnnxdtdError, ValueError):
    """The model file or bytes could not be read as a valid ONNX model."""


class UnsupportedOperatorError(OnnxdtdError):
    """A node of the graph has an op type (or a variant of it) that onnxdtd cannot explain."""

    def __init__(self, op_type: str, node: str, reason: str = "", supported: Iterable[str] = ()):
        self.op_type, self.node, self.reason = op_type, node, reason
        self.supported = sorted(supported)
        text = f"unsupported operator {op_type!r} at node {node!r}"
        if reason:
            text += f": {reason}"
        if self.supported:
            text += f" (supported op types: {', '.join(self.supported)})"
        super().__init__(text)


class InputError(OnnxdtdError, ValueError):
    """The input array has the wrong type, rank or shape for the model."""


class TargetError(OnnxdtdError, ValueError):
    """The requested target class is not valid for the model's output."""


class BoundsError(OnnxdtdError, ValueError):
    """The z^B bounds (low/high) have the wrong shape or order."""


class ConfigError(OnnxdtdError, ValueError):
    """An Explainer option (preset, rule, backend, maxpool mode, dtype) is invalid."""


class LenientWarning(UserWarning):
    """Relevance passes unchanged through ops that have no rule (Explainer(strict=False))."""
