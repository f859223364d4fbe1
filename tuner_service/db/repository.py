"""Persistence functions over the service's tables; callers own the transaction."""

from __future__ import annotations

import itertools
import re
from datetime import datetime
from typing import Any, NamedTuple, TypeVarTuple

from sqlalchemy import ColumnElement, Select, bindparam, func, select, true, update
from sqlalchemy.orm import Session, defer

from tuner_service.adam import AdamConfig
from tuner_service.confirmation import Candidate, ConfirmRun
from tuner_service.db.models import ConfirmRunModel, JobModel, TrialSlotModel, aware, utcnow
from tuner_service.states import ENDED_SLOT_STATES

TERMINAL_SLOT_STATES = tuple(sorted(ENDED_SLOT_STATES))
JOB_ID = re.compile(r"[0-9a-f]{32}")  # uuid4().hex, as submit_job makes them


class NotFound(LookupError):
    """No row with that id (or none the caller's tenant may see)."""

    def __init__(self, key: str, kind: str = "job") -> None:
        super().__init__(key)
        self.key, self.kind = key, kind


# ``tenant=`` of the functions below: a tenant's name sees that tenant's jobs only; this sees
# every tenant's (admin tokens, and the workers and recovery, which act for every tenant).
EVERY_TENANT: str | None = None


Columns = TypeVarTuple("Columns")


def _visible(tenant: str | None) -> ColumnElement[bool]:
    """The jobs a caller of ``tenant`` may see, as a SQL condition."""
    return JobModel.tenant == tenant if tenant is not None else true()


def _scoped(every: Select[*Columns], tenants: Select[*Columns],
            params: dict[str, Any], tenant: str | None
            ) -> tuple[Select[*Columns], dict[str, Any]]:
    """A prebuilt statement and its parameters for ``tenant``: ``every`` for every tenant,
    ``tenants`` (the same statement filtered by a ``tenant`` parameter) for one."""
    if tenant is None:
        return every, params
    return tenants, {**params, "tenant": tenant}


def add_job(session: Session, *, job: JobModel) -> None:
    """Store a job and one queued slot per trial it will run."""
    session.add(job)
    session.flush()
    session.add_all(TrialSlotModel(job_id=job.id, slot=i) for i in range(job.n_trials))


# Built once: building a SQLAlchemy statement cost more than running it on a status poll.
_JOB_BY_ID = select(JobModel).where(JobModel.id == bindparam("job_id"))
_TENANTS_JOB_BY_ID = _JOB_BY_ID.where(JobModel.tenant == bindparam("tenant"))
_SLOT_STATES = (
    select(TrialSlotModel.job_id, TrialSlotModel.kind, TrialSlotModel.state, func.count())
    .where(TrialSlotModel.job_id.in_(bindparam("job_ids", expanding=True)))
    .group_by(TrialSlotModel.job_id, TrialSlotModel.kind, TrialSlotModel.state)
)
SEARCH, CONFIRM = "search", "confirm"


def find_job(session: Session, job_id: str, *, tenant: str | None) -> JobModel | None:
    """The job with that id if ``tenant`` may see it, or None: another tenant's job is as
    unknown as a job that never was (also None for strings that cannot be an id: a NUL byte
    in a URL would otherwise reach PostgreSQL, which refuses it with an error)."""
    if not JOB_ID.fullmatch(job_id):
        return None
    return session.scalars(*_scoped(_JOB_BY_ID, _TENANTS_JOB_BY_ID, {"job_id": job_id},
                                    tenant)).one_or_none()


def find_job_or_raise(session: Session, job_id: str, *, tenant: str | None) -> JobModel:
    """The job with that id if ``tenant`` may see it; NotFound otherwise."""
    job = find_job(session, job_id, tenant=tenant)
    if job is None:
        raise NotFound(job_id)
    return job


_PAGE_OF_IDS = (
    select(JobModel.id, func.count().over())
    .order_by(JobModel.created_at.desc(), JobModel.id)
    .offset(bindparam("offset"))
    .limit(bindparam("limit"))
)
_TENANTS_PAGE_OF_IDS = _PAGE_OF_IDS.where(JobModel.tenant == bindparam("tenant"))
_JOBS_BY_IDS = (
    select(JobModel)
    # Specs are large and never change: callers keep them (see ``job_specs``).
    .options(defer(JobModel.spec))
    .where(JobModel.id.in_(bindparam("job_ids", expanding=True)))
)
_TENANTS_JOBS_BY_IDS = _JOBS_BY_IDS.where(JobModel.tenant == bindparam("tenant"))


def page_of_job_ids(session: Session, *, offset: int, limit: int, tenant: str | None
                    ) -> tuple[list[str], int]:
    """The ids of a page of the jobs ``tenant`` may see, newest first, and the number of
    those jobs (one query)."""
    rows = session.execute(*_scoped(_PAGE_OF_IDS, _TENANTS_PAGE_OF_IDS,
                                    {"offset": offset, "limit": limit}, tenant)).all()
    if rows:
        return [job_id for job_id, _ in rows], rows[0][1]
    count = select(func.count()).select_from(JobModel).where(_visible(tenant))
    return [], session.scalar(count) or 0  # an offset past the end: the count alone


def jobs_by_ids(session: Session, job_ids: list[str], *, tenant: str | None
                ) -> dict[str, JobModel]:
    """These jobs (their specs deferred) that ``tenant`` may see, by id."""
    if not job_ids:
        return {}
    found = session.scalars(*_scoped(_JOBS_BY_IDS, _TENANTS_JOBS_BY_IDS,
                                     {"job_ids": job_ids}, tenant))
    return {job.id: job for job in found}


def job_specs(session: Session, job_ids: list[str], *, tenant: str | None
              ) -> dict[str, dict[str, Any]]:
    """The stored specs of these jobs that ``tenant`` may see, by job id."""
    if not job_ids:
        return {}
    rows = session.execute(select(JobModel.id, JobModel.spec)
                           .where(JobModel.id.in_(job_ids), _visible(tenant)))
    return {job_id: spec for job_id, spec in rows}


class StoredSpec(NamedTuple):
    """A job's id, study name and stored spec (JSON)."""

    job_id: str
    study_name: str
    spec: dict[str, Any]


_STORED_SPEC = select(JobModel.id, JobModel.study_name, JobModel.spec)
_SPEC = JobModel.__table__.c.spec


def stored_specs(session: Session, job_ids: list[str], *, tenant: str | None
                 ) -> list[StoredSpec]:
    """These jobs' ids, study names and specs (those that exist and ``tenant`` may see)."""
    if not job_ids:
        return []
    rows = session.execute(_STORED_SPEC.where(JobModel.id.in_(job_ids), _visible(tenant)))
    return [StoredSpec(*row) for row in rows]


def recent_specs_on(session: Session, *, model: tuple[str, str], dataset: tuple[str, str],
                    epochs: int,
                    limit: int, tenant: str | None) -> list[StoredSpec]:
    """Newest first, at most ``limit``: the jobs of ``tenant`` training this model on this
    data set (each by its spec's key and value: ("builtin", "digits"), ("id", ...)) for this
    many epochs. A coarse filter in SQL (JSON paths work on SQLite and PostgreSQL alike); callers
    compare the rest of the specs."""
    (dataset_key, dataset_value), (model_key, model_value) = dataset, model
    rows = session.execute(
        _STORED_SPEC
        .where(_visible(tenant),
               _SPEC[("model", model_key)].as_string() == model_value,
               _SPEC[("dataset", dataset_key)].as_string() == dataset_value,
               _SPEC[("budget", "epochs")].as_integer() == epochs)
        .order_by(JobModel.created_at.desc(), JobModel.id)
        .limit(limit)
    )
    return [StoredSpec(*row) for row in rows]


def slot_key(job_id: str, slot: int) -> ColumnElement[bool]:
    """The condition that selects one slot of a job."""
    return (TrialSlotModel.job_id == job_id) & (TrialSlotModel.slot == slot)


def find_slot(session: Session, job_id: str, slot: int) -> TrialSlotModel | None:
    """One slot of a job (claims are compare-and-set updates, not row locks: SQLite has none)."""
    return session.scalars(select(TrialSlotModel).where(slot_key(job_id, slot))).one_or_none()


def slot_states(session: Session, job_id: str) -> dict[str, int]:
    """How many of a job's slots are in each state (see ``slot_states_of``)."""
    return slot_states_of(session, [job_id]).get(job_id, {})


def slot_states_of(session: Session, job_ids: list[str]) -> dict[str, dict[str, int]]:
    """How many slots of each job are in each state, for many jobs in one query. Search
    slots count under their state ("done"), confirm slots under "confirm:<state>"."""
    if not job_ids:
        return {}
    rows = session.execute(_SLOT_STATES, {"job_ids": job_ids})
    states: dict[str, dict[str, int]] = {}
    for job_id, kind, state, count in rows:
        key = state if kind == SEARCH else f"{kind}:{state}"
        states.setdefault(job_id, {})[key] = count
    return states


def split_slot_key(key: str) -> tuple[str, str]:
    """(kind, state) of a ``slot_states_of`` key."""
    kind, _, state = key.rpartition(":")
    return kind or SEARCH, state


def slot_kind(session: Session, job_id: str, slot: int) -> str | None:
    """Whether a slot searches or confirms; None when there is no such slot."""
    return session.scalar(select(TrialSlotModel.kind).where(slot_key(job_id, slot)))


def add_confirm_runs(session: Session, *, job_id: str, first_slot: int,
                     candidates: list[Candidate], seeds: list[int]) -> list[int]:
    """A confirm slot and its run for each (candidate, seed); returns the slot numbers. Two
    processes that both try insert the same keys: the loser's commit fails."""
    slots = []
    runs = itertools.product(enumerate(candidates), seeds)
    for number, ((candidate, chosen), seed) in enumerate(runs, start=first_slot):
        session.add(TrialSlotModel(job_id=job_id, slot=number, kind=CONFIRM))
        session.add(ConfirmRunModel(
            job_id=job_id, slot=number, candidate=candidate, is_baseline=chosen.is_baseline,
            source_trial=chosen.source_trial, search_value=chosen.search_value,
            params=chosen.config.stored(), seed=seed, state="waiting", history=[]))
        slots.append(number)
    session.flush()
    return slots


def confirm_slots_on_seed(job_id: str, seed: int) -> Select[int]:
    """The slots of a job's confirmation runs on ``seed`` (a subquery)."""
    return select(ConfirmRunModel.slot).where(ConfirmRunModel.job_id == job_id,
                                              ConfirmRunModel.seed == seed)


def set_packing(session: Session, job_id: str, packing: dict[str, Any]) -> None:
    """Note how the job's latest pack was sized, and why."""
    session.execute(update(JobModel).where(JobModel.id == job_id).values(packing=packing)
                    .execution_options(synchronize_session=False))


def confirm_runs(session: Session, job_id: str) -> list[ConfirmRun]:
    """A job's confirmation runs, by slot."""
    rows = session.scalars(select(ConfirmRunModel).where(ConfirmRunModel.job_id == job_id)
                           .order_by(ConfirmRunModel.slot))
    return [_confirm_run(row) for row in rows]


def confirm_run(session: Session, job_id: str, slot: int) -> ConfirmRun | None:
    """One confirmation run."""
    row = session.get(ConfirmRunModel, (job_id, slot))
    return _confirm_run(row) if row is not None else None


def _confirm_run(row: ConfirmRunModel) -> ConfirmRun:
    return ConfirmRun(
        slot=row.slot, candidate=row.candidate, is_baseline=row.is_baseline,
        source_trial=row.source_trial, search_value=row.search_value,
        config=AdamConfig.from_stored(row.params), seed=row.seed, state=row.state, value=row.value,
        history=tuple(row.history or ()), error=row.error,
        started_at=aware(row.started_at), finished_at=aware(row.finished_at))


def update_confirm_run(session: Session, job_id: str, slot: int, **values: Any) -> None:
    """Write a run's state or outcome (the caller has checked it owns the slot)."""
    session.execute(update(ConfirmRunModel)
                    .where(ConfirmRunModel.job_id == job_id, ConfirmRunModel.slot == slot)
                    .values(**values).execution_options(synchronize_session=False))


def mark_dispatched(session: Session, *, job_id: str, slots: list[int]) -> None:
    """Record that these slots' tasks reached the broker."""
    session.execute(
        update(TrialSlotModel)
        .where(TrialSlotModel.job_id == job_id, TrialSlotModel.slot.in_(slots))
        .values(dispatched_at=utcnow())
    )


def cancel_open_slots(session: Session, *, job_id: str) -> list[int]:
    """Queued slots of a finished job will never run; returns the numbers of the trials that
    lost workers left in them (requeued by recovery), which nobody will finish now."""
    queued = (TrialSlotModel.job_id == job_id) & (TrialSlotModel.state == "queued")
    lost = session.scalars(
        select(TrialSlotModel.trial_number).where(queued, TrialSlotModel.trial_number.is_not(None))
    )
    numbers = [n for n in lost if n is not None]
    session.execute(
        update(TrialSlotModel).where(queued).values(state="cancelled", finished_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return numbers


def stale_condition(*, heartbeat_before: datetime, dispatched_before: datetime
                    ) -> ColumnElement[bool]:
    """Running slots whose worker went quiet, and queued slots never handed to the broker."""
    running_lost = (TrialSlotModel.state == "running") & (
        TrialSlotModel.heartbeat_at < heartbeat_before
    )
    never_sent = (TrialSlotModel.state == "queued") & TrialSlotModel.dispatched_at.is_(None) & (
        TrialSlotModel.job_id.in_(
            select(JobModel.id).where(JobModel.created_at < dispatched_before)
        )
    )
    return running_lost | never_sent


def stale_slots(session: Session, condition: ColumnElement[bool]) -> list[TrialSlotModel]:
    """The slots matching a ``stale_condition``."""
    return list(session.scalars(select(TrialSlotModel).where(condition)))


def active_jobs(session: Session, *, tenant: str) -> int:
    """How many of ``tenant``'s jobs are queued or running."""
    return session.scalar(
        select(func.count()).select_from(JobModel)
        .where(JobModel.tenant == tenant, JobModel.status.in_(("queued", "running")))) or 0


def queued_slots(session: Session, *, tenant: str) -> int:
    """How many trial slots of ``tenant``'s jobs wait for a worker."""
    return session.scalar(
        select(func.count()).select_from(TrialSlotModel).join(JobModel)
        .where(JobModel.tenant == tenant, TrialSlotModel.state == "queued")) or 0


def count_rows(session: Session) -> dict[str, Any]:
    """Row counts of our tables (for health checks and tests that prove nothing was written)."""
    return {
        "jobs": session.scalar(select(func.count()).select_from(JobModel)),
        "slots": session.scalar(select(func.count()).select_from(TrialSlotModel)),
    }
