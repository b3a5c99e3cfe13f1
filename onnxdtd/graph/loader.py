"""Reading a model from a path, bytes or a ModelProto, without ever touching the caller's copy."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import onnx
import onnx.inliner
from google.protobuf.message import DecodeError

from ..errors import ModelLoadError

ModelSource = Union[str, os.PathLike, bytes, onnx.ModelProto]


def read_model(model: ModelSource) -> onnx.ModelProto:
    """A private, checked, shape-inferred copy of `model` with external weights loaded."""
    proto = _read(model)
    if proto.functions:
        proto = _inline(proto)
    proto = _infer_shapes(proto)
    try:
        onnx.checker.check_model(proto)
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise ModelLoadError(f"invalid ONNX model: {str(exc).strip().splitlines()[0]}") from exc
    return proto


def _inline(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Local functions replaced by their bodies. A function that imports a custom domain at another
    version than the model does (jax2onnx writes such files) is aligned first: onnx's inliner would
    otherwise leave it in place."""
    versions = {o.domain: o.version for o in proto.opset_import}
    for function in proto.functions:
        for entry in function.opset_import:
            if entry.domain not in ("", "ai.onnx") and entry.domain in versions:
                entry.version = versions[entry.domain]
    return onnx.inliner.inline_local_functions(proto)


def _infer_shapes(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Shapes inferred afresh (exporters sometimes leave stale value_info); the model as it is when
    inference fails, so that the checker or the handlers can name what is wrong."""
    fresh = onnx.ModelProto()
    fresh.CopyFrom(proto)
    del fresh.graph.value_info[:]
    for candidate in (fresh, proto):
        try:
            return onnx.shape_inference.infer_shapes(candidate, data_prop=True)
        except (onnx.shape_inference.InferenceError, ValueError):
            continue
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
