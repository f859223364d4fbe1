"""Persistence of uploaded data sets' rows; callers own the transaction. Their bytes live in
a ``BlobStore`` (``tuner_service/datasets/store.py``), found by ``sha256``."""

from __future__ import annotations

from sqlalchemy import ColumnElement, Select, func, select, true
from sqlalchemy.orm import Session

from tuner_service.db.models import DatasetModel, JobModel, aware
from tuner_service.schemas import DatasetPublic, DatasetTarget

ACTIVE_JOB_STATUSES = ("queued", "running")


def _visible(tenant: str | None) -> ColumnElement[bool]:
    return DatasetModel.tenant == tenant if tenant is not None else true()


def public(row: DatasetModel) -> DatasetPublic:
    """A row as the API shows it."""
    described = row.description
    created = aware(row.created_at)
    assert created is not None
    return DatasetPublic(
        id=row.id, name=row.name, tenant=row.tenant, format=row.format,
        sha256=row.sha256, size_bytes=row.size_bytes, n_examples=described["n_examples"],
        feature_shape=described["feature_shape"],
        target=DatasetTarget.model_validate(described["target"]), splits=described["splits"],
        label_column=row.label_column, created_at=created,
    )


def add(session: Session, row: DatasetModel) -> None:
    """Store a new data set row (the unique (tenant, sha256) refuses a second one)."""
    session.add(row)
    session.flush()


def _by_id(dataset_id: str, tenant: str | None) -> Select[DatasetModel]:
    return select(DatasetModel).where(DatasetModel.id == dataset_id, _visible(tenant))


def find(session: Session, dataset_id: str, *, tenant: str | None) -> DatasetModel | None:
    """A data set that ``tenant`` may see (None: any tenant's)."""
    return session.scalars(_by_id(dataset_id, tenant)).one_or_none()


def lock(session: Session, dataset_id: str, *, tenant: str | None, exclusive: bool
         ) -> DatasetModel | None:
    """``find`` that also locks the row until the transaction ends (PostgreSQL; SQLite has a
    single writer anyway): shared by a job being stored on it, exclusive by its deletion, so
    that neither can slip past the other's check."""
    return session.scalars(
        _by_id(dataset_id, tenant).with_for_update(read=not exclusive)).one_or_none()


def find_by_hash(session: Session, sha256: str, *, tenant: str) -> DatasetModel | None:
    """The tenant's data set holding exactly these bytes, if it has one."""
    return session.scalars(
        select(DatasetModel).where(DatasetModel.sha256 == sha256, DatasetModel.tenant == tenant)
    ).one_or_none()


def page(session: Session, *, offset: int, limit: int, tenant: str | None
         ) -> tuple[list[DatasetModel], int]:
    """A page of the data sets ``tenant`` may see, newest first, and how many there are."""
    rows = session.scalars(
        select(DatasetModel).where(_visible(tenant))
        .order_by(DatasetModel.created_at.desc(), DatasetModel.id).offset(offset).limit(limit)
    ).all()
    total = session.scalar(select(func.count()).select_from(DatasetModel)
                           .where(_visible(tenant)))
    return list(rows), total or 0


def active_jobs_on(session: Session, dataset_id: str) -> list[str]:
    """Ids of the queued or running jobs that train on the data set (a few at most shown)."""
    return list(session.scalars(
        select(JobModel.id).where(JobModel.dataset_id == dataset_id,
                                  JobModel.status.in_(ACTIVE_JOB_STATUSES)).limit(5)
    ))


def hash_in_use(session: Session, sha256: str) -> bool:
    """True when some tenant's data set still holds these bytes."""
    return session.scalar(
        select(func.count()).select_from(DatasetModel).where(DatasetModel.sha256 == sha256)
    ) != 0
