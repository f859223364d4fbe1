"""The life cycle of one trial slot, as a worker drives it: claim, ask, report, finish.

Celery may deliver a task more than once (late ack, redelivery after a lost worker or a lost
broker connection, the recovery loop's resend); every function here is safe to repeat.

A claim is a compare-and-set on the slot row that bumps ``attempts``; the pair (task id,
attempt) is the claim's token, and every later write of the slot checks it. So a run that was
superseded (its worker was thought lost, yet lived on) finds out at its next epoch and stops
without writing; the new run fails the old Optuna trial and trains the same parameters again,
at most ``max_trial_attempts`` times.
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

from sqlalchemy import ColumnElement, CursorResult, or_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tuner_service import confirmation
from tuner_service.adam import AdamConfig
from tuner_service.datasets.catalog import stamped_data
from tuner_service.db import repository as repo
from tuner_service.db.models import JobModel, TrialSlotModel, utcnow
from tuner_service.db.session import session_scope
from tuner_service.dispatch import dispatch
from tuner_service.model_sources.resolve import stamped_model
from tuner_service.model_sources.types import ModelDescription
from tuner_service.runtime import Runtime
from tuner_service.schemas import TERMINAL_JOB_STATUSES, DataDescription, JobCreate
from tuner_service.studies import SearchStopped, TrialRecord

log = logging.getLogger(__name__)
LOST = "lost"  # report_epoch's answer when another delivery has taken the slot over
INTERRUPTED = "interrupted (worker lost or infrastructure error); retried"
BUDGET_SPENT = "budget.max_trial_epochs spent"
NEVER_RUN = "never run: the job ended first"


@dataclass(frozen=True)
class Claim:
    """Which delivery owns a slot: its task id and the attempt number it claimed."""

    job_id: str
    slot: int
    task_id: str
    attempt: int


@dataclass(frozen=True)
class TrialTicket:
    """What a worker needs to train one trial; plain data.

    A search slot's ticket has the Optuna trial ``number``; a confirm slot's has none (its
    result goes to its confirmation run, not to the study) and a fresh ``init_seed``.
    """

    claim: Claim
    study_name: str
    number: int | None
    config: AdamConfig
    spec: JobCreate
    data: DataDescription
    model: ModelDescription
    init_seed: int | None = None

    @property
    def confirms(self) -> bool:
        """True for a confirmation run."""
        return self.number is None

    @property
    def job_id(self) -> str:
        """The job this trial belongs to."""
        return self.claim.job_id


@dataclass(frozen=True)
class TrialOutcome:
    """How a trial ended: ``complete`` with a value, ``pruned``, or ``fail`` with a reason."""

    state: str
    value: float | None = None
    reason: str | None = None
    history: tuple[float, ...] = ()


def start_trial(rt: Runtime, job_id: str, slot: int, task_id: str,
                worker: str = "") -> TrialTicket | None:
    """Claim a slot and ask its job's study for a trial (or, for a confirm slot, load its
    run); None when there is nothing to run."""
    with session_scope(rt.sessions) as session:
        job = repo.find_job(session, job_id, tenant=repo.EVERY_TENANT)
        if job is None:
            return None
        spec = JobCreate.model_validate(job.spec)
        data = stamped_data(spec, job.dataset)
        model = stamped_model(spec.model, job.model)
        study_name, status = job.study_name, job.status
        kind = repo.slot_kind(session, job_id, slot)
    if status in TERMINAL_JOB_STATUSES:
        _close_unstarted(rt, job_id, study_name)
        return None
    claimed = _claim(rt, job_id, slot, task_id)
    if claimed is None:
        return None
    claim, lost_number = claimed
    if kind == repo.CONFIRM:
        return _start_confirm_run(rt, claim, study_name, spec, data, model)
    if lost_number is not None and not _recover_lost_trial(rt, claim, study_name, lost_number):
        return None
    if _trial_epochs_spent(rt, study_name, spec):
        _stop_starting_trials(rt, claim, study_name)
        return None
    try:
        asked = rt.studies.ask(study_name, spec, seed_offset=slot,
                               worker=worker or f"{socket.gethostname()}:{os.getpid()}",
                               hyperparameters=model.searched_hyperparameters)
    except SearchStopped as stop:
        fail_job(rt, job_id, str(stop))
        _end_slot(rt, claim, "failed", str(stop))
        return None
    if not _record_start(rt, claim, asked.number):
        rt.studies.tell(study_name, asked.number, "fail", None,
                        reason="superseded by another delivery")
        return None
    return TrialTicket(claim, study_name, asked.number, asked.config, spec, data, model)


def _start_confirm_run(rt: Runtime, claim: Claim, study_name: str, spec: JobCreate,
                       data: DataDescription, model: ModelDescription) -> TrialTicket | None:
    with session_scope(rt.sessions) as session:
        run = repo.confirm_run(session, claim.job_id, claim.slot)
        if run is None or not _update_slot(session, _owned_by(claim), heartbeat_at=utcnow()):
            return None
        repo.update_confirm_run(session, claim.job_id, claim.slot, state="running",
                                started_at=utcnow(), history=[], value=None, error=None)
    return TrialTicket(claim, study_name, None, run.config, spec, data, model,
                       init_seed=run.seed)


def _trial_epochs_spent(rt: Runtime, study_name: str, spec: JobCreate) -> bool:
    """True when the search's trial-epoch budget leaves no room for another trial: the
    epochs ended trials trained, plus a full trial for each one still running, reach it
    (confirmation's share of max_trial_epochs is kept out of the search's)."""
    budget = confirmation.search_epoch_budget(spec)
    if budget is None:
        return False
    records = rt.studies.records(study_name, spec)
    committed = sum(spec.budget.epochs if r.state == "running" else len(r.intermediate_values)
                    for r in records)
    return committed >= budget


def _stop_starting_trials(rt: Runtime, claim: Claim, study_name: str) -> None:
    """The budget is spent: this slot and every queued one end without a trial (in one
    statement, so the queue drains at once); running trials finish and end the job."""
    with session_scope(rt.sessions) as session:
        lost = repo.cancel_open_slots(session, job_id=claim.job_id)
    fail_lost_trials(rt, study_name, lost)
    _end_slot(rt, claim, "cancelled", BUDGET_SPENT)


def _recover_lost_trial(rt: Runtime, claim: Claim, study_name: str, number: int) -> bool:
    """A previous attempt left trial ``number``; True when this attempt must train again."""
    if rt.studies.state_of(study_name, number) in ("complete", "pruned", "fail"):
        # Its result was told before its worker died: the slot is done, nothing to rerun.
        _end_slot(rt, claim, "done", None)
        return False
    rt.studies.tell(study_name, number, "fail", None, reason=INTERRUPTED)
    rt.studies.retry_params(study_name, number)
    return True


def _close_unstarted(rt: Runtime, job_id: str, study_name: str) -> None:
    """Queued slots of a finished job will not run; trials lost workers left are failed."""
    with session_scope(rt.sessions) as session:
        lost = repo.cancel_open_slots(session, job_id=job_id)
    close_study(rt, study_name, lost)


def fail_lost_trials(rt: Runtime, study_name: str, numbers: list[int]) -> None:
    """Fail trials whose worker was lost and whose slot will not run again."""
    for number in numbers:
        rt.studies.tell(study_name, number, "fail", None, reason="worker lost")


def close_study(rt: Runtime, study_name: str, lost: list[int]) -> None:
    """The job has ended: fail the trials lost workers left and the enqueued ones nobody will
    run (the paper defaults of a job cancelled early), so an ended job has none waiting."""
    fail_lost_trials(rt, study_name, lost)
    rt.studies.fail_waiting(study_name, NEVER_RUN)


def _claim(rt: Runtime, job_id: str, slot: int, task_id: str) -> tuple[Claim, int | None] | None:
    """Compare-and-set the slot to running for this task.

    Returns the claim and the number of a trial a lost attempt left behind, or None when
    another live delivery owns the slot, or it has ended.
    """
    stale = utcnow() - timedelta(seconds=rt.settings.stale_after_s)
    with session_scope(rt.sessions) as session:
        before = repo.find_slot(session, job_id, slot)
        if before is None or before.state in repo.TERMINAL_SLOT_STATES:
            return None
        result: CursorResult[Any] = session.execute(  # type: ignore[assignment]
            update(TrialSlotModel)
            .where(repo.slot_key(job_id, slot), TrialSlotModel.attempts == before.attempts,
                   TrialSlotModel.attempts < rt.settings.max_trial_attempts)
            .where(or_(
                TrialSlotModel.state == "queued",
                (TrialSlotModel.state == "running")
                & or_(TrialSlotModel.task_id == task_id, TrialSlotModel.heartbeat_at < stale),
            ))
            .values(state="running", task_id=task_id, attempts=TrialSlotModel.attempts + 1,
                    heartbeat_at=utcnow(), trial_number=None)
            .execution_options(synchronize_session=False)
        )
    if result.rowcount == 1:
        return Claim(job_id, slot, task_id, before.attempts + 1), before.trial_number
    if before.attempts >= rt.settings.max_trial_attempts and _is_lost(before, task_id, stale):
        _give_up(rt, before)
    return None


def _owned_by(claim: Claim) -> ColumnElement[bool]:
    """The slot is still running under this claim."""
    return (repo.slot_key(claim.job_id, claim.slot) & (TrialSlotModel.state == "running")
            & (TrialSlotModel.task_id == claim.task_id)
            & (TrialSlotModel.attempts == claim.attempt))


def _is_lost(slot: TrialSlotModel, task_id: str, stale: datetime) -> bool:
    """True when no live delivery owns the slot any more."""
    if slot.state == "queued" or slot.task_id == task_id or slot.heartbeat_at is None:
        return True
    beat = slot.heartbeat_at
    # SQLite hands back naive datetimes; they were written in UTC.
    return (beat if beat.tzinfo else beat.replace(tzinfo=UTC)) < stale


def _give_up(rt: Runtime, slot: TrialSlotModel) -> None:
    reason = f"worker lost {rt.settings.max_trial_attempts} times; gave up"
    with session_scope(rt.sessions) as session:
        study_name = repo.find_job_or_raise(session, slot.job_id,
                                            tenant=repo.EVERY_TENANT).study_name
        ended = _update_slot(session, repo.slot_key(slot.job_id, slot.slot)
                             & (TrialSlotModel.attempts == slot.attempts)
                             & TrialSlotModel.state.in_(("queued", "running")),
                             state="failed", error=reason, finished_at=utcnow())
        if ended and slot.kind == repo.CONFIRM:
            repo.update_confirm_run(session, slot.job_id, slot.slot, state="fail",
                                    error=reason, finished_at=utcnow())
    if not ended:
        return
    if slot.trial_number is not None:
        rt.studies.tell(study_name, slot.trial_number, "fail", None, reason=reason)
    _finish_job_if_done(rt, slot.job_id)


def _update_slot(session: Session, where: ColumnElement[bool], **values: Any) -> bool:
    result: CursorResult[Any] = session.execute(  # type: ignore[assignment]
        update(TrialSlotModel).where(where).values(**values)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def _record_start(rt: Runtime, claim: Claim, number: int) -> bool:
    with session_scope(rt.sessions) as session:
        if not _update_slot(session, _owned_by(claim), trial_number=number,
                            heartbeat_at=utcnow()):
            return False
        session.execute(
            update(JobModel)
            .where(JobModel.id == claim.job_id, JobModel.status == "queued")
            .values(status="running", started_at=utcnow())
        )
    return True


def report_epoch(rt: Runtime, ticket: TrialTicket, epoch: int, value: float) -> str | None:
    """Record one epoch; returns why the trial must stop now, or None to go on.

    "lost": another delivery took the slot over (nothing more may be written); "job
    cancelled" / "job failed": the job ended; "pruned": the pruner says stop.
    """
    with session_scope(rt.sessions) as session:
        owned = _update_slot(session, _owned_by(ticket.claim), heartbeat_at=utcnow())
        job = repo.find_job_or_raise(session, ticket.job_id, tenant=repo.EVERY_TENANT)
        status = job.status
    if not owned:
        return LOST
    if status in TERMINAL_JOB_STATUSES:
        return f"job {status}"
    if ticket.number is None:  # a confirmation run is never pruned: it must train to the end
        return None
    prune = rt.studies.report(ticket.study_name, ticket.number, epoch, value)
    return "pruned" if prune else None


def finish_trial(rt: Runtime, ticket: TrialTicket, outcome: TrialOutcome) -> None:
    """Tell the study how the trial ended, close the slot, and finish the job when all ended.

    A superseded run writes nothing: the delivery that took its slot over owns the result.
    """
    if outcome.reason == LOST or not _owns(rt, ticket.claim):
        log.warning("trial %s of job %s was taken over; dropping its result",
                    ticket.number, ticket.job_id)
        return
    # "pruned" says nothing the state does not; other reasons ("job cancelled", "diverged: …")
    # are kept with the trial.
    reason = None if outcome.reason == "pruned" else outcome.reason
    if ticket.number is None:
        with session_scope(rt.sessions) as session:
            repo.update_confirm_run(
                session, ticket.job_id, ticket.claim.slot, state=outcome.state,
                value=outcome.value if outcome.state == "complete" else None,
                history=list(outcome.history), error=reason, finished_at=utcnow())
    else:
        rt.studies.tell(ticket.study_name, ticket.number, outcome.state, outcome.value,
                        reason=reason)
    _end_slot(rt, ticket.claim, "done", None)


def _owns(rt: Runtime, claim: Claim) -> bool:
    with session_scope(rt.sessions) as session:
        return _update_slot(session, _owned_by(claim), heartbeat_at=utcnow())


def _end_slot(rt: Runtime, claim: Claim, state: str, error: str | None) -> None:
    with session_scope(rt.sessions) as session:
        ended = _update_slot(session, _owned_by(claim), state=state, error=error,
                             finished_at=utcnow())
    if ended:
        _finish_job_if_done(rt, claim.job_id)


def _finish_job_if_done(rt: Runtime, job_id: str) -> None:
    with session_scope(rt.sessions) as session:
        states = repo.slot_states(session, job_id)
        if any(repo.split_slot_key(s)[1] not in repo.TERMINAL_SLOT_STATES for s in states):
            return
        confirmed = any(repo.split_slot_key(s)[0] == repo.CONFIRM for s in states)
        job = repo.find_job_or_raise(session, job_id, tenant=repo.EVERY_TENANT)
        spec = JobCreate.model_validate(job.spec)
        study_name, status, n_trials = job.study_name, job.status, job.n_trials
    records = rt.studies.records(study_name, spec)
    # Every slot has ended, so no worker runs these: each worker died between asking for its
    # trial and recording it.
    fail_lost_trials(rt, study_name, [r.number for r in records if r.state == "running"])
    if status not in TERMINAL_JOB_STATUSES:
        if any(r.state == "complete" for r in records):
            if confirmed or not _start_confirmation(rt, job_id, n_trials, spec, records):
                _set_final_status(rt, job_id, "succeeded", None)
        else:
            reasons = sorted({r.fail_reason for r in records if r.fail_reason})
            _set_final_status(rt, job_id, "failed", "no trial completed" + (
                ": " + "; ".join(reasons[:3]) if reasons else ""))
    if any(r.state == "waiting" for r in records):
        rt.studies.fail_waiting(study_name, NEVER_RUN)


def _start_confirmation(rt: Runtime, job_id: str, n_trials: int, spec: JobCreate,
                        records: list[TrialRecord]) -> bool:
    """The search has ended: queue the confirmation runs; False when there are none to run
    (no plan, or nothing completed). Several workers may end the search's last slots at
    once; the runs' keys make only one of them insert, and all of them return True."""
    plan = confirmation.plan_for(spec)
    if plan is None:
        return False
    candidates = confirmation.pick_candidates(records, spec, plan)
    if not candidates:
        return False
    seeds = [confirmation.confirm_seed(spec.seed, i) for i in range(plan.seeds)]
    try:
        with session_scope(rt.sessions) as session:
            slots = repo.add_confirm_runs(session, job_id=job_id, first_slot=n_trials,
                                          candidates=candidates, seeds=seeds)
    except IntegrityError:
        return True  # another process queued them
    log.info("job %s: search ended; confirming %d configurations on %d seeds", job_id,
             len(candidates), len(seeds))
    dispatch(rt, job_id, slots)
    return True


def _set_final_status(rt: Runtime, job_id: str, status: str, error: str | None) -> None:
    with session_scope(rt.sessions) as session:
        session.execute(
            update(JobModel)
            .where(JobModel.id == job_id, JobModel.status.in_(("queued", "running")))
            .values(status=status, error=error, finished_at=utcnow())
        )


def fail_job(rt: Runtime, job_id: str, reason: str) -> None:
    """The search cannot go on: the job fails, queued slots are dropped, and running trials
    stop at their next epoch."""
    log.error("job %s failed: %s", job_id, reason)
    _set_final_status(rt, job_id, "failed", reason)
    with session_scope(rt.sessions) as session:
        lost = repo.cancel_open_slots(session, job_id=job_id)
        study_name = repo.find_job_or_raise(session, job_id,
                                            tenant=repo.EVERY_TENANT).study_name
    close_study(rt, study_name, lost)


@contextmanager
def keep_alive(rt: Runtime, ticket: TrialTicket) -> Iterator[None]:
    """Heartbeat the slot from a thread while a long epoch runs, so it is not taken for lost."""
    stop = threading.Event()
    interval = max(1.0, rt.settings.stale_after_s / 4)

    def beat() -> None:
        while not stop.wait(interval):
            try:
                with session_scope(rt.sessions) as session:
                    _update_slot(session, _owned_by(ticket.claim), heartbeat_at=utcnow())
            except Exception:  # a missed beat is retried; the trial itself goes on
                log.warning("heartbeat of %s/%s failed", ticket.job_id, ticket.claim.slot,
                            exc_info=True)

    thread = threading.Thread(target=beat, name="tuner-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
