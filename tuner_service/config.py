"""Settings: the only place that reads environment variables (prefix ``TUNER_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import ByteSize, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


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
    max_model_params: int = Field(
        default=100_000_000,
        description="Largest model (parameter count) a job may train; checked at submit "
        "(and for an uploaded model file, when a worker inspects it).",
    )
    max_training_memory: ByteSize = Field(
        default=ByteSize(4 * 2**30),
        description="Largest estimated training memory of one trial (weights, gradients, "
        "Adam's two moments, activations of one batch); checked at submit. E.g. 4GiB.",
    )

    # Limits per tenant (a 429 names the one passed); the per-job caps above apply too.
    tenant_max_active_jobs: int = Field(
        default=50, ge=1, description="Jobs a tenant may have queued or running at once.")
    tenant_max_queued_trials: int = Field(
        default=10_000, ge=1, description="Trials a tenant may have waiting for a worker.")
    admin_exempt_from_limits: bool = Field(
        default=False, description="Let admin tokens pass the tenant limits.")

    # Uploaded data sets.
    max_upload_bytes: ByteSize = Field(
        default=ByteSize(2 * 2**30),
        description="Largest data set file one upload may send (checked while it streams).")
    max_inflated_bytes: ByteSize = Field(
        default=ByteSize(8 * 2**30),
        description="Largest total uncompressed size of an .npz upload's arrays (checked from "
        "the archive's declared sizes before anything is decompressed: zip bombs).")
    max_classes: int = Field(default=1000, ge=2,
                             description="Most classes a classification data set may have.")
    dataset_store: Literal["auto", "files", "database"] = Field(
        default="auto",
        description="Where uploaded data sets' bytes live: `files` under $TUNER_HOME/datasets "
        "(one machine), `database` in the service's database in 1 MiB chunks (workers on other "
        "hosts read them with no shared disk); `auto`: files on SQLite, database otherwise.")
    max_model_bytes: ByteSize = Field(
        default=ByteSize(512 * 2**20),
        description="Largest .keras model file one upload may send (checked while it streams).")
    model_inspect_time_limit_s: int = Field(
        default=120, ge=1,
        description="A worker's inspection of an uploaded model file (in a child process of "
        "its own) is stopped after this long and the file rejected.")
    model_inspect_memory: ByteSize = Field(
        default=ByteSize(8 * 2**30),
        description="Address-space limit of that child process: a file declaring layers too "
        "large to allocate is rejected instead of swapping the host (TensorFlow alone takes "
        "about 2 GiB of it).")
    worker_heartbeat_s: float = Field(
        default=15.0, gt=0,
        description="How often a worker process tells the registry it is alive.")
    worker_lost_after_s: float = Field(
        default=60.0, gt=0,
        description="A worker silent for this long no longer counts as offering its plugins.")
    dataset_cache_bytes: ByteSize = Field(
        default=ByteSize(20 * 2**30),
        description="Disk a worker host's cache of data sets may use ($TUNER_HOME/cache/"
        "datasets); the least recently used are removed past it.")

    # Tokens and browser sessions.
    token: str | None = Field(
        default=None, description="The CLI's and Python client's API token (else the file "
        "$TUNER_HOME/token, which `tuner up` writes).")
    browser_session_s: int = Field(
        default=7 * 24 * 3600, ge=60, description="How long a browser stays signed in.")

    # HTTP hardening.
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default=list(LOOPBACK_HOSTS),
        description="Host names the API answers to (comma-separated; '*' for any). Guards a "
        "loopback API against DNS rebinding; add the names clients use in production.",
    )

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
    worker_max_memory_per_child: ByteSize = Field(
        default=ByteSize(6 * 2**30),
        description="A worker child whose memory grew past this after a trial is replaced, "
        "so one huge trial cannot pin gigabytes for the trials after it.",
    )
    filesystem_poll_s: float = 0.05
    db_pool_size: int = 2
    db_max_overflow: int = 3

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return [host.strip() for host in value.split(",") if host.strip()]
        return value

    @property
    def resolved_database_url(self) -> str:
        """The database URL in force: the configured one or SQLite under ``home``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'tuner.db').resolve()}"

    @property
    def token_file(self) -> Path:
        """Where ``tuner up`` keeps the embedded default's admin token (mode 0600)."""
        return self.home / "token"

    @property
    def saved_token(self) -> str | None:
        """The token in the file ``tuner up`` wrote, when there is one."""
        try:
            return self.token_file.read_text(encoding="utf-8").strip() or None
        except (FileNotFoundError, NotADirectoryError):
            return None

    def client_token(self, explicit: str | None = None) -> str | None:
        """The token a client sends: ``explicit`` (--token), else TUNER_TOKEN, else the
        file ``tuner up`` wrote, when there is one."""
        return explicit or self.token or self.saved_token

    @property
    def uses_database_store(self) -> bool:
        """True when data set bytes live in the database rather than under ``home``."""
        if self.dataset_store == "auto":
            return not self.resolved_database_url.startswith("sqlite")
        return self.dataset_store == "database"

    @property
    def dataset_folder(self) -> Path:
        """The file store of data set bytes (``dataset_store`` files)."""
        return (self.home / "datasets").resolve()

    @property
    def dataset_cache_folder(self) -> Path:
        """A worker host's cache of data set files, by hash."""
        return (self.home / "cache" / "datasets").resolve()

    @property
    def model_cache_folder(self) -> Path:
        """A worker host's cache of uploaded model files, by hash."""
        return (self.home / "cache" / "models").resolve()

    @property
    def upload_folder(self) -> Path:
        """Where uploads stream to while they are checked (emptied after each)."""
        return (self.home / "uploads").resolve()

    @property
    def uses_embedded_broker(self) -> bool:
        """True when no broker server is configured and the folder broker is used."""
        return not self.broker_url

    @property
    def broker_folder(self) -> Path:
        """Folder of the embedded (filesystem) broker."""
        return (self.home / "broker").resolve()
