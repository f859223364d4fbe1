"""The playbook's staging: which Adam numbers a trial searches, and what the study stores."""

from __future__ import annotations

import math

import pytest

from tests.api.test_jobs_validation import GOOD
from tuner_service import jobs
from tuner_service.adam import PAPER_DEFAULTS, PARAM_NAMES, AdamConfig
from tuner_service.runtime import Runtime
from tuner_service.schemas import JobCreate
from tuner_service.staging import open_names, planned_search_trials, stage_count
from tuner_service.tenancy import LOCAL

LR = frozenset({"learning_rate"})
LR_B1 = LR | {"beta_1"}
ALL_BUT_B2 = LR_B1 | {"epsilon", "decay"}


@pytest.mark.parametrize(("trials", "stages"), [(1, 1), (19, 1), (20, 2), (39, 3), (40, 4),
                                                (1000, 4)])
def test_a_small_budget_has_room_for_fewer_stages(trials: int, stages: int) -> None:
    assert stage_count(trials) == stages


def test_stages_open_in_the_playbooks_order() -> None:
    assert [open_names(i, 40) for i in (0, 9, 10, 19, 20, 29, 30, 39)] == [
        LR, LR, LR_B1, LR_B1, ALL_BUT_B2, ALL_BUT_B2, set(PARAM_NAMES), set(PARAM_NAMES)]


def test_a_twenty_trial_search_never_opens_epsilon_decay_or_beta_2() -> None:
    assert open_names(0, 20) == LR
    assert open_names(10, 20) == LR_B1
    assert open_names(500, 20) == LR_B1  # a pruned search may start more trials than planned


def test_ten_trials_search_the_learning_rate_alone() -> None:
    assert {name for i in range(30) for name in open_names(i, 10)} == LR


def test_the_stages_are_planned_on_the_trials_left_after_confirmation() -> None:
    spec = JobCreate.model_validate({**GOOD, "staging": "playbook", "budget": {
        "n_trials": 1000, "epochs": 5, "max_trial_epochs": 200}, "confirm": {
            "top_k": 1, "seeds": 4}})
    assert planned_search_trials(spec) == (200 - 2 * 4 * 5) // 5


def _differs(configs: list[AdamConfig], name: str) -> bool:
    values = {getattr(config, name) for config in configs}
    return len(values) > 1


def test_a_staged_study_holds_unopened_numbers_at_the_paper_defaults(runtime: Runtime) -> None:
    spec = JobCreate.model_validate({**GOOD, "staging": "playbook", "warm_start": "off",
                                     "budget": {"n_trials": 20, "epochs": 2}})
    job = jobs.submit_job(runtime, spec, caller=LOCAL)
    asked = []
    for number in range(20):
        trial = runtime.studies.ask(job.study_name, spec, seed_offset=0, worker="w0")
        runtime.studies.tell(job.study_name, trial.number, "complete",
                             abs(math.log10(trial.config.learning_rate) + 2) + number * 1e-6)
        asked.append(trial.config)
    assert asked[0] == PAPER_DEFAULTS  # enqueued before any stage
    first, second = asked[1:10], asked[10:]
    assert _differs(first, "learning_rate") and _differs(second, "beta_1")
    for config in first:
        assert (config.beta_1, config.beta_2, config.epsilon, config.decay) == (
            0.9, 0.999, 1e-8, 0.0)
    for config in second:
        assert (config.beta_2, config.epsilon, config.decay) == (0.999, 1e-8, 0.0)
    # the held numbers are stored as the trials' params, so the records show all five
    records = runtime.studies.records(job.study_name, spec)
    assert [record.config for record in records] == asked


def test_a_held_default_outside_the_range_is_held_at_the_nearest_end(runtime: Runtime) -> None:
    spec = JobCreate.model_validate({
        **GOOD, "staging": "playbook", "warm_start": "off", "budget": {"n_trials": 20},
        "search_space": {"beta_1": {"low": 0.95, "high": 0.99},
                         "decay": {"low": 1e-4, "high": 1e-2, "log": True}}})
    # the defaults lie outside the space: nothing is enqueued
    job = jobs.submit_job(runtime, spec, caller=LOCAL)
    trial = runtime.studies.ask(job.study_name, spec, seed_offset=0, worker="w0")
    assert trial.config.beta_1 == pytest.approx(0.95)
    assert trial.config.decay == pytest.approx(1e-4)
