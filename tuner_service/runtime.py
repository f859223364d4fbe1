"""The service's wiring: settings -> engine, sessions, Optuna storage and queue."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from tuner_service.config import Settings
from tuner_service.db.session import engine_kwargs, make_engine, make_session_factory
from tuner_service.queue import TaskQueue
from tuner_service.render_cache import RenderCache
from tuner_service.studies import StudyStore


@dataclass
class Runtime:
    """What the use cases need, built once per process from Settings."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    studies: StudyStore
    queue: TaskQueue = field(repr=False)
    reports: RenderCache = field(default_factory=RenderCache, repr=False)

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
    )
