"""The Adam search space: validation, its Optuna distributions, and Optuna params <-> AdamConfig.

Betas live close to 1, where the interesting values are 0.99, 0.999 and 0.9999; a ``log`` range
of a beta is therefore sampled as ``1 - beta`` on a log scale (Optuna names it ``one_minus_*``),
while the API keeps speaking in beta values. A ``decay`` range may ``include_zero``: "no decay" is
the paper default and often the best choice, and a log scale cannot reach 0 on its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Annotated, Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState
from pydantic import BaseModel, ConfigDict, Discriminator, Tag, field_validator, model_validator

from tuner_service.adam import PAPER_DEFAULTS, PARAM_NAMES, AdamConfig, HyperValue
from tuner_service.model_sources.types import HyperParameter

DECAY_SWITCH = "decay_enabled"
# A HyperModel's own hyperparameter "units" is the Optuna param "hp:units" (no Adam number
# has a colon in its name).
HYPER_PREFIX = "hp:"


class ParamRange(BaseModel):
    """A searched interval; ``log`` samples it on a log scale (1 - beta for the betas)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    low: float
    high: float
    log: bool = False
    include_zero: bool = False

    @field_validator("low", "high")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> ParamRange:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be smaller than high ({self.high})")
        return self

    def contains(self, value: float) -> bool:
        """True when ``value`` can be sampled from this range."""
        if value == 0 and self.include_zero:
            return True
        return self.low * (1 - 1e-12) <= value <= self.high * (1 + 1e-12)


def _param_kind(value: Any) -> str:
    return "range" if isinstance(value, dict | ParamRange) else "fixed"


Param = Annotated[
    Annotated[float, Tag("fixed")] | Annotated[ParamRange, Tag("range")],
    Discriminator(_param_kind),
]


def _check_domain(name: str, param: float | ParamRange) -> None:
    """Raise ValueError when ``param`` leaves the values Adam accepts for ``name``."""
    lows = [param] if isinstance(param, float | int) else [param.low, param.high]
    if isinstance(param, ParamRange):
        if param.include_zero and name != "decay":
            raise ValueError("include_zero is only meaningful for decay")
        if param.log and name in ("beta_1", "beta_2"):
            pass  # 1 - beta is sampled on the log scale; 0 <= beta < 1 is all it needs
        elif param.log and param.low <= 0:
            raise ValueError("a log-scale range needs low > 0")
    for value in lows:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        if name in ("learning_rate", "epsilon") and value <= 0:
            raise ValueError(f"{name} must be > 0")
        if name in ("beta_1", "beta_2") and not 0 <= value < 1:
            raise ValueError(f"{name} must be in [0, 1): beta = 1 divides by zero")
        if name == "decay" and value < 0:
            raise ValueError("decay must be >= 0")


class SearchSpace(BaseModel):
    """Per Adam number: a fixed value or a range. Omitted numbers use the default range."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    learning_rate: Param = ParamRange(low=1e-5, high=1e-1, log=True)
    # 1 - beta_1 in [0.02, 0.5] on a log scale, as AlgoPerf's Adam baseline: up to 0.999, over a
    # third of all draws landed above 0.99, where results swing with the seed.
    beta_1: Param = ParamRange(low=0.5, high=0.98, log=True)
    beta_2: Param = ParamRange(low=0.9, high=0.9999, log=True)
    epsilon: Param = ParamRange(low=1e-10, high=1.0, log=True)
    decay: Param = ParamRange(low=1e-6, high=1e-2, log=True, include_zero=True)

    @field_validator(*PARAM_NAMES)
    @classmethod
    def _in_domain(cls, value: float | ParamRange, info: Any) -> float | ParamRange:
        _check_domain(info.field_name, value)
        return float(value) if isinstance(value, int | float) else value

    def param(self, name: str) -> float | ParamRange:
        """The fixed value or range of one Adam number."""
        value: float | ParamRange = getattr(self, name)
        return value

    def contains(self, config: AdamConfig) -> bool:
        """True when every number of ``config`` lies in this space."""
        return all(self.contains_value(k, getattr(config, k)) for k in PARAM_NAMES)

    def contains_value(self, name: str, value: float) -> bool:
        """True when ``value`` is a possible value of the Adam number ``name``."""
        param = self.param(name)
        if isinstance(param, ParamRange):
            return param.contains(value)
        return math.isclose(param, value, rel_tol=1e-9, abs_tol=0.0)


def _one_minus(name: str) -> str:
    return f"one_minus_{name}"


def suggest_config(trial: optuna.Trial, space: SearchSpace) -> AdamConfig:
    """Sample every searched number of ``space`` through ``trial``; fixed ones pass through."""
    values = {name: _suggest(trial, name, space.param(name)) for name in PARAM_NAMES}
    return AdamConfig.from_stored(values)


def _suggest(trial: optuna.Trial, name: str, param: float | ParamRange) -> float:
    if not isinstance(param, ParamRange):
        return param
    if param.include_zero and not trial.suggest_categorical(DECAY_SWITCH, [False, True]):
        return 0.0
    optuna_name, dist = _float_distribution(name, param)
    value = trial.suggest_float(optuna_name, dist.low, dist.high, log=dist.log)
    return 1.0 - value if optuna_name != name else value


def _float_distribution(name: str, param: ParamRange) -> tuple[str, FloatDistribution]:
    """The Optuna name and float distribution that sample one searched Adam number."""
    if param.log and name in ("beta_1", "beta_2"):
        return _one_minus(name), FloatDistribution(1 - param.high, 1 - param.low, log=True)
    return name, FloatDistribution(param.low, param.high, log=param.log)


def optuna_distributions(space: SearchSpace) -> dict[str, BaseDistribution]:
    """Every Optuna parameter ``suggest_config`` may sample, with its distribution."""
    distributions: dict[str, BaseDistribution] = {}
    for name in PARAM_NAMES:
        param = space.param(name)
        if not isinstance(param, ParamRange):
            continue
        if param.include_zero:
            distributions[DECAY_SWITCH] = CategoricalDistribution([False, True])
        optuna_name, dist = _float_distribution(name, param)
        distributions[optuna_name] = dist
    return distributions


def to_optuna_params(values: Mapping[str, float], space: SearchSpace) -> dict[str, Any]:
    """The Optuna params that make ``suggest_config`` return ``values`` (for enqueueing).

    ``values`` may name only some Adam numbers; the others are left to the sampler.
    """
    params: dict[str, Any] = {}
    for name, value in values.items():
        param = space.param(name)
        if not isinstance(param, ParamRange):
            continue
        if param.include_zero:
            params[DECAY_SWITCH] = value != 0
            if value == 0:
                continue
        if param.log and name in ("beta_1", "beta_2"):
            params[_one_minus(name)] = 1.0 - value
        else:
            params[name] = value
    return params


def hyper_distributions(hyperparameters: Sequence[HyperParameter]
                        ) -> dict[str, BaseDistribution]:
    """The Optuna params and distributions that sample a HyperModel's hyperparameters (a
    ``reverse_log`` one is sampled linearly; ``fixed`` ones are not sampled)."""
    return {HYPER_PREFIX + hp.name: dist for hp in hyperparameters
            if (dist := _hyper_distribution(hp)) is not None}


def _hyper_distribution(hp: HyperParameter) -> BaseDistribution | None:
    log = hp.sampling == "log"
    # KerasTuner allows a step that does not divide the range (its grid stops short of max);
    # Optuna warns and moves ``high``: the last value on the grid is given instead. A log
    # range is sampled continuously (KerasTuner's log step multiplies, Optuna's cannot).
    if hp.kind == "int" and hp.min_value is not None and hp.max_value is not None:
        low, int_step = int(hp.min_value), 1 if log or not hp.step else int(hp.step)
        high = low + (int(hp.max_value) - low) // int_step * int_step
        return IntDistribution(low, high, log=log, step=int_step)
    if hp.kind == "float" and hp.min_value is not None and hp.max_value is not None:
        float_step = None if log or not hp.step else float(hp.step)
        top = hp.max_value if float_step is None else _grid_top(hp.min_value, hp.max_value,
                                                                float_step)
        return FloatDistribution(hp.min_value, top, log=log, step=float_step)
    if hp.kind == "choice" and hp.values:
        return CategoricalDistribution(list(hp.values))
    if hp.kind == "boolean":
        return CategoricalDistribution([False, True])
    return None


def _grid_top(low: float, high: float, step: float) -> float:
    # In decimal: 0.001 + 3 * 0.003 in binary floats is 0.010000000000000002, off the grid.
    start, stride = Decimal(repr(low)), Decimal(repr(step))
    steps = math.floor((Decimal(repr(high)) - start) / stride + Decimal("1e-9"))
    return float(start + steps * stride)


def suggest_model_values(trial: optuna.Trial, hyperparameters: Sequence[HyperParameter]
                         ) -> dict[str, HyperValue]:
    """Sample a HyperModel's searched hyperparameters through ``trial``."""
    values: dict[str, HyperValue] = {}
    for name, dist in hyper_distributions(hyperparameters).items():
        value: HyperValue
        if isinstance(dist, IntDistribution):
            value = trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
        elif isinstance(dist, FloatDistribution):
            value = trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
        else:
            assert isinstance(dist, CategoricalDistribution)
            chosen = trial.suggest_categorical(name, dist.choices)
            assert chosen is not None  # HyperParameter values are never None
            value = chosen
        values[name.removeprefix(HYPER_PREFIX)] = value
    return values


def hyper_defaults(hyperparameters: Sequence[HyperParameter]) -> dict[str, Any]:
    """The Optuna params of the hyperparameters' defaults (the baseline trial uses them)."""
    return {HYPER_PREFIX + hp.name: hp.default for hp in hyperparameters
            if _hyper_distribution(hp) is not None}


def model_values_from_params(params: Mapping[str, Any]) -> dict[str, HyperValue]:
    """A trial's HyperModel hyperparameter values, from its Optuna params."""
    return {name.removeprefix(HYPER_PREFIX): value for name, value in params.items()
            if name.startswith(HYPER_PREFIX)}


def config_from_params(params: dict[str, Any], space: SearchSpace) -> AdamConfig:
    """Rebuild the AdamConfig of a stored trial from its Optuna parameters."""
    values: dict[str, float] = {}
    for name in PARAM_NAMES:
        param = space.param(name)
        if not isinstance(param, ParamRange):
            values[name] = param
        elif param.include_zero and not params.get(DECAY_SWITCH, True):
            values[name] = 0.0
        elif _one_minus(name) in params:
            values[name] = 1.0 - float(params[_one_minus(name)])
        else:
            values[name] = float(params[name])
    return AdamConfig.from_stored({**values,
                                   "hyperparameters": model_values_from_params(params)})


def baseline_params(space: SearchSpace) -> dict[str, Any] | None:
    """Optuna params of Adam's paper defaults, or None when they lie outside ``space``."""
    if not space.contains(PAPER_DEFAULTS):
        return None
    return to_optuna_params(PAPER_DEFAULTS.as_dict(), space)


def fitted_params(values: Mapping[str, float], space: SearchSpace
                  ) -> tuple[dict[str, Any], dict[str, BaseDistribution]]:
    """The Optuna params of (some) Adam numbers inside ``space`` and their distributions, each
    value held within its distribution's bounds: ``SearchSpace.contains`` allows round-off
    (and 1 - beta adds some) that Optuna would refuse or warn about."""
    every = optuna_distributions(space)
    params = to_optuna_params(values, space)
    distributions = {name: every[name] for name in params}
    fitted = {name: _within(value, distributions[name]) for name, value in params.items()}
    return fitted, distributions


def _within(value: Any, distribution: BaseDistribution) -> Any:
    if isinstance(distribution, FloatDistribution):
        return min(max(value, distribution.low), distribution.high)
    return value


def _adam_name(optuna_name: str) -> str:
    """The Adam number an Optuna parameter samples."""
    if optuna_name == DECAY_SWITCH:
        return "decay"
    return optuna_name.removeprefix("one_minus_")


class StagedSampler(optuna.samplers.BaseSampler):
    """Samples only the Adam numbers ``open_at(trial.number)`` names with ``base``; the others
    are held at the paper defaults (within their ranges), and stored as the trial's params so
    that later stages learn from those trials too (see ``staging.py``)."""

    def __init__(self, base: optuna.samplers.BaseSampler, space: SearchSpace,
                 open_at: Callable[[int], frozenset[str]]) -> None:
        self._base = base
        self._open_at = open_at
        self._defaults = fitted_params(PAPER_DEFAULTS.as_dict(), space)[0]

    def _held(self, trial: FrozenTrial) -> dict[str, Any]:
        opened = self._open_at(trial.number)
        return {name: value for name, value in self._defaults.items()
                if _adam_name(name) not in opened}

    def reseed_rng(self) -> None:
        self._base.reseed_rng()

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial
                                    ) -> dict[str, BaseDistribution]:
        held = self._held(trial)
        searched = self._base.infer_relative_search_space(study, trial)
        return {name: dist for name, dist in searched.items() if name not in held}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self._base.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        held = self._held(trial)
        if param_name in held:
            return held[param_name]
        return self._base.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._base.before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._base.after_trial(study, trial, state, values)
