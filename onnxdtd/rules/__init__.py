"""Propagation rules (data) and the composites that assign them to layers."""
from .alphabeta import AlphaBeta
from .base import Group, Rule, Term, stabilize
from .composite import Composite
from .epsilon import LRP0, Epsilon, Norm
from .flat import Flat
from .gamma import Gamma
from .gradient import Gradient
from .presets import PRESETS, resolve
from .wsquare import WSquare
from .zbox import ZBox
from .zplus import ZPlus

__all__ = ["AlphaBeta", "Composite", "Epsilon", "Flat", "Gamma", "Gradient", "Group", "LRP0", "Norm", "PRESETS",
           "Rule", "Term", "WSquare", "ZBox", "ZPlus", "resolve", "stabilize"]
