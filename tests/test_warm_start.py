"""Warm start: a new job learns from earlier jobs' complete trials on the same task, on SQLite
and PostgreSQL, without counting them as its own.

The contract tests drive the source jobs' slots through the worker's own code path
(``trials.start_trial`` / ``finish_trial``, no Keras); the last test runs two whole jobs through
a real worker process.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from fastapi.testclient import TestClient
from optuna.distributions import FloatDistribution

from tests.api.test_jobs_validation import GOOD
from tests.conftest import WorkerStack
from tuner_service import jobs, trials
from tuner_service.adam import PAPER_DEFAULTS, AdamConfig
from tuner_service.datasets import service as datasets
from tuner_service.db.repository import count_rows
from tuner_service.db.session import session_scope
from tuner_service.runtime import Runtime, build_runtime
from tuner_service.schemas import JobCreate
from tuner_service.studies import WARM_SOURCES_ATTR, WarmSource, WarmTrial
from tuner_service.study_tables import WARM_ATTR
from tuner_service.tenancy import LOCAL
from tuner_service.validation import SpecRefused
from tuner_service.warm_start import MAX_SOURCE_JOBS, MAX_WARM_TRIALS, choose

# Each source trial's value by slot: the paper defaults (slot 0) are the worst, slot 2 best.
VALUES = (0.9, 0.5, 0.3, 0.7)


def _spec(n_trials: int = 5, **changes: Any) -> JobCreate:
    return JobCreate.model_validate({**GOOD, "budget": {"n_trials": n_trials, "epochs": 2},
                                     "pruner": "none", **changes})


def _run(rt: Runtime, job_id: str, values: tuple[float, ...]) -> list[trials.TrialTicket]:
    """Run a job's first slots to completion, one value each (two epochs)."""
    tickets = []
    for slot, value in enumerate(values):
        ticket = trials.start_trial(rt, job_id, slot, f"task-{job_id}-{slot}")
        assert ticket is not None
        for epoch in (1, 2):
            assert trials.report_epoch(rt, ticket, epoch, value + (2 - epoch) * 0.1) is None
        trials.finish_trial(rt, ticket, trials.TrialOutcome("complete", value))
        tickets.append(ticket)
    return tickets


def _source(rt: Runtime, values: tuple[float, ...] = VALUES, **changes: Any
            ) -> tuple[str, list[trials.TrialTicket]]:
    job_id = jobs.submit_job(rt, _spec(n_trials=len(values), **changes), caller=LOCAL).id
    return job_id, _run(rt, job_id, values)


def _study(rt: Runtime, job_id: str) -> optuna.Study:
    return optuna.load_study(study_name=f"tuner-job-{job_id}", storage=rt.studies.storage)


def _copies(rt: Runtime, job_id: str) -> list[optuna.trial.FrozenTrial]:
    return [t for t in _study(rt, job_id).get_trials() if WARM_ATTR in t.user_attrs]


def _rows(rt: Runtime) -> tuple[dict[str, Any], int]:
    with session_scope(rt.sessions) as session:
        ours = count_rows(session)
    return ours, len(optuna.get_all_study_names(storage=rt.studies.storage))


def test_a_new_job_learns_from_an_earlier_one_without_counting_its_trials(
    runtime: Runtime, client: TestClient
) -> None:
    source_id, done = _source(runtime)
    job_id = client.post("/v1/jobs", json=_spec().model_dump(mode="json")).json()["id"]
    study_name = f"tuner-job-{job_id}"

    copies = _copies(runtime, job_id)
    assert [(t.state, t.value) for t in copies] == [(optuna.trial.TrialState.COMPLETE, v)
                                                    for v in VALUES]
    assert [t.user_attrs[WARM_ATTR] for t in copies] == [
        {"job_id": source_id, "number": ticket.number} for ticket in done]
    assert [t.intermediate_values for t in copies] == [{1: v + 0.1, 2: v} for v in VALUES]
    assert runtime.studies.warm_start_sources(study_name) == [WarmSource(source_id, 4)]

    # None of them is the new job's: not listed, not counted, never its best.
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["best"] is None and job["trial_counts"]["complete"] == 0
    assert job["trial_counts"]["waiting"] == 4  # the paper defaults, then 3 source configs
    listed = client.get(f"/v1/jobs/{job_id}/trials").json()
    assert listed["total"] == 4 and all(t["state"] == "waiting" for t in listed["items"])
    assert min(t["number"] for t in listed["items"]) == len(copies)

    # The paper defaults first, then the source's configurations from best to worst.
    asked = _run(runtime, job_id, (0.95, 0.8))
    assert asked[0].config == PAPER_DEFAULTS
    assert asked[1].config.is_close_to(done[2].config)  # the source's best (0.3)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["trial_counts"]["complete"] == 2
    assert job["best"]["trial_number"] == asked[1].number and job["best"]["value"] == 0.8
    report = client.get(f"/v1/jobs/{job_id}/report").json()
    assert report["baseline"]["trial_number"] == asked[0].number
    assert report["best"]["value"] == 0.8 and report["compute"]["trial_epochs"] == 4
    # Later waiting trials are the source's next best configurations, in order.
    waiting = [t for t in runtime.studies.records(study_name, _spec())
               if t.state == "waiting"]
    assert [t.config is not None and t.config.is_close_to(done[i].config)
            for t, i in zip(waiting, (1, 3), strict=True)] == [True, True]


def test_warm_start_off_copies_nothing(runtime: Runtime) -> None:
    _source(runtime)
    job = jobs.submit_job(runtime, _spec(warm_start="off"), caller=LOCAL)
    assert _copies(runtime, job.id) == []
    assert runtime.studies.warm_start_sources(job.study_name) == []
    records = runtime.studies.records(job.study_name, _spec())
    assert [(r.number, r.is_baseline) for r in records] == [(0, True)]


def test_a_job_on_another_task_is_not_learned_from(runtime: Runtime) -> None:
    _source(runtime)
    for changes in ({"budget": {"n_trials": 3, "epochs": 3}},
                    {"budget": {"n_trials": 3, "epochs": 2, "batch_size": 64}},
                    {"dataset": {"builtin": "digits", "max_samples": 500}},
                    {"objective": {"metric": "val_accuracy"}}):
        job = jobs.submit_job(runtime, JobCreate.model_validate({**GOOD, **changes}), caller=LOCAL)
        assert _copies(runtime, job.id) == [], changes


# The source's learning rates by slot: the paper defaults', then these three.
CHOSEN_RATES = [{"learning_rate": 0.01}, {"learning_rate": 0.05}, {"learning_rate": 1e-4}]


@pytest.mark.parametrize(("space", "kept_slots"), [
    # Only slot 1's learning rate lies in this range.
    ({"learning_rate": {"low": 0.005, "high": 0.02, "log": True}}, [1]),
    # A fixed number keeps only the trials that had exactly it: the paper defaults.
    ({"beta_1": 0.9}, [0]),
])
def test_only_trials_inside_the_new_space_are_copied(
    runtime: Runtime, space: dict[str, Any], kept_slots: list[int]
) -> None:
    source_id, done = _source(runtime, enqueue=CHOSEN_RATES)
    job = jobs.submit_job(runtime, _spec(search_space=space), caller=LOCAL)
    copies = _copies(runtime, job.id)
    assert [t.user_attrs[WARM_ATTR]["number"] for t in copies] == [
        done[slot].number for slot in kept_slots]
    assert runtime.studies.warm_start_sources(job.study_name) == [
        WarmSource(source_id, len(kept_slots))]
    for trial in copies:  # stored in the new job's own distributions
        if "learning_rate" in space:
            assert trial.distributions["learning_rate"] == FloatDistribution(
                0.005, 0.02, log=True)
            assert trial.params["learning_rate"] == pytest.approx(0.01)
        else:
            assert "one_minus_beta_1" not in trial.params


def test_copies_never_compound_and_the_newest_source_comes_first(runtime: Runtime) -> None:
    first_id, _ = _source(runtime)
    second = jobs.submit_job(runtime, _spec(n_trials=2), caller=LOCAL)
    _run(runtime, second.id, (0.6, 0.4))
    third = jobs.submit_job(runtime, _spec(), caller=LOCAL)
    # The second job's 4 copies of the first are not copied again: only its own 2 trials.
    assert runtime.studies.warm_start_sources(third.study_name) == [
        WarmSource(second.id, 2), WarmSource(first_id, 4)]
    assert len(_copies(runtime, third.id)) == 6


def test_named_jobs_are_exactly_the_sources(runtime: Runtime) -> None:
    first_id, _ = _source(runtime)
    second_id, _ = _source(runtime, values=(0.4, 0.2))
    job = jobs.submit_job(runtime, _spec(warm_start=[first_id]), caller=LOCAL)
    assert runtime.studies.warm_start_sources(job.study_name) == [WarmSource(first_id, 4)]
    both = jobs.submit_job(runtime, _spec(warm_start=[first_id, second_id, first_id]),
                           caller=LOCAL)
    assert runtime.studies.warm_start_sources(both.study_name) == [
        WarmSource(first_id, 4), WarmSource(second_id, 2)]


def test_unknown_or_mismatched_named_jobs_are_422_and_nothing_is_written(
    runtime: Runtime, client: TestClient
) -> None:
    source_id, _ = _source(runtime, values=(0.5,))
    unknown = "0" * 32
    other_epochs = {**_spec().model_dump(mode="json"), "budget": {"n_trials": 2, "epochs": 3}}
    cases = [
        ({**GOOD, "warm_start": [unknown]}, ["warm_start[0]"], "no job"),
        ({**GOOD, "warm_start": [source_id, unknown]}, ["warm_start[1]"], "no job"),
        ({**other_epochs, "warm_start": [source_id]}, ["warm_start[0]"], "budget.epochs"),
    ]
    for body, fields, message in cases:
        before = _rows(runtime)
        response = client.post("/v1/jobs", json=body)
        assert response.status_code == 422, response.text
        errors = response.json()["detail"]
        assert [e["field"] for e in errors] == fields
        assert message in errors[0]["message"]
        assert _rows(runtime) == before
    with pytest.raises(SpecRefused):
        jobs.submit_job(runtime, _spec(warm_start=[unknown]), caller=LOCAL)


def _warm(number: int, value: float, lr: float, job_id: str = "a" * 32) -> WarmTrial:
    return WarmTrial(job_id, number, AdamConfig(lr, 0.9, 0.999, 1e-8, 0.0), value, ((1, value),))


def test_the_trial_cap_keeps_each_sources_best() -> None:
    many = [_warm(n, value=float(-n), lr=1e-4 + n * 1e-6) for n in range(MAX_WARM_TRIALS + 50)]
    read = []

    def sources() -> Iterator[list[WarmTrial]]:
        for source in (many, [_warm(0, 0.0, 0.01, job_id="b" * 32)]):
            read.append(source)
            yield source

    plan = choose(_spec(), sources())
    assert len(plan.trials) == MAX_WARM_TRIALS
    assert {t.number for t in plan.trials} == set(range(50, MAX_WARM_TRIALS + 50))
    assert read == [many]  # full: the older source's study is not even read


def test_auto_learns_from_at_most_the_newest_jobs_with_trials_to_give() -> None:
    sources = [[], *([_warm(0, 0.5, 0.01, job_id=f"{k:032x}")] for k in range(15))]
    plan = choose(_spec(), sources, max_jobs=MAX_SOURCE_JOBS)
    assert [t.job_id for t in plan.trials] == [f"{k:032x}" for k in range(MAX_SOURCE_JOBS)]
    assert len(choose(_spec(), sources, max_jobs=None).trials) == 15


def test_configurations_tried_first_fit_the_budget_and_skip_the_paper_defaults() -> None:
    source = [_warm(0, 0.1, 0.001), _warm(1, 0.2, 0.01), _warm(2, 0.2, 0.01),
              _warm(3, 0.3, 0.02), _warm(4, 0.4, 0.03)]
    best_first = [c.learning_rate for c in choose(_spec(n_trials=9), [source]).first]
    assert best_first == [0.01, 0.02, 0.03]  # distinct, the paper defaults already run
    assert [c.learning_rate for c in choose(_spec(n_trials=2), [source]).first] == [0.01]
    crowded = _spec(n_trials=3, enqueue=[{"learning_rate": 0.05}] * 2)
    assert choose(crowded, [source]).first == ()
    maximize = _spec(n_trials=9, objective={"metric": "val_accuracy"})
    assert [c.learning_rate for c in choose(maximize, [source]).first] == [0.03, 0.02, 0.01]


@pytest.mark.slow
def test_a_second_job_learns_from_the_first_through_a_real_worker(stack: WorkerStack) -> None:
    digits = {"model": {"builtin": "logistic_regression"}, "dataset": {"builtin": "digits"},
              "budget": {"n_trials": 3, "epochs": 2}, "pruner": "none", "seed": 7}
    first = stack.submit(digits)
    assert stack.wait(first)["status"] == "succeeded"
    second = stack.submit(digits)
    job = stack.wait(second)
    assert job["status"] == "succeeded", job
    assert job["trials_ended"] == 3 and sum(job["trial_counts"].values()) == 3
    first_trials = [t for t in stack.client.get(f"/v1/jobs/{first}/trials").json()["items"]
                    if t["state"] == "complete"]
    listed = stack.client.get(f"/v1/jobs/{second}/trials").json()
    assert listed["total"] == 3 and all(t["state"] == "complete" for t in listed["items"])
    # The copies took the first numbers; none of them is listed.
    assert min(t["number"] for t in listed["items"]) == len(first_trials)
    report = stack.client.get(f"/v1/jobs/{second}/report").json()
    assert report["trial_counts"]["complete"] == 3 and report["compute"]["trial_epochs"] == 6
    assert report["warm_start"] == [{"job_id": first, "trials": len(first_trials)}]
    page = stack.client.get(f"/v1/jobs/{second}/report.html").text
    assert 'id="warm-start"' in page and f"/v1/jobs/{first}/report.html" in page
    # After the paper defaults, the first job's two best other configurations.
    ranked = sorted((t for t in first_trials if not t["is_baseline"]), key=lambda t: t["value"])
    tried = [t["params"] for t in listed["items"] if not t["is_baseline"]]
    assert len(tried) == 2
    for params, source in zip(tried, ranked, strict=True):
        assert all(math.isclose(params[k], v, rel_tol=1e-9) for k, v in source["params"].items())
    rt = build_runtime(stack.settings)
    try:
        study_name = f"tuner-job-{second}"
        assert rt.studies.warm_start_sources(study_name) == [
            WarmSource(first, len(first_trials))]
        stored = rt.studies.storage.get_study_user_attrs(
            rt.studies.storage.get_study_id_from_name(study_name))
        assert stored[WARM_SOURCES_ATTR] == [{"job_id": first, "trials": len(first_trials)}]
    finally:
        rt.close()


def _upload(rt: Runtime, tmp_path: Path, seed: int) -> str:
    """A data set of the local tenant, as the upload route stores one."""
    rng = np.random.default_rng(seed)
    path = tmp_path / f"set-{seed}.npz"
    np.savez(path, x=rng.normal(size=(40, 3)), y=np.arange(40) % 2)
    upload = datasets.Upload(path, path.name, path.stat().st_size,
                             hashlib.sha256(path.read_bytes()).hexdigest())
    dataset, _ = datasets.register_upload(rt, upload, datasets.UploadOptions(), tenant="local")
    return dataset.id


def test_auto_learns_only_from_jobs_on_the_same_uploaded_data_set(runtime: Runtime,
                                                                  tmp_path: Path) -> None:
    mine, other = _upload(runtime, tmp_path, 1), _upload(runtime, tmp_path, 2)
    on_mine, _ = _source(runtime, dataset={"id": mine})
    _source(runtime, dataset={"id": other})
    _source(runtime)  # on digits
    job = jobs.submit_job(runtime, _spec(dataset={"id": mine}), caller=LOCAL)
    assert runtime.studies.warm_start_sources(job.study_name) == [WarmSource(on_mine, 4)]
    with pytest.raises(SpecRefused, match="dataset"):
        jobs.submit_job(runtime, _spec(dataset={"id": mine}, warm_start=[_source(
            runtime, dataset={"id": other})[0]]), caller=LOCAL)
