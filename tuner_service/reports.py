"""The best-config report: the winner, how far it beats Adam's paper defaults, and a snippet."""

from __future__ import annotations

from collections.abc import Sequence

from tuner_service.adam import AdamConfig
from tuner_service.db.models import JobModel
from tuner_service.schemas import (
    TERMINAL_JOB_STATUSES,
    AdamParams,
    BaselineTrial,
    BestTrial,
    Improvement,
    JobCreate,
    ReportPublic,
)
from tuner_service.studies import TrialRecord
from tuner_service.views import best_trial, trial_counts


def build_report(job: JobModel, records: Sequence[TrialRecord]) -> ReportPublic:
    """The report of a job; ``partial`` while it still runs."""
    spec = JobCreate.model_validate(job.spec)
    best = best_trial(records, spec.objective.minimize)
    baseline = _baseline(records)
    return ReportPublic(
        job_id=job.id,
        status=job.status,
        partial=job.status not in TERMINAL_JOB_STATUSES,
        objective=spec.objective,
        trial_counts=trial_counts(records),
        best=best,
        baseline=baseline,
        improvement=_improvement(best, baseline, spec.objective.minimize),
        keras_snippet=keras_snippet(AdamConfig(**best.params.model_dump())) if best else None,
        message=_message(job, spec, best, baseline),
    )


def _baseline(records: Sequence[TrialRecord]) -> BaselineTrial | None:
    """The paper-defaults trial: its completed run, else its latest attempt."""
    runs = [r for r in records if r.is_baseline and r.config is not None]
    if not runs:
        return None
    record = next((r for r in runs if r.state == "complete"), runs[-1])
    assert record.config is not None
    return BaselineTrial(
        trial_number=record.number,
        state=record.state,
        value=record.value,
        params=AdamParams(**record.config.as_dict()),
    )


def _improvement(best: BestTrial | None, baseline: BaselineTrial | None, minimize: bool
                 ) -> Improvement | None:
    if best is None or baseline is None or baseline.value is None:
        return None
    gain = baseline.value - best.value if minimize else best.value - baseline.value
    relative = gain / abs(baseline.value) if baseline.value != 0 else None
    return Improvement(absolute=gain, relative=relative)


def _message(job: JobModel, spec: JobCreate, best: BestTrial | None,
             baseline: BaselineTrial | None) -> str | None:
    if best is None:
        return "No trial has completed yet." if job.status not in TERMINAL_JOB_STATUSES else (
            f"No trial completed. {job.error or ''}".strip())
    if baseline is None:
        return "Adam's paper defaults lie outside the search space, so no baseline was run."
    if baseline.value is None:
        return f"The paper-defaults trial did not complete ({baseline.state})."
    return None


def keras_snippet(config: AdamConfig) -> str:
    """Copy-paste Keras 3 code that builds this optimizer (decay as InverseTimeDecay)."""
    lr = repr(config.learning_rate)
    if config.decay > 0:
        lr_line = (
            "learning_rate = keras.optimizers.schedules.InverseTimeDecay(\n"
            f"    initial_learning_rate={config.learning_rate!r}, decay_steps=1, "
            f"decay_rate={config.decay!r}\n)\n"
        )
        lr = "learning_rate"
    else:
        lr_line = ""
    return (
        "import keras\n\n"
        f"{lr_line}"
        "optimizer = keras.optimizers.Adam(\n"
        f"    learning_rate={lr},\n"
        f"    beta_1={config.beta_1!r},\n"
        f"    beta_2={config.beta_2!r},\n"
        f"    epsilon={config.epsilon!r},\n"
        ")\n"
    )
