"""Celery tasks: thin. Load the ticket, train, tell; the logic lives in tuner_service.trials."""

from __future__ import annotations

import functools
import logging
import os
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import DBAPIError, OperationalError

from tuner_service import job_status, leases, trials
from tuner_service.config import Settings
from tuner_service.datasets.store import BlobMissing
from tuner_service.model_size import estimate_training_memory
from tuner_service.model_sources import files as model_files
from tuner_service.model_sources.types import ModelDescription
from tuner_service.queue import INSPECT_MODEL_TASK, RUN_TRIAL_TASK
from tuner_service.runtime import Runtime, build_runtime
from tuner_service.schemas import DataDescription, JobCreate
from tuner_service.studies import STORAGE_ERRORS
from workers.celery_app import app
from workers.dataset_cache import CorruptDataset, DatasetCache

if TYPE_CHECKING:
    from workers.training import TrainSpec

log = logging.getLogger(__name__)
# Infrastructure failures: retried with backoff, the trial itself is not to blame.
INFRASTRUCTURE_ERRORS = (OperationalError, DBAPIError, ConnectionError, *STORAGE_ERRORS)


@functools.cache
def runtime() -> Runtime:
    """This process's runtime, built after the fork (engines must not cross a fork)."""
    return build_runtime(Settings())


@functools.cache
def dataset_cache() -> DatasetCache:
    """This host's cache of uploaded data sets, filled from the store the API wrote to."""
    settings = runtime().settings
    return DatasetCache(settings.dataset_cache_folder, int(settings.dataset_cache_bytes),
                        runtime().blobs)


@functools.cache
def model_cache() -> DatasetCache:
    """This host's cache of uploaded model files, filled from the same store."""
    settings = runtime().settings
    return DatasetCache(settings.model_cache_folder, int(settings.dataset_cache_bytes),
                        runtime().blobs)


def data_file(data: DataDescription) -> Path | None:
    """An uploaded data set's file on this host (fetched once); None for built-ins."""
    return _cached(dataset_cache(), data.sha256, f"data set {data.name!r}")


def model_file(model: ModelDescription) -> Path | None:
    """An uploaded model file on this host (fetched once); None for other models."""
    return _cached(model_cache(), model.sha256, f"model {model.name!r}")


def _cached(cache: DatasetCache, sha256: str | None, what: str) -> Path | None:
    if sha256 is None:
        return None
    try:
        return cache.path_for(sha256)
    except (BlobMissing, CorruptDataset) as error:
        from workers.training import SetupError

        raise SetupError(f"cannot read {what} ({sha256[:12]}): {error}") from error


@app.task(name=INSPECT_MODEL_TASK, autoretry_for=INFRASTRUCTURE_ERRORS, retry_backoff=2,
          retry_backoff_max=60, retry_jitter=True, max_retries=8)
def inspect_model(model_id: str) -> None:
    """Inspect an uploaded model file in a child process of its own, with a time limit, and
    record ready (with its shapes) or rejected (with the reason). Safe to deliver twice."""
    from workers.model_files import ModelRejected, inspect_in_child

    rt = runtime()
    sha256 = model_files.claim_inspection(rt, model_id)
    if sha256 is None:
        return
    settings = rt.settings
    try:
        path = model_cache().path_for(sha256)
        found = inspect_in_child(path, max_params=settings.max_model_params,
                                 timeout_s=settings.model_inspect_time_limit_s,
                                 max_inflated_bytes=int(settings.max_inflated_bytes),
                                 max_memory_bytes=int(settings.model_inspect_memory))
    except (BlobMissing, CorruptDataset) as error:
        model_files.record_inspection(rt, model_id, None, f"its stored bytes are lost: {error}")
    except ModelRejected as rejected:
        model_files.record_inspection(rt, model_id, None, str(rejected))
    else:
        model_files.record_inspection(rt, model_id, found)


@app.task(name=RUN_TRIAL_TASK, bind=True, autoretry_for=INFRASTRUCTURE_ERRORS,
          retry_backoff=2, retry_backoff_max=60, retry_jitter=True, max_retries=8)
def run_trial(self: Task, job_id: str, slot: int) -> None:
    """Run a trial slot of a job, packed with as many more of its slots as this worker can
    train in the same pass (safe to deliver more than once)."""
    rt = runtime()
    worker = f"{self.request.hostname}:{os.getpid()}"
    pack = trials.start_pack(rt, job_id, slot, str(self.request.id), worker,
                             assess=functools.partial(assess, rt))
    if pack is None:
        return
    outcomes = train_pack(rt, pack)
    trials.finish_pack(rt, pack, outcomes)


def train_spec(rt: Runtime, spec: JobCreate, data: DataDescription, model: ModelDescription,
               init_seed: int | None = None) -> TrainSpec:
    """The training part of a job, with its files on this host."""
    from workers.training import TrainSpec

    return TrainSpec.from_job(spec, data, init_seed=init_seed, data_file=data_file(data),
                              model_file=model_file(model),
                              max_params=rt.settings.max_model_params)


def assess(rt: Runtime, context: trials.JobContext) -> trials.WorkerFit:
    """How many copies of the job's model fit this worker's free memory, and whether the
    model can be packed at all (building it once per job and process)."""
    from workers.capacity import free_memory_bytes
    from workers.training import pack_problem

    per_copy = estimate_training_memory(context.spec, context.data, context.model).total_bytes
    fit = max(1, free_memory_bytes() // (2 * max(1, per_copy)))
    try:
        problem = pack_problem(train_spec(rt, context.spec, context.data, context.model))
    except INFRASTRUCTURE_ERRORS:
        raise
    except Exception as error:  # training alone will meet (and report) the same problem
        problem = f"{type(error).__name__}: {error}"[:300]
    return trials.WorkerFit(memory_fit=fit, problem=problem)


def train_pack(rt: Runtime, pack: trials.Pack) -> list[trials.TrialOutcome]:
    """Train a pack's configurations in one pass; a failure of the training itself becomes
    a ``fail`` outcome for each (a failure of the setup also fails the job)."""
    from workers.training import SetupError, train

    first = pack.first
    reports = trials.EpochReports(rt, pack)
    hooks = [functools.partial(reports.report, ticket) for ticket in pack.tickets]

    def every(reason: str) -> list[trials.TrialOutcome]:
        return [trials.TrialOutcome("fail", reason=reason)] * len(pack.tickets)

    try:
        with leases.keep_alive(rt, pack.claims):
            spec = train_spec(rt, first.spec, first.data, first.model, first.init_seed)
            results = train(spec, [ticket.config for ticket in pack.tickets], hooks)
    except INFRASTRUCTURE_ERRORS:
        raise
    except SetupError as error:  # no configuration can succeed: stop the search
        job_status.fail_job(rt, first.job_id, str(error))
        return every(str(error))
    except SoftTimeLimitExceeded:
        return every("trial exceeded its time limit")
    except Exception as error:  # these configurations failed; the search goes on
        log.warning("trials %s of job %s failed", [t.number for t in pack.tickets],
                    first.job_id, exc_info=True)
        last = traceback.format_exception_only(error)[-1].strip()
        return every(f"training error: {last}"[:500])
    return [trials.TrialOutcome(r.state, r.value, r.reason, r.history) for r in results]
