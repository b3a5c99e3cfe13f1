"""The public Explainer: forward pass in onnxruntime, then the backward walk under a composite of rules."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from .backends import get_backend
from .bounds import check_bounds, layer_bounds
from .engine import Walk, backward
from .errors import ConfigError, InputError, TargetError
from .forward import Forward
from .graph import LayerList, load
from .graph.loader import ModelSource
from .rules import Composite, resolve

MAXPOOL_MODES = ("winner", "proportional")
INIT_MODES = ("logit", "one")


@dataclass
class Explanation:
    """The result of one explain() call."""

    relevance: np.ndarray  # same shape as the input
    output: np.ndarray  # the model's output (N, K): logits when a final softmax was stripped
    target: np.ndarray  # (N,) int64, the explained class of every sample
    intermediate: dict[str, np.ndarray] = field(default_factory=dict)  # with keep=True: every tensor's relevance


class Explainer:
    """Explains one ONNX model under one composite of rules; build once, call explain() many times."""

    def __init__(self, model: ModelSource | LayerList, rules: str | Composite = "dtd", low=0.0, high=1.0,
                 maxpool: str = "winner", backend: str = "auto", dtype=np.float32,
                 providers: Sequence | None = None):
        self.model = model if isinstance(model, LayerList) else load(model)
        self.composite = resolve(rules)
        self.rules = self.composite.assign(self.model)
        if maxpool not in MAXPOOL_MODES:
            raise ConfigError(f"maxpool must be one of {MAXPOOL_MODES}, got {maxpool!r}")
        self.maxpool = maxpool
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ConfigError(f"dtype must be float32 or float64, got {self.dtype}")
        self.backend = get_backend(backend)
        self.low, self.high = low, high
        sample = (self.model.input_shape or (None,))[1:]
        if all(isinstance(d, int) and d > 0 for d in sample):
            check_bounds(low, high, sample)  # fail early; with dynamic dimensions explain() checks
        tensors = {name for layer in self.model for name in (*layer.inputs, *layer.outputs)}
        self.forward = Forward(self.model.proto, self.model.input_name, sorted(tensors | {self.model.output_name}),
                               providers)
        self.input_dtype = _input_dtype(self.model)

    def explain(self, x: np.ndarray, target=None, init: str = "logit", keep: bool = False) -> Explanation:
        """Relevance of every input element for `target` (None: the argmax of each sample)."""
        x = self._check_input(x)
        if init not in INIT_MODES:
            raise ConfigError(f"init must be one of {INIT_MODES}, got {init!r}")
        acts = self.forward.run(x)
        output = acts[self.model.output_name]
        logits = output.reshape(len(x), -1)
        targets = _targets(target, logits)
        rows = np.arange(len(x))
        start = np.zeros(logits.shape, self.dtype)
        start[rows, targets] = logits[rows, targets] if init == "logit" else 1.0
        walk = self._walk(x, acts)
        relevance, kept = backward(walk, walk.backend.asarray(start.reshape(output.shape), self.dtype), keep)
        relevance = np.zeros(x.shape, self.dtype) if relevance is None else self.backend.to_numpy(relevance)
        return Explanation(relevance.astype(self.dtype, copy=False), logits, targets, kept)

    def _walk(self, x: np.ndarray, acts: dict[str, np.ndarray]) -> Walk:
        low, high = check_bounds(self.low, self.high, x.shape[1:])
        shapes = {name: value.shape for name, value in acts.items()}
        bounds = {}
        for layer, rule in zip(self.model, self.rules):
            if rule is not None and rule.uses_bounds:
                own = rule.low is not None and rule.high is not None
                lo, hi = (rule.low, rule.high) if own else layer_bounds(self.model, layer, low, high, shapes)
                bounds[layer.index] = (self.backend.asarray(lo, self.dtype), self.backend.asarray(hi, self.dtype))
        device = {name: self.backend.asarray(value, self.dtype) for name, value in acts.items()}
        return Walk(self.model, self.rules, self.backend, device, self.maxpool, bounds)

    def _check_input(self, x) -> np.ndarray:
        x = np.asarray(x)
        if not np.issubdtype(x.dtype, np.floating):
            raise InputError(f"input must be a floating-point array, got dtype {x.dtype}")
        expected = self.model.input_shape
        if expected is not None:
            if x.ndim != len(expected):
                raise InputError(f"input {self.model.input_name!r} must have rank {len(expected)} "
                                 f"(expected shape {_show(expected)}), got shape {x.shape}")
            for axis, (want, got) in enumerate(zip(expected, x.shape)):
                if isinstance(want, int) and want > 0 and want != got:
                    raise InputError(f"input {self.model.input_name!r} must have shape {_show(expected)}, "
                                     f"got {x.shape} (axis {axis}: expected {want}, got {got})")
        if x.ndim == 0 or x.shape[0] == 0:
            raise InputError(f"input must have a non-empty batch axis, got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise InputError("input contains NaN or Inf")
        return np.ascontiguousarray(x, dtype=self.input_dtype)


def _show(shape: tuple) -> str:
    return "(" + ", ".join("N" if i == 0 and not isinstance(d, int) else str(d) if isinstance(d, int) and d > 0
                           else "?" for i, d in enumerate(shape)) + ")"


def _input_dtype(model: LayerList) -> np.dtype:
    for vi in model.proto.graph.input:
        if vi.name == model.input_name:
            return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))
    return np.dtype(np.float32)


def _targets(target, logits: np.ndarray) -> np.ndarray:
    """One class index per sample, validated against the number of outputs."""
    n, k = logits.shape
    if target is None:
        return logits.argmax(axis=1)
    t = np.asarray(target)
    if not (np.issubdtype(t.dtype, np.integer) or (t.dtype.kind == "f" and np.all(t == np.round(t)))):
        raise TargetError(f"target must be an int or one int per sample, got {target!r}")
    t = np.broadcast_to(t.astype(np.int64), (n,)) if t.ndim == 0 or t.shape == (n,) else None
    if t is None:
        raise TargetError(f"target must be an int or {n} ints (one per sample), got shape {np.shape(target)}")
    if np.any((t < 0) | (t >= k)):
        raise TargetError(f"target {t.tolist()} out of range: the model has {k} outputs (0..{k - 1})")
    return t.copy()
