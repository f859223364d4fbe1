"""The life cycle of one trial slot, as a worker drives it: claim, ask, report, finish.

Celery may deliver a task twice (late ack, redelivery after a lost worker, the reaper's resend);
every function here is safe to repeat. A claim is a compare-and-set on the slot row, so only one
delivery runs a slot at a time; a redelivery after a lost worker fails the lost Optuna trial and
runs the same parameters again, at most ``max_trial_attempts`` times.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import CursorResult, or_, update
from sqlalchemy.orm import Session

from tuner_service.adam import AdamConfig
from tuner_service.db import repository as repo
from tuner_service.db.models import JobModel, TrialSlotModel, utcnow
from tuner_service.db.session import session_scope
from tuner_service.runtime import Runtime
from tuner_service.schemas import TERMINAL_JOB_STATUSES, JobCreate
from tuner_service.studies import SearchStopped

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialTicket:
    """What a worker needs to train one trial; plain data."""

    job_id: str
    slot: int
    study_name: str
    number: int
    config: AdamConfig
    spec: JobCreate


@dataclass(frozen=True)
class TrialOutcome:
    """How a trial ended: ``complete`` with a value, ``pruned``, or ``fail`` with a reason."""

    state: str
    value: float | None = None
    reason: str | None = None


def start_trial(rt: Runtime, job_id: str, slot: int, task_id: str,
                worker: str = "") -> TrialTicket | None:
    """Claim a slot and ask its job's study for a trial; None when there is nothing to run."""
    with session_scope(rt.sessions) as session:
        job = repo.find_job(session, job_id)
        if job is None:
            return None
        spec = JobCreate.model_validate(job.spec)
        study_name = job.study_name
        if job.status in TERMINAL_JOB_STATUSES:
            _close_unstarted(rt, session, job, slot)
            return None
    lost_number = _claim(rt, job_id, slot, task_id)
    if lost_number is False:
        return None
    if isinstance(lost_number, int):
        rt.studies.tell(study_name, lost_number, "fail", None,
                        reason="interrupted (worker lost or infrastructure error); retried")
        rt.studies.retry_params(study_name, lost_number)
    try:
        asked = rt.studies.ask(study_name, spec, seed_offset=slot,
                               worker=worker or f"{socket.gethostname()}:{os.getpid()}")
    except SearchStopped as stop:
        fail_job(rt, job_id, str(stop))
        return None
    _record_start(rt, job_id, slot, asked.number)
    return TrialTicket(job_id, slot, study_name, asked.number, asked.config, spec)


def _close_unstarted(rt: Runtime, session: Session, job: JobModel, slot: int) -> None:
    """A slot of a finished job will not run; a trial a lost worker left behind is failed."""
    row = repo.find_slot(session, job.id, slot)
    if row is not None and row.state == "queued" and row.trial_number is not None:
        rt.studies.tell(job.study_name, row.trial_number, "fail", None, reason="worker lost")
    repo.cancel_open_slots(session, job_id=job.id)


def _claim(rt: Runtime, job_id: str, slot: int, task_id: str) -> int | None | bool:
    """Compare-and-set the slot to running for this task.

    Returns False when another delivery owns it (or it ended), else the number of the trial a
    lost worker left behind (or None when there is none).
    """
    stale = utcnow() - timedelta(seconds=rt.settings.stale_after_s)
    this_slot = (TrialSlotModel.job_id == job_id) & (TrialSlotModel.slot == slot)
    with session_scope(rt.sessions) as session:
        before = repo.find_slot(session, job_id, slot)
        if before is None or before.state in repo.TERMINAL_SLOT_STATES:
            return False
        lost = before.trial_number
        claimed: CursorResult[Any] = session.execute(  # type: ignore[assignment]
            update(TrialSlotModel)
            .where(this_slot, TrialSlotModel.attempts < rt.settings.max_trial_attempts)
            .where(or_(
                TrialSlotModel.state == "queued",
                (TrialSlotModel.state == "running")
                & or_(TrialSlotModel.task_id == task_id, TrialSlotModel.heartbeat_at < stale),
            ))
            .where(TrialSlotModel.attempts == before.attempts)
            .values(state="running", task_id=task_id, attempts=TrialSlotModel.attempts + 1,
                    heartbeat_at=utcnow(), trial_number=None)
            .execution_options(synchronize_session=False)
        )
    if claimed.rowcount == 1:
        return lost
    if before.attempts >= rt.settings.max_trial_attempts and _is_lost(before, task_id, stale):
        _give_up(rt, job_id, slot, lost)
    return False


def _is_lost(slot: TrialSlotModel, task_id: str, stale: datetime) -> bool:
    """True when no live delivery owns the slot any more."""
    if slot.state == "queued" or slot.task_id == task_id or slot.heartbeat_at is None:
        return True
    beat = slot.heartbeat_at
    # SQLite hands back naive datetimes; they were written in UTC.
    return (beat if beat.tzinfo else beat.replace(tzinfo=UTC)) < stale


def _give_up(rt: Runtime, job_id: str, slot: int, lost: int | None) -> None:
    reason = f"worker lost {rt.settings.max_trial_attempts} times; gave up"
    with session_scope(rt.sessions) as session:
        study_name = repo.find_job_or_raise(session, job_id).study_name
    if lost is not None:
        rt.studies.tell(study_name, lost, "fail", None, reason=reason)
    _end_slot(rt, job_id, slot, "failed", reason)


def _record_start(rt: Runtime, job_id: str, slot: int, number: int) -> None:
    with session_scope(rt.sessions) as session:
        session.execute(
            update(TrialSlotModel)
            .where(TrialSlotModel.job_id == job_id, TrialSlotModel.slot == slot)
            .values(trial_number=number, heartbeat_at=utcnow())
        )
        session.execute(
            update(JobModel)
            .where(JobModel.id == job_id, JobModel.status == "queued")
            .values(status="running", started_at=utcnow())
        )


def report_epoch(rt: Runtime, ticket: TrialTicket, epoch: int, value: float) -> str | None:
    """Record one epoch; returns why the trial must stop now ("pruned", "cancelled") or None."""
    prune = rt.studies.report(ticket.study_name, ticket.number, epoch, value)
    with session_scope(rt.sessions) as session:
        repo.touch_slot(session, job_id=ticket.job_id, slot=ticket.slot)
        job = repo.find_job_or_raise(session, ticket.job_id)
        cancelled = job.status == "cancelled"
    if cancelled:
        return "cancelled"
    return "pruned" if prune else None


def finish_trial(rt: Runtime, ticket: TrialTicket, outcome: TrialOutcome) -> None:
    """Tell the study how the trial ended, close the slot, and finish the job when all ended."""
    rt.studies.tell(ticket.study_name, ticket.number, outcome.state, outcome.value,
                    reason=outcome.reason)
    _end_slot(rt, ticket.job_id, ticket.slot, "done", None)


def _end_slot(rt: Runtime, job_id: str, slot: int, state: str, error: str | None) -> None:
    with session_scope(rt.sessions) as session:
        session.execute(
            update(TrialSlotModel)
            .where(TrialSlotModel.job_id == job_id, TrialSlotModel.slot == slot)
            .values(state=state, error=error, finished_at=utcnow())
        )
    _finish_job_if_done(rt, job_id)


def _finish_job_if_done(rt: Runtime, job_id: str) -> None:
    with session_scope(rt.sessions) as session:
        states = repo.slot_states(session, job_id)
        if any(s not in repo.TERMINAL_SLOT_STATES for s in states):
            return
        job = repo.find_job_or_raise(session, job_id)
        if job.status in TERMINAL_JOB_STATUSES:
            return
        spec = JobCreate.model_validate(job.spec)
        study_name = job.study_name
    records = rt.studies.records(study_name, spec)
    for orphan in (r for r in records if r.state == "running"):
        # Every slot has ended, so no worker runs this trial: its worker died between asking
        # for it and recording it.
        rt.studies.tell(study_name, orphan.number, "fail", None, reason="worker lost")
    if any(r.state == "complete" for r in records):
        _set_final_status(rt, job_id, "succeeded", None)
        return
    reasons = sorted({r.fail_reason for r in records if r.fail_reason})
    _set_final_status(rt, job_id, "failed", "no trial completed" + (
        ": " + "; ".join(reasons[:3]) if reasons else ""))


def _set_final_status(rt: Runtime, job_id: str, status: str, error: str | None) -> None:
    with session_scope(rt.sessions) as session:
        session.execute(
            update(JobModel)
            .where(JobModel.id == job_id, JobModel.status.in_(("queued", "running")))
            .values(status=status, error=error, finished_at=utcnow())
        )


def fail_job(rt: Runtime, job_id: str, reason: str) -> None:
    """The search cannot go on: the job fails and its queued slots are dropped."""
    log.error("job %s failed: %s", job_id, reason)
    _set_final_status(rt, job_id, "failed", reason)
    with session_scope(rt.sessions) as session:
        repo.cancel_open_slots(session, job_id=job_id)
        session.execute(
            update(TrialSlotModel)
            .where(TrialSlotModel.job_id == job_id, TrialSlotModel.state == "running")
            .values(state="failed", error=reason, finished_at=utcnow())
        )


@contextmanager
def keep_alive(rt: Runtime, ticket: TrialTicket) -> Iterator[None]:
    """Heartbeat the slot from a thread while a long epoch runs, so it is not taken for lost."""
    stop = threading.Event()
    interval = max(1.0, rt.settings.stale_after_s / 4)

    def beat() -> None:
        while not stop.wait(interval):
            try:
                with session_scope(rt.sessions) as session:
                    repo.touch_slot(session, job_id=ticket.job_id, slot=ticket.slot)
            except Exception:  # a missed beat is retried; the trial itself goes on
                log.warning("heartbeat of %s/%s failed", ticket.job_id, ticket.slot,
                            exc_info=True)

    thread = threading.Thread(target=beat, name="tuner-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
