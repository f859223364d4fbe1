"""The trial-slot life cycle a worker drives, on SQLite and PostgreSQL, without Keras.

Covers the delivery cases Celery produces: a duplicate of a running task, a redelivery after
the worker was lost, a bounded number of attempts, and the job finishing exactly once.
"""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy import update

from tests.api.test_jobs_validation import GOOD
from tuner_service import jobs, trials
from tuner_service.config import Settings
from tuner_service.db import repository as repo
from tuner_service.db.models import JobModel, TrialSlotModel, utcnow
from tuner_service.db.session import session_scope
from tuner_service.runtime import Runtime, build_runtime
from tuner_service.schemas import JobCreate
from tuner_service.states import BUDGET_SPENT, StopReason
from tuner_service.tenancy import LOCAL


def _job(rt: Runtime, n_trials: int = 2, **changes: object) -> str:
    spec = JobCreate.model_validate({**GOOD, "budget": {"n_trials": n_trials, "epochs": 3},
                                     **changes})
    return jobs.submit_job(rt, spec, caller=LOCAL).id


def _slot(rt: Runtime, job_id: str, slot: int) -> TrialSlotModel:
    with session_scope(rt.sessions) as session:
        row = repo.find_slot(session, job_id, slot)
        assert row is not None
        return row


def _age_heartbeat(rt: Runtime, job_id: str, slot: int) -> None:
    with session_scope(rt.sessions) as session:
        session.execute(update(TrialSlotModel).where(TrialSlotModel.job_id == job_id,
                                                     TrialSlotModel.slot == slot)
                        .values(heartbeat_at=utcnow() - timedelta(hours=1)))


def test_a_slot_runs_the_paper_defaults_first_and_finishes_the_job(
    runtime: Runtime, client: TestClient
) -> None:
    job_id = _job(runtime, n_trials=2)
    first = trials.start_trial(runtime, job_id, 0, "task-a")
    assert first is not None and first.number == 0
    assert first.config.as_dict() == {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999,
                                      "epsilon": 1e-8, "decay": 0.0}
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "running"
    assert trials.report_epoch(runtime, first, 1, 0.9) is None
    trials.finish_trial(runtime, first, trials.TrialOutcome("complete", 0.8))
    second = trials.start_trial(runtime, job_id, 1, "task-b")
    assert second is not None and second.number == 1
    trials.finish_trial(runtime, second, trials.TrialOutcome("complete", 0.5))

    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["trials_ended"] == 2
    assert job["best"]["trial_number"] == 1 and job["best"]["value"] == 0.5
    report = client.get(f"/v1/jobs/{job_id}/report").json()
    assert report["baseline"]["value"] == 0.8
    assert abs(report["improvement"]["absolute"] - 0.3) < 1e-12
    assert abs(report["improvement"]["relative"] - 0.375) < 1e-12
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 409


def test_a_duplicate_delivery_of_a_running_slot_does_nothing(runtime: Runtime) -> None:
    job_id = _job(runtime)
    assert trials.start_trial(runtime, job_id, 0, "task-a") is not None
    assert trials.start_trial(runtime, job_id, 0, "task-duplicate") is None
    assert _slot(runtime, job_id, 0).attempts == 1


def test_a_finished_slot_is_not_run_again(runtime: Runtime) -> None:
    job_id = _job(runtime)
    ticket = trials.start_trial(runtime, job_id, 0, "task-a")
    assert ticket is not None
    trials.finish_trial(runtime, ticket, trials.TrialOutcome("complete", 1.0))
    trials.finish_trial(runtime, ticket, trials.TrialOutcome("complete", 2.0))  # told twice
    assert trials.start_trial(runtime, job_id, 0, "task-a") is None
    records = runtime.studies.records(f"tuner-job-{job_id}", JobCreate.model_validate(
        {**GOOD}))
    assert [(r.state, r.value) for r in records] == [("complete", 1.0)]


def test_a_lost_worker_fails_its_trial_and_the_retry_trains_the_same_config(
    runtime: Runtime,
) -> None:
    job_id = _job(runtime)
    lost = trials.start_trial(runtime, job_id, 1, "task-a")
    assert lost is not None
    trials.report_epoch(runtime, lost, 1, 1.5)
    # Celery redelivers the same task id after the worker process died.
    retry = trials.start_trial(runtime, job_id, 1, "task-a")
    assert retry is not None and retry.number != lost.number
    assert retry.config.is_close_to(lost.config)
    records = {r.number: r for r in runtime.studies.records(f"tuner-job-{job_id}",
                                                            lost.spec)}
    assert records[lost.number].state == "fail"
    assert records[lost.number].fail_reason.startswith("interrupted")
    assert _slot(runtime, job_id, 1).attempts == 2


def test_a_retried_baseline_still_gives_the_report_its_baseline(
    runtime: Runtime, client: TestClient
) -> None:
    job_id = _job(runtime, n_trials=1)
    lost = trials.start_trial(runtime, job_id, 0, "task-a")
    retry = trials.start_trial(runtime, job_id, 0, "task-a")  # redelivered after a crash
    assert lost is not None and retry is not None and lost.number == 0
    trials.finish_trial(runtime, retry, trials.TrialOutcome("complete", 0.9))
    report = client.get(f"/v1/jobs/{job_id}/report").json()
    assert report["baseline"]["trial_number"] == retry.number
    assert report["baseline"]["value"] == 0.9
    listed = client.get(f"/v1/jobs/{job_id}/trials").json()["items"]
    assert [t["is_baseline"] for t in listed] == [True, True]
    assert all(t["worker"] for t in listed)


def test_the_reaper_resends_a_slot_whose_worker_went_quiet(runtime: Runtime) -> None:
    job_id = _job(runtime)
    lost = trials.start_trial(runtime, job_id, 0, "task-a")
    assert lost is not None
    assert jobs.recover_lost_work(runtime) == 0  # its heartbeat is fresh
    _age_heartbeat(runtime, job_id, 0)
    assert jobs.recover_lost_work(runtime) == 1
    assert _slot(runtime, job_id, 0).state == "queued"
    retry = trials.start_trial(runtime, job_id, 0, "task-resent")
    assert retry is not None and retry.config.is_close_to(lost.config)


def test_attempts_are_bounded(runtime: Runtime) -> None:
    job_id = _job(runtime, n_trials=1)
    for attempt in range(runtime.settings.max_trial_attempts):
        assert trials.start_trial(runtime, job_id, 0, "same-task") is not None, attempt
    assert trials.start_trial(runtime, job_id, 0, "same-task") is None
    slot = _slot(runtime, job_id, 0)
    assert slot.state == "failed" and "gave up" in (slot.error or "")
    with session_scope(runtime.sessions) as session:
        job = repo.find_job_or_raise(session, job_id, tenant=None)
        assert job.status == "failed" and "no trial completed" in (job.error or "")


def test_cancel_stops_running_trials_at_their_next_epoch(runtime: Runtime) -> None:
    job_id = _job(runtime, n_trials=3)
    ticket = trials.start_trial(runtime, job_id, 0, "task-a")
    assert ticket is not None
    jobs.cancel_job(runtime, job_id, tenant=None)
    assert trials.report_epoch(runtime, ticket, 1, 0.7) == "job cancelled"
    assert trials.start_trial(runtime, job_id, 1, "task-b") is None
    trials.finish_trial(runtime, ticket, trials.TrialOutcome("pruned", reason="cancelled"))
    with session_scope(runtime.sessions) as session:
        assert repo.slot_states(session, job_id) == {"done": 1, "cancelled": 2}
        assert repo.find_job_or_raise(session, job_id, tenant=None).status == "cancelled"


def test_a_job_whose_trials_all_fail_is_failed_with_the_reason(runtime: Runtime) -> None:
    job_id = _job(runtime, n_trials=1)
    ticket = trials.start_trial(runtime, job_id, 0, "task-a")
    assert ticket is not None
    trials.finish_trial(runtime, ticket, trials.TrialOutcome("fail", reason="diverged: nan"))
    with session_scope(runtime.sessions) as session:
        job = repo.find_job_or_raise(session, job_id, tenant=None)
    assert job.status == "failed" and job.error == "no trial completed: diverged: nan"


def test_a_trial_orphaned_between_ask_and_record_is_failed_when_the_job_ends(
    runtime: Runtime,
) -> None:
    job_id = _job(runtime, n_trials=1)
    assert trials.start_trial(runtime, job_id, 0, "task-a") is not None
    with session_scope(runtime.sessions) as session:  # the worker died before recording it
        session.execute(update(TrialSlotModel).where(TrialSlotModel.job_id == job_id)
                        .values(trial_number=None))
    retry = trials.start_trial(runtime, job_id, 0, "task-a")
    assert retry is not None and retry.number == 1
    trials.finish_trial(runtime, retry, trials.TrialOutcome("complete", 0.3))
    records = runtime.studies.records(f"tuner-job-{job_id}", retry.spec)
    assert [(r.state, r.fail_reason) for r in records] == [("fail", "worker lost"),
                                                           ("complete", None)]


def test_a_superseded_run_stops_and_writes_nothing(runtime: Runtime) -> None:
    """Its worker was thought lost (a long database outage) yet lived on."""
    job_id = _job(runtime, n_trials=1)
    first = trials.start_trial(runtime, job_id, 0, "task-a")
    assert first is not None
    _age_heartbeat(runtime, job_id, 0)
    second = trials.start_trial(runtime, job_id, 0, "task-b")
    assert second is not None and second.config.is_close_to(first.config)
    assert trials.report_epoch(runtime, first, 1, 0.5) == StopReason.LOST
    trials.finish_trial(runtime, first, trials.TrialOutcome("complete", 0.5))  # dropped
    assert trials.report_epoch(runtime, second, 1, 0.4) is None
    trials.finish_trial(runtime, second, trials.TrialOutcome("complete", 0.4))
    records = runtime.studies.records(f"tuner-job-{job_id}", first.spec)
    assert [(r.state, r.value) for r in records] == [("fail", None), ("complete", 0.4)]
    assert _slot(runtime, job_id, 0).state == "done"


def test_a_same_id_redelivery_supersedes_a_run_that_is_still_alive(runtime: Runtime) -> None:
    """Redis puts a running message back after a lost connection; the original runs on."""
    job_id = _job(runtime, n_trials=1)
    original = trials.start_trial(runtime, job_id, 0, "task-a")
    again = trials.start_trial(runtime, job_id, 0, "task-a")
    assert original is not None and again is not None
    assert again.claim.attempt == original.claim.attempt + 1
    assert trials.report_epoch(runtime, original, 1, 0.5) == StopReason.LOST
    assert trials.report_epoch(runtime, again, 1, 0.5) is None


def test_a_result_told_before_the_worker_died_is_not_trained_again(runtime: Runtime) -> None:
    job_id = _job(runtime, n_trials=1)
    ticket = trials.start_trial(runtime, job_id, 0, "task-a")
    assert ticket is not None
    runtime.studies.tell(ticket.study_name, ticket.number, "complete", 0.6)  # then it died
    assert trials.start_trial(runtime, job_id, 0, "task-a") is None
    assert _slot(runtime, job_id, 0).state == "done"
    records = runtime.studies.records(ticket.study_name, ticket.spec)
    assert [(r.state, r.value) for r in records] == [("complete", 0.6)]


def test_a_resend_that_fails_is_tried_again_on_the_next_pass(runtime: Runtime,
                                                             settings: Settings) -> None:
    job_id = _job(runtime, n_trials=1)
    assert trials.start_trial(runtime, job_id, 0, "task-a") is not None
    _age_heartbeat(runtime, job_id, 0)
    # A real broker that is down: nothing listens on that port.
    down = build_runtime(settings.model_copy(update={"broker_url": "redis://127.0.0.1:9/0"}))
    try:
        assert jobs.recover_lost_work(down) == 1
    finally:
        down.close()
    slot = _slot(runtime, job_id, 0)
    assert (slot.state, slot.dispatched_at) == ("queued", None)
    with session_scope(runtime.sessions) as session:  # old enough to count as never sent
        session.execute(update(JobModel).values(created_at=utcnow() - timedelta(hours=1)))
    assert jobs.recover_lost_work(runtime) == 1
    assert _slot(runtime, job_id, 0).dispatched_at is not None


def test_a_trial_epoch_budget_lets_pruning_buy_trials_then_stops_the_job(
    runtime: Runtime, client: TestClient
) -> None:
    job_id = _job(runtime, n_trials=10,
                  budget={"n_trials": 10, "epochs": 3, "max_trial_epochs": 7})
    for slot, values, state in ((0, [0.9, 0.8, 0.7], "complete"), (1, [2.0], "pruned"),
                                (2, [0.6, 0.5, 0.4], "complete")):
        ticket = trials.start_trial(runtime, job_id, slot, f"task-{slot}")
        assert ticket is not None, f"slot {slot} should run: the budget is not spent yet"
        for epoch, value in enumerate(values, start=1):
            trials.report_epoch(runtime, ticket, epoch, value)
        trials.finish_trial(runtime, ticket, trials.TrialOutcome(
            state, values[-1] if state == "complete" else None))
    # 3 + 1 + 3 = 7 trial-epochs: the next slot starts nothing and the queue is drained.
    assert trials.start_trial(runtime, job_id, 3, "task-3") is None
    assert trials.start_trial(runtime, job_id, 4, "task-4") is None
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["trials_ended"] == 10
    assert job["trial_counts"] == {"complete": 2, "pruned": 1, "fail": 0, "running": 0,
                                   "waiting": 0}
    assert client.get(f"/v1/jobs/{job_id}/report").json()["compute"]["trial_epochs"] == 7
    assert _slot(runtime, job_id, 3).error == BUDGET_SPENT


def test_a_running_trial_reserves_its_full_epochs_of_the_budget(runtime: Runtime) -> None:
    job_id = _job(runtime, n_trials=5,
                  budget={"n_trials": 5, "epochs": 4, "max_trial_epochs": 6})
    first = trials.start_trial(runtime, job_id, 0, "task-a")
    assert first is not None
    second = trials.start_trial(runtime, job_id, 1, "task-b")
    assert second is not None  # 4 reserved < 6: another trial may start beside it
    assert trials.start_trial(runtime, job_id, 2, "task-c") is None  # 8 reserved >= 6
