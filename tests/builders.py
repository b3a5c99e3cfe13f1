"""Small ONNX graphs for tests, built with onnx.helper (float32, dynamic batch axis 'N')."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def model(nodes: Sequence[onnx.NodeProto], inits: dict[str, np.ndarray], in_shape: Sequence[int],
          output: str = "y", opset: int = OPSET, in_name: str = "x",
          more_inputs: dict[str, Sequence[int]] | None = None) -> onnx.ModelProto:
    """A model with input `in_name` of shape ('N', *in_shape) (and `more_inputs` by name) and one float
    output `output`."""
    shapes = {in_name: in_shape, **(more_inputs or {})}
    graph = helper.make_graph(
        list(nodes), "test",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", *shape]) for name, shape in shapes.items()],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v, np.float32) if np.asarray(v).dtype.kind == "f" else np.asarray(v), k)
         for k, v in inits.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)
    proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    onnx.checker.check_model(proto)
    return proto


def node(op: str, inputs: Sequence[str], outputs: Sequence[str] | str, **attrs) -> onnx.NodeProto:
    """A named node (the name is the first output prefixed by the op type)."""
    outputs = [outputs] if isinstance(outputs, str) else list(outputs)
    return helper.make_node(op, list(inputs), outputs, name=f"{op}_{outputs[0]}", **attrs)


def run(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The model's first output under onnxruntime."""
    import onnxruntime as ort

    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0]


def linear_matrix(proto: onnx.ModelProto, in_shape: Sequence[int]) -> np.ndarray:
    """The explicit matrix M (inputs × outputs) of a linear, bias-free model, read off onnxruntime by
    feeding it every unit vector."""
    size = int(np.prod(in_shape))
    basis = np.eye(size, dtype=np.float32).reshape(size, *in_shape)
    return run(proto, basis).reshape(size, -1).astype(np.float64)


def numeric_gradient(proto: onnx.ModelProto, x: np.ndarray, target: int,
                     h: float = 1e-2) -> tuple[np.ndarray, np.ndarray]:
    """Central differences of output `target` w.r.t. one sample `x` (shape (1, ...)), in one batched run,
    and a mask of the coordinates where both one-sided slopes agree (no kink of a piecewise-linear model
    within ±h, so the difference is exact up to float32 rounding)."""
    size = x.size
    steps = (np.eye(size) * h).reshape(size, *x.shape[1:])
    batch = np.concatenate([x + steps, x - steps, x])
    out = run(proto, batch).reshape(len(batch), -1)[:, target].astype(np.float64)
    up, down, mid = out[:size], out[size:2 * size], out[-1]
    right, left = (up - mid) / h, (mid - down) / h
    noise = 8 * np.finfo(np.float32).eps * np.abs(out).max() / h  # float32 rounding of a slope
    smooth = np.abs(right - left) <= 1e-4 * np.abs(right).max() + noise
    return ((up - down) / (2 * h)).reshape(x.shape), smooth.reshape(x.shape)
