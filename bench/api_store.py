"""The realistic store bench/api_load.py loads: built once per folder, then reused.

``own_store`` reuses the finished store in a folder (``bench-store.json`` marks one) or builds
one into an empty database: N jobs submitted through the service's own ``submit_job``, their
Optuna studies filled with the made-up trials of bench/api_history.py (about 5 % of the jobs
still running, a few cancelled), and their rows and trial slots left as workers would have left
them. ``bench_token`` adds an admin token to the store for each run (the API wants one).
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import distribution_to_json
from optuna.storages._rdb import models as optuna_tables
from optuna.trial import FrozenTrial
from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from bench.api_history import job_spec, job_trials
from tuner_service import auth, jobs
from tuner_service.config import Settings
from tuner_service.db.models import JobModel, TrialSlotModel
from tuner_service.db.session import make_engine, make_session_factory, session_scope
from tuner_service.runtime import Runtime, build_runtime
from tuner_service.tenancy import LOCAL

MARKER = "bench-store.json"  # written when a store is complete; its presence allows reuse
RUNNING_SHARE = 0.05
CANCELLED_SHARE = 0.02
JOB_GAP = timedelta(minutes=30)

JobRow = tuple[str, str, int]  # (id, status, n_trials)


def own_store(settings: Settings, n_jobs: int, seed: int, database_url: str | None
              ) -> dict[str, Any]:
    """Reuse the finished store in ``settings.home``, or build one into an empty database."""
    marker = settings.home / MARKER
    if marker.exists():
        stats = json.loads(marker.read_text())
        if stats["jobs"] != n_jobs:
            print(f"note: reusing the store in {settings.home} ({stats['jobs']} jobs; --jobs "
                  "ignored)", file=sys.stderr)
        return {**stats, "reused": True, "home": str(settings.home)}
    if job_count(settings) > 0:
        raise SystemExit(f"{database_url or settings.home} already holds jobs but no "
                         f"finished bench store ({marker} is missing): use an empty database "
                         "or another --home")
    print(f"building a store of {n_jobs} jobs in {settings.home} ...", file=sys.stderr)
    stats = build_store(settings, n_jobs, seed)
    print(f"store built in {stats['build_s']:.1f} s: {stats['jobs']} jobs, "
          f"{stats['trials']} trials ({stats['backend']})", file=sys.stderr)
    marker.write_text(json.dumps(stats))
    return {**stats, "reused": False, "home": str(settings.home)}


def bench_token(settings: Settings) -> str:
    """The secret of a fresh admin token of the jobs' tenant ("local") in the store's database,
    for the bench to send to the API (``tuner api`` writes none; one per run, kept nowhere)."""
    engine = make_engine(settings)
    try:
        return auth.create_token(make_session_factory(engine), tenant=LOCAL.tenant, admin=True,
                                 label="bench/api_load.py")[1]
    finally:
        engine.dispose()


def served_store(home: Path, database_url: str | None) -> tuple[dict[str, Any], list[JobRow]]:
    """The store in ``home`` as another process serves it: read as it is, not migrated."""
    settings = Settings(home=home, database_url=database_url)
    marker = home / MARKER
    stats = json.loads(marker.read_text()) if marker.exists() else {}
    rows = job_rows(settings)
    return {**stats, "jobs": len(rows), "reused": True, "home": str(home)}, rows


class _Unsent:
    """The broker while building: workers would have consumed these tasks long ago, and writing
    ~20 000 message files to the folder broker would cost a minute and leave a dead queue."""

    def send_trial(self, job_id: str, slot: int) -> str:
        return f"bench-{job_id}-{slot}"

    def close(self) -> None:
        pass


def job_count(settings: Settings) -> int:
    """How many jobs the database holds."""
    rt = build_runtime(settings)
    try:
        with session_scope(rt.sessions) as session:
            return int(session.scalar(select(func.count()).select_from(JobModel)) or 0)
    finally:
        rt.close()


def job_rows(settings: Settings) -> list[JobRow]:
    """(id, status, n_trials) of every job."""
    rt = build_runtime(settings)
    try:
        with session_scope(rt.sessions) as session:
            rows = session.execute(select(JobModel.id, JobModel.status, JobModel.n_trials))
            return [(job_id, status, n) for job_id, status, n in rows]
    finally:
        rt.close()


def build_store(settings: Settings, n_jobs: int, seed: int) -> dict[str, Any]:
    """Submit ``n_jobs`` jobs and fill their studies with finished (and a few running) trials.

    Jobs go through ``jobs.submit_job``; their trials are made by ``optuna.trial.create_trial``
    and written with Optuna's own ORM models, one transaction per job. (``study.add_trials``
    writes the same rows but costs ~25 ms per trial here, ten minutes for the default store.)
    """
    start = time.perf_counter()
    rt = build_runtime(settings)
    submitter = dataclasses.replace(rt, queue=_Unsent())  # type: ignore[arg-type]
    rng = random.Random(seed)
    now = datetime.now(UTC)
    n_running = max(1, round(n_jobs * RUNNING_SHARE))
    states: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    try:
        for k in range(n_jobs):
            status = ("running" if k >= n_jobs - n_running else
                      "cancelled" if rng.random() < CANCELLED_SHARE else "succeeded")
            spec = job_spec(rng, k)
            job = jobs.submit_job(submitter, spec, caller=LOCAL)
            created = now - JOB_GAP * (n_jobs - k)
            trials, started, finished = job_trials(rng, spec, status, created, now)
            _fill_study(rt, job.study_name, trials)
            _close_job(rt, job.id, status, trials, (min(created, started), started, finished))
            if k == 0:
                _check_readback(rt, job.study_name, trials)
            states.update(t.state.name.lower() for t in trials)
            statuses[status] += 1
            if (k + 1) % max(1, n_jobs // 10) == 0:
                print(f"  {k + 1}/{n_jobs} jobs, {time.perf_counter() - start:.1f} s",
                      file=sys.stderr)
    finally:
        rt.close()
    return {"jobs": n_jobs, "trials": sum(states.values()), "trials_by_state": dict(states),
            "jobs_by_status": dict(statuses), "seed": seed,
            "build_s": round(time.perf_counter() - start, 2),
            "backend": settings.resolved_database_url.split(":")[0].split("+")[0]}


def _fill_study(rt: Runtime, study_name: str, trials: list[FrozenTrial]) -> None:
    """Write the trials into the study in one transaction with Optuna's ORM models; the trial
    submit_job enqueued (waiting, number 0) becomes trial 0, as a worker would have run it."""
    storage = rt.studies.storage
    study_id = storage.get_study_id_from_name(study_name)
    table = optuna_tables.TrialModel
    with Session(storage.engine) as session, session.begin():
        existing = {m.number: m for m in session.scalars(
            select(table).where(table.study_id == study_id))}
        taken = {(a.trial_id, a.key) for a in session.scalars(
            select(optuna_tables.TrialUserAttributeModel).where(
                optuna_tables.TrialUserAttributeModel.trial_id.in_(
                    [m.trial_id for m in existing.values()])))}
        rows = []
        for trial in trials:
            row = existing.get(trial.number) or table(study_id=study_id, number=trial.number)
            row.state = trial.state
            row.datetime_start = trial.datetime_start
            row.datetime_complete = trial.datetime_complete
            rows.append(row)
        session.add_all(rows)
        session.flush()
        children: dict[type, list[dict[str, Any]]] = {}
        for row, trial in zip(rows, trials, strict=True):
            for model, values in _child_rows(row.trial_id, trial, taken).items():
                children.setdefault(model, []).extend(values)
        for model, values in children.items():
            if values:
                session.execute(insert(model), values)


def _child_rows(trial_id: int, trial: FrozenTrial, taken: set[tuple[int, str]]
                ) -> dict[type, list[dict[str, Any]]]:
    """Rows of a trial's params, value, per-epoch values and user attributes, as Optuna's
    ``create_new_trial`` writes them."""
    t = optuna_tables
    rows: dict[type, list[dict[str, Any]]] = {
        t.TrialParamModel: [
            {"trial_id": trial_id, "param_name": name,
             "param_value": trial.distributions[name].to_internal_repr(value),
             "distribution_json": distribution_to_json(trial.distributions[name])}
            for name, value in trial.params.items()],
        t.TrialIntermediateValueModel: [
            dict(zip(("intermediate_value", "intermediate_value_type"),
                     t.TrialIntermediateValueModel.intermediate_value_to_stored_repr(value),
                     strict=True), trial_id=trial_id, step=step)
            for step, value in trial.intermediate_values.items()],
        t.TrialUserAttributeModel: [
            {"trial_id": trial_id, "key": key, "value_json": json.dumps(value)}
            for key, value in trial.user_attrs.items() if (trial_id, key) not in taken],
        t.TrialValueModel: [],
    }
    if trial.value is not None:
        value, kind = t.TrialValueModel.value_to_stored_repr(trial.value)
        rows[t.TrialValueModel].append(
            {"trial_id": trial_id, "objective": 0, "value": value, "value_type": kind})
    return rows


def _check_readback(rt: Runtime, study_name: str, trials: list[FrozenTrial]) -> None:
    """Optuna reads back what was meant: guards the direct writes against schema drift."""
    stored = optuna.load_study(study_name=study_name, storage=rt.studies.storage).trials
    for want, got in zip(trials, stored, strict=True):
        if ((want.number, want.state, want.value, want.params, want.intermediate_values)
                != (got.number, got.state, got.value, got.params, got.intermediate_values)
                or not want.user_attrs.items() <= got.user_attrs.items()):
            raise SystemExit(f"trial {want.number} of {study_name} reads back as {got}")


def _close_job(rt: Runtime, job_id: str, status: str, trials: list[FrozenTrial],
               times: tuple[datetime, datetime, datetime]) -> None:
    """The job's row and slots as its workers would have left them."""
    created, started, finished = times
    ended = sum(1 for t in trials if t.state.is_finished())
    slot = TrialSlotModel
    mine = slot.job_id == job_id
    with session_scope(rt.sessions) as session:
        session.execute(update(JobModel).where(JobModel.id == job_id).values(
            status=status, created_at=created, started_at=started,
            finished_at=None if status == "running" else finished))
        session.execute(update(slot).where(mine, slot.slot < ended).values(
            state="done", attempts=1, trial_number=slot.slot, heartbeat_at=finished,
            finished_at=finished))
        if status == "running":
            session.execute(update(slot).where(mine, slot.slot >= ended, slot.slot < len(trials))
                            .values(state="running", attempts=1, trial_number=slot.slot,
                                    heartbeat_at=datetime.now(UTC)))
        elif status == "cancelled":
            session.execute(update(slot).where(mine, slot.slot >= ended).values(
                state="cancelled", finished_at=finished))

