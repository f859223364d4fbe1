"""Our Alembic migrations, on SQLite and PostgreSQL, beside Optuna's own tables."""

from __future__ import annotations

from sqlalchemy import inspect, text

from tuner_service.config import Settings
from tuner_service.db.migrate import downgrade, upgrade
from tuner_service.db.models import ALEMBIC_VERSION_TABLE, Base
from tuner_service.db.session import make_engine


def test_upgrade_creates_our_tables_with_their_own_version_table(settings: Settings) -> None:
    engine = make_engine(settings)
    try:
        tables = set(inspect(engine).get_table_names())
        assert {"tuner_jobs", "tuner_trial_slots", "tuner_alembic_version"} <= tables
        assert {"studies", "trials", "alembic_version"} <= tables  # Optuna's, untouched
        with engine.connect() as connection:
            ours = connection.execute(text("SELECT version_num FROM tuner_alembic_version"))
            optunas = connection.execute(text("SELECT version_num FROM alembic_version"))
            assert ours.scalar() == "0006"
            assert optunas.scalar() not in ("0001", "0002", "0003", "0004", "0005", "0006")
    finally:
        engine.dispose()


def test_migrations_match_the_models(settings: Settings) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = make_engine(settings)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"version_table": ALEMBIC_VERSION_TABLE,
                                  "include_name": lambda name, type_, _p: type_ != "table"
                                  or name.startswith("tuner_")})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_downgrade_and_upgrade_again_is_clean(settings: Settings) -> None:
    downgrade(settings, "base")
    engine = make_engine(settings)
    try:
        tables = set(inspect(engine).get_table_names())
        assert "tuner_jobs" not in tables and "studies" in tables
        upgrade(settings)
        upgrade(settings)  # idempotent
        assert "tuner_jobs" in set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_jobs_from_before_tenants_belong_to_the_local_tenant(settings: Settings) -> None:
    downgrade(settings, "0002")
    engine = make_engine(settings)
    try:
        with engine.begin() as connection:
            connection.execute(text(
                "INSERT INTO tuner_jobs (id, name, status, spec, study_name, n_trials, "
                "created_at) VALUES ('a' || :tail, 'old', 'succeeded', '{}', 'tuner-job-old', "
                "3, CURRENT_TIMESTAMP)"), {"tail": "0" * 31})
        upgrade(settings)
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT name, tenant FROM tuner_jobs")).all()
        assert [tuple(row) for row in rows] == [("old", "local")]
        assert {"tuner_tokens", "tuner_browser_sessions"} <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
