"""The generalized LRP-γ rule, favouring the contributions that agree in sign with the output."""
from __future__ import annotations

from .base import STABILIZER, Group, Rule, Term


class Gamma(Rule):
    """Outputs with z > 0 use a⁺(W+γW⁺) + a⁻(W+γW⁻), outputs with z < 0 the mirror form, z = 0 pass
    nothing; the bias is included, γ-scaled and sign-matched (zennit's Gamma)."""

    def __init__(self, gamma: float = 0.25, stabilizer: float = STABILIZER):
        up = (Term("pos", "gamma_pos", "gamma_pos"), Term("neg", "gamma_neg"))
        down = (Term("pos", "gamma_neg", "gamma_neg"), Term("neg", "gamma_pos"))
        super().__init__((Group(up, mask="pos"), Group(down, mask="neg")), stabilizer, gamma=gamma)

    def __repr__(self) -> str:
        return f"Gamma(gamma={self.gamma!r})"
