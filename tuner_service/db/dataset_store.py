"""Uploaded data sets' rows as the API shows them; their queries are ``owned_rows.DATASETS``,
their bytes live in a ``BlobStore`` (``tuner_service/datasets/store.py``), found by
``sha256``."""

from __future__ import annotations

from tuner_service.db.models import DatasetModel, aware
from tuner_service.schemas import DatasetPublic, DatasetTarget


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

