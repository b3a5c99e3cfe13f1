"""The public Explainer: forward pass in onnxruntime, then the backward walk under a composite of rules."""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort

from . import denominators, export, methods
from .backends import get_backend
from .backends.ort import session as ort_session
from .bounds import Bounds, check_bounds, layer_bounds
from .engine import Walk, backward, reads, run_shapes, static_shapes
from .errors import ConfigError, InputError, LenientWarning, ModelLoadError
from .forward import Forward
from .graph import LayerList, load
from .graph.loader import ModelSource
from .rules import Composite, gradient, resolve
from .targets import INIT_MODES, class_indices, class_table, is_multi

MAXPOOL_MODES = ("winner", "proportional")
TILE_BYTES = 1 << 29  # activations tiled for the passes of one backward walk (explain with several targets)


@dataclass
class Explanation:
    """The result of one explain() call."""

    relevance: np.ndarray | dict[str, np.ndarray]  # the input's shape, (N, T, ...) for several targets per
    # sample; a dict by input name for several inputs
    output: np.ndarray  # the explained output (N, K): logits when a final softmax was stripped
    target: np.ndarray  # (N,) or (N, T) int64, the explained classes; -1 where init was given as an array
    # With keep=True: every tensor's relevance, (N, T, ...) for several targets; for a method of several
    # passes per target (clrp: the target's, then the dual's) the passes' own, (N, P, ...).
    intermediate: dict[str, np.ndarray] = field(default_factory=dict)


class Explainer:
    """Explains one ONNX model under one composite of rules; build once, call explain() many times.

    `low`/`high` are the z^B bounds of the model input (scalar, per channel, full shape; a dict by
    input name for several inputs); `output` picks the explained output (index or name); with
    `strict=False` nonlinear elementwise ops without a rule pass relevance through, with a warning;
    `method` is "lrp" (the rule chain), another name of onnxdtd.methods.METHODS, or a wrapper
    (methods.SmoothGrad, methods.IntegratedGradients; "smoothgrad"/"integrated_gradients" wrap the gradient)."""

    def __init__(self, model: ModelSource | LayerList, rules: str | Composite = "dtd", low=0.0, high=1.0,
                 maxpool: str = "winner", backend: str = "auto", dtype=np.float32,
                 providers: Sequence | None = None, output: str | int | None = None, strict: bool = True,
                 method: str | methods.Wrapper = "lrp"):
        self.method, self.wrapper = methods.resolve(method)
        self.model = model if isinstance(model, LayerList) else load(model, strict=strict, output=output)
        if self.model.lenient:
            names = ", ".join(f"{layer.op_type} {layer.name!r}" for layer in self.model.lenient)
            warnings.warn(f"no relevance rule for {names}: relevance passes through unchanged (lenient mode)",
                          LenientWarning, stacklevel=2)
        self.composite = resolve(rules)
        self.mode = self.method.mode  # "relevance": the rule chain; "gradient": the exact gradient walk
        self.rules = gradient.assign(self.model) if self.mode == "gradient" else self.composite.assign(self.model)
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
        self.providers = providers if providers is not None else self.backend.providers
        self.graphs: dict[tuple, ort.InferenceSession] = {}  # whole-graph backends: a session per mode
        self.forward: Forward | None = None  # whole-graph backends build a plain one when they need logits first
        if self.backend.whole_graph:
            # Built now, so that errors surface here: the graph of the target input for the rule chain,
            # the one that takes the initial relevance for every other method.
            self.graph_session("logit", False, "input" if self.method.name == "lrp" else "init")
            return
        fixed = run_shapes(self.static, self.batch, 1, self.static)
        # The extra nodes' initializers (modified weights) go with the session; only the names stay.
        extra = denominators.plan(self.model, self.rules, self.dtype)
        self.denominators = extra.names
        self.reads = set(reads(self.model, self.rules, self.denominators, mode=self.mode))
        exposed = self.reads | {self.model.output_name} | (set(self.static) - set(fixed))
        self.forward = Forward(self.model.proto, self.model.inputs, sorted(exposed), self.providers,
                               self.model.derived, extra, self.backend.forward_binding())

    def explain(self, x, target=None, init: str | np.ndarray = "logit", keep: bool = False) -> Explanation:
        """Relevance of every input element for `target`: None (the argmax of each sample), a class, one
        class per sample, "all" or an (N, T) table of classes (relevance (N, T, ...)); `init` puts the
        target's logit ("logit") or 1 ("one") on the output, or is the initial relevance itself (an array
        of the output's shape, with target=None). `x` is an array (N, ...), or for several inputs a dict
        by input name (or a sequence in input order)."""
        feeds = self._check_inputs(x)
        given = not isinstance(init, str)
        if not given and init not in INIT_MODES:
            raise ConfigError(f"init must be one of {INIT_MODES} or an array of the output's shape, got {init!r}")
        if given and target is not None:
            raise ConfigError("init given as an array is the whole initial relevance: pass target=None")
        if self.method.own_init and (given or init != "logit"):
            raise ConfigError(f"method {self.method.name!r} sets the initial relevance itself: leave init='logit'")
        if self.wrapper is not None:
            if keep:
                raise ConfigError(f"keep=True is not available with {type(self.wrapper).__name__}")
            return self._wrapped(feeds, target, init)
        return self._explain(feeds, target, init, keep)

    def _explain(self, feeds: dict[str, np.ndarray], target, init, keep: bool) -> Explanation:
        """One explanation: the forward pass, then one backward walk batched over the targets' passes."""
        n = len(next(iter(feeds.values())))
        multi, given = is_multi(target), not isinstance(init, str)
        if self.backend.whole_graph and self.method.name == "lrp" and not (multi or given):
            return self._explain_graph(feeds, n, target, init, keep)
        acts, logits, shape = self._forward(feeds, n)
        table = class_table(target, logits) if multi else \
            np.full((n, 1), -1, np.int64) if given else class_indices(target, logits)[:, None]
        starts = self.method.starts(logits, table, init, self.dtype)
        found, kept = self._propagate(feeds, acts, starts, shape, keep)
        relevance = {name: self.method.combine(r, feeds[name]) for name, r in found.items()}
        if not multi:
            relevance = {name: r[:, 0] for name, r in relevance.items()}
            table = table[:, 0]
            if starts.shape[1] == 1:
                kept = {name: r[:, 0] for name, r in kept.items()}
        single = len(relevance) == 1
        return Explanation(next(iter(relevance.values())) if single else relevance, logits, table, kept)

    def _forward(self, feeds: dict[str, np.ndarray], n: int) -> tuple[dict[str, np.ndarray], np.ndarray, tuple]:
        """The forward pass: the activations the walk reads, the logits (N, K) and the output's shape."""
        if self.forward is None:  # whole-graph backends: a plain forward pass gives the logits first
            self.forward = Forward(self.model.proto, self.model.inputs, [self.model.output_name], self.providers,
                                   self.model.derived)
        acts = self.forward.run(feeds)
        output = self.backend.to_numpy(acts[self.model.output_name])
        if output.size % n:
            raise InputError(f"the explained output {self.model.output_name!r} has shape {output.shape} for a batch "
                             f"of {n}: onnxdtd explains outputs with the same number of values per sample")
        return acts, output.reshape(n, -1), output.shape

    def _propagate(self, feeds: dict[str, np.ndarray], acts: dict[str, np.ndarray], starts: np.ndarray,
                   shape: tuple, keep: bool) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The backward walk from (N, P, K) initial relevance: (N, P, ...) relevance per input (and per
        tensor with `keep`). The P passes of a sample run as rows of one batch on tiled activations (in
        chunks that bound the memory); `acts` is emptied, so the walk holds the last references."""
        if self.backend.whole_graph:
            return self._propagate_graph(feeds, starts, keep)
        n, p = starts.shape[:2]
        chunk = self._chunk(acts, n, p) if shape[0] == n else 1  # an output (N*K, 1) cannot take rows per pass
        shared: dict[int, dict[int, str]] = {}
        if p > 1:  # the denominators that depend on the sample only: once, then repeated with the activations
            shared, values = denominators.shared(self.model, self.rules, acts,
                                                 self._layer_bounds(feeds, self._shapes(acts, n)),
                                                 self.denominators, self.dtype, self.backend.to_numpy)
            acts.update(values)
        found: dict[str, list] = {}
        kept: dict[str, list] = {}
        for first in range(0, p, chunk):
            t = min(chunk, p - first)
            walk = self._walk(feeds, {name: self._tile(name, v, n, t) for name, v in acts.items()}, n * t, shared)
            if first + t == p:
                acts.clear()  # the walk releases each activation when done with it
            start = starts[:, first:first + t].reshape(shape if t == 1 else (n * t, *shape[1:]))
            result, intermediate = backward(walk, walk.backend.asarray(start, self.dtype), keep)
            for name, x in feeds.items():
                r = self.backend.to_numpy(result[name]) if name in result else np.zeros((n * t, *x.shape[1:]))
                found.setdefault(name, []).append(r.astype(self.dtype, copy=False).reshape(n, t, *x.shape[1:]))
            for name, r in intermediate.items():
                kept.setdefault(name, []).append(r.reshape(n, t, *r.shape[1:]) if len(r) == n * t else r[None])
        join = lambda parts: {name: np.concatenate(v, axis=1) for name, v in parts.items()}  # noqa: E731
        return join(found), join(kept)

    def _chunk(self, acts: dict[str, np.ndarray], n: int, p: int) -> int:
        """How many passes per sample one walk runs: all that fit TILE_BYTES of tiled activations; one
        where the model's batch size is fixed (its graph cannot take more rows)."""
        if p == 1 or (isinstance(self.batch, int) and self.batch > 0):
            return 1
        per_pass = sum(v.nbytes for name, v in acts.items() if self._batched(name, v, n))
        return max(1, min(p, TILE_BYTES // max(per_pass, 1)))

    def _batched(self, name: str, value: np.ndarray, n: int) -> bool:
        """Whether a forward tensor has the batch axis first (and is tiled for several passes)."""
        static = self.static.get(name)
        fixed = bool(static) and isinstance(static[0], int) and static[0] > 0
        return value.ndim > 0 and len(value) == n and not fixed

    def _tile(self, name: str, value: np.ndarray, n: int, t: int) -> np.ndarray:
        """`value` with every sample repeated for `t` passes (rows sample-major), batched tensors only."""
        return np.repeat(value, t, axis=0) if t > 1 and self._batched(name, value, n) else value

    def _propagate_graph(self, feeds: dict[str, np.ndarray], starts: np.ndarray,
                         keep: bool) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """_propagate on a whole-graph backend: the explanation graph that takes the initial relevance
        as its input `init`, run on the inputs repeated for every pass (its forward pass runs again);
        one run per pass where the model's batch size is fixed."""
        n, p = starts.shape[:2]
        session = self.graph_session("logit", keep, "init")
        t = 1 if isinstance(self.batch, int) and self.batch > 0 else p
        single = len(feeds) == 1
        prefix = f"{export.RELEVANCE}/"
        tiled = {name: np.repeat(x, t, axis=0) for name, x in feeds.items()}
        inputs = {export.INPUT: next(iter(tiled.values()))} if single else tiled
        found: dict[str, list] = {}
        kept: dict[str, list] = {}
        for first in range(0, p, t):
            values = self._run_graph(session, {**inputs, export.INIT: starts[:, first:first + t].reshape(n * t, -1)},
                                     feeds)
            for name in feeds:
                found.setdefault(name, []).append(values[export.RELEVANCE if single else prefix + name])
            for name, value in values.items():
                if keep and name.startswith(prefix):
                    kept.setdefault(name[len(prefix):], []).append(value)
        join = lambda parts: {k: np.concatenate([v.reshape(n, t, *v.shape[1:]) for v in vs], axis=1)  # noqa: E731
                              for k, vs in parts.items()}
        found, kept = join(found), join(kept)
        return found, {**kept, **found} if keep else {}

    def _wrapped(self, feeds: dict[str, np.ndarray], target, init) -> Explanation:
        """SmoothGrad / Integrated Gradients: the mean of the method over the wrapper's inputs, for the
        classes of the clean input."""
        n = len(next(iter(feeds.values())))
        _, logits, _ = self._forward(feeds, n)
        multi = is_multi(target)
        fixed = class_table(target, logits) if multi else \
            (None if not isinstance(init, str) else class_indices(target, logits))
        spread = {name: np.subtract(*reversed(self._bounds_of(name))) for name in feeds}
        count = methods.passes(self.wrapper)
        total: dict[str, np.ndarray] = {}
        for index in range(count):
            inputs = {name: methods.wrapped_inputs(self.wrapper, x, spread[name], index) for name, x in feeds.items()}
            res = self._explain(inputs, fixed, init, False)
            relevance = res.relevance if isinstance(res.relevance, dict) else {next(iter(feeds)): res.relevance}
            for name, r in relevance.items():
                total[name] = total[name] + r if name in total else r.astype(np.float64)
        result = {name: methods.finish(self.wrapper, total[name] / count, x, multi).astype(self.dtype)
                  for name, x in feeds.items()}
        chosen = fixed if fixed is not None else np.full(n, -1, np.int64)
        return Explanation(next(iter(result.values())) if len(result) == 1 else result, logits, chosen)

    def graph_session(self, init: str, keep: bool, target: str = "input") -> ort.InferenceSession:
        """The onnxruntime session of the whole explanation (onnxdtd.export) for this init and target
        mode, with every tensor's relevance as an output when `keep`."""
        key = (init, keep, target, self.mode)
        if key not in self.graphs:
            inputs = set(self.model.inputs)
            kept = sorted(name for layer in self.model for name in layer.outputs if name not in inputs) if keep else ()
            data = export.build(self.model, self.rules, self.low, self.high, self.maxpool, target, init, self.dtype,
                                kept, mode=self.mode).SerializeToString()  # the proto (a copy) is freed here
            try:
                self.graphs[key] = ort_session(data, self.providers, spinning=True)
            except Exception as exc:  # onnxruntime raises its own untyped errors
                reason = str(exc).strip().splitlines()[-1]
                if "Could not find an implementation" in reason:
                    raise ConfigError(f"onnxruntime has no {self.dtype} kernel for a node of the explanation graph "
                                      f"({reason.split('for ')[-1]}): use dtype=np.float32 on the "
                                      f"{self.backend.name!r} backend, or another backend") from exc
                raise ModelLoadError(f"onnxruntime cannot run the explanation graph: {reason}") from exc
        return self.graphs[key]

    @staticmethod
    def _run_graph(session: ort.InferenceSession, inputs: dict[str, np.ndarray],
                   feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every output of the explanation graph by name; onnxruntime's errors name the input shapes."""
        names = [o.name for o in session.get_outputs()]
        try:
            return dict(zip(names, session.run(names, inputs)))
        except Exception as exc:
            shapes = {name: x.shape for name, x in feeds.items()}
            raise InputError(f"onnxruntime rejected the input of shape(s) {shapes}: "
                             f"{str(exc).strip().splitlines()[-1]}") from exc

    def _explain_graph(self, feeds: dict[str, np.ndarray], n: int, target, init: str, keep: bool) -> Explanation:
        """explain() on a whole-graph backend: one run of the explanation graph."""
        session = self.graph_session(init, keep)
        single = len(feeds) == 1
        inputs = {export.INPUT: next(iter(feeds.values()))} if single else dict(feeds)
        width = _width(self.model.output_shape)
        chosen = np.full(n, -1, np.int64) if target is None else \
            class_indices(target, np.broadcast_to(np.zeros(1), (n, width or np.iinfo(np.int64).max)))
        values = self._run_graph(session, {**inputs, export.TARGET: chosen}, feeds)
        logits = values[export.OUTPUT]
        if target is not None and not width:
            class_indices(target, logits)
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

    def _layer_bounds(self, feeds: dict[str, np.ndarray], shapes: dict[str, tuple]) -> dict[int, tuple]:
        """The z^B bounds (low, high) of every bounds-reading layer, as numpy arrays (one sample)."""
        given: dict[str, Bounds] = {name: check_bounds(*self._bounds_of(name), x.shape[1:])
                                    for name, x in feeds.items()}
        bounds = {}
        for layer, rule in zip(self.model, self.rules):
            if rule is not None and rule.uses_bounds:
                own = rule.low is not None and rule.high is not None
                bounds[layer.index] = (rule.low, rule.high) if own else layer_bounds(self.model, layer, given, shapes)
        return bounds

    def _shapes(self, acts: dict[str, np.ndarray], n: int) -> dict[str, tuple]:
        """The run-time shape of every tensor for a batch of `n` rows."""
        return {**run_shapes(self.static, self.batch, n, self.static), **{name: v.shape for name, v in acts.items()}}

    def _walk(self, feeds: dict[str, np.ndarray], acts: dict[str, np.ndarray], n: int,
              shared: dict[int, dict[int, str]] | None = None) -> Walk:
        """The walk over `acts` (`n` rows); `shared`: denominators computed once per sample, in `acts`."""
        shapes = self._shapes(acts, n)
        bounds = {index: (self.backend.asarray(lo, self.dtype), self.backend.asarray(hi, self.dtype))
                  for index, (lo, hi) in self._layer_bounds(feeds, shapes).items()}
        planned = {index: {**self.denominators.get(index, {}), **(shared or {}).get(index, {})}
                   for index in {*self.denominators, *(shared or {})}}
        read = self.reads | {name for names in planned.values() for name in names.values()}
        device = {name: self.backend.asarray(value, self.dtype) for name, value in acts.items() if name in read}
        return Walk(self.model, self.rules, self.backend, device, self.maxpool, bounds, shapes, planned,
                    mode=self.mode)

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
