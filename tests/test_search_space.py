"""The Adam search space: validation, and Optuna params <-> AdamConfig."""

from __future__ import annotations

import math
from typing import Any

import optuna
import pytest
from pydantic import ValidationError

from tuner_service.adam import PAPER_DEFAULTS, AdamConfig
from tuner_service.search_space import (
    ParamRange,
    SearchSpace,
    baseline_params,
    config_from_params,
    suggest_config,
    to_optuna_params,
)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("learning_rate", {"low": 0.1, "high": 0.01}, "smaller than high"),
        ("learning_rate", {"low": 0.0, "high": 0.1, "log": True}, "low > 0"),
        ("learning_rate", -0.001, "must be > 0"),
        ("learning_rate", {"low": 1e-5, "high": math.inf}, "finite"),
        ("beta_1", 1.0, "[0, 1)"),
        ("beta_2", {"low": 0.9, "high": 1.0}, "[0, 1)"),
        ("beta_1", {"low": -0.1, "high": 0.9}, "[0, 1)"),
        ("epsilon", 0.0, "must be > 0"),
        ("decay", -1e-4, ">= 0"),
        ("decay", {"low": 0.0, "high": 1e-2, "log": True}, "low > 0"),
        ("epsilon", {"low": 1e-8, "high": 1.0, "include_zero": True}, "only meaningful"),
        ("beta_1", {"low": 0.5, "high": 0.9, "step": 0.1}, "Extra inputs"),
    ],
)
def test_invalid_values_are_refused_naming_the_field(field: str, value: Any,
                                                     message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        SearchSpace.model_validate({field: value})
    errors = caught.value.errors()
    assert errors[0]["loc"][0] == field
    assert message in str(caught.value)


def test_nan_bound_is_refused() -> None:
    with pytest.raises(ValidationError, match="finite"):
        SearchSpace.model_validate({"epsilon": {"low": float("nan"), "high": 1.0}})


def test_default_space_contains_the_paper_defaults_including_no_decay() -> None:
    space = SearchSpace()
    assert space.contains(PAPER_DEFAULTS)
    params = baseline_params(space)
    assert params is not None and params["decay_enabled"] is False
    assert config_from_params(params, space).is_close_to(PAPER_DEFAULTS)


def test_defaults_outside_a_narrow_space_give_no_baseline() -> None:
    space = SearchSpace(learning_rate=ParamRange(low=0.01, high=0.1, log=True))
    assert baseline_params(space) is None


def test_fixed_values_pass_through_and_betas_are_sampled_as_one_minus_beta() -> None:
    space = SearchSpace(learning_rate=0.01, epsilon=1e-7, decay=0.0)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    trial = study.ask()
    config = suggest_config(trial, space)
    assert (config.learning_rate, config.epsilon, config.decay) == (0.01, 1e-7, 0.0)
    assert set(trial.params) == {"one_minus_beta_1", "one_minus_beta_2"}
    assert 0.5 <= config.beta_1 <= 0.98 and 0.9 <= config.beta_2 <= 0.9999
    assert config_from_params(trial.params, space).is_close_to(config)


def test_enqueued_params_round_trip_through_a_real_study() -> None:
    space = SearchSpace()
    wanted = AdamConfig(learning_rate=0.02, beta_1=0.95, beta_2=0.99, epsilon=1e-6,
                        decay=1e-4)
    study = optuna.create_study()
    study.enqueue_trial(to_optuna_params(wanted.as_dict(), space))
    assert suggest_config(study.ask(), space).is_close_to(wanted)


def test_log_beta_samples_cover_the_values_near_one() -> None:
    space = SearchSpace()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    betas = [suggest_config(study.ask(), space).beta_2 for _ in range(200)]
    # Uniform sampling over [0.9, 0.9999] would put ~1 % of draws above 0.999.
    assert sum(b > 0.999 for b in betas) > 40


def test_a_hypermodels_hyperparameters_become_optuna_distributions() -> None:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from tuner_service.model_sources.types import HyperParameter
    from tuner_service.search_space import hyper_distributions

    found = hyper_distributions([
        HyperParameter(name="units", kind="int", min_value=32, max_value=500, step=64),
        HyperParameter(name="rate", kind="float", min_value=0.001, max_value=0.01, step=0.003),
        HyperParameter(name="scale", kind="float", min_value=1e-4, max_value=1.0,
                       sampling="log"),
        HyperParameter(name="act", kind="choice", values=("relu", "tanh")),
        HyperParameter(name="extra", kind="boolean", default=False),
        HyperParameter(name="fixed", kind="fixed", default=3),
    ])
    # An uneven step keeps KerasTuner's grid (it stops short of max) instead of Optuna's
    # warning and moved bound.
    assert found == {
        "hp:units": IntDistribution(32, 480, step=64),
        "hp:rate": FloatDistribution(0.001, 0.01, step=0.003),
        "hp:scale": FloatDistribution(1e-4, 1.0, log=True),
        "hp:act": CategoricalDistribution(["relu", "tanh"]),
        "hp:extra": CategoricalDistribution([False, True]),
    }


def test_sampled_hyperparameters_travel_with_the_adam_numbers() -> None:
    import optuna

    from tuner_service.model_sources.types import HyperParameter
    from tuner_service.search_space import (
        SearchSpace,
        config_from_params,
        hyper_defaults,
        suggest_config,
        suggest_model_values,
    )

    space = SearchSpace()
    hps = [HyperParameter(name="units", kind="int", min_value=8, max_value=64, step=8,
                          default=32),
           HyperParameter(name="act", kind="choice", values=("relu", "tanh"), default="relu")]
    assert hyper_defaults(hps) == {"hp:units": 32, "hp:act": "relu"}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(5):
        trial = study.ask()
        config = suggest_config(trial, space).with_model_values(
            suggest_model_values(trial, hps))
        study.tell(trial, 1.0)
        stored = study.trials[-1]
        assert config_from_params(stored.params, space) == config
        assert config.model_values["units"] in range(8, 65, 8)
        assert config.model_values["act"] in ("relu", "tanh")
        assert type(config).from_stored(config.stored()) == config
