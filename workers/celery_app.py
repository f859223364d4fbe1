"""The worker's Celery app: JSON only, late ack, prefetch 1 (see tuner_service.queue).

TensorFlow is imported in each pool child after the fork (``worker_process_init``), never in
the parent: a forked TensorFlow/CUDA runtime hangs or fails.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import worker_process_init, worker_process_shutdown

from tuner_service.config import Settings
from tuner_service.queue import make_celery

log = logging.getLogger(__name__)


def create_celery(settings: Settings | None = None) -> Celery:
    """The worker app with the trial task registered."""
    app = make_celery(settings or Settings())
    app.conf.update(include=["workers.tasks"])
    return app


app = create_celery()


_registration: list[Any] = []


@worker_process_init.connect
def _warm_child(**_kwargs: Any) -> None:
    # Pay TensorFlow's import once per child, before the first task arrives; find the plugin
    # models this child can build (a HyperModel is built once to learn its hyperparameters)
    # before it trains anything, then join the registry.
    from workers import plugins, registry, tasks, training

    gpus = training.configure_devices()
    found = plugins.discover()
    registration = registry.Registration(tasks.runtime(), found)
    registration.start()
    _registration.append(registration)
    log.info("worker child ready; GPUs: %s; plugins: %s", gpus or "none (CPU)",
             ", ".join(p.name for p in found if p.error is None) or "none")


@worker_process_shutdown.connect
def _stop_beating(**_kwargs: Any) -> None:
    # The entry stays until it goes silent: a child replaced after its hundredth trial (or
    # by a restart) is followed by one that registers only once TensorFlow and the plugins
    # have loaded, and jobs naming a plugin must not be refused meanwhile.
    for registration in _registration:
        registration.stop()
