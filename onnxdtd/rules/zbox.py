"""The z^B rule of Deep Taylor Decomposition for a bounded input domain l ≤ x ≤ h (pixels)."""
from __future__ import annotations

from typing import Any

from .base import STABILIZER, Group, Rule, Term


class ZBox(Rule):
    """R_i = x_i c_i(W) − l_i c_i(W⁺) − h_i c_i(W⁻), c(M) = Mᵀ(R / s(z)), z = Σ xw − Σ lw⁺ − Σ hw⁻.

    Evaluated in the equal form R_i = (x_i − l_i) c_i(W⁺) + (x_i − h_i) c_i(W⁻), z = Σ (x − l)w⁺ +
    Σ (x − h)w⁻ (W = W⁺ + W⁻): two passes instead of three, and a denominator summed from
    non-negative terms, without cancellation. Without `low`/`high` the Explainer's bounds are used,
    mapped into this layer's input space."""

    def __init__(self, low: Any = None, high: Any = None, stabilizer: float = STABILIZER):
        terms = (Term("above", "pos"), Term("below", "neg"))
        super().__init__((Group(terms),), stabilizer, low=low, high=high)
