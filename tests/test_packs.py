"""Packs of trial slots, on SQLite and PostgreSQL, without Keras: a worker leases K slots of a
job, asks K different configurations, reports and tells each on its own; a lost pack returns
each slot to the queue and its retry trains the same configurations; duplicates do nothing."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from tests.api.test_jobs_validation import GOOD
from tuner_service import jobs, packing, trials
from tuner_service.db import repository as repo
from tuner_service.db.models import TrialSlotModel, utcnow
from tuner_service.db.session import session_scope
from tuner_service.packing import PackRequest
from tuner_service.runtime import Runtime
from tuner_service.schemas import JobCreate
from tuner_service.states import INTERRUPTED, SlotState, StopReason
from tuner_service.tenancy import LOCAL


def _job(rt: Runtime, n_trials: int, **budget: object) -> str:
    spec = JobCreate.model_validate({**GOOD, "budget": {"n_trials": n_trials, "epochs": 2,
                                                        **budget}})
    return jobs.submit_job(rt, spec, caller=LOCAL).id


def _fits(copies: int) -> trials.Assess:
    return lambda _context: trials.WorkerFit(memory_fit=copies)


def _states(rt: Runtime, job_id: str) -> dict[int, str]:
    with session_scope(rt.sessions) as session:
        rows = session.scalars(select(TrialSlotModel)
                               .where(TrialSlotModel.job_id == job_id))
        return {row.slot: row.state for row in rows}


def _finish(rt: Runtime, pack: trials.Pack, value: float = 0.5) -> None:
    trials.finish_pack(rt, pack, [trials.TrialOutcome("complete", value + i / 100)
                                  for i in range(len(pack.tickets))])


def test_a_pack_leases_k_slots_and_asks_k_different_configurations(
    runtime: Runtime, client: TestClient
) -> None:
    job_id = _job(runtime, n_trials=6, pack=4)
    pack = trials.start_pack(runtime, job_id, 2, "task-a", "host:1", _fits(64))
    assert pack is not None
    assert [t.claim.slot for t in pack.tickets] == [2, 0, 1, 3]
    assert pack.choice.size == 4 and "budget.pack is 4" in pack.choice.reason
    configs = [t.config for t in pack.tickets]
    assert configs[0].learning_rate == 0.001  # the paper defaults come first
    assert len({c.learning_rate for c in configs}) == 4
    assert {t.pack_size for t in pack.tickets} == {4}
    assert _states(runtime, job_id) == {0: "running", 1: "running", 2: "running",
                                        3: "running", 4: "queued", 5: "queued"}
    # The partner slots' own tasks arrive while the pack trains: they do nothing.
    assert trials.start_pack(runtime, job_id, 0, "task-b", "host:2", _fits(64)) is None

    reports = trials.EpochReports(runtime, pack)
    assert [reports.report(t, 1, 1.0) for t in pack.tickets] == [None] * 4
    _finish(runtime, pack)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["packing"] == {"size": 4, "reason": "limited by budget.pack is 4"}
    assert job["trials_ended"] == 4 and job["trial_counts"]["complete"] == 4
    listed = client.get(f"/v1/jobs/{job_id}/trials").json()["items"]
    assert [t["pack_size"] for t in listed] == [4, 4, 4, 4]

    rest = trials.start_pack(runtime, job_id, 4, "task-c", "host:1", _fits(64))
    assert rest is not None and [t.claim.slot for t in rest.tickets] == [4, 5]
    assert rest.choice.reason == "limited by slots left"
    _finish(runtime, rest)
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"


def test_a_lost_pack_returns_each_slot_and_its_retry_trains_the_same_configurations(
    runtime: Runtime
) -> None:
    job_id = _job(runtime, n_trials=3, pack="auto")
    lost = trials.start_pack(runtime, job_id, 0, "task-a", "host:1", _fits(64))
    assert lost is not None and len(lost.tickets) == 3
    with session_scope(runtime.sessions) as session:
        session.execute(update(TrialSlotModel).where(TrialSlotModel.job_id == job_id)
                        .values(heartbeat_at=utcnow() - timedelta(hours=1)))
    assert jobs.recover_lost_work(runtime) == 3
    assert set(_states(runtime, job_id).values()) == {"queued"}

    retry = trials.start_pack(runtime, job_id, 1, "task-b", "host:2", _fits(64))
    assert retry is not None and len(retry.tickets) == 3
    before = {t.claim.slot: t.config for t in lost.tickets}
    assert {t.claim.slot: t.config for t in retry.tickets} == before
    records = runtime.studies.records(lost.first.study_name, lost.first.spec)
    failed = [r for r in records if r.state == "fail"]
    assert len(failed) == 3 and {r.fail_reason for r in failed} == {INTERRUPTED}

    # The lost worker lived on: it finds every copy taken over and writes nothing.
    stale = trials.EpochReports(runtime, lost)
    assert {stale.report(t, 1, 0.1) for t in lost.tickets} == {StopReason.LOST}
    trials.finish_pack(runtime, lost, [trials.TrialOutcome("complete", 0.0)] * 3)
    assert set(_states(runtime, job_id).values()) == {"running"}
    _finish(runtime, retry)
    assert set(_states(runtime, job_id).values()) == {SlotState.DONE}


def test_one_copy_taken_over_stops_alone(runtime: Runtime) -> None:
    job_id = _job(runtime, n_trials=2, pack=2)
    pack = trials.start_pack(runtime, job_id, 0, "task-a", "host:1", _fits(64))
    assert pack is not None and len(pack.tickets) == 2
    with session_scope(runtime.sessions) as session:  # slot 1's worker is thought lost
        session.execute(update(TrialSlotModel)
                        .where(repo.slot_key(job_id, 1))
                        .values(heartbeat_at=utcnow() - timedelta(hours=1)))
    taken = trials.start_pack(runtime, job_id, 1, "task-b", "host:2")
    assert taken is not None
    reports = trials.EpochReports(runtime, pack)
    assert [reports.report(t, 1, 0.3) for t in pack.tickets] == [None, StopReason.LOST]


def test_cancelling_the_job_stops_every_copy(runtime: Runtime, client: TestClient) -> None:
    job_id = _job(runtime, n_trials=3)
    pack = trials.start_pack(runtime, job_id, 0, "task-a", "host:1", _fits(64))
    assert pack is not None
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code in (200, 202, 204)
    reports = trials.EpochReports(runtime, pack)
    assert {reports.report(t, 1, 0.3) for t in pack.tickets} == {StopReason.JOB_CANCELLED}


def test_the_trial_epoch_budget_counts_each_copy(runtime: Runtime) -> None:
    # 2 epochs a trial, 5 trial-epochs for the search: two copies fit, the third does not.
    job_id = _job(runtime, n_trials=6, pack=6, max_trial_epochs=5)
    pack = trials.start_pack(runtime, job_id, 0, "task-a", "host:1", _fits(64))
    assert pack is not None and len(pack.tickets) <= 3
    states = _states(runtime, job_id)
    assert sum(state == "running" for state in states.values()) == len(pack.tickets)
    assert all(state in ("running", "cancelled") for state in states.values())


def test_confirmation_runs_pack_by_seed(runtime: Runtime) -> None:
    spec = JobCreate.model_validate({**GOOD, "budget": {"n_trials": 3, "epochs": 2},
                                     "confirm": {"top_k": 2, "seeds": 2}})
    job_id = jobs.submit_job(runtime, spec, caller=LOCAL).id
    search = trials.start_pack(runtime, job_id, 0, "task-a", "host:1", _fits(64))
    assert search is not None
    _finish(runtime, search)
    runs = {s for s, state in _states(runtime, job_id).items() if state == "queued"}
    assert len(runs) >= 4  # two candidates and the paper defaults, on two seeds
    pack = trials.start_pack(runtime, job_id, min(runs), "task-c", "host:1", _fits(64))
    assert pack is not None and len(pack.tickets) == len(runs) // 2
    assert len({t.init_seed for t in pack.tickets}) == 1
    assert all(t.confirms for t in pack.tickets)


@pytest.mark.parametrize(("pack", "sampler", "slots", "memory", "size", "why"), [
    (1, "tpe", 50, 99, 1, "budget.pack is 1"),
    ("auto", "tpe", 64, 99, 16, "tpe keeps four rounds"),
    ("auto", "tpe", 8, 3, 3, "worker memory"),
    ("auto", "random", 100, 99, 64, "auto's largest pack"),
    ("auto", "random", 5, 99, 5, "slots left"),
    (32, "tpe", 100, 99, 32, "budget.pack is 32"),
    (32, "tpe", 100, 0, 1, "worker memory"),
])
def test_the_pack_size_rule(pack: object, sampler: str, slots: int, memory: int, size: int,
                            why: str) -> None:
    spec = JobCreate.model_validate({**GOOD, "sampler": sampler,
                                     "budget": {"n_trials": 64, "pack": pack}})
    choice = packing.choose(spec, PackRequest(slots_left=slots, memory_fit=memory))
    assert choice.size == size and why in choice.reason


def test_a_model_that_cannot_be_packed_trains_alone_and_says_why() -> None:
    spec = JobCreate.model_validate({**GOOD, "budget": {"n_trials": 64}})
    choice = packing.choose(spec, PackRequest(slots_left=64, memory_fit=64,
                                              problem="the model overrides train_step"))
    assert choice.size == 1 and "overrides train_step" in choice.reason
