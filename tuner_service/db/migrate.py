"""Bring a database up to date: our Alembic migrations, then Optuna's own tables."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

import migrations
from tuner_service.config import Settings
from tuner_service.db.session import engine_kwargs, make_engine
from tuner_service.studies import StudyStore


def alembic_config() -> Config:
    """Alembic configuration pointing at the ``migrations`` package."""
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    return config


def _run_alembic(settings: Settings, action: str, revision: str) -> None:
    engine = make_engine(settings)
    try:
        with engine.begin() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            getattr(command, action)(config, revision)
    finally:
        engine.dispose()


def upgrade(settings: Settings, revision: str = "head") -> None:
    """Migrate our tables to ``revision`` and create or upgrade Optuna's tables."""
    _run_alembic(settings, "upgrade", revision)
    url = settings.resolved_database_url
    studies = StudyStore(url, engine_kwargs(url, settings))
    _ = studies.storage  # creating the storage creates or upgrades Optuna's tables
    studies.close()


def downgrade(settings: Settings, revision: str) -> None:
    """Migrate our tables down to ``revision`` (Optuna's tables are left alone)."""
    _run_alembic(settings, "downgrade", revision)
