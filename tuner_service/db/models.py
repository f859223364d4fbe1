"""ORM models of the service's tables. Every table is prefixed ``tuner_`` so that Optuna's
tables, which live in the same database, are never confused with ours."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Jobs stored before tenants existed, and the embedded default's, belong to this tenant.
LOCAL_TENANT = "local"
# Our Alembic revision lives here; Optuna keeps its own in ``alembic_version``.
ALEMBIC_VERSION_TABLE = "tuner_alembic_version"
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """Timezone-aware now, the only clock the tables use."""
    return datetime.now(UTC)


def aware(moment: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; every time we store is UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    """Declarative base of the service's tables."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class JobModel(Base):
    """A tuning job; its trials live in the Optuna study named ``study_name``."""

    __tablename__ = "tuner_jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    study_name: Mapped[str] = mapped_column(String(100), unique=True)
    tenant: Mapped[str] = mapped_column(String(64), index=True, server_default=LOCAL_TENANT)
    # An uploaded data set's id (no foreign key: the data set may be deleted once the job has
    # ended) and what it was when the job was submitted, so the report still names it.
    dataset_id: Mapped[str | None] = mapped_column(String(32), index=True, default=None)
    dataset: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # The same for an uploaded model file, and what the job's model was (any source).
    model_id: Mapped[str | None] = mapped_column(String(32), index=True, default=None)
    model: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # The latest pack a worker trained for this job: {"size": K, "reason": why that size}.
    packing: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    n_trials: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class TrialSlotModel(Base):
    """One of a job's ``n_trials`` units of work, the thing a Celery task carries out.

    A slot ends in exactly one terminal state (done, cancelled, failed) however often its task
    is delivered; ``attempts`` and ``task_id`` tell a redelivery after a lost worker from a
    duplicate of a task that is still running.
    """

    __tablename__ = "tuner_trial_slots"

    job_id: Mapped[str] = mapped_column(
        ForeignKey("tuner_jobs.id", ondelete="CASCADE"), primary_key=True
    )
    slot: Mapped[int] = mapped_column(Integer, primary_key=True)
    # "search": asks the study for a trial; "confirm": re-trains a candidate (ConfirmRunModel).
    kind: Mapped[str] = mapped_column(String(8), default="search", server_default="search")
    state: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    trial_number: Mapped[int | None] = mapped_column(Integer, default=None)
    task_id: Mapped[str | None] = mapped_column(String(64), default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class ConfirmRunModel(Base):
    """One confirmation run: a candidate configuration re-trained with a fresh seed, carried
    out by the confirm slot of the same number."""

    __tablename__ = "tuner_confirm_runs"

    job_id: Mapped[str] = mapped_column(
        ForeignKey("tuner_jobs.id", ondelete="CASCADE"), primary_key=True
    )
    slot: Mapped[int] = mapped_column(Integer, primary_key=True)
    candidate: Mapped[int] = mapped_column(Integer)
    is_baseline: Mapped[bool] = mapped_column(Boolean)
    source_trial: Mapped[int | None] = mapped_column(Integer, default=None)
    search_value: Mapped[float | None] = mapped_column(Float, default=None)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    seed: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default="waiting")
    value: Mapped[float | None] = mapped_column(Float, default=None)
    history: Mapped[list[float]] = mapped_column(JSON, default=list)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class TokenModel(Base):
    """An API token: only the SHA-256 digest of its secret is kept (the secret is shown once)."""

    __tablename__ = "tuner_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    label: Mapped[str] = mapped_column(String(200), default="")
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class BrowserSessionModel(Base):
    """A browser's sign-in (``kind`` "cookie"), or a one-time link that starts one ("link"),
    on behalf of a token: revoking the token ends both. Only the secret's digest is kept."""

    __tablename__ = "tuner_browser_sessions"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_id: Mapped[str] = mapped_column(
        ForeignKey("tuner_tokens.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class DatasetModel(Base):
    """A tenant's uploaded data set: what it is (shape, target) and which stored bytes hold it.

    The bytes are content-addressed (``sha256``) and shared: one tenant uploading the same
    file twice gets the same row, and two tenants' rows may name the same blob.
    """

    __tablename__ = "tuner_datasets"
    __table_args__ = (UniqueConstraint("tenant", "sha256"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(200))
    format: Mapped[str] = mapped_column(String(16))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    label_column: Mapped[str | None] = mapped_column(String(200), default=None)
    task: Mapped[str | None] = mapped_column(String(16), default=None)
    # n_examples, feature_shape, target {kind, n_classes, n_outputs}, splits
    description: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class BlobModel(Base):
    """Stored bytes by their SHA-256, kept in the database (``BlobChunkModel``) so that a worker
    on another host reads them with no shared filesystem."""

    __tablename__ = "tuner_blobs"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class BlobChunkModel(Base):
    """One piece of a blob, in order of ``seq``; small pieces keep memory flat both ways."""

    __tablename__ = "tuner_blob_chunks"

    sha256: Mapped[str] = mapped_column(
        ForeignKey("tuner_blobs.sha256", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class ModelFileModel(Base):
    """A tenant's uploaded Keras model file. A worker inspects it (``status`` validating, then
    ready or rejected with ``reason``); its bytes are a blob, content-addressed like a data
    set's."""

    __tablename__ = "tuner_models"
    __table_args__ = (UniqueConstraint("tenant", "sha256"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(200))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    # input_shape, output_shape, n_params, keras_version, outputs, layers (once ready)
    inspection: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # When its inspection task was last sent: recovery resends one that never ended.
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    # When a worker took it: one inspection at a time however often the task is delivered.
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    inspected_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class WorkerModel(Base):
    """A live worker process: who it is, the plugin models it can build, and its last sign of
    life (a worker silent for ``worker_lost_after_s`` no longer counts as offering them)."""

    __tablename__ = "tuner_workers"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    version: Mapped[str] = mapped_column(String(40))
    plugins: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow,
                                                   index=True)
