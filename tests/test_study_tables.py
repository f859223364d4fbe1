"""The aggregate reads of Optuna's tables agree with the full study, on SQLite and PostgreSQL.

Lists and statuses read counts and the best trial in SQL (``study_tables``); reports and the
trials endpoint read the whole study. Both must tell the same story.
"""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from tests.api.test_jobs_validation import GOOD
from tuner_service import jobs
from tuner_service.runtime import Runtime
from tuner_service.schemas import JobCreate
from tuner_service.studies import BASELINE_ATTR
from tuner_service.study_tables import (
    WARM_ATTR,
    insert_finished_trials,
    own_complete_rows,
    study_rows,
)
from tuner_service.tenancy import LOCAL
from tuner_service.views import best_trial, job_public


def _job(rt: Runtime, **changes: object) -> tuple[str, optuna.Study, JobCreate]:
    spec = JobCreate.model_validate({**GOOD, **changes})
    job = jobs.submit_job(rt, spec, caller=LOCAL)
    study = optuna.load_study(study_name=job.study_name, storage=rt.studies.storage)
    return job.id, study, spec


def _add(study: optuna.Study, state: TrialState, value: float | None, lr: float,
         epochs: int = 3, copied: bool = False) -> None:
    study.add_trial(create_trial(
        state=state, value=value,
        params={"learning_rate": lr, "one_minus_beta_1": 0.1, "one_minus_beta_2": 0.001,
                "epsilon": 1e-8, "decay_enabled": False},
        distributions={
            "learning_rate": FloatDistribution(1e-5, 0.1, log=True),
            "one_minus_beta_1": FloatDistribution(0.001, 0.5, log=True),
            "one_minus_beta_2": FloatDistribution(0.0001, 0.1, log=True),
            "epsilon": FloatDistribution(1e-10, 1.0, log=True),
            "decay_enabled": optuna.distributions.CategoricalDistribution([False, True]),
        },
        intermediate_values={step: 1.0 for step in range(1, epochs + 1)},
        user_attrs=({BASELINE_ATTR: True} if lr == 0.001 else {}) | (
            {WARM_ATTR: {"job_id": "0" * 32, "number": 0}} if copied else {}),
    ))


@pytest.mark.parametrize("metric", ["val_loss", "val_accuracy"])
def test_counts_and_best_match_the_full_study(runtime: Runtime, metric: str) -> None:
    job_id, study, spec = _job(runtime, objective={"metric": metric})
    _add(study, TrialState.COMPLETE, 0.5, 0.001)
    _add(study, TrialState.COMPLETE, 0.2, 0.01)
    _add(study, TrialState.COMPLETE, 0.2, 0.02)  # a tie: the lower number wins
    _add(study, TrialState.COMPLETE, 0.9, 0.03)
    _add(study, TrialState.PRUNED, None, 0.05, epochs=1)
    _add(study, TrialState.FAIL, None, 0.07, epochs=0)

    overview = jobs.job_overview(runtime, job_id, tenant=None)
    _, records, _ = jobs.get_job(runtime, job_id, tenant=None)
    public = job_public(overview)
    expected = best_trial(records, spec.objective.minimize)
    assert public.best == expected and expected is not None
    assert expected.value == (0.2 if metric == "val_loss" else 0.9)
    assert expected.trial_number == (2 if metric == "val_loss" else 4)
    by_state = {s: sum(1 for r in records if r.state == s)
                for s in ("complete", "pruned", "fail", "running", "waiting")}
    assert public.trial_counts.model_dump() == by_state
    assert by_state == {"complete": 4, "pruned": 1, "fail": 1, "running": 0, "waiting": 1}


def test_the_fingerprint_changes_with_every_epoch_and_end(runtime: Runtime) -> None:
    job_id, study, _ = _job(runtime)
    def fingerprint() -> tuple[object, ...]:
        return jobs.job_overview(runtime, job_id, fingerprint=True, tenant=None).fingerprint

    seen = {fingerprint()}
    trial = study.ask()
    seen.add(fingerprint())
    trial.report(0.7, step=1)
    seen.add(fingerprint())
    study.tell(trial, 0.6)
    seen.add(fingerprint())
    assert len(seen) == 4
    assert fingerprint() in seen  # stable while nothing changes


def test_a_complete_trial_without_its_numbers_does_not_break_the_list(
    runtime: Runtime
) -> None:
    job_id, study, _ = _job(runtime)
    # A record no worker of ours writes (a study edited by hand, say): complete, no params.
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.1))
    page, total = jobs.job_overviews(runtime, 0, 50, tenant=None)
    assert total == 1 and job_public(page[0]).best is None
    _, records, _ = jobs.get_job(runtime, job_id, tenant=None)
    assert best_trial(records, minimize=True) is None


def test_failing_waiting_trials_leaves_one_a_worker_took_running(runtime: Runtime) -> None:
    job_id, study, spec = _job(runtime)
    name = jobs.job_overview(runtime, job_id, tenant=None).job.study_name
    taken = runtime.studies.ask(name, spec, seed_offset=0, worker="w")  # the paper defaults
    study.enqueue_trial({"learning_rate": 0.01})
    assert runtime.studies.fail_waiting(name, "never run") == 1
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    assert states[taken.number] == TrialState.RUNNING
    assert sorted(states.values()) == [TrialState.RUNNING, TrialState.FAIL]


@pytest.mark.parametrize("metric", ["val_loss", "val_accuracy"])
def test_trials_copied_from_earlier_jobs_are_neither_counted_nor_best(
    runtime: Runtime, metric: str
) -> None:
    job_id, study, spec = _job(runtime, objective={"metric": metric}, warm_start="off")
    _add(study, TrialState.COMPLETE, 0.01, 0.01, copied=True)  # better than any own trial
    _add(study, TrialState.COMPLETE, 0.99, 0.01, copied=True)
    _add(study, TrialState.COMPLETE, 0.5, 0.02)

    rows = study_rows(runtime.studies.storage.engine, [study.study_name])[study.study_name]
    assert rows.counts == {"complete": 1, "waiting": 1}
    assert rows.best is not None and (rows.best.number, rows.best.value) == (3, 0.5)
    public = job_public(jobs.job_overview(runtime, job_id, tenant=None))
    _, records, _ = jobs.get_job(runtime, job_id, tenant=None)
    assert public.best == best_trial(records, spec.objective.minimize)
    assert [(r.number, r.state) for r in records] == [(0, "waiting"), (3, "complete")]


def test_bulk_inserted_trials_read_back_as_optunas_own_add_trials(runtime: Runtime) -> None:
    made = [
        create_trial(value=0.5, params={"x": 0.25, "on": True},
                     distributions={"x": FloatDistribution(0.0, 1.0),
                                    "on": optuna.distributions.CategoricalDistribution(
                                        [False, True])},
                     intermediate_values={1: float("nan"), 2: float("inf"), 3: 0.5},
                     user_attrs={"source": {"job_id": "a", "number": 7}}),
        create_trial(value=float("inf"), params={}, distributions={}),
        create_trial(value=-1.0, params={"x": 1.0},
                     distributions={"x": FloatDistribution(0.0, 1.0)}),
    ]
    storage = runtime.studies.storage
    theirs = optuna.create_study(storage=storage, study_name="by-optuna")
    theirs.add_trials(made)
    ours = optuna.create_study(storage=storage, study_name="by-sql")
    insert_finished_trials(storage.engine, storage.get_study_id_from_name("by-sql"), made)
    ours.enqueue_trial({"x": 0.5})  # Optuna numbers its own trials after ours

    def shown(study: optuna.Study) -> list[tuple[object, ...]]:
        return [(t.number, t.state, t.value, t.params, t.distributions, t.user_attrs,
                 {k: "nan" if math.isnan(v) else v for k, v in t.intermediate_values.items()})
                for t in study.get_trials()]

    assert shown(ours)[:3] == shown(theirs)
    assert [t.number for t in ours.get_trials()] == [0, 1, 2, 3]


def test_own_complete_rows_are_the_complete_trials_a_job_ran_itself(runtime: Runtime) -> None:
    _, study, _ = _job(runtime, warm_start="off")  # trial 0: the paper defaults, waiting
    _add(study, TrialState.COMPLETE, 0.4, 0.01)
    _add(study, TrialState.COMPLETE, 0.1, 0.02, copied=True)
    _add(study, TrialState.PRUNED, None, 0.03, epochs=1)
    _add(study, TrialState.COMPLETE, float("inf"), 0.04)
    _add(study, TrialState.COMPLETE, 0.3, 0.05, epochs=2)

    rows = own_complete_rows(runtime.studies.storage.engine, study.study_name)
    trials = {t.number: t for t in study.get_trials()}
    assert [row.number for row in rows] == [1, 5]
    for row in rows:
        trial = trials[row.number]
        assert (row.value, row.params) == (trial.value, trial.params)
        assert dict(row.intermediate_values) == trial.intermediate_values
