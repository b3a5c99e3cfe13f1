"""The public Explainer: forward pass in onnxruntime, then the backward walk under a composite of rules."""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort

from . import denominators, export
from .backends import get_backend
from .backends.ort import session as ort_session
from .bounds import Bounds, check_bounds, layer_bounds
from .engine import Walk, backward, reads, run_shapes, static_shapes
from .errors import ConfigError, InputError, LenientWarning, ModelLoadError, TargetError
from .forward import Forward
from .graph import LayerList, load
from .graph.loader import ModelSource
from .rules import Composite, resolve

MAXPOOL_MODES = ("winner", "proportional")
INIT_MODES = ("logit", "one")


@dataclass
class Explanation:
    """The result of one explain() call."""

    relevance: np.ndarray | dict[str, np.ndarray]  # the input's shape; a dict by input name for several inputs
    output: np.ndarray  # the explained output (N, K): logits when a final softmax was stripped
    target: np.ndarray  # (N,) int64, the explained class of every sample
    intermediate: dict[str, np.ndarray] = field(default_factory=dict)  # with keep=True: every tensor's relevance


class Explainer:
    """Explains one ONNX model under one composite of rules; build once, call explain() many times.

    `low`/`high` are the z^B bounds of the model input (scalar, per channel, full shape; a dict by
    input name for several inputs); `output` picks the explained output (index or name); with
    `strict=False` nonlinear elementwise ops without a rule pass relevance through, with a warning."""

    def __init__(self, model: ModelSource | LayerList, rules: str | Composite = "dtd", low=0.0, high=1.0,
                 maxpool: str = "winner", backend: str = "auto", dtype=np.float32,
                 providers: Sequence | None = None, output: str | int | None = None, strict: bool = True):
        self.model = model if isinstance(model, LayerList) else load(model, strict=strict, output=output)
        if self.model.lenient:
            names = ", ".join(f"{layer.op_type} {layer.name!r}" for layer in self.model.lenient)
            warnings.warn(f"no relevance rule for {names}: relevance passes through unchanged (lenient mode)",
                          LenientWarning, stacklevel=2)
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
        for name, shape in self.model.inputs.items():  # fail early; dynamic shapes are checked by explain()
            sample = (shape or (None,))[1:]
            if all(isinstance(d, int) and d > 0 for d in sample):
                check_bounds(*self._bounds_of(name), sample)
        # Exposed: what the kernels read, and every tensor whose run-time shape the static shapes
        # cannot give (routing layers need their input shapes).
        self.static = static_shapes(self.model)
        self.batch = next(iter(self.model.inputs.values()), None)
        self.batch = self.batch[0] if self.batch else None
        self.input_dtypes = _input_dtypes(self.model)
        self.providers = providers
        self.graphs: dict[tuple, ort.InferenceSession] = {}  # whole-graph backends: a session per (init, keep)
        if self.backend.whole_graph:
            self.graph_session("logit", False)  # build it now: errors surface here, not in explain()
            return
        fixed = run_shapes(self.static, self.batch, 1, self.static)
        # The extra nodes' initializers (modified weights) go with the session; only the names stay.
        extra = denominators.plan(self.model, self.rules, self.dtype)
        self.denominators = extra.names
        self.reads = set(reads(self.model, self.rules, self.denominators))
        exposed = self.reads | {self.model.output_name} | (set(self.static) - set(fixed))
        self.forward = Forward(self.model.proto, self.model.inputs, sorted(exposed), providers, self.model.derived,
                               extra)

    def explain(self, x, target=None, init: str = "logit", keep: bool = False) -> Explanation:
        """Relevance of every input element for `target` (None: the argmax of each sample). `x` is an
        array (N, ...), or for several inputs a dict by input name (or a sequence in input order)."""
        feeds = self._check_inputs(x)
        if init not in INIT_MODES:
            raise ConfigError(f"init must be one of {INIT_MODES}, got {init!r}")
        n = len(next(iter(feeds.values())))
        if self.backend.whole_graph:
            return self._explain_graph(feeds, n, target, init, keep)
        acts = self.forward.run(feeds)
        output = acts[self.model.output_name]
        if output.size % n:
            raise InputError(f"the explained output {self.model.output_name!r} has shape {output.shape} for a batch "
                             f"of {n}: onnxdtd explains outputs with the same number of values per sample")
        logits = output.reshape(n, -1)
        targets = _targets(target, logits)
        rows = np.arange(n)
        start = np.zeros(logits.shape, self.dtype)
        start[rows, targets] = logits[rows, targets] if init == "logit" else 1.0
        walk = self._walk(feeds, acts, n)
        del acts  # the walk holds the only references and releases each activation when done with it
        found, kept = backward(walk, walk.backend.asarray(start.reshape(output.shape), self.dtype), keep)
        relevance = {name: (self.backend.to_numpy(found[name]) if name in found else np.zeros(x.shape))
                     .astype(self.dtype, copy=False) for name, x in feeds.items()}
        single = len(relevance) == 1
        return Explanation(next(iter(relevance.values())) if single else relevance, logits, targets, kept)

    def graph_session(self, init: str, keep: bool) -> ort.InferenceSession:
        """The onnxruntime session of the whole explanation (onnxdtd.export) for this init mode, with
        every tensor's relevance as an output when `keep`."""
        if (init, keep) not in self.graphs:
            inputs = set(self.model.inputs)
            kept = sorted(name for layer in self.model for name in layer.outputs if name not in inputs) if keep else ()
            data = export.build(self.model, self.rules, self.low, self.high, self.maxpool, "input", init, self.dtype,
                                kept).SerializeToString()  # the proto (a copy of the model) is freed here
            try:
                self.graphs[init, keep] = ort_session(data, self.providers, spinning=True)
            except Exception as exc:  # onnxruntime raises its own untyped errors
                reason = str(exc).strip().splitlines()[-1]
                if "Could not find an implementation" in reason:
                    raise ConfigError(f"onnxruntime has no {self.dtype} kernel for a node of the explanation graph "
                                      f"({reason.split('for ')[-1]}): use dtype=np.float32 on the "
                                      f"{self.backend.name!r} backend, or another backend") from exc
                raise ModelLoadError(f"onnxruntime cannot run the explanation graph: {reason}") from exc
        return self.graphs[init, keep]

    def _explain_graph(self, feeds: dict[str, np.ndarray], n: int, target, init: str, keep: bool) -> Explanation:
        """explain() on a whole-graph backend: one run of the explanation graph."""
        session = self.graph_session(init, keep)
        single = len(feeds) == 1
        inputs = {export.INPUT: next(iter(feeds.values()))} if single else dict(feeds)
        width = _width(self.model.output_shape)
        chosen = np.full(n, -1, np.int64) if target is None else \
            _targets(target, np.broadcast_to(np.zeros(1), (n, width or np.iinfo(np.int64).max)))
        names = [o.name for o in session.get_outputs()]
        try:
            values = dict(zip(names, session.run(names, {**inputs, export.TARGET: chosen})))
        except Exception as exc:
            shapes = {name: x.shape for name, x in feeds.items()}
            raise InputError(f"onnxruntime rejected the input of shape(s) {shapes}: "
                             f"{str(exc).strip().splitlines()[-1]}") from exc
        logits = values[export.OUTPUT]
        if target is not None and not width:
            _targets(target, logits)
        prefix = f"{export.RELEVANCE}/"
        relevance = {name: values[export.RELEVANCE if single else prefix + name] for name in feeds}
        kept = {name[len(prefix):]: value for name, value in values.items() if name.startswith(prefix)}
        kept.update(relevance)
        return Explanation(next(iter(relevance.values())) if single else relevance, logits, values[export.EXPLAINED],
                           kept if keep else {})

    def _bounds_of(self, name: str) -> tuple:
        """The (low, high) given for input `name`: shared values, or the entries of dicts by input name."""
        pick = lambda v, default: v.get(name, default) if isinstance(v, Mapping) else v  # noqa: E731
        return pick(self.low, 0.0), pick(self.high, 1.0)

    def _walk(self, feeds: dict[str, np.ndarray], acts: dict[str, np.ndarray], n: int) -> Walk:
        given: dict[str, Bounds] = {name: check_bounds(*self._bounds_of(name), x.shape[1:])
                                    for name, x in feeds.items()}
        shapes = {**run_shapes(self.static, self.batch, n, self.static),
                  **{name: value.shape for name, value in acts.items()}}
        bounds = {}
        for layer, rule in zip(self.model, self.rules):
            if rule is not None and rule.uses_bounds:
                own = rule.low is not None and rule.high is not None
                lo, hi = (rule.low, rule.high) if own else layer_bounds(self.model, layer, given, shapes)
                bounds[layer.index] = (self.backend.asarray(lo, self.dtype), self.backend.asarray(hi, self.dtype))
        device = {name: self.backend.asarray(value, self.dtype) for name, value in acts.items() if name in self.reads}
        return Walk(self.model, self.rules, self.backend, device, self.maxpool, bounds, shapes,
                    self.denominators)

    def _check_inputs(self, x) -> dict[str, np.ndarray]:
        """The inputs as validated arrays by name."""
        names = list(self.model.inputs)
        if isinstance(x, Mapping):
            if set(x) != set(names):
                raise InputError(f"expected inputs {names}, got {sorted(x)}")
            given = dict(x)
        elif len(names) > 1:
            if not isinstance(x, (list, tuple)) or len(x) != len(names):
                raise InputError(f"the model has {len(names)} inputs {names}: pass a dict by name or a "
                                 "sequence in that order")
            given = dict(zip(names, x))
        else:
            given = {names[0]: x}
        feeds = {name: self._check_input(name, value) for name, value in given.items()}
        sizes = {name: len(value) for name, value in feeds.items()}
        if len(set(sizes.values())) > 1:
            raise InputError(f"all inputs must have the same batch size, got {sizes}")
        return feeds

    def _check_input(self, name: str, x) -> np.ndarray:
        x = np.asarray(x)
        if not np.issubdtype(x.dtype, np.floating):
            raise InputError(f"input {name!r} must be a floating-point array, got dtype {x.dtype}")
        expected = self.model.inputs[name]
        if expected is not None:
            if x.ndim != len(expected):
                raise InputError(f"input {name!r} must have rank {len(expected)} "
                                 f"(expected shape {_show(expected)}), got shape {x.shape}")
            for axis, (want, got) in enumerate(zip(expected, x.shape)):
                if isinstance(want, int) and want > 0 and want != got:
                    raise InputError(f"input {name!r} must have shape {_show(expected)}, "
                                     f"got {x.shape} (axis {axis}: expected {want}, got {got})")
        if x.ndim == 0 or x.shape[0] == 0:
            raise InputError(f"input {name!r} must have a non-empty batch axis, got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise InputError(f"input {name!r} contains NaN or Inf")
        return np.ascontiguousarray(x, dtype=self.input_dtypes[name])


def _show(shape: tuple) -> str:
    return "(" + ", ".join("N" if i == 0 and not isinstance(d, int) else str(d) if isinstance(d, int) and d > 0
                           else "?" for i, d in enumerate(shape)) + ")"


def _width(shape) -> int | None:
    """Values per sample of the explained output, where its static shape tells."""
    dims = list(shape or ())[1:]
    return int(np.prod(dims)) if all(isinstance(d, int) and d > 0 for d in dims) else None


def _input_dtypes(model: LayerList) -> dict[str, np.dtype]:
    """The element type onnxruntime expects for each model input."""
    declared = {vi.name: vi.type.tensor_type.elem_type for vi in model.proto.graph.input}
    return {name: np.dtype(onnx.helper.tensor_dtype_to_np_dtype(declared.get(name, onnx.TensorProto.FLOAT)))
            for name in model.inputs}


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
