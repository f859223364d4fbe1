"""Task names and enqueueing by name: the API never imports the worker code."""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery

from tuner_service.config import Settings

log = logging.getLogger(__name__)
RUN_TRIAL_TASK = "tuner.run_trial"
INSPECT_MODEL_TASK = "tuner.inspect_model"
# Redis hands an unacknowledged task to another worker after this long: keep it above the
# hard time limit, or a slow trial would run twice.
VISIBILITY_MARGIN_S = 600


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings shared by the producer (API) and the workers."""
    config: dict[str, Any] = {
        # The folder broker ignores the host; naming one keeps kombu from warning about it.
        "broker_url": settings.broker_url or "filesystem://localhost//",
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": settings.queue_name,
        "task_time_limit": settings.trial_time_limit_s,
        "task_soft_time_limit": max(1, settings.trial_time_limit_s - 60),
        "worker_max_tasks_per_child": settings.trials_per_worker_child,
        # TensorFlow keeps the memory of a big trial after it ends, so a child that once grew
        # past this is replaced once its trial ends, instead of pinning it for the next
        # hundred. Celery wants KiB and checks only in the prefork pool (ours): after each task,
        # the child's peak resident size on Linux. It never stops a trial midway: the submit
        # check (model_size.py) keeps a single trial small enough.
        "worker_max_memory_per_child": settings.worker_max_memory_per_child // 1024,
        "worker_hijack_root_logger": False,
        # A pool child imports TensorFlow before it reports ready (worker_process_init), which
        # takes several seconds, more with CUDA: the default 4 s would kill it over and over.
        "worker_proc_alive_timeout": 120.0,
        "broker_transport_options": {
            "visibility_timeout": settings.trial_time_limit_s + VISIBILITY_MARGIN_S,
        },
    }
    if settings.uses_embedded_broker:
        config["broker_transport_options"] = _folder_broker_options(settings)
        # kombu's folder transport, writing each message atomically (see folder_broker).
        config["broker_transport"] = "tuner_service.folder_broker:Transport"
        # The folder transport has no broadcast channel for remote control.
        config["worker_enable_remote_control"] = False
    return config


def _folder_broker_options(settings: Settings) -> dict[str, Any]:
    folder = settings.broker_folder
    for sub in ("queue", "processed", "control"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    return {
        "data_folder_in": str(folder / "queue"),
        "data_folder_out": str(folder / "queue"),
        "processed_folder": str(folder / "processed"),
        # Exchange bindings; kombu's default is ./control in whatever folder we run from.
        "control_folder": str(folder / "control"),
        "store_processed": False,
        "polling_interval": settings.filesystem_poll_s,
    }


def make_celery(settings: Settings) -> Celery:
    """A Celery app configured from ``settings``, with no tasks registered."""
    app = Celery("tuner", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


class TaskQueue:
    """Sends trial and inspection tasks by name."""

    def __init__(self, settings: Settings) -> None:
        self._celery = make_celery(settings)
        self._folder = (settings.broker_folder / "queue"
                        if settings.uses_embedded_broker else None)

    def send_trial(self, job_id: str, slot: int) -> str:
        """Enqueue one trial slot of a job; returns the Celery task id."""
        result = self._celery.send_task(RUN_TRIAL_TASK, args=[job_id, slot])
        return str(result.id)

    def send_inspection(self, model_id: str) -> str:
        """Enqueue the inspection of an uploaded model file; returns the Celery task id."""
        result = self._celery.send_task(INSPECT_MODEL_TASK, args=[model_id])
        return str(result.id)

    def broker_ready(self, timeout_s: float = 2.0) -> bool:
        """True when a task sent now would reach the broker (for the readiness probe)."""
        if self._folder is not None:
            return os.access(self._folder, os.W_OK)
        try:
            with self._celery.connection_for_write() as connection:
                connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0,
                                             timeout=timeout_s)
        except Exception:  # any failure means "not ready"; the probe says no more than that
            log.warning("broker not reachable", exc_info=True)
            return False
        return True

    def close(self) -> None:
        """Release broker connections."""
        self._celery.close()
