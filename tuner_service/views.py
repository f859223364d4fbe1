"""Turn stored jobs and trial records into the API's public models."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from tuner_service.db.models import JobModel
from tuner_service.db.repository import TERMINAL_SLOT_STATES
from tuner_service.schemas import (
    AdamParams,
    BestTrial,
    JobCreate,
    JobPublic,
    TrialCounts,
    TrialPublic,
)
from tuner_service.studies import TrialRecord


def aware(moment: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; every time we store is UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def trial_counts(records: Sequence[TrialRecord]) -> TrialCounts:
    """How many trials are in each state."""
    counts = TrialCounts()
    for record in records:
        setattr(counts, record.state, getattr(counts, record.state) + 1)
    return counts


def best_trial(records: Sequence[TrialRecord], minimize: bool) -> BestTrial | None:
    """The best complete trial, the lowest number winning ties."""
    complete = [r for r in records if r.state == "complete" and r.value is not None]
    if not complete:
        return None
    sign = 1.0 if minimize else -1.0
    best = min(complete, key=lambda r: (sign * (r.value or 0.0), r.number))
    assert best.value is not None and best.config is not None
    return BestTrial(
        trial_number=best.number, value=best.value, params=AdamParams(**best.config.as_dict())
    )


def job_public(job: JobModel, records: Sequence[TrialRecord], slots: dict[str, int]
               ) -> JobPublic:
    """A job with its progress and best trial so far."""
    spec = JobCreate.model_validate(job.spec)
    return JobPublic(
        id=job.id,
        name=job.name,
        status=job.status,
        error=job.error,
        created_at=aware(job.created_at),
        started_at=aware(job.started_at),
        finished_at=aware(job.finished_at),
        n_trials=job.n_trials,
        trials_ended=sum(n for state, n in slots.items() if state in TERMINAL_SLOT_STATES),
        trial_counts=trial_counts(records),
        best=best_trial(records, spec.objective.minimize),
        spec=spec,
    )


def trial_public(record: TrialRecord) -> TrialPublic:
    """One trial as the API shows it."""
    params = AdamParams(**record.config.as_dict()) if record.config else None
    return TrialPublic(
        number=record.number,
        state=record.state,
        params=params,
        value=record.value,
        intermediate_values=list(record.intermediate_values),
        started_at=record.started_at,
        finished_at=record.finished_at,
        duration_s=record.duration_s,
        fail_reason=record.fail_reason,
        is_baseline=record.is_baseline,
        worker=record.worker,
    )
