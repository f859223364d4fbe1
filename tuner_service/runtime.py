"""The service's wiring: settings -> engine, sessions, Optuna storage and queue."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from tuner_service.config import Settings
from tuner_service.datasets.store import BlobStore, make_blob_store
from tuner_service.db.session import engine_kwargs, make_engine, make_session_factory
from tuner_service.lru import LRU
from tuner_service.queue import TaskQueue
from tuner_service.render_cache import RenderCache
from tuner_service.schemas import JobCreate
from tuner_service.studies import StudyStore

if TYPE_CHECKING:  # jobs builds on the runtime; only the annotation points back
    from tuner_service.jobs import JobOverview


CACHE_SIZE = 4096


@dataclass
class Runtime:
    """What the use cases need, built once per process from Settings."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    studies: StudyStore
    queue: TaskQueue = field(repr=False)
    # Where uploaded data sets' bytes live (files under home, or the database).
    blobs: BlobStore = field(repr=False)
    reports: RenderCache = field(default_factory=RenderCache, repr=False)
    # Validated job specs by job id: a spec never changes once stored.
    specs: LRU[str, JobCreate] = field(default_factory=lambda: LRU(CACHE_SIZE), repr=False)
    # A job's public JSON by job id, with what it showed (``JobOverview.shown``).
    job_json: LRU[str, tuple[object, bytes]] = field(
        default_factory=lambda: LRU(CACHE_SIZE), repr=False)
    # Overviews of jobs that can no longer change (``JobOverview.final``), by job id.
    final_jobs: LRU[str, JobOverview] = field(default_factory=lambda: LRU(CACHE_SIZE), repr=False)

    def close(self) -> None:
        """Release connections (pools, broker)."""
        self.queue.close()
        self.studies.close()
        self.engine.dispose()


def build_runtime(settings: Settings) -> Runtime:
    """Wire a runtime; nothing connects until first used."""
    engine = make_engine(settings)
    url = settings.resolved_database_url
    return Runtime(
        settings=settings,
        engine=engine,
        sessions=make_session_factory(engine),
        studies=StudyStore(url, engine_kwargs(url, settings)),
        queue=TaskQueue(settings),
        blobs=make_blob_store(settings, engine),
    )
