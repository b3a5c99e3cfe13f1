"""The z⁺ rule of Deep Taylor Decomposition (= LRP-α1β0) for layers with non-negative inputs."""
from __future__ import annotations

from .base import STABILIZER, Group, Rule, Term


class ZPlus(Rule):
    """R_i = a_i⁺ Σ_j w_ij⁺ R_j / s(z_j⁺) + a_i⁻ Σ_j w_ij⁻ R_j / s(z_j⁺); the bias is excluded as in
    DTD's derivation, `bias=True` adds b⁺ to z⁺ (zennit's ZPlus)."""

    def __init__(self, bias: bool = False, stabilizer: float = STABILIZER):
        terms = (Term("pos", "pos", "pos" if bias else None), Term("neg", "neg"))
        super().__init__((Group(terms),), stabilizer, bias=bias)
