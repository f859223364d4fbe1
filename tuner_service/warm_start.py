"""Warm start: a new job learns from the complete trials of earlier jobs on the same task.

Jobs on the same model, data set, epochs, batch size and metric score configurations on the
same scale, so their complete trials are copied into the new study as finished trials: the
sampler (and the pruner) learn from them from the first ask, their best distinct
configurations are tried right after the paper defaults, and none counts as the new job's
(``StudyStore.records`` and ``study_tables`` leave them out). Only a job's own trials are
copied, never those it copied itself, so chains of jobs do not multiply duplicates; and only
those inside the new job's search space.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from tuner_service.adam import PAPER_DEFAULTS, AdamConfig
from tuner_service.db import repository as repo
from tuner_service.db.session import session_scope
from tuner_service.runtime import Runtime
from tuner_service.schemas import JobCreate, PluginModelSpec
from tuner_service.studies import WarmTrial
from tuner_service.validation import Problem, SpecRefused

# ``auto`` learns from at most this many jobs, the newest with trials to give first...
MAX_SOURCE_JOBS = 10
# ...looking at no more of the newest same-task jobs than this (three statements each).
MAX_CANDIDATES = 3 * MAX_SOURCE_JOBS
# Copied trials in all (named sources too), the newest source's best first: every ask of TPE
# and every load of the study grows with them, and a few hundred is plenty to start from.
MAX_WARM_TRIALS = 300
# Source configurations tried first (if the budget has room after the user's own).
FIRST_CONFIGS = 3


@dataclass(frozen=True)
class WarmPlan:
    """What a new study copies from earlier jobs, and the configurations it tries first."""

    trials: tuple[WarmTrial, ...] = ()
    first: tuple[AdamConfig, ...] = ()


@dataclass(frozen=True)
class _Source:
    job_id: str
    study_name: str
    spec: JobCreate


def differences(new: JobCreate, old: JobCreate) -> list[str]:
    """The fields of the task on which two jobs differ; empty when their values compare."""
    fields = {
        "model": new.model == old.model,
        "dataset": new.dataset == old.dataset,
        "budget.epochs": new.budget.epochs == old.budget.epochs,
        "budget.batch_size": new.budget.batch_size == old.budget.batch_size,
        "objective.metric": new.objective.metric == old.objective.metric,
    }
    return [name for name, same in fields.items() if not same]


def warm_plan(rt: Runtime, spec: JobCreate, *, owner: str, scope: str | None) -> WarmPlan:
    """What a job with ``spec`` starts from: ``auto`` learns from the owner tenant's own jobs,
    named jobs must be visible in ``scope`` (see ``repository.EVERY_TENANT``). Raises
    ``SpecRefused`` when it names jobs that do not exist (for the caller) or train something
    else; it writes nothing."""
    if spec.warm_start == "off":
        return WarmPlan()
    if isinstance(spec.model, PluginModelSpec) and spec.model.search_hyperparameters:
        # Earlier trials hold Adam's numbers only; a study that also samples the model's
        # hyperparameters would learn from half a configuration.
        if spec.warm_start == "auto":
            return WarmPlan()
        raise SpecRefused([(("warm_start",), "a job that searches its model's hyperparameters "
                            "cannot warm-start from other jobs; use warm_start: off")])
    with session_scope(rt.sessions) as session:
        if spec.warm_start == "auto":
            sources = _recent_sources(rt, session, spec, owner)
            max_jobs: int | None = MAX_SOURCE_JOBS
        else:
            sources = _named_sources(rt, session, spec.warm_start, spec, scope)
            max_jobs = None
    trials = (rt.studies.own_complete_trials(s.job_id, s.study_name, s.spec) for s in sources)
    return choose(spec, trials, max_jobs=max_jobs)


def choose(spec: JobCreate, sources: Iterable[Sequence[WarmTrial]], *,
           max_jobs: int | None = MAX_SOURCE_JOBS) -> WarmPlan:
    """The trials to copy from the sources' (newest source first), and those to try first.

    Sources are read lazily, and no further than the caps need. A source gives the trials that
    lie inside the new space; when the trial cap cuts one short, its best are kept.
    """
    picked: list[WarmTrial] = []
    used = 0
    for trials in sources:
        inside = [t for t in trials if spec.search_space.contains(t.config)]
        kept = _ranked(inside, spec)[: MAX_WARM_TRIALS - len(picked)]
        picked += sorted(kept, key=lambda t: t.number)
        used += 1 if kept else 0
        if len(picked) >= MAX_WARM_TRIALS or (max_jobs is not None and used >= max_jobs):
            break
    return WarmPlan(tuple(picked), tuple(_first(spec, picked)))


def _ranked(trials: Iterable[WarmTrial], spec: JobCreate) -> list[WarmTrial]:
    """Best first (stable, so ties keep their order)."""
    sign = 1 if spec.objective.minimize else -1
    return sorted(trials, key=lambda t: sign * t.value)


def _first(spec: JobCreate, trials: Sequence[WarmTrial]) -> list[AdamConfig]:
    """The best distinct copied configurations, as many as the budget leaves room for after
    the paper defaults and the user's configurations (each of which must still run)."""
    baseline = spec.search_space.contains(PAPER_DEFAULTS)
    room = min(FIRST_CONFIGS, spec.budget.n_trials - len(spec.enqueue) - (1 if baseline else 0))
    first: list[AdamConfig] = []
    for trial in _ranked(trials, spec):
        if len(first) >= room:
            break
        seen = [*first, PAPER_DEFAULTS] if baseline else first  # already tried anyway
        if not any(trial.config.is_close_to(config) for config in seen):
            first.append(trial.config)
    return first


def _recent_sources(rt: Runtime, session: Session, spec: JobCreate, owner: str
                    ) -> list[_Source]:
    """The owner's newest jobs on the same task, newest first."""
    rows = repo.recent_specs_on(session, model=spec.model.match,
                                dataset=spec.dataset.match, epochs=spec.budget.epochs,
                                limit=MAX_CANDIDATES, tenant=owner)
    sources = [_source(rt, row) for row in rows]
    return [source for source in sources if not differences(spec, source.spec)]


def _named_sources(rt: Runtime, session: Session, job_ids: list[str], spec: JobCreate,
                   scope: str | None) -> list[_Source]:
    """Exactly the named jobs, in the order named; every one must exist (for the caller) and
    be on the same task, or the job is refused naming each one that is not."""
    rows = repo.stored_specs(session, job_ids, tenant=scope)
    found = {row.job_id: _source(rt, row) for row in rows}
    problems: list[Problem] = []
    for index, job_id in enumerate(job_ids):
        source = found.get(job_id)
        if source is None:
            problems.append((("warm_start", index), f"there is no job {job_id}"))
        elif different := differences(spec, source.spec):
            problems.append((("warm_start", index), f"job {job_id} differs in "
                             f"{', '.join(different)}: its values do not compare"))
    if problems:
        raise SpecRefused(problems)
    return [found[job_id] for job_id in dict.fromkeys(job_ids)]


def _source(rt: Runtime, row: repo.StoredSpec) -> _Source:
    spec = rt.specs.get(row.job_id) or JobCreate.model_validate(row.spec)
    rt.specs.put(row.job_id, spec)
    return _Source(row.job_id, row.study_name, spec)
