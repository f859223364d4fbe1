"""Use cases of uploaded data sets: register an upload, list, read, delete, and resolve the
data set a job names. Uploads are checked whole (``formats.read_dataset``) before anything is
stored; a refused one leaves no row and no stored bytes."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tuner_service.datasets import formats
from tuner_service.datasets.catalog import BUILTINS
from tuner_service.db import dataset_store as rows
from tuner_service.db.models import DatasetModel, utcnow
from tuner_service.db.owned_rows import DATASETS, InUse, blob_in_use
from tuner_service.db.repository import NotFound
from tuner_service.db.session import session_scope
from tuner_service.runtime import Runtime
from tuner_service.schemas import (
    BuiltinDatasetSpec,
    DataDescription,
    DatasetPublic,
    DatasetTarget,
    UploadedDatasetSpec,
)
from tuner_service.validation import SpecRefused

MAX_NAME = 200


class DatasetInUse(Exception):
    """The data set cannot change now: jobs still train on it, or the same file is there
    already with another meaning (label column or task)."""


@dataclass(frozen=True)
class Upload:
    """A received file: where it is, what the client called it, and its size and hash."""

    path: Path
    filename: str
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class UploadOptions:
    """The form fields that go with the file."""

    name: str | None = None
    label_column: str | None = None
    task: formats.TargetKind | None = None


def limits(rt: Runtime) -> formats.Limits:
    """The server's limits on what an upload may hold."""
    settings = rt.settings
    return formats.Limits(max_inflated_bytes=int(settings.max_inflated_bytes),
                          max_classes=settings.max_classes)


def register_upload(rt: Runtime, upload: Upload, options: UploadOptions, *, tenant: str
                    ) -> tuple[DatasetPublic, bool]:
    """The tenant's data set for these bytes and whether it was created now (False: the same
    file was uploaded before and is that data set). Raises ``formats.DatasetProblem`` for a
    bad file, ``DatasetInUse`` when the same file is there with another label column or
    task; stores nothing then."""
    fmt = formats.format_of(upload.filename)
    if fmt == "npz" and options.label_column is not None:
        raise formats.DatasetProblem(
            "an .npz file names its target array y (or y_train and y_val); label_column is "
            "for CSV and Parquet files", field="label_column")
    existing = _existing(rt, upload.sha256, options, tenant)
    if existing is not None:
        return existing, False
    _, described = formats.read_dataset(upload.path, fmt, label_column=options.label_column,
                                         task=options.task, limits=limits(rt))
    stored_now = rt.blobs.put(upload.sha256, upload.path)
    row = _row(upload, options, described, tenant)
    try:
        with session_scope(rt.sessions) as session:
            DATASETS.add(session, row)
            return rows.public(row), True
    except IntegrityError:
        # The same file, uploaded by the same tenant at the same moment: that one won.
        again = _existing(rt, upload.sha256, options, tenant)
        if again is None:
            raise
        return again, False
    except BaseException:
        if stored_now:
            forget_bytes(rt, upload.sha256)
        raise


def _existing(rt: Runtime, sha256: str, options: UploadOptions, tenant: str
              ) -> DatasetPublic | None:
    with session_scope(rt.sessions) as session:
        row = DATASETS.find_by_hash(session, sha256, tenant=tenant)
        if row is None:
            return None
        if (row.label_column, row.task) != (options.label_column, options.task):
            raise DatasetInUse(
                f"this file is already data set {row.id} ({row.name!r}) with label_column "
                f"{row.label_column!r} and task {row.task!r}; delete it first to upload it "
                "with other ones")
        return rows.public(row)


def _row(upload: Upload, options: UploadOptions, described: formats.Description,
         tenant: str) -> DatasetModel:
    name = options.name or Path(upload.filename).stem or upload.sha256[:12]
    target = DatasetTarget(kind=described.target_kind, n_classes=described.n_classes,
                           n_outputs=described.n_outputs)
    return DatasetModel(
        id=uuid.uuid4().hex, tenant=tenant, name=name[:MAX_NAME], format=described.format,
        sha256=upload.sha256, size_bytes=upload.size_bytes,
        label_column=options.label_column, task=options.task,
        description={"n_examples": described.n_examples,
                     "feature_shape": list(described.feature_shape),
                     "target": target.model_dump(), "splits": dict(described.splits)},
        created_at=utcnow(),
    )


def list_datasets(rt: Runtime, offset: int, limit: int, *, tenant: str | None
                  ) -> tuple[list[DatasetPublic], int]:
    """A page of the data sets ``tenant`` may see (None: every tenant's), newest first."""
    with session_scope(rt.sessions) as session:
        page, total = DATASETS.page(session, offset=offset, limit=limit, tenant=tenant)
        return [rows.public(row) for row in page], total


def get_dataset(rt: Runtime, dataset_id: str, *, tenant: str | None) -> DatasetPublic:
    """One data set; NotFound when ``tenant`` may not see it."""
    with session_scope(rt.sessions) as session:
        row = DATASETS.find(session, dataset_id, tenant=tenant)
        if row is None:
            raise NotFound(dataset_id, "data set")
        return rows.public(row)


def delete_dataset(rt: Runtime, dataset_id: str, *, tenant: str | None) -> None:
    """Delete a data set and, once no data set holds them, its bytes. NotFound when
    ``tenant`` may not see it; ``DatasetInUse`` while a queued or running job trains on it.
    Ended jobs keep their report: what they trained on was stamped on them."""
    try:
        with session_scope(rt.sessions) as session:
            sha256 = DATASETS.remove(session, dataset_id, tenant=tenant)
    except InUse as in_use:
        raise DatasetInUse(f"data set {dataset_id} is in use by queued or running jobs "
                           f"({in_use}); cancel them or wait for them to end") from None
    if sha256 is None:
        raise NotFound(dataset_id, "data set")
    forget_bytes(rt, sha256)


def forget_bytes(rt: Runtime, sha256: str) -> None:
    """Remove stored bytes once no data set or model file holds them."""
    with session_scope(rt.sessions) as session:
        if blob_in_use(session, sha256):
            return
    rt.blobs.delete(sha256)


def hold(session: Session, data: DataDescription, *, tenant: str) -> None:
    """In the transaction that stores a job on ``data``: keep an uploaded data set from being
    deleted until the job is stored (and then counted as using it); ``SpecRefused`` if it was
    deleted since ``describe``."""
    if data.id is not None and DATASETS.lock(session, data.id, tenant=tenant,
                                         exclusive=False) is None:
        raise SpecRefused([(("dataset", "id"), f"data set {data.id} was deleted meanwhile")])


def describe(rt: Runtime, spec: BuiltinDatasetSpec | UploadedDatasetSpec, *, tenant: str
             ) -> DataDescription:
    """What a job's ``dataset`` names, for a job of ``tenant``; ``SpecRefused`` (at
    ``dataset.id``) when it names no data set of that tenant."""
    if isinstance(spec, BuiltinDatasetSpec):
        return BUILTINS[spec.builtin]
    with session_scope(rt.sessions) as session:
        row = DATASETS.find(session, spec.id, tenant=tenant)
        if row is None:
            raise SpecRefused([(("dataset", "id"), f"no data set {spec.id} of tenant "
                                f"{tenant!r}: upload it with POST /v1/datasets")])
        public = rows.public(row)
    return DataDescription(
        source="upload", name=public.name, id=public.id, sha256=public.sha256,
        size_bytes=public.size_bytes, format=public.format, label_column=public.label_column,
        n_examples=public.n_examples, feature_shape=tuple(public.feature_shape),
        target=public.target, own_validation_split="validation" in public.splits,
    )
