"""A job's status as its slots end: start confirmation, succeed, fail, and close its study.

Several workers may end a job's last slots at once; every function here is safe to run twice
(conditional updates, and inserts whose keys make only one of them win).
"""

from __future__ import annotations

import logging

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from tuner_service import confirmation
from tuner_service.db import repository as repo
from tuner_service.db.models import JobModel, TrialSlotModel, utcnow
from tuner_service.db.session import session_scope
from tuner_service.dispatch import dispatch
from tuner_service.leases import update_slot
from tuner_service.runtime import Runtime
from tuner_service.schemas import JobCreate
from tuner_service.states import (
    NEVER_RUN,
    WORKER_LOST,
    JobStatus,
    SlotState,
    TrialState,
)
from tuner_service.studies import TrialRecord

log = logging.getLogger(__name__)
_OPEN = (JobStatus.QUEUED, JobStatus.RUNNING)


def fail_lost_trials(rt: Runtime, study_name: str, numbers: list[int]) -> None:
    """Fail trials whose worker was lost and whose slot will not run again."""
    for number in numbers:
        rt.studies.tell(study_name, number, TrialState.FAIL, None, reason=WORKER_LOST)


def close_study(rt: Runtime, study_name: str, lost: list[int]) -> None:
    """The job has ended: fail the trials lost workers left and the enqueued ones nobody will
    run (the paper defaults of a job cancelled early), so an ended job has none waiting."""
    fail_lost_trials(rt, study_name, lost)
    rt.studies.fail_waiting(study_name, NEVER_RUN)


def close_unstarted(rt: Runtime, job_id: str, study_name: str) -> None:
    """Queued slots of a finished job will not run; trials lost workers left are failed."""
    with session_scope(rt.sessions) as session:
        lost = repo.cancel_open_slots(session, job_id=job_id)
    close_study(rt, study_name, lost)


def give_up(rt: Runtime, slot: TrialSlotModel) -> None:
    """A slot's workers were lost ``max_trial_attempts`` times: it fails, with its trial."""
    reason = f"worker lost {rt.settings.max_trial_attempts} times; gave up"
    with session_scope(rt.sessions) as session:
        study_name = repo.find_job_or_raise(session, slot.job_id,
                                            tenant=repo.EVERY_TENANT).study_name
        ended = update_slot(session, repo.slot_key(slot.job_id, slot.slot)
                            & (TrialSlotModel.attempts == slot.attempts)
                            & TrialSlotModel.state.in_((SlotState.QUEUED, SlotState.RUNNING)),
                            state=SlotState.FAILED, error=reason, finished_at=utcnow())
        if ended and slot.kind == repo.CONFIRM:
            repo.update_confirm_run(session, slot.job_id, slot.slot, state=TrialState.FAIL,
                                    error=reason, finished_at=utcnow())
    if not ended:
        return
    if slot.trial_number is not None:
        rt.studies.tell(study_name, slot.trial_number, TrialState.FAIL, None, reason=reason)
    finish_job_if_done(rt, slot.job_id)


def finish_job_if_done(rt: Runtime, job_id: str) -> None:
    """Once every slot has ended: queue the confirmation runs, or settle the job's status."""
    with session_scope(rt.sessions) as session:
        states = repo.slot_states(session, job_id)
        if any(not SlotState(repo.split_slot_key(s)[1]).ended for s in states):
            return
        confirmed = any(repo.split_slot_key(s)[0] == repo.CONFIRM for s in states)
        job = repo.find_job_or_raise(session, job_id, tenant=repo.EVERY_TENANT)
        spec = JobCreate.model_validate(job.spec)
        study_name, status, n_trials = job.study_name, JobStatus(job.status), job.n_trials
    records = rt.studies.records(study_name, spec)
    # Every slot has ended, so no worker runs these: each worker died between asking for its
    # trial and recording it.
    fail_lost_trials(rt, study_name, [r.number for r in records
                                      if r.state == TrialState.RUNNING])
    if not status.ended:
        if any(r.state == TrialState.COMPLETE for r in records):
            if confirmed or not _start_confirmation(rt, job_id, n_trials, spec, records):
                set_final_status(rt, job_id, JobStatus.SUCCEEDED, None)
        else:
            reasons = sorted({r.fail_reason for r in records if r.fail_reason})
            set_final_status(rt, job_id, JobStatus.FAILED, "no trial completed" + (
                ": " + "; ".join(reasons[:3]) if reasons else ""))
    if any(r.state == TrialState.WAITING for r in records):
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


def mark_running(rt: Runtime, job_id: str) -> None:
    """The job's first trial has started."""
    with session_scope(rt.sessions) as session:
        session.execute(update(JobModel)
                        .where(JobModel.id == job_id, JobModel.status == JobStatus.QUEUED)
                        .values(status=JobStatus.RUNNING, started_at=utcnow()))


def set_final_status(rt: Runtime, job_id: str, status: JobStatus, error: str | None) -> None:
    """End the job, unless it has ended already."""
    with session_scope(rt.sessions) as session:
        session.execute(
            update(JobModel)
            .where(JobModel.id == job_id, JobModel.status.in_(_OPEN))
            .values(status=status, error=error, finished_at=utcnow())
        )


def fail_job(rt: Runtime, job_id: str, reason: str) -> None:
    """The search cannot go on: the job fails, queued slots are dropped, and running trials
    stop at their next epoch."""
    log.error("job %s failed: %s", job_id, reason)
    set_final_status(rt, job_id, JobStatus.FAILED, reason)
    with session_scope(rt.sessions) as session:
        lost = repo.cancel_open_slots(session, job_id=job_id)
        study_name = repo.find_job_or_raise(session, job_id,
                                            tenant=repo.EVERY_TENANT).study_name
    close_study(rt, study_name, lost)
