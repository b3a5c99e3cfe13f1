"""Rules as data: terms of a modified forward pass, grouped under one stabilized denominator each.

A rule propagates R through a linear layer z = f(a; W, b) as

    R_in = sum over groups g:  coeff_g * sum over terms t in g:
               sign_t * in_t * f_tᵀ( mask_g * R / s(sum over t in g of sign_t * f(in_t; mod_t(W), mod_t(b))) )

where in_t is a modified input, f_tᵀ the transposed pass with the modified weight and s the
stabilizer; a group with divide=False passes R itself (no denominator: the gradient's Wᵀ R). Every
backend evaluates these terms; the modifiers are named so that compiled kernels can recognise and
fuse them.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

STABILIZER = 1e-6

# Modifiers of the layer input, by name: "above" is x − low and "below" x − high (low/high the z^B
# bounds), "one" the all-ones input.
INPUTS = ("x", "pos", "neg", "above", "below", "one")

# Modifiers of weights and biases, by name: (array, gamma) -> array, written with array methods so
# that they work on numpy and device arrays alike.
PARAMS: dict[str, Callable[[Any, float], Any]] = {
    "w": lambda w, g: w,
    "pos": lambda w, g: w.clip(min=0),
    "neg": lambda w, g: w.clip(max=0),
    "sq": lambda w, g: w * w,
    "one": lambda w, g: w * 0 + 1,
    "gamma_pos": lambda w, g: w + g * w.clip(min=0),
    "gamma_neg": lambda w, g: w + g * w.clip(max=0),
}


def stabilize(z: Any, epsilon: float) -> Any:
    """s(z) = z + ε·sgn(z) with sgn(0) = +1, so the denominator never vanishes (dtype of z kept)."""
    eps = z.dtype.type(epsilon)
    return z + ((z >= 0) * (2 * eps) - eps)


@dataclass(frozen=True)
class Term:
    """One modified forward pass: input modifier, weight modifier, bias modifier (None: no bias), sign."""

    input: str
    weight: str
    bias: str | None = None
    sign: float = 1.0


PLAIN = Term("x", "w", "w")  # the layer's own forward pass


@dataclass(frozen=True)
class Group:
    """Terms that share a denominator; `mask` keeps only outputs whose original z is 'pos' or 'neg';
    `divide=False` drops the denominator (R itself goes into the transposed pass: the gradient)."""

    terms: tuple[Term, ...]
    coeff: float = 1.0
    mask: str | None = None
    divide: bool = True

    @property
    def is_plain(self) -> bool:
        """Whether the denominator is the layer's own output z, which the forward pass already holds."""
        return self.terms == (PLAIN,)


class Rule:
    """A propagation rule for linear layers (dense, conv, pooling): its groups of terms plus parameters."""

    groups: tuple[Group, ...] = ()

    def __init__(self, groups: tuple[Group, ...], stabilizer: float = STABILIZER, gamma: float = 0.0,
                 low: Any = None, high: Any = None, **shown: Any):
        self.groups, self.stabilizer, self.gamma = groups, stabilizer, gamma
        self.low, self.high = low, high
        self.shown = shown

    @property
    def uses_bounds(self) -> bool:
        """Whether the rule reads the z^B bounds of its layer's input."""
        return any(t.input in ("above", "below") for g in self.groups for t in g.terms)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.shown.items())
        return f"{type(self).__name__}({args})"
