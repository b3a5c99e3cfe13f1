"""Reading a model from a path, bytes or a ModelProto, without ever touching the caller's copy."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import onnx
from google.protobuf.message import DecodeError

from ..errors import ModelLoadError

ModelSource = Union[str, os.PathLike, bytes, onnx.ModelProto]


def read_model(model: ModelSource) -> onnx.ModelProto:
    """A private, checked, shape-inferred copy of `model` with external weights loaded."""
    proto = _read(model)
    try:
        proto = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except (onnx.shape_inference.InferenceError, ValueError):
        pass  # the checker below, or the handlers, name what is wrong
    try:
        onnx.checker.check_model(proto)
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise ModelLoadError(f"invalid ONNX model: {str(exc).strip().splitlines()[0]}") from exc
    return proto


def _read(model: ModelSource) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return copy
    if isinstance(model, (bytes, bytearray)):
        try:
            return onnx.load_from_string(bytes(model))
        except (DecodeError, ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"the bytes are not a valid ONNX model: {exc}") from exc
    if not isinstance(model, (str, os.PathLike)):
        raise ModelLoadError(f"expected a path, bytes or onnx.ModelProto, got {type(model).__name__}")
    path = Path(model)
    if not path.is_file():
        raise ModelLoadError(f"no such model file: {path}")
    try:
        return onnx.load(str(path))
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise ModelLoadError(f"cannot read {path} as an ONNX model (truncated or corrupt?): {exc}") from exc
