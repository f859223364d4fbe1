"""The Adam configuration: plain data shared by the service and the workers (no Optuna, no TF)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PARAM_NAMES = ("learning_rate", "beta_1", "beta_2", "epsilon", "decay")
# A KerasTuner hyperparameter's value.
HyperValue = int | float | str | bool


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
    # A trial also fixes the searched hyperparameters of a KerasTuner HyperModel, by name
    # (sorted); empty for every other model. They travel with the five numbers so that
    # confirmation, warm start and the report treat a configuration as one thing.
    hyperparameters: tuple[tuple[str, HyperValue], ...] = ()

    def as_dict(self) -> dict[str, float]:
        """The five numbers by their API names."""
        return {name: float(getattr(self, name)) for name in PARAM_NAMES}

    @property
    def model_values(self) -> dict[str, HyperValue]:
        """The model's hyperparameters this configuration fixes, by name."""
        return dict(self.hyperparameters)

    def with_model_values(self, values: Mapping[str, HyperValue]) -> AdamConfig:
        """The same Adam numbers with these hyperparameter values."""
        return AdamConfig(**self.as_dict(), hyperparameters=tuple(sorted(values.items())))

    def stored(self) -> dict[str, Any]:
        """A JSON object that ``from_stored`` reads back."""
        stored: dict[str, Any] = dict(self.as_dict())
        if self.hyperparameters:
            stored["hyperparameters"] = self.model_values
        return stored

    @classmethod
    def from_stored(cls, stored: Mapping[str, Any]) -> AdamConfig:
        """The configuration ``stored`` wrote."""
        values = {name: float(stored[name]) for name in PARAM_NAMES}
        model = stored.get("hyperparameters") or {}
        return cls(**values, hyperparameters=tuple(sorted(model.items())))

    def is_close_to(self, other: AdamConfig) -> bool:
        """True when every number matches ``other`` up to float round-off (and the model's
        hyperparameters are equal)."""
        mine, theirs = self.as_dict(), other.as_dict()
        return (all(math.isclose(mine[k], theirs[k], rel_tol=1e-9) for k in PARAM_NAMES)
                and self.hyperparameters == other.hyperparameters)


# Kingma & Ba (2015): alpha 0.001, beta_1 0.9, beta_2 0.999, epsilon 1e-8, and no decay.
PAPER_DEFAULTS = AdamConfig(
    learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-8, decay=0.0
)
