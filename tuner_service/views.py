"""Turn stored jobs and trial records into the API's public models."""

from __future__ import annotations

from collections.abc import Sequence

from tuner_service.adam import AdamConfig
from tuner_service.db.models import aware
from tuner_service.db.repository import CONFIRM, TERMINAL_SLOT_STATES, split_slot_key
from tuner_service.jobs import JobOverview
from tuner_service.schemas import (
    AdamParams,
    BestTrial,
    ConfirmationProgress,
    JobPublic,
    PackingPublic,
    TrialCounts,
    TrialPublic,
)
from tuner_service.studies import TrialRecord


def trial_counts(records: Sequence[TrialRecord]) -> TrialCounts:
    """How many trials are in each state."""
    counts = TrialCounts()
    for record in records:
        setattr(counts, record.state, getattr(counts, record.state) + 1)
    return counts


def best_trial(records: Sequence[TrialRecord], minimize: bool) -> BestTrial | None:
    """The best complete trial, the lowest number winning ties (as ``study_tables``)."""
    complete = [r for r in records
                if r.state == "complete" and r.value is not None and r.config is not None]
    if not complete:
        return None
    sign = 1.0 if minimize else -1.0
    best = min(complete, key=lambda r: (sign * (r.value or 0.0), r.number))
    return _best(best.number, best.value or 0.0, best.config)


def _best(number: int, value: float, config: AdamConfig | None) -> BestTrial | None:
    if config is None:
        return None
    return BestTrial(trial_number=number, value=value, params=AdamParams(**config.as_dict()),
                     hyperparameters=config.model_values)


def job_public(overview: JobOverview) -> JobPublic:
    """A job with its progress and best trial so far."""
    job, study = overview.job, overview.study
    best = study.best
    return JobPublic(
        id=job.id,
        name=job.name,
        tenant=job.tenant,
        status=job.status,
        error=job.error,
        created_at=aware(job.created_at),
        started_at=aware(job.started_at),
        finished_at=aware(job.finished_at),
        n_trials=job.n_trials,
        trials_ended=sum(n for state, n in overview.slots.items()
                         if state in TERMINAL_SLOT_STATES),
        confirmation=_confirmation_progress(overview.slots),
        trial_counts=TrialCounts(**study.counts),
        best=_best(best.number, best.value, best.config) if best else None,
        packing=PackingPublic.model_validate(job.packing) if job.packing else None,
        spec=overview.spec,
    )


def _confirmation_progress(slots: dict[str, int]) -> ConfirmationProgress | None:
    runs = ended = 0
    for key, count in slots.items():
        kind, state = split_slot_key(key)
        if kind == CONFIRM:
            runs += count
            ended += count if state in TERMINAL_SLOT_STATES else 0
    return ConfirmationProgress(runs=runs, runs_ended=ended) if runs else None


def trial_public(record: TrialRecord) -> TrialPublic:
    """One trial as the API shows it."""
    params = AdamParams(**record.config.as_dict()) if record.config else None
    return TrialPublic(
        number=record.number,
        state=record.state,
        params=params,
        hyperparameters=record.config.model_values if record.config else {},
        value=record.value,
        intermediate_values=list(record.intermediate_values),
        started_at=record.started_at,
        finished_at=record.finished_at,
        duration_s=record.duration_s,
        fail_reason=record.fail_reason,
        is_baseline=record.is_baseline,
        worker=record.worker,
        pack_size=record.pack_size,
    )
