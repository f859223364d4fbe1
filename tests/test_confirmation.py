"""Confirmation on SQLite and PostgreSQL, driven through the slot life cycle a worker runs
(the trainer's values are given, so each case is exact): confirm slots are queued when the
search ends, the job succeeds only after them, and the report recommends the best mean."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.test_jobs_validation import GOOD
from tuner_service import confirmation, job_status, jobs, trials
from tuner_service.adam import PAPER_DEFAULTS
from tuner_service.db import repository as repo
from tuner_service.db.session import session_scope
from tuner_service.runtime import Runtime
from tuner_service.schemas import JobCreate
from tuner_service.tenancy import LOCAL

CONFIRM = {"top_k": 2, "seeds": 2}


def _spec(**changes: Any) -> JobCreate:
    raw = {**GOOD, "budget": {"n_trials": 4, "epochs": 2}, "confirm": CONFIRM,
           "warm_start": "off", **changes}
    return JobCreate.model_validate(raw)


def _run(rt: Runtime, job_id: str, slot: int, value: float | None,
         state: str = "complete") -> trials.TrialTicket:
    ticket = trials.start_trial(rt, job_id, slot, f"task-{slot}")
    assert ticket is not None
    history = () if value is None else (value + 0.5, value)
    for epoch, seen in enumerate(history, start=1):
        assert trials.report_epoch(rt, ticket, epoch, seen) in (None, "pruned")
    trials.finish_trial(rt, ticket, trials.TrialOutcome(state, value, None, history))
    return ticket


def _search(rt: Runtime, job_id: str, values: list[float]) -> list[trials.TrialTicket]:
    return [_run(rt, job_id, slot, value) for slot, value in enumerate(values)]


def test_the_search_ending_queues_confirm_runs_and_the_job_succeeds_after_them(
    runtime: Runtime, client: TestClient
) -> None:
    job_id = jobs.submit_job(runtime, _spec(), caller=LOCAL).id
    # Trial 0 is the paper defaults; trial 2 is the search's best, trial 1 second.
    searched = _search(runtime, job_id, [0.9, 0.3, 0.2, 0.5])
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "running" and job["trials_ended"] == 4
    assert job["confirmation"] == {"runs": 6, "runs_ended": 0}
    with session_scope(runtime.sessions) as session:
        runs = repo.confirm_runs(session, job_id)
    assert [r.slot for r in runs] == [4, 5, 6, 7, 8, 9]
    assert [(r.candidate, r.source_trial, r.is_baseline) for r in runs] == [
        (0, 2, False), (0, 2, False), (1, 1, False), (1, 1, False), (2, 0, True), (2, 0, True)]
    assert runs[0].config == searched[2].config and runs[4].config == PAPER_DEFAULTS
    seeds = {r.seed for r in runs}
    assert len(seeds) == 2 and 0 not in seeds  # fresh seeds, the same two for every candidate
    report = client.get(f"/v1/jobs/{job_id}/report").json()
    assert report["confirmation"]["state"] == "running" and report["recommended"] is None

    # Re-trained, the search's best (0.2) falls back and trial 1's configuration wins.
    for slot, value in zip(range(4, 10), [0.40, 0.44, 0.25, 0.27, 0.90, 0.94], strict=True):
        ticket = _run(runtime, job_id, slot, value)
        assert ticket.confirms and ticket.init_seed in seeds
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["confirmation"] == {"runs": 6, "runs_ended": 6}
    assert job["best"]["trial_number"] == 2  # the search-time best stays what it was

    report = client.get(f"/v1/jobs/{job_id}/report").json()
    recommended = report["recommended"]
    assert recommended["source_trial"] == 1 and recommended["values"] == [0.25, 0.27]
    assert recommended["mean"] == pytest.approx(0.26)
    assert recommended["sd"] == pytest.approx(0.0141421356)
    assert recommended["params"] == report["top_k"][1]["params"]
    assert [c["is_baseline"] for c in report["confirmed"]] == [False, False, True]
    assert report["confirmed"][2]["mean"] == pytest.approx(0.92)
    assert report["confirmed"][0]["search_value"] == 0.2
    summary = report["confirmation"]
    assert summary["state"] == "done" and summary["differs_from_search_best"] is True
    assert summary["test"] == "welch_t" and summary["p_value"] < 0.05
    assert summary["larger_than_noise"] is True and "Welch" in summary["statement"]
    assert report["improvement_basis"] == "confirmed_means"
    assert report["improvement"]["absolute"] == pytest.approx(0.66)
    assert report["search_improvement"]["absolute"] == pytest.approx(0.7)
    assert repr(recommended["params"]["learning_rate"]) in report["keras_snippet"]
    assert report["compute"]["confirm_epochs"] == 12
    assert report["compute"]["trial_epochs"] == 8 + 12


def test_a_recommendation_within_the_seed_noise_says_so(runtime: Runtime,
                                                        client: TestClient) -> None:
    job_id = jobs.submit_job(runtime, _spec(confirm={"top_k": 1, "seeds": 3}), caller=LOCAL).id
    _search(runtime, job_id, [0.9, 0.3, 0.5, 0.6])
    for slot, value in zip(range(4, 10), [0.5, 0.9, 0.7, 0.6, 0.8, 0.7], strict=True):
        _run(runtime, job_id, slot, value)
    summary = client.get(f"/v1/jobs/{job_id}/report").json()["confirmation"]
    assert summary["larger_than_noise"] is False and summary["p_value"] > 0.05
    assert "not clearly larger than the seed noise" in summary["statement"]


def test_the_defaults_can_be_the_recommendation(runtime: Runtime, client: TestClient) -> None:
    job_id = jobs.submit_job(runtime, _spec(confirm={"top_k": 1, "seeds": 2}), caller=LOCAL).id
    _search(runtime, job_id, [0.5, 0.3, 0.6, 0.7])
    for slot, value in zip(range(4, 8), [0.8, 0.9, 0.4, 0.45], strict=True):
        _run(runtime, job_id, slot, value)
    report = client.get(f"/v1/jobs/{job_id}/report").json()
    assert report["recommended"]["is_baseline"] is True
    assert report["improvement"]["absolute"] == 0.0
    assert "paper defaults are the recommendation" in report["confirmation"]["statement"]


def test_a_seed_that_diverges_ranks_its_configuration_last(runtime: Runtime,
                                                           client: TestClient) -> None:
    job_id = jobs.submit_job(runtime, _spec(), caller=LOCAL).id
    _search(runtime, job_id, [0.9, 0.3, 0.2, 0.5])
    _run(runtime, job_id, 4, 0.1)
    _run(runtime, job_id, 5, None, state="fail")
    for slot, value in zip(range(6, 10), [0.3, 0.3, 0.9, 0.9], strict=True):
        _run(runtime, job_id, slot, value)
    report = client.get(f"/v1/jobs/{job_id}/report").json()
    assert report["recommended"]["source_trial"] == 1
    assert report["confirmed"][0]["values"] == [0.1] and report["confirmed"][0]["sd"] is None


def test_cancel_during_confirmation_keeps_what_ran(runtime: Runtime, client: TestClient) -> None:
    job_id = jobs.submit_job(runtime, _spec(), caller=LOCAL).id
    _search(runtime, job_id, [0.9, 0.3, 0.2, 0.5])
    _run(runtime, job_id, 4, 0.2)
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    assert trials.start_trial(runtime, job_id, 5, "late") is None
    report = client.get(f"/v1/jobs/{job_id}/report").json()
    assert report["status"] == "cancelled" and report["confirmation"]["state"] == "stopped"
    assert report["recommended"]["source_trial"] == 2 and report["recommended"]["values"] == [0.2]
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["confirmation"] == {"runs": 6, "runs_ended": 6}


def test_a_confirm_run_whose_worker_is_lost_every_time_fails_and_the_job_ends(
    runtime: Runtime, client: TestClient
) -> None:
    job_id = jobs.submit_job(runtime, _spec(confirm={"top_k": 1, "seeds": 1}), caller=LOCAL).id
    _search(runtime, job_id, [0.9, 0.3, 0.2, 0.5])
    _run(runtime, job_id, 5, 0.8)  # the defaults' run
    for attempt in range(runtime.settings.max_trial_attempts):
        assert trials.start_trial(runtime, job_id, 4, "same-task") is not None, attempt
    assert trials.start_trial(runtime, job_id, 4, "same-task") is None
    report = client.get(f"/v1/jobs/{job_id}/report").json()
    assert report["status"] == "succeeded" and report["confirmation"]["state"] == "done"
    assert report["confirmed"][0]["runs_ended"] == 1 and report["confirmed"][0]["values"] == []
    assert report["recommended"]["is_baseline"] is True


def test_a_job_cancelled_while_searching_says_confirmation_stopped(runtime: Runtime,
                                                                 client: TestClient) -> None:
    job_id = jobs.submit_job(runtime, _spec(), caller=LOCAL).id
    _search(runtime, job_id, [0.9])
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    summary = client.get(f"/v1/jobs/{job_id}/report").json()["confirmation"]
    assert summary["state"] == "stopped" and summary["statement"] == (
        "No confirmation run completed.")


def test_finishing_the_search_twice_queues_the_runs_once(runtime: Runtime) -> None:
    job_id = jobs.submit_job(runtime, _spec(), caller=LOCAL).id
    _search(runtime, job_id, [0.9, 0.3, 0.2, 0.5])
    job_status.finish_job_if_done(runtime, job_id)  # a second worker ending the same search
    with session_scope(runtime.sessions) as session:
        assert len(repo.confirm_runs(session, job_id)) == 6
        assert repo.slot_states(session, job_id) == {"done": 4, "confirm:queued": 6}


def test_confirmation_off_and_auto_on_a_small_job_end_with_the_search(
    runtime: Runtime, client: TestClient
) -> None:
    for confirm in (False, "auto"):
        job_id = jobs.submit_job(runtime, _spec(confirm=confirm), caller=LOCAL).id
        _search(runtime, job_id, [0.9, 0.3, 0.2, 0.5])
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "succeeded" and job["confirmation"] is None
        report = client.get(f"/v1/jobs/{job_id}/report").json()
        assert report["confirmation"]["state"] == "off" and report["recommended"] is None
        assert report["improvement_basis"] == "search_values"


def test_max_trial_epochs_keeps_confirmation_s_share_out_of_the_search(
    runtime: Runtime, client: TestClient
) -> None:
    # 6 confirm runs x 2 epochs = 12 of 20 trial-epochs; the search gets 8: four trials.
    spec = _spec(budget={"n_trials": 10, "epochs": 2, "max_trial_epochs": 20})
    job_id = jobs.submit_job(runtime, spec, caller=LOCAL).id
    _search(runtime, job_id, [0.9, 0.3, 0.2, 0.5])
    assert trials.start_trial(runtime, job_id, 4, "over-budget") is None
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "running" and job["confirmation"]["runs"] == 6


@pytest.mark.parametrize(("trials_", "expected"), [
    (10, None), (19, None), (20, (2, 2)), (40, (3, 2)), (60, (5, 2)), (150, (5, 3))])
def test_auto_spends_about_a_fifth_of_the_budget(trials_: int,
                                                 expected: tuple[int, int] | None) -> None:
    plan = confirmation.plan_for(_spec(confirm="auto", budget={"n_trials": trials_}))
    assert (plan.top_k, plan.seeds) == expected if plan else expected is None


def test_auto_follows_max_trial_epochs_when_it_is_the_tighter_limit() -> None:
    spec = _spec(confirm="auto", budget={"n_trials": 200, "epochs": 10,
                                         "max_trial_epochs": 200})
    plan = confirmation.plan_for(spec)
    assert plan is not None and (plan.top_k, plan.seeds, plan.reserve) == (2, 2, 60)
    assert confirmation.search_epoch_budget(spec) == 140


def test_a_confirmation_that_leaves_no_search_budget_is_refused(client: TestClient,
                                                                runtime: Runtime) -> None:
    with session_scope(runtime.sessions) as session:
        before = repo.count_rows(session)
    raw = {**GOOD, "budget": {"n_trials": 10, "epochs": 5, "max_trial_epochs": 40},
           "confirm": {"top_k": 3, "seeds": 2}}
    answer = client.post("/v1/jobs", json=raw)
    assert answer.status_code == 422
    (error,) = answer.json()["detail"]
    assert error["field"] == "confirm" and "40 trial-epochs" in error["message"]
    assert "max_trial_epochs (40)" in error["message"]
    with session_scope(runtime.sessions) as session:
        assert repo.count_rows(session) == before


def test_welch_p_value_matches_the_textbook_cases() -> None:
    assert confirmation.welch_p_value([1.0], [2.0, 3.0]) is None
    assert confirmation.welch_p_value([1.0, 1.0], [1.0, 1.0]) == 1.0
    assert confirmation.welch_p_value([1.0, 1.0], [2.0, 2.0]) == 0.0
    # t = -2.83 on 2 degrees of freedom
    p = confirmation.welch_p_value([1.0, 2.0], [3.0, 4.0])
    assert p == pytest.approx(0.1056, abs=1e-3)
