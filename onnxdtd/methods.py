"""Explanation methods as data: which backward walk runs (relevance rules or the gradient), from which
initial relevance at the output, and how the passes combine into the result.

A method's `starts` gives (N, P, K) initial relevance for (N, T) targets (P passes, batched into one
backward walk that shares the forward activations); `combine` turns the (N, P, ...) results of one
input into the (N, T, ...) explanation. `SmoothGrad` and `IntegratedGradients` wrap any method.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Union

import numpy as np

from .errors import ConfigError
from .targets import one_hot


@dataclass(frozen=True)
class Method:
    """A named method: the walk's mode, its initial relevance and the combination of its passes."""

    name: str
    mode: str  # "relevance": the rule chain; "gradient": the exact gradient walk
    starts: Callable[[np.ndarray, np.ndarray, "str | np.ndarray", np.dtype], np.ndarray]
    combine: Callable[[np.ndarray, np.ndarray], np.ndarray] = lambda r, x: r
    own_init: bool = False  # the method defines the initial relevance: init= must stay "logit"


def _gradient_starts(logits: np.ndarray, table: np.ndarray, init, dtype: np.dtype) -> np.ndarray:
    """d(logit_target)/d(logits): 1 at the target (init="logit" or "one"), or a given output gradient."""
    return one_hot(logits, table, "one" if isinstance(init, str) and init == "logit" else init, dtype)


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def sglrp_starts(logits: np.ndarray, table: np.ndarray, init, dtype: np.dtype) -> np.ndarray:
    """SGLRP (Iwana et al. 2019, "Explaining Convolutional Neural Networks using Softmax Gradient
    Layer-wise Relevance Propagation"): the initial relevance is the gradient of the target's softmax
    probability y_t with respect to the logits, y_t (1 − y_t) at t and −y_t y_k at every other class k,
    so the other classes' evidence is subtracted in proportion to their probability."""
    y = _softmax(logits.astype(np.float64))
    y_t = np.take_along_axis(y, table, axis=1)[..., None]  # (N, T, 1)
    onehot = one_hot(logits, table, "one", np.float64)
    return (y_t * (onehot - y[:, None, :])).astype(dtype)


def clrp_starts(logits: np.ndarray, table: np.ndarray, init, dtype: np.dtype) -> np.ndarray:
    """CLRP (Gu, Yang and Tresp 2018, "Understanding Individual Decisions of CNNs via Contrastive
    Backpropagation", the CLRP2 dual): a pass from the target's logit, and a pass from the dual
    virtual class — every other class, sharing the same total relevance (the target's logit) equally
    — so the two explanations are normalized to the same total before they are compared."""
    k = logits.shape[1]
    if k < 2:
        raise ConfigError("clrp needs a model with at least two outputs (the other classes form the dual)")
    target = one_hot(logits, table, "logit", dtype)
    total = target.sum(axis=2, keepdims=True)  # the target's logit
    dual = np.where(one_hot(logits, table, "one", dtype) != 0, 0, total / (k - 1)).astype(dtype)
    return np.concatenate([target, dual], axis=1)


def _clrp_combine(r: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The positive part of the target's relevance minus the dual's."""
    t = r.shape[1] // 2
    return np.maximum(r[:, :t] - r[:, t:], 0)


def _times_input(r: np.ndarray, x: np.ndarray) -> np.ndarray:
    return r * x[:, None].astype(r.dtype)


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("lrp", "relevance", one_hot),
    Method("clrp", "relevance", clrp_starts, _clrp_combine, own_init=True),
    Method("sglrp", "relevance", sglrp_starts, own_init=True),
    Method("gradient", "gradient", _gradient_starts),
    Method("gradient_x_input", "gradient", _gradient_starts, _times_input),
    Method("sensitivity", "gradient", _gradient_starts, lambda r, x: r * r),
)}


@dataclass(frozen=True)
class SmoothGrad:
    """SmoothGrad (Smilkov et al. 2017): the mean of `base` over `samples` copies of the input with
    Gaussian noise of standard deviation `noise` × (high − low), the z^B input range given to the
    Explainer; the explained classes are those of the clean input."""

    base: str = "gradient"
    samples: int = 25
    noise: float = 0.15
    seed: int = 0


@dataclass(frozen=True)
class IntegratedGradients:
    """Integrated Gradients (Sundararajan et al. 2017): `base` averaged over `steps` points of the
    straight path from `baseline` to the input (midpoint rule); for base="gradient" the average is
    multiplied by (input − baseline), the method of the paper. The classes are the input's."""

    base: str = "gradient"
    steps: int = 32
    baseline: float = 0.0


Wrapper = Union[SmoothGrad, IntegratedGradients]
WRAPPERS = {"smoothgrad": SmoothGrad, "integrated_gradients": IntegratedGradients}


def resolve(method: str | Wrapper) -> tuple[Method, Wrapper | None]:
    """The method to run per pass, and the wrapper around it (None for a plain method)."""
    if isinstance(method, str) and method in WRAPPERS:
        method = WRAPPERS[method]()
    wrapper = method if isinstance(method, (SmoothGrad, IntegratedGradients)) else None
    name = wrapper.base if wrapper else method
    if not isinstance(name, str) or name not in METHODS:
        raise ConfigError(f"method must be one of {[*METHODS, *WRAPPERS]} or a SmoothGrad/IntegratedGradients "
                          f"wrapper of one of {list(METHODS)}, got {method!r}")
    if wrapper is not None and (getattr(wrapper, "samples", 1) < 1 or getattr(wrapper, "steps", 1) < 1):
        raise ConfigError(f"{type(wrapper).__name__} needs at least one sample/step, got {wrapper!r}")
    return METHODS[name], wrapper


def wrapped_inputs(wrapper: Wrapper, x: np.ndarray, spread: np.ndarray, index: int) -> np.ndarray:
    """The input of the wrapper's pass `index`: a noisy copy (SmoothGrad) or a point of the path (IG)."""
    if isinstance(wrapper, SmoothGrad):
        rng = np.random.default_rng([wrapper.seed, index])
        return (x + rng.standard_normal(x.shape) * (wrapper.noise * spread)).astype(x.dtype)
    alpha = (index + 0.5) / wrapper.steps
    return (wrapper.baseline + alpha * (x - wrapper.baseline)).astype(x.dtype)


def passes(wrapper: Wrapper) -> int:
    """How many explanations the wrapper averages."""
    return wrapper.samples if isinstance(wrapper, SmoothGrad) else wrapper.steps


def finish(wrapper: Wrapper, mean: np.ndarray, x: np.ndarray, multi: bool) -> np.ndarray:
    """The wrapper's result from the mean of its passes (IG of the gradient: times input − baseline)."""
    if isinstance(wrapper, IntegratedGradients) and wrapper.base == "gradient":
        delta = (x - wrapper.baseline).astype(mean.dtype)
        return mean * (delta[:, None] if multi else delta)
    return mean
