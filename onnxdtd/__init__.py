"""onnxdtd: Deep Taylor Decomposition and LRP explanations for any model exported to ONNX."""
from __future__ import annotations

from . import rules
from .backends import available_backends
from .errors import (BoundsError, ConfigError, InputError, LenientWarning, ModelLoadError, OnnxdtdError,
                     TargetError, UnsupportedOperatorError)
from .explainer import Explainer, Explanation
from .export import export
from .graph import LayerList, find_unsupported, load, supported_ops

__version__ = "0.1.0"

__all__ = ["BoundsError", "ConfigError", "Explainer", "Explanation", "InputError", "LayerList", "LenientWarning",
           "ModelLoadError",
           "OnnxdtdError", "TargetError", "UnsupportedOperatorError", "available_backends", "export", "find_unsupported",
           "load", "rules", "supported_ops"]
