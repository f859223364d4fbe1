"""Alembic migrations of the service's own tables (Optuna migrates its tables itself)."""
