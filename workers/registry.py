"""This worker process in the registry: it registers with the plugin models it can build when
it starts, beats while it lives, and leaves when it shuts down (see
``tuner_service/model_sources/registry.py``). A failed write is logged and tried again at
the next beat: the registry must never stop a worker from training."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import socket
import threading
from collections.abc import Sequence

from tuner_service.model_sources import registry
from tuner_service.model_sources.types import PluginDescription
from tuner_service.runtime import Runtime

log = logging.getLogger(__name__)


class Registration:
    """One worker process's entry, kept alive by a daemon thread."""

    def __init__(self, rt: Runtime, plugins: Sequence[PluginDescription]) -> None:
        self._rt = rt
        self._plugins = list(plugins)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat_forever, name="registry",
                                        daemon=True)

    def start(self) -> None:
        """Register now and beat from now on."""
        self._register()
        self._thread.start()

    def stop(self) -> None:
        """Stop beating (the entry goes silent, and lost after ``worker_lost_after_s``)."""
        self._stop.set()

    def _register(self) -> None:
        try:
            registry.register(self._rt, self.worker_id, host=socket.gethostname(),
                              pid=os.getpid(), version=_version(), plugins=self._plugins)
        except Exception:
            log.warning("could not register in the worker registry; trying again",
                        exc_info=True)

    def _beat_forever(self) -> None:
        while not self._stop.wait(self._rt.settings.worker_heartbeat_s):
            try:
                alive = registry.beat(self._rt, self.worker_id)
            except Exception:
                log.warning("worker registry heartbeat failed", exc_info=True)
                continue
            if not alive:  # removed meanwhile (a database restored, say): register again
                self._register()


def _version() -> str:
    try:
        return importlib.metadata.version("tuner-service")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
