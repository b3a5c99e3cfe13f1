"""The w² rule of Deep Taylor Decomposition for an unbounded input domain."""
from __future__ import annotations

from .base import STABILIZER, Group, Rule, Term


class WSquare(Rule):
    """R_i = Σ_j w_ij² R_j / s(Σ_i' w_i'j²); `bias=True` adds b² to the denominator."""

    def __init__(self, bias: bool = False, stabilizer: float = STABILIZER):
        super().__init__((Group((Term("one", "sq", "sq" if bias else None),)),), stabilizer, bias=bias)
