"""The named presets: DTD chains and the zennit composites of the same names."""
from __future__ import annotations

from collections.abc import Callable

from ..errors import ConfigError
from .alphabeta import AlphaBeta
from .composite import Composite
from .epsilon import LRP0, Epsilon
from .flat import Flat
from .gamma import Gamma
from .wsquare import WSquare
from .zbox import ZBox
from .zplus import ZPlus

PRESETS: dict[str, Callable[[], Composite]] = {
    "dtd": lambda: Composite(kinds={"linear": ZPlus()}, first=ZBox()),
    "dtd-w2": lambda: Composite(kinds={"linear": ZPlus()}, first=WSquare()),
    "zplus": lambda: Composite(kinds={"linear": ZPlus()}),
    "lrp0": lambda: Composite(kinds={"linear": LRP0()}),
    "epsilon": lambda: Composite(kinds={"linear": Epsilon()}),
    # zennit's composites, whose ZPlus includes the positive bias.
    "epsilon-plus": lambda: Composite(kinds={"dense": Epsilon(), "conv": ZPlus(bias=True)}),
    "epsilon-plus-flat": lambda: Composite(kinds={"dense": Epsilon(), "conv": ZPlus(bias=True)}, first=Flat()),
    "epsilon-gamma-box": lambda: Composite(kinds={"dense": Epsilon(), "conv": Gamma(0.25)}, first=ZBox(),
                                           first_kinds="conv"),
    "epsilon-alpha2-beta1": lambda: Composite(kinds={"dense": Epsilon(), "conv": AlphaBeta(2.0, 1.0)}),
}


def resolve(rules: str | Composite) -> Composite:
    """A Composite from a preset name or a Composite."""
    if isinstance(rules, Composite):
        return rules
    if isinstance(rules, str) and rules in PRESETS:
        return PRESETS[rules]()
    raise ConfigError(f"unknown rules {rules!r}: use a Composite or one of {', '.join(PRESETS)}")
