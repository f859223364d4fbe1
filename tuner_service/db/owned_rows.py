"""Rows a tenant owns and uploaded (data sets, model files): found by id within a tenant, by
the hash of their bytes, paged, locked, and counted by the jobs that use them. Callers own the
transaction; the bytes live in a ``BlobStore`` shared by both kinds, found by ``sha256``."""

from __future__ import annotations

from typing import Generic, TypeVar

from sqlalchemy import ColumnElement, Select, func, select, true
from sqlalchemy.orm import InstrumentedAttribute, Session

from tuner_service.db.models import DatasetModel, JobModel, ModelFileModel

ACTIVE_JOB_STATUSES = ("queued", "running")


Row = TypeVar("Row", DatasetModel, ModelFileModel)


class OwnedRows(Generic[Row]):
    """The queries of one kind of uploaded row; ``job_column`` names it on a job."""

    def __init__(self, table: type[Row], job_column: InstrumentedAttribute[str | None]) -> None:
        self._table: type[Row] = table
        self._job_column = job_column

    def _visible(self, tenant: str | None) -> ColumnElement[bool]:
        return self._table.tenant == tenant if tenant is not None else true()

    def _by_id(self, row_id: str, tenant: str | None) -> Select[Row]:
        return select(self._table).where(self._table.id == row_id, self._visible(tenant))

    def add(self, session: Session, row: Row) -> None:
        """Store a new row (the unique (tenant, sha256) refuses a second one)."""
        session.add(row)
        session.flush()

    def find(self, session: Session, row_id: str, *, tenant: str | None) -> Row | None:
        """A row that ``tenant`` may see (None: any tenant's)."""
        return session.scalars(self._by_id(row_id, tenant)).one_or_none()

    def lock(self, session: Session, row_id: str, *, tenant: str | None, exclusive: bool
             ) -> Row | None:
        """``find`` that also locks the row until the transaction ends (PostgreSQL; SQLite
        has a single writer anyway): shared by a job being stored on it, exclusive by its
        deletion, so that neither can slip past the other's check."""
        return session.scalars(
            self._by_id(row_id, tenant).with_for_update(read=not exclusive)).one_or_none()

    def find_by_hash(self, session: Session, sha256: str, *, tenant: str) -> Row | None:
        """The tenant's row holding exactly these bytes, if it has one."""
        return session.scalars(select(self._table).where(
            self._table.sha256 == sha256, self._table.tenant == tenant)).one_or_none()

    def page(self, session: Session, *, offset: int, limit: int, tenant: str | None
             ) -> tuple[list[Row], int]:
        """A page of the rows ``tenant`` may see, newest first, and how many there are."""
        rows = session.scalars(
            select(self._table).where(self._visible(tenant))
            .order_by(self._table.created_at.desc(), self._table.id)
            .offset(offset).limit(limit)
        ).all()
        total = session.scalar(select(func.count()).select_from(self._table)
                               .where(self._visible(tenant)))
        return list(rows), total or 0

    def remove(self, session: Session, row_id: str, *, tenant: str | None) -> str | None:
        """Delete a row ``tenant`` may see and return the hash of its bytes (None: no such
        row); ``InUse`` while a queued or running job uses it. Locked before the check: a job
        being stored on it (``lock`` shared) finishes first, and is then counted, or finds
        the row gone."""
        row = self.lock(session, row_id, tenant=tenant, exclusive=True)
        if row is None:
            return None
        active = self.active_jobs_on(session, row_id)
        if active:
            raise InUse(active)
        session.delete(row)
        return row.sha256

    def active_jobs_on(self, session: Session, row_id: str) -> list[str]:
        """Ids of the queued or running jobs that use the row (a few at most shown)."""
        return list(session.scalars(
            select(JobModel.id).where(self._job_column == row_id,
                                      JobModel.status.in_(ACTIVE_JOB_STATUSES)).limit(5)
        ))


class InUse(Exception):
    """Queued or running jobs use the row; ``jobs`` names a few of them."""

    def __init__(self, jobs: list[str]) -> None:
        super().__init__(", ".join(jobs))
        self.jobs = jobs


DATASETS = OwnedRows(DatasetModel, JobModel.dataset_id)
MODEL_FILES = OwnedRows(ModelFileModel, JobModel.model_id)


def blob_in_use(session: Session, sha256: str) -> bool:
    """True when some tenant's data set or model file still holds these bytes."""
    return any(session.scalar(select(func.count()).select_from(table)
                              .where(table.sha256 == sha256)) != 0
               for table in (DatasetModel, ModelFileModel))
