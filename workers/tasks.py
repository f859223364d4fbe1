"""Celery tasks: thin. Load the ticket, train, tell; the logic lives in tuner_service.trials."""

from __future__ import annotations

import functools
import logging
import os
import traceback
from pathlib import Path

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import DBAPIError, OperationalError

from tuner_service import trials
from tuner_service.config import Settings
from tuner_service.datasets.store import BlobMissing
from tuner_service.model_sources import files as model_files
from tuner_service.model_sources.types import ModelDescription
from tuner_service.queue import INSPECT_MODEL_TASK, RUN_TRIAL_TASK
from tuner_service.runtime import Runtime, build_runtime
from tuner_service.schemas import DataDescription
from tuner_service.studies import STORAGE_ERRORS
from workers.celery_app import app
from workers.dataset_cache import CorruptDataset, DatasetCache

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
    """Run one trial slot of a job (safe to deliver more than once)."""
    rt = runtime()
    worker = f"{self.request.hostname}:{os.getpid()}"
    ticket = trials.start_trial(rt, job_id, slot, str(self.request.id), worker)
    if ticket is None:
        return
    outcome = train_ticket(rt, ticket)
    trials.finish_trial(rt, ticket, outcome)


def train_ticket(rt: Runtime, ticket: trials.TrialTicket) -> trials.TrialOutcome:
    """Train one ticket; a failure of the trial itself becomes a ``fail`` outcome."""
    from workers.training import SetupError, TrainSpec, train

    def on_epoch(epoch: int, value: float) -> str | None:
        return trials.report_epoch(rt, ticket, epoch, value)

    try:
        with trials.keep_alive(rt, ticket):
            spec = TrainSpec.from_job(ticket.spec, ticket.data, init_seed=ticket.init_seed,
                                      data_file=data_file(ticket.data),
                                      model_file=model_file(ticket.model),
                                      max_params=rt.settings.max_model_params)
            result = train(spec, [ticket.config], [on_epoch])[0]
    except INFRASTRUCTURE_ERRORS:
        raise
    except SetupError as error:  # no configuration can succeed: stop the search
        trials.fail_job(rt, ticket.job_id, str(error))
        return trials.TrialOutcome("fail", reason=str(error))
    except SoftTimeLimitExceeded:
        return trials.TrialOutcome("fail", reason="trial exceeded its time limit")
    except Exception as error:  # this configuration failed; the search goes on
        log.warning("trial %s of job %s failed", ticket.number, ticket.job_id, exc_info=True)
        last = traceback.format_exception_only(error)[-1].strip()
        return trials.TrialOutcome("fail", reason=f"training error: {last}"[:500])
    return trials.TrialOutcome(result.state, result.value, result.reason, result.history)
