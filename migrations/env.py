"""Alembic environment: our tables only, versioned in ``tuner_alembic_version``.

Optuna keeps its own ``alembic_version`` table in the same database; sharing it would make each
tool believe the other's revision is its own.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from tuner_service.config import Settings
from tuner_service.db.models import ALEMBIC_VERSION_TABLE, Base
from tuner_service.db.session import make_engine


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table=ALEMBIC_VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
        include_name=lambda name, type_, _parent: type_ != "table" or name.startswith("tuner_"),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Migrate the database given by the caller's connection, or by Settings."""
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(Settings())
    with engine.begin() as own_connection:
        _run(own_connection)
    engine.dispose()


run_migrations_online()
