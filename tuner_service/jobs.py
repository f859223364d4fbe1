"""Use cases behind the API: submit, cancel, read, and recover work a lost worker left behind."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import update
from sqlalchemy.orm import Session

from tuner_service.confirmation import ConfirmRun
from tuner_service.datasets import service as datasets
from tuner_service.db import repository as repo
from tuner_service.db.models import JobModel, TrialSlotModel, utcnow
from tuner_service.db.session import session_scope
from tuner_service.dispatch import dispatch
from tuner_service.job_status import close_study
from tuner_service.model_sources import files as model_files
from tuner_service.model_sources.resolve import describe as describe_model
from tuner_service.runtime import Runtime
from tuner_service.schemas import TERMINAL_JOB_STATUSES, JobCreate
from tuner_service.studies import StudySummary, TrialRecord, WarmSource, study_name_for
from tuner_service.tenancy import Caller, LimitExceeded
from tuner_service.validation import SpecRefused, spec_problems
from tuner_service.warm_start import warm_plan

log = logging.getLogger(__name__)
# Undispatched slots younger than this may still be on their way from submit_job.
DISPATCH_GRACE_S = 30


class JobConflict(Exception):
    """The job is in a state that does not allow the request."""


def submit_job(rt: Runtime, spec: JobCreate, *, caller: Caller) -> JobModel:
    """Store the job, owned by the caller's tenant, and its study (warm-started from earlier
    jobs' trials), then enqueue one task per trial (after the commit). Before writing
    anything, raises ``SpecRefused`` when the spec does not fit the server's limits or its
    data set (or names one the tenant does not have), or ``warm_start`` names jobs it cannot
    learn from, and ``LimitExceeded`` when the tenant has too much work queued already."""
    data = datasets.describe(rt, spec.dataset, tenant=caller.tenant)
    model = describe_model(rt, spec.model, tenant=caller.tenant)
    problems = spec_problems(spec, data, rt.settings, model)
    if problems:
        raise SpecRefused(problems)
    warm = warm_plan(rt, spec, owner=caller.tenant, scope=caller.scope)
    check_limits(rt, spec, caller)
    job_id = uuid.uuid4().hex
    study_name = study_name_for(job_id)
    rt.studies.create(study_name, spec, warm.trials, warm.first,
                      model.searched_hyperparameters)
    job = JobModel(
        id=job_id,
        name=spec.name or f"{spec.model.label}-{data.name}"[:200],
        status="queued",
        spec=spec.model_dump(mode="json"),
        dataset_id=data.id,
        dataset=data.model_dump(mode="json"),
        model_id=model.id,
        model=model.model_dump(mode="json"),
        study_name=study_name,
        tenant=caller.tenant,
        n_trials=spec.budget.n_trials,
        created_at=utcnow(),
    )
    try:
        with session_scope(rt.sessions) as session:
            datasets.hold(session, data, tenant=caller.tenant)
            model_files.hold(session, model, tenant=caller.tenant)
            repo.add_job(session, job=job)
    except Exception:
        rt.studies.delete(study_name)
        raise
    dispatch(rt, job_id, range(job.n_trials))
    return job


def check_limits(rt: Runtime, spec: JobCreate, caller: Caller) -> None:
    """``LimitExceeded`` when the job would take the caller's tenant past one of its limits
    (jobs queued or running, trials queued); admins too, unless configured otherwise."""
    settings = rt.settings
    if caller.is_admin and settings.admin_exempt_from_limits:
        return
    with session_scope(rt.sessions) as session:
        active = repo.active_jobs(session, tenant=caller.tenant)
        queued = repo.queued_slots(session, tenant=caller.tenant)
    if active >= settings.tenant_max_active_jobs:
        raise LimitExceeded(
            f"tenant {caller.tenant!r} has {active} jobs queued or running; its limit "
            f"(TUNER_TENANT_MAX_ACTIVE_JOBS) is {settings.tenant_max_active_jobs}: wait for "
            "one to end, or cancel one")
    if queued + spec.budget.n_trials > settings.tenant_max_queued_trials:
        raise LimitExceeded(
            f"tenant {caller.tenant!r} has {queued} trials queued and this job adds "
            f"{spec.budget.n_trials}; its limit (TUNER_TENANT_MAX_QUEUED_TRIALS) is "
            f"{settings.tenant_max_queued_trials} trials queued at once")


def cancel_job(rt: Runtime, job_id: str, *, tenant: str | None) -> None:
    """Stop handing out trials; running ones are pruned at their next epoch. NotFound when
    ``tenant`` may not see the job."""
    with session_scope(rt.sessions) as session:
        job = repo.find_job_or_raise(session, job_id, tenant=tenant)
        # A conditional update, not a read-then-write: a worker may finish the job meanwhile.
        changed = session.execute(
            update(JobModel)
            .where(JobModel.id == job_id, JobModel.status.in_(("queued", "running")))
            .values(status="cancelled", finished_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        if changed.rowcount == 0:  # type: ignore[attr-defined]
            session.refresh(job)
            if job.status == "cancelled":
                return
            raise JobConflict(f"job {job_id} has already {job.status}")
        lost = repo.cancel_open_slots(session, job_id=job_id)
    close_study(rt, job.study_name, lost)


@dataclass(frozen=True)
class JobOverview:
    """A job with its slot states and its study's counts and best trial: what a status or a
    list row shows, read without loading the study."""

    job: JobModel
    spec: JobCreate
    slots: dict[str, int]
    study: StudySummary

    @property
    def final(self) -> bool:
        """True when nothing about the job can change any more: it has ended, and so have
        all its slots and trials (a cancelled job's running trials end after it)."""
        return (self.job.status in TERMINAL_JOB_STATUSES
                and all(repo.split_slot_key(key)[1] in repo.TERMINAL_SLOT_STATES
                        for key in self.slots)
                and not {"running", "waiting"} & self.study.counts.keys())

    @property
    def shown(self) -> tuple[object, ...]:
        """Everything the job's public view shows: equal values, equal views."""
        job, study = self.job, self.study
        best = (study.best.number, study.best.value) if study.best else None
        return (job.name, job.status, job.error, job.started_at, job.finished_at,
                tuple(sorted(self.slots.items())), tuple(sorted(study.counts.items())), best)

    @property
    def fingerprint(self) -> tuple[object, ...]:
        """Changes whenever anything a report shows may have changed."""
        job = self.job
        return (job.status, job.error, job.started_at, job.finished_at,
                tuple(sorted(self.slots.items())), self.study.fingerprint)


def job_overview(rt: Runtime, job_id: str, *, tenant: str | None, fingerprint: bool = False
                 ) -> JobOverview:
    """One job's overview (with the study's fingerprint if asked); NotFound when there is
    no such job that ``tenant`` may see."""
    final = rt.final_jobs.get(job_id)
    if final is not None and tenant in (None, final.job.tenant):
        return final
    with session_scope(rt.sessions) as session:
        job = repo.find_job_or_raise(session, job_id, tenant=tenant)
        slots = repo.slot_states_of(session, [job.id])
    spec = rt.specs.get(job.id) or JobCreate.model_validate(job.spec)  # loaded with the row
    rt.specs.put(job.id, spec)
    return _overviews(rt, [job], slots, {job.id: spec}, fingerprint=fingerprint)[0]


def job_overviews(rt: Runtime, offset: int, limit: int, *, tenant: str | None
                  ) -> tuple[list[JobOverview], int]:
    """A page of the overviews of the jobs ``tenant`` may see, newest first, and the number
    of those jobs. Jobs that can no longer change are served from memory; only the others are
    read."""
    with session_scope(rt.sessions) as session:
        ids, total = repo.page_of_job_ids(session, offset=offset, limit=limit, tenant=tenant)
        final = {job_id: rt.final_jobs.get(job_id) for job_id in ids}
        changing = repo.jobs_by_ids(session, [i for i in ids if final[i] is None],
                                    tenant=tenant)
        slots = repo.slot_states_of(session, list(changing))
        specs = _specs(rt, session, list(changing), tenant)
    fresh = {o.job.id: o for o in _overviews(rt, list(changing.values()), slots, specs)}
    return [final[job_id] or fresh[job_id] for job_id in ids], total


def _overviews(rt: Runtime, page: list[JobModel], slots: dict[str, dict[str, int]],
               specs: dict[str, JobCreate], *, fingerprint: bool = False) -> list[JobOverview]:
    """Study summaries of jobs that may still change, in a handful of queries; those that
    turn out final are kept, since they never change again."""
    studies = rt.studies.summaries({job.study_name: specs[job.id] for job in page},
                                   fingerprint=fingerprint)
    overviews = [JobOverview(job, specs[job.id], slots.get(job.id, {}),
                             studies[job.study_name]) for job in page]
    for overview in overviews:
        if overview.final:
            rt.final_jobs.put(overview.job.id, overview)
    return overviews


def _specs(rt: Runtime, session: Session, job_ids: list[str], tenant: str | None
           ) -> dict[str, JobCreate]:
    """These jobs' validated specs. A spec never changes, so each is read and validated once
    per process; the rest come from memory."""
    specs = {job_id: rt.specs.get(job_id) for job_id in job_ids}
    unknown = [job_id for job_id, spec in specs.items() if spec is None]
    for job_id, stored in repo.job_specs(session, unknown, tenant=tenant).items():
        spec = specs[job_id] = JobCreate.model_validate(stored)
        rt.specs.put(job_id, spec)
    return {job_id: spec for job_id, spec in specs.items() if spec is not None}


@dataclass(frozen=True)
class JobDetail:
    """What a job's report is built from."""

    job: JobModel
    records: list[TrialRecord]
    runs: list[ConfirmRun]
    warm: list[WarmSource]


def job_detail(rt: Runtime, job_id: str, *, tenant: str | None) -> JobDetail:
    """A job with its trials, confirmation runs and the jobs it learned from."""
    job, records, runs = get_job(rt, job_id, tenant=tenant)
    return JobDetail(job, records, runs, rt.studies.warm_start_sources(job.study_name))


def get_job(rt: Runtime, job_id: str, *, tenant: str | None
            ) -> tuple[JobModel, list[TrialRecord], list[ConfirmRun]]:
    """A job, its trials and its confirmation runs; NotFound when ``tenant`` may not see
    it."""
    with session_scope(rt.sessions) as session:
        job = repo.find_job_or_raise(session, job_id, tenant=tenant)
        runs = repo.confirm_runs(session, job_id)
    records = rt.studies.records(job.study_name, JobCreate.model_validate(job.spec))
    return job, records, runs


def recover_lost_work(rt: Runtime) -> int:
    """Resend slots whose worker went quiet or whose task never reached the broker.

    Needed because the embedded folder broker never redelivers, and a whole worker node can die
    where Celery's redelivery would wait for Redis's visibility timeout. A resend that races a
    live task is harmless: claiming a slot is a compare-and-set.
    """
    now = utcnow()
    stale = repo.stale_condition(
        heartbeat_before=now - timedelta(seconds=rt.settings.stale_after_s),
        dispatched_before=now - timedelta(seconds=DISPATCH_GRACE_S),
    )
    keys = []
    with session_scope(rt.sessions) as session:
        for slot in repo.stale_slots(session, stale):
            # Back to queued, its lost trial number kept (the next claim fails that trial and
            # retries its parameters) and not dispatched until the resend below succeeds. The
            # condition is repeated so a slot that ended meanwhile is left alone.
            requeued = session.execute(
                update(TrialSlotModel)
                .where(repo.slot_key(slot.job_id, slot.slot), stale)
                .values(state="queued", dispatched_at=None)
                .execution_options(synchronize_session=False)
            )
            if requeued.rowcount == 1:  # type: ignore[attr-defined]
                keys.append((slot.job_id, slot.slot))
    for job_id, slot_number in keys:
        log.warning("resending lost trial slot %s/%s", job_id, slot_number)
        dispatch(rt, job_id, [slot_number])
    return len(keys) + model_files.resend_lost_inspections(rt)
