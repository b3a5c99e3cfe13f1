"""LRP-ε and LRP-0, and the z-rule used for pooling and sums."""
from __future__ import annotations

from .base import PLAIN, STABILIZER, Group, Rule


class Epsilon(Rule):
    """R_i = a_i Σ_j w_ij R_j / s_ε(z_j), bias included; the stabilizer is max(ε, 1e-6)."""

    def __init__(self, epsilon: float = STABILIZER):
        super().__init__((Group((PLAIN,)),), max(float(epsilon), STABILIZER), epsilon=epsilon)


class LRP0(Epsilon):
    """LRP-0: ε = 0, with the 1e-6 stabilizer only."""

    def __init__(self) -> None:
        super().__init__(0.0)
        self.shown = {}


class Norm(Epsilon):
    """The z-rule R_i = a_i R_j / s(Σ a) of pooling layers and sums (zennit's Norm)."""

    def __init__(self, stabilizer: float = STABILIZER):
        super().__init__(stabilizer)
        self.shown = {}
