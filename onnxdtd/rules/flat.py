"""The flat rule: w² with all weights 1, spreading relevance uniformly over the receptive field."""
from __future__ import annotations

from .base import STABILIZER, Group, Rule, Term


class Flat(Rule):
    """R_i = Σ_j R_j / s(number of non-padded inputs of j); the bias is excluded."""

    def __init__(self, stabilizer: float = STABILIZER):
        super().__init__((Group((Term("one", "one"),)),), stabilizer)
