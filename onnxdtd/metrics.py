"""Quality metrics of explanations: consistency, region perturbation, diffusion, model randomization,
continuity and sparseness.

Every metric works on numpy arrays of a batch (N, ...) and on callables, so that it serves any
explanation method: `predict(x) -> (N, K)` outputs, `explain(x, target) -> relevance` of x's shape.
`predictor(model)` and an Explainer give both for an ONNX model."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from onnx import ModelProto, numpy_helper

from .bounds import check_bounds
from .errors import ConfigError, InputError
from .explainer import Explainer, _input_dtypes
from .forward import Forward
from .graph import LayerList, load
from .graph.loader import ModelSource, read_model
from .rules import Composite
from .targets import class_indices

Predict = Callable[[np.ndarray], np.ndarray]  # a batch (N, ...) -> outputs (N, K)
Explain = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (batch, one target per sample) -> relevance
LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
SMALL_IMAGE = 32  # images up to this side get 4×4 patches by default (MNIST, CIFAR), larger ones 9×9


# ---------------------------------------------------------------- helpers

def predictor(model: ModelSource | LayerList, output: str | int | None = None,
              providers: list | None = None) -> Predict:
    """`f(x) -> (N, K)`: the model's explained output in onnxruntime, the same values (logits where a
    final softmax is stripped) that Explainer.explain returns as `.output`; single-input models."""
    layers = model if isinstance(model, LayerList) else load(model, strict=False, output=output)
    if len(layers.inputs) != 1:
        raise InputError(f"metrics take models with one input; this one has {list(layers.inputs)}")
    name, dtype = layers.input_name, _input_dtypes(layers)[layers.input_name]
    forward = Forward(layers.proto, layers.inputs, [layers.output_name], providers, layers.derived)

    def predict(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=dtype)
        return forward.run({name: x})[layers.output_name].reshape(len(x), -1)

    return predict


def pixel_map(relevance: np.ndarray, channel_axis: int | None = None) -> np.ndarray:
    """Relevance summed over the channel axis (default: axis 1 of a 4-D (N, C, H, W) batch, none for
    other ranks): one value per pixel, as heatmaps and the papers' metrics count it."""
    r = _batch(relevance, "relevance")
    axis = _channel_axis(r.shape, channel_axis)
    return r if axis is None else r.sum(axis=axis)


def rank_correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Spearman's rank correlation per sample (N,) of two batches on the elements where `mask` is true
    (broadcastable to the batch; default all): Pearson's correlation of the ranks, ties ranked by their
    average. NaN where a sample has fewer than two masked elements or constant values."""
    a, b = _pair(a, b)
    keep = _mask(mask, a.shape)
    return np.array([_pearson(_ranks(u[m]), _ranks(v[m])) for u, v, m in zip(_flat(a), _flat(b), keep)])


def _ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values get the average of the ranks they span."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    return (np.cumsum(counts) - (counts - 1) / 2.0)[inverse.reshape(-1)]


def _pearson(u: np.ndarray, v: np.ndarray) -> float:
    """Pearson's correlation of two 1-D arrays; NaN when either is constant or shorter than 2."""
    u, v = u - u.mean(), v - v.mean()
    scale = np.sqrt((u * u).sum() * (v * v).sum())
    return float((u * v).sum() / scale) if len(u) > 1 and scale > 0 else float("nan")


def _batch(a, name: str, dtype=np.float64) -> np.ndarray:
    """`a` as a finite batch (N, ...) with at least one axis after the batch axis, in `dtype` (None:
    a floating-point `a` keeps its own)."""
    arr = np.asarray(a)
    arr = arr.astype(dtype or (arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.float64), copy=False)
    if arr.ndim < 2 or len(arr) == 0:
        raise InputError(f"{name} must be a non-empty batch (N, ...) with at least 2 axes, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name} contains NaN or Inf")
    return arr


def _pair(a, b, names: tuple[str, str] = ("a", "b")) -> tuple[np.ndarray, np.ndarray]:
    """Two batches of the same shape."""
    a, b = _batch(a, names[0]), _batch(b, names[1])
    if a.shape != b.shape:
        raise InputError(f"{names[0]} and {names[1]} must have the same shape, got {a.shape} and {b.shape}")
    return a, b


def _flat(a: np.ndarray) -> np.ndarray:
    return a.reshape(len(a), -1)


def _mask(mask, shape: tuple[int, ...]) -> np.ndarray:
    """A boolean mask (N, M) for the flattened batch of `shape`; all true when `mask` is None."""
    m = np.ones((), bool) if mask is None else np.asarray(mask, dtype=bool)
    try:
        return _flat(np.broadcast_to(m, shape))
    except ValueError:
        raise InputError(f"mask of shape {m.shape} does not broadcast to the batch shape {shape}") from None


def _channel_axis(shape: tuple[int, ...], channel_axis: int | None) -> int | None:
    if channel_axis is None:
        return 1 if len(shape) == 4 else None
    if not -len(shape) < channel_axis < len(shape) or channel_axis % len(shape) == 0:
        raise ConfigError(f"channel_axis {channel_axis} is not a non-batch axis of shape {shape}")
    return channel_axis % len(shape)


def _outputs(predict: Predict, x: np.ndarray) -> np.ndarray:
    """predict(x) checked to be (N, K)."""
    out = np.asarray(predict(x), dtype=np.float64)
    if out.ndim != 2 or len(out) != len(x):
        raise InputError(f"predict must return outputs (N, K) for a batch of {len(x)}, got shape {out.shape}")
    return out


def _picked(out: np.ndarray, targets: np.ndarray) -> np.ndarray:
    return out[np.arange(len(out)), targets]


# ---------------------------------------------------------------- consistency

def conservation_error(relevance: np.ndarray, value) -> np.ndarray:
    """Relative conservation error |Σ_p R_p − f(x)| / |f(x)| per sample (N,): 0 for a conservative
    heatmap (seed 000, Definition 1: ∀x f(x) = Σ_p R_p(x)); NaN where f(x) = 0."""
    r = _batch(relevance, "relevance")
    f = np.asarray(value, dtype=np.float64)
    if f.shape not in ((), (len(r),)):
        raise InputError(f"value must be a number or one per sample ({len(r)},), got shape {f.shape}")
    with np.errstate(divide="ignore", invalid="ignore"):
        error = np.abs(_flat(r).sum(axis=1) - f) / np.abs(f)
    return np.where(f == 0, np.nan, error)


def negative_fraction(relevance: np.ndarray) -> np.ndarray:
    """The share of the relevance mass that is negative, Σ_p max(−R_p, 0) / Σ_p |R_p| per sample (N,):
    0 for a positive heatmap (seed 000, Definition 2: ∀p R_p(x) ≥ 0; consistent = Definitions 1 and 2),
    1 for an all-negative one, 0 for an all-zero one."""
    r = _flat(_batch(relevance, "relevance"))
    total = np.abs(r).sum(axis=1)
    return np.divide(np.maximum(-r, 0).sum(axis=1), total, out=np.zeros(len(r)), where=total > 0)


# ---------------------------------------------------------------- region perturbation

@dataclass
class Perturbation:
    """Region perturbation curves (Samek et al. 2017): the explained output f(x^(k)) after the first
    k = 0..L patches were replaced, most relevant first (`curve`) and in a random order (`random_curve`)."""

    curve: np.ndarray  # (N, L+1)
    random_curve: np.ndarray  # (N, L+1)
    patch: tuple[int, ...]  # the patch size along each spatial axis

    @property
    def aopc(self) -> np.ndarray:
        """Area over the perturbation curve per sample (N,): 1/(L+1) Σ_{k=0..L} f(x^(0)) − f(x^(k))."""
        return _aopc(self.curve)

    @property
    def random_aopc(self) -> np.ndarray:
        """The AOPC of the random ordering (N,): the baseline a useful heatmap beats."""
        return _aopc(self.random_curve)


def _aopc(curve: np.ndarray) -> np.ndarray:
    return (curve[:, :1] - curve).mean(axis=1)


def region_perturbation(predict: Predict, x: np.ndarray, relevance: np.ndarray, target=None,
                        patch: int | tuple[int, ...] | None = None, steps: int | None = None,
                        baseline: str | float = "uniform", low=0.0, high=1.0, channel_axis: int | None = None,
                        seed: int | np.random.Generator | None = 0) -> Perturbation:
    """Region perturbation (Samek et al. 2017, "Evaluating the visualization of what a deep neural
    network has learned", MoRF): split the pixel grid into non-overlapping patches, rank them by their
    summed relevance, replace the L most relevant one after the other and record f_target after each
    step; AOPC = 1/(L+1) Σ_{k=0..L} (f(x^(0)) − f(x^(k))), higher is better. Replacement values: uniform
    noise in [low, high] (drawn once per sample, shared with the random ordering), or the constant
    `baseline`. `patch`: default 4×4 for images up to 32 pixels a side, 9×9 above, 1 for vectors;
    `steps`: default min(100, number of patches); `target`: default the argmax of predict(x)."""
    x = _batch(x, "x", None)
    r = _batch(relevance, "relevance")
    if r.shape != x.shape:
        raise InputError(f"relevance must have the shape of x {x.shape}, got {r.shape}")
    axis = _channel_axis(x.shape, channel_axis)
    grid = tuple(d for i, d in enumerate(x.shape[1:], 1) if i != axis)
    size = _patch_size(patch, grid)
    labels, count = _patch_labels(grid, size)
    steps = min(100, count) if steps is None else steps
    if not isinstance(steps, (int, np.integer)) or not 1 <= steps <= count:
        raise ConfigError(f"steps must be an integer in 1..{count} (the number of {size} patches), got {steps!r}")
    rng = np.random.default_rng(seed)
    fill = _fill(baseline, x, low, high, rng)
    n = len(x)
    scores = np.bincount((labels.reshape(1, -1) + count * np.arange(n)[:, None]).ravel(),
                         pixel_map(r, axis).reshape(-1), n * count).reshape(n, count)
    orders = np.concatenate([np.argsort(-scores, axis=1, kind="stable"),
                             rng.permuted(np.tile(np.arange(count), (n, 1)), axis=1)])[:, :steps]
    first = _outputs(predict, x)
    targets = np.tile(class_indices(target, first), 2)
    current, fill = np.concatenate([x, x]), np.concatenate([fill, fill])
    values = [np.tile(_picked(first, targets[:n]), 2)]
    for k in range(steps):
        hit = labels == orders[:, k].reshape(-1, *[1] * len(grid))
        current = np.where(hit if axis is None else np.expand_dims(hit, axis), fill, current)
        values.append(_picked(_outputs(predict, current), targets))
    curves = np.stack(values, axis=1)
    return Perturbation(curves[:n], curves[n:], size)


def pixel_flipping(predict: Predict, x: np.ndarray, relevance: np.ndarray, target=None, steps: int | None = None,
                   baseline: str | float = "uniform", low=0.0, high=1.0, channel_axis: int | None = None,
                   seed: int | np.random.Generator | None = 0) -> Perturbation:
    """Pixel flipping (Bach et al. 2015; Samek et al. 2017): region perturbation with 1×1 patches, the
    most relevant pixels (all their channels) replaced one per step."""
    return region_perturbation(predict, x, relevance, target, 1, steps, baseline, low, high, channel_axis, seed)


def _patch_size(patch, grid: tuple[int, ...]) -> tuple[int, ...]:
    """The patch size along each axis of the pixel grid."""
    if patch is None:
        side = 1 if len(grid) == 1 else 4 if max(grid) <= SMALL_IMAGE else 9
        return (side,) * len(grid)
    size = (patch,) * len(grid) if isinstance(patch, (int, np.integer)) else tuple(patch)
    if len(size) != len(grid) or not all(isinstance(p, (int, np.integer)) and p >= 1 for p in size):
        raise ConfigError(f"patch must be a positive integer or {len(grid)} of them (pixel grid {grid}), got {patch!r}")
    return tuple(int(p) for p in size)


def _patch_labels(grid: tuple[int, ...], size: tuple[int, ...]) -> tuple[np.ndarray, int]:
    """The patch index of every pixel (grid-shaped; border patches may be smaller) and the patch count."""
    counts = [-(-g // p) for g, p in zip(grid, size)]
    index = np.meshgrid(*[np.arange(g) // p for g, p in zip(grid, size)], indexing="ij")
    return np.ravel_multi_index(index, counts), int(np.prod(counts))


def _fill(baseline, x: np.ndarray, low, high, rng: np.random.Generator) -> np.ndarray:
    """The replacement values, x's shape: uniform noise in [low, high] or a constant."""
    if isinstance(baseline, str) and baseline == "uniform":
        lo, hi = check_bounds(low, high, x.shape[1:])
        return (lo + (hi - lo) * rng.random(x.shape)).astype(x.dtype)
    if isinstance(baseline, (int, float, np.number)) and not isinstance(baseline, bool) and np.isfinite(baseline):
        return np.full_like(x, float(baseline))
    raise ConfigError(f"baseline must be 'uniform' or a finite number, got {baseline!r}")


# ---------------------------------------------------------------- diffusion

@dataclass
class Diffusion:
    """How much the heatmaps of two classes differ, per sample (seed 003, section 5.1)."""

    distance: np.ndarray  # (N,) ‖R_c1 − R_c2‖_F
    correlation: np.ndarray  # (N,) Pearson's correlation of the two heatmaps

    @property
    def mean(self) -> float:
        """d = 1/N Σ_n ‖R_{n,c1} − R_{n,c2}‖_F (seed 003, eq. 7)."""
        return float(self.distance.mean())


def diffusion(h1: np.ndarray, h2: np.ndarray) -> Diffusion:
    """Diffusion (Rieger, seed 003, eq. 7): d = 1/N Σ_n ‖R_{n,c1} − R_{n,c2}‖_F, the heatmaps of the
    classes with the highest and second-highest output (the paper sums channels first: pixel_map),
    unnormalized; plus their Pearson correlation. Identical heatmaps: d = 0 (fully diffused)."""
    a, b = (_flat(h) for h in _pair(h1, h2, ("h1", "h2")))
    return Diffusion(np.linalg.norm(a - b, axis=1), np.array([_pearson(u, v) for u, v in zip(a, b)]))


# ---------------------------------------------------------------- model randomization

@dataclass
class Randomization:
    """Cascading model randomization (Adebayo et al. 2018): heatmap similarity as layers are randomized."""

    layers: list[str]  # the randomized layers (node names), from the output down
    correlation: np.ndarray  # (L+1, N) Spearman of R: row k after randomizing layers[:k], row 0 the model itself
    abs_correlation: np.ndarray  # (L+1, N) the same for |R|


def model_randomization(model: ModelSource, x: np.ndarray, target=None, rules: str | Composite = "dtd",
                        backend: str = "auto", mask: np.ndarray | None = None,
                        seed: int | np.random.Generator | None = 0, **options) -> Randomization:
    """Cascading randomization sanity check (Adebayo et al. 2018, "Sanity checks for saliency maps"):
    re-draw the weights of the linear layers (Conv/Gemm/MatMul initializers) from N(0, σ²), σ the
    layer's own weight std, cumulatively from the output layer down (biases kept), explain the same
    targets again and give Spearman's rank correlation with the original heatmaps, of R and of |R|,
    on `mask` (the foreground; default all elements). Correlations near 0 pass the check. Works on a
    private copy: the caller's model and file stay unchanged. `options` go to Explainer."""
    proto = read_model(model)
    weights = _linear_weights(proto)
    if not weights:
        raise ConfigError("the model has no Conv/Gemm/MatMul layer with its weights as an initializer to randomize")
    original = Explainer(proto, rules=rules, backend=backend, **options).explain(x, target)
    tensors = {t.name: t for t in proto.graph.initializer}
    rng = np.random.default_rng(seed)
    base = original.relevance
    rows = [_similarity(base, base, mask)]
    for _, weight in weights:
        _redraw(tensors[weight], rng)
        relevance = Explainer(proto, rules=rules, backend=backend, **options).explain(x, original.target).relevance
        rows.append(_similarity(base, relevance, mask))
    signed, absolute = np.moveaxis(np.array(rows), 1, 0)
    return Randomization([name for name, _ in weights], signed, absolute)


def _similarity(a: np.ndarray, b: np.ndarray, mask) -> np.ndarray:
    """(2, N): the rank correlations of a and b, and of |a| and |b|."""
    return np.array([rank_correlation(a, b, mask), rank_correlation(np.abs(a), np.abs(b), mask)])


def _linear_weights(proto: ModelProto) -> list[tuple[str, str]]:
    """(node name, weight initializer) of every linear node of the main graph, from the output down."""
    inits = {t.name for t in proto.graph.initializer}
    found: dict[str, str] = {}
    for node in proto.graph.node:
        if node.op_type in LINEAR_OPS:
            candidates = node.input[:2] if node.op_type == "MatMul" else node.input[1:2]
            weight = next((name for name in candidates if name in inits), None)
            if weight is not None and weight not in found:
                found[weight] = node.name or weight
    return [(name, weight) for weight, name in reversed(found.items())]


def _redraw(tensor, rng: np.random.Generator) -> None:
    """Replace an initializer's values in place by N(0, σ²) draws, σ its own std (1 if constant)."""
    w = numpy_helper.to_array(tensor)
    scale = float(w.std()) or 1.0
    tensor.CopyFrom(numpy_helper.from_array(rng.normal(0.0, scale, w.shape).astype(w.dtype), tensor.name))


# ---------------------------------------------------------------- continuity and sparseness

@dataclass
class Continuity:
    """Changes under small random input perturbations x' = x + δ, per sample and perturbation (N, S)."""

    relevance_change: np.ndarray  # ‖R(x') − R(x)‖₁
    input_change: np.ndarray  # ‖x' − x‖₂
    output_change: np.ndarray  # |f(x') − f(x)|

    @property
    def lipschitz(self) -> np.ndarray:
        """max_s ‖R(x') − R(x)‖₁ / ‖x' − x‖₂ per sample (N,): the strongest variation of the explanation
        (Montavon et al. 2018, "Methods for interpreting and understanding DNNs", sec. 7.2); lower is better."""
        valid = self.input_change > 0
        ratio = np.divide(self.relevance_change, self.input_change, out=np.full(valid.shape, -np.inf), where=valid)
        return np.where(valid.any(axis=1), ratio.max(axis=1), np.nan)

    @property
    def output_ratio(self) -> np.ndarray:
        """Σ_s ‖R(x') − R(x)‖₁ / Σ_s |f(x') − f(x)| per sample (N,): how much more the heatmap moves than
        the output does; ≥ 1 for conservative heatmaps, 1 when it moves only as much as f (NaN: f constant)."""
        output = self.output_change.sum(axis=1)
        return np.divide(self.relevance_change.sum(axis=1), output, out=np.full(len(output), np.nan),
                         where=output > 0)


def continuity(explain: Explain, predict: Predict, x: np.ndarray, target=None, radius: float = 0.05,
               samples: int = 8, low=None, high=None, seed: int | np.random.Generator | None = 0) -> Continuity:
    """Explanation continuity (seed 002, axiom: x ≈ x' ∧ f(x) ≈ f(x') ⇒ R(x) ≈ R(x')): explain `samples`
    perturbations x' = x + δ, δ ~ N(0, radius²) per element (clipped to [low, high] when given), for
    the same target (default: the argmax of predict(x)), and compare the heatmap's change with the
    change of the input and of the output."""
    x = _batch(x, "x", None)
    if not (np.isfinite(radius) and radius > 0) or not isinstance(samples, (int, np.integer)) or samples < 1:
        raise ConfigError(f"radius must be positive and samples a positive integer, got {radius!r}, {samples!r}")
    n, rng = len(x), np.random.default_rng(seed)
    moved = np.repeat(x, samples, axis=0)
    moved = moved + rng.normal(0.0, radius, moved.shape).astype(x.dtype)
    if low is not None or high is not None:
        lo, hi = check_bounds(-np.inf if low is None else low, np.inf if high is None else high, x.shape[1:])
        moved = np.clip(moved, lo, hi).astype(x.dtype)
    batch = np.concatenate([x, moved])
    outputs = _outputs(predict, batch)
    first = class_indices(target, outputs[:n])
    targets = np.concatenate([first, np.repeat(first, samples)])
    r = _batch(explain(batch, targets), "explain(x, target)")
    if r.shape != batch.shape:
        raise InputError(f"explain must return relevance of the input's shape {batch.shape}, got {r.shape}")
    f = _picked(outputs, targets)
    return Continuity(np.abs(_moved(r, n)).sum(axis=2), np.linalg.norm(_moved(batch, n), axis=2),
                      np.abs(_moved(f, n))[..., 0])


def _moved(values: np.ndarray, n: int) -> np.ndarray:
    """The perturbed rows values[n:] minus their own sample's row, as (n, samples, -1) float64."""
    base, moved = values[:n].astype(np.float64), values[n:].astype(np.float64)
    return (moved.reshape(n, -1, *moved.shape[1:]) - base[:, None]).reshape(n, len(moved) // n, -1)


def gini(relevance: np.ndarray) -> np.ndarray:
    """Sparseness as the Gini index of |R| per sample (N,) (Hurley & Rickard 2009; used for
    explanations by Chalasani et al. 2020): G = 1 − 2 Σ_k (c_(k)/‖c‖₁)(n − k + ½)/n over the n values
    sorted ascending; 0 for a constant map, 1 − 1/n for a one-hot map, 0 for an all-zero map."""
    c = np.sort(np.abs(_flat(_batch(relevance, "relevance"))), axis=1)
    n = c.shape[1]
    total = c.sum(axis=1)
    weighted = (c * (n - np.arange(1, n + 1) + 0.5)).sum(axis=1) / n
    return 1.0 - 2.0 * np.divide(weighted, total, out=np.full(len(c), 0.5), where=total > 0)
