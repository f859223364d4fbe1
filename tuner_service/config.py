"""Settings: the only place that reads environment variables (prefix ``TUNER_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything the API, the workers and the CLI can be configured with."""

    model_config = SettingsConfigDict(env_prefix="TUNER_", extra="ignore")

    home: Path = Field(
        default=Path(".tuner"),
        description="Data folder of the embedded default (SQLite file, broker folder).",
    )
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: SQLite at $TUNER_HOME/tuner.db."
    )
    broker_url: str | None = Field(
        default=None,
        description="Celery broker URL (e.g. redis://host:6379/0); default: a folder broker "
        "under $TUNER_HOME that needs no server.",
    )
    queue_name: str = "tuner.trials"
    url: str = Field(
        default="http://127.0.0.1:8000", description="Where the CLI finds the API server."
    )

    # Limits a single job may ask for; they keep one user from taking the cluster.
    max_trials: int = 1000
    max_epochs: int = 1000
    max_batch_size: int = 65536
    max_request_bytes: int = 1_000_000

    # Worker behaviour.
    trials_per_worker_child: int = Field(
        default=100, description="Restart a worker child after this many trials (TF leaks)."
    )
    trial_time_limit_s: int = Field(default=6 * 3600, description="Hard limit of one trial.")
    max_trial_attempts: int = Field(
        default=3, description="How often a trial slot is retried after its worker was lost."
    )
    stale_after_s: int = Field(
        default=300,
        description="A running trial whose worker has not reported for this long is lost.",
    )
    filesystem_poll_s: float = 0.05
    db_pool_size: int = 2
    db_max_overflow: int = 3

    @property
    def resolved_database_url(self) -> str:
        """The database URL in force: the configured one or SQLite under ``home``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'tuner.db').resolve()}"

    @property
    def uses_embedded_broker(self) -> bool:
        """True when no broker server is configured and the folder broker is used."""
        return not self.broker_url

    @property
    def broker_folder(self) -> Path:
        """Folder of the embedded (filesystem) broker."""
        return (self.home / "broker").resolve()
