"""The LRP-α/β rule: activating and inhibiting contributions, weighted α and β with α − β = 1."""
from __future__ import annotations

from ..errors import ConfigError
from .base import STABILIZER, Group, Rule, Term


class AlphaBeta(Rule):
    """R = α R_act − β R_inh with z_act = a⁺W⁺ + a⁻W⁻ + b⁺ and z_inh = a⁺W⁻ + a⁻W⁺ + b⁻."""

    def __init__(self, alpha: float = 2.0, beta: float = 1.0, stabilizer: float = STABILIZER):
        if alpha < 0 or beta < 0 or abs(alpha - beta - 1.0) > 1e-12:
            raise ConfigError(f"AlphaBeta needs alpha, beta >= 0 and alpha - beta = 1, got {alpha}, {beta}")
        act = (Term("pos", "pos", "pos"), Term("neg", "neg"))
        inh = (Term("pos", "neg", "neg"), Term("neg", "pos"))
        super().__init__((Group(act, alpha), Group(inh, -beta)), stabilizer, alpha=alpha, beta=beta)
