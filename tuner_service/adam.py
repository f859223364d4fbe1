"""The Adam configuration: plain data shared by the service and the workers (no Optuna, no TF)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

PARAM_NAMES = ("learning_rate", "beta_1", "beta_2", "epsilon", "decay")


@dataclass(frozen=True)
class AdamConfig:
    """One point of the search: the five numbers that define an Adam optimizer.

    ``decay`` is Keras 2's per-step learning-rate decay, lr_t = lr / (1 + decay * t); Keras 3's
    Adam ignores its ``decay`` argument, so the worker builds an ``InverseTimeDecay`` schedule.
    """

    learning_rate: float
    beta_1: float
    beta_2: float
    epsilon: float
    decay: float

    def as_dict(self) -> dict[str, float]:
        """The five numbers by their API names."""
        return asdict(self)

    def is_close_to(self, other: AdamConfig) -> bool:
        """True when every number matches ``other`` up to float round-off."""
        mine, theirs = self.as_dict(), other.as_dict()
        return all(math.isclose(mine[k], theirs[k], rel_tol=1e-9) for k in PARAM_NAMES)


# Kingma & Ba (2015): alpha 0.001, beta_1 0.9, beta_2 0.999, epsilon 1e-8, and no decay.
PAPER_DEFAULTS = AdamConfig(
    learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-8, decay=0.0
)
