"""Use cases of uploaded Keras model files: register an upload (its archive checked, its bytes
stored, its inspection queued), record a worker's inspection, list, read, delete, and resolve
the file a job names. The API never loads the file: it only checks the zip's structure, and a
worker inspects the rest (``workers/model_files.py``) in a child process of its own."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tuner_service.datasets.service import MAX_NAME, forget_bytes
from tuner_service.db.models import ModelFileModel, aware, utcnow
from tuner_service.db.owned_rows import MODEL_FILES, InUse
from tuner_service.db.repository import NotFound
from tuner_service.db.session import session_scope
from tuner_service.model_sources.archive import ModelFileProblem, read_archive
from tuner_service.model_sources.types import ModelDescription, ModelInspection
from tuner_service.runtime import Runtime
from tuner_service.schemas import ModelFilePublic, UploadedModelSpec
from tuner_service.validation import SpecRefused

log = logging.getLogger(__name__)
SUFFIX = ".keras"
# An inspection task that has not ended this long after its time limit was lost with its
# worker (or never reached the broker): recovery sends it again.
RESEND_MARGIN_S = 60


class ModelInUse(Exception):
    """The model file cannot be deleted now: queued or running jobs train it."""


@dataclass(frozen=True)
class ModelUpload:
    """A received model file: where it is, what the client called it, its size and hash."""

    path: Path
    filename: str
    size_bytes: int
    sha256: str


def public(row: ModelFileModel) -> ModelFilePublic:
    """A row as the API shows it."""
    found = ModelInspection.model_validate(row.inspection) if row.inspection else None
    created = aware(row.created_at)
    assert created is not None
    return ModelFilePublic(
        id=row.id, name=row.name, tenant=row.tenant, sha256=row.sha256,
        size_bytes=row.size_bytes, status=row.status,
        reason=row.reason,
        input_shape=list(found.input_shape) if found else None,
        output_shape=list(found.output_shape) if found else None,
        n_params=found.n_params if found else None,
        keras_version=found.keras_version if found else None,
        outputs=found.outputs if found else None,
        created_at=created, inspected_at=aware(row.inspected_at),
    )


def register_upload(rt: Runtime, upload: ModelUpload, name: str | None, *, tenant: str
                    ) -> tuple[ModelFilePublic, bool]:
    """The tenant's model file for these bytes and whether it was created now (False: the
    same file was uploaded before). Raises ``ModelFileProblem`` for a file that is not a
    Keras archive we accept; stores nothing then. A new file's inspection is queued."""
    if not upload.filename.lower().endswith(SUFFIX):
        raise ModelFileProblem(f"a model file must be a Keras {SUFFIX} archive (model.save("
                               f"'model{SUFFIX}')); got {upload.filename[:100]!r}")
    existing = _existing(rt, upload.sha256, tenant)
    if existing is not None:
        return existing, False
    read_archive(upload.path, max_inflated_bytes=int(rt.settings.max_inflated_bytes))
    stored_now = rt.blobs.put(upload.sha256, upload.path)
    row = ModelFileModel(
        id=uuid.uuid4().hex, tenant=tenant,
        name=(name or Path(upload.filename).stem or upload.sha256[:12])[:MAX_NAME],
        sha256=upload.sha256, size_bytes=upload.size_bytes, status="validating",
        created_at=utcnow(), sent_at=utcnow())
    try:
        with session_scope(rt.sessions) as session:
            MODEL_FILES.add(session, row)
            created = public(row)
    except IntegrityError:
        again = _existing(rt, upload.sha256, tenant)  # the same file, at the same moment
        if again is None:
            raise
        return again, False
    except BaseException:
        if stored_now:
            forget_bytes(rt, upload.sha256)
        raise
    _send_inspection(rt, created.id)
    return created, True


def _send_inspection(rt: Runtime, model_id: str) -> None:
    # After the commit; one that fails or is lost is sent again by ``resend_lost_inspections``.
    try:
        rt.queue.send_inspection(model_id)
    except Exception:
        log.exception("could not enqueue the inspection of model %s; it will be sent again",
                      model_id)


def _existing(rt: Runtime, sha256: str, tenant: str) -> ModelFilePublic | None:
    """The tenant's model file of these bytes. One that was rejected is inspected again: its
    reason may have passed (a time limit, a worker's memory, a server limit since raised)."""
    with session_scope(rt.sessions) as session:
        row = MODEL_FILES.find_by_hash(session, sha256, tenant=tenant)
        if row is None:
            return None
        again = row.status == "rejected"
        if again:
            row.status, row.reason, row.inspection = "validating", None, None
            row.claimed_at, row.sent_at, row.inspected_at = None, utcnow(), None
        found = public(row)
    if again:
        _send_inspection(rt, found.id)
    return found


def claim_inspection(rt: Runtime, model_id: str) -> str | None:
    """Take a model file's inspection and return its hash; None when it is not waiting for
    one, or another worker took it less than the time limit (and a margin) ago: duplicate
    deliveries and resends start one inspection, not several."""
    now = utcnow()
    with session_scope(rt.sessions) as session:
        taken = session.execute(
            update(ModelFileModel)
            .where(ModelFileModel.id == model_id, ModelFileModel.status == "validating",
                   _unclaimed_since(now - _inspection_lease(rt)))
            .values(claimed_at=now).execution_options(synchronize_session=False))
        if taken.rowcount != 1:  # type: ignore[attr-defined]
            return None
        return session.scalar(select(ModelFileModel.sha256)
                              .where(ModelFileModel.id == model_id))


def _inspection_lease(rt: Runtime) -> timedelta:
    return timedelta(seconds=rt.settings.model_inspect_time_limit_s + RESEND_MARGIN_S)


def _unclaimed_since(moment: datetime) -> ColumnElement[bool]:
    return or_(ModelFileModel.claimed_at.is_(None), ModelFileModel.claimed_at < moment)


def record_inspection(rt: Runtime, model_id: str, found: ModelInspection | None,
                      reason: str | None = None) -> None:
    """A worker's verdict: ready with what it found, or rejected with ``reason`` (once: a
    duplicate delivery changes nothing)."""
    values = ({"status": "ready", "inspection": found.model_dump(mode="json")}
              if found is not None else {"status": "rejected", "reason": reason})
    with session_scope(rt.sessions) as session:
        session.execute(update(ModelFileModel)
                        .where(ModelFileModel.id == model_id,
                               ModelFileModel.status == "validating")
                        .values(**values, inspected_at=utcnow())
                        .execution_options(synchronize_session=False))


def resend_lost_inspections(rt: Runtime) -> int:
    """Send again the inspections that never ended (lost worker, broker down at upload)."""
    before = utcnow() - _inspection_lease(rt)
    with session_scope(rt.sessions) as session:
        ids = list(session.scalars(select(ModelFileModel.id).where(
            ModelFileModel.status == "validating", ModelFileModel.sent_at < before,
            _unclaimed_since(before))))
        if ids:
            session.execute(update(ModelFileModel).where(ModelFileModel.id.in_(ids))
                            .values(sent_at=utcnow())
                            .execution_options(synchronize_session=False))
    for model_id in ids:
        log.warning("resending the inspection of model %s", model_id)
        _send_inspection(rt, model_id)
    return len(ids)


def list_models(rt: Runtime, offset: int, limit: int, *, tenant: str | None
                ) -> tuple[list[ModelFilePublic], int]:
    """A page of the model files ``tenant`` may see (None: every tenant's), newest first."""
    with session_scope(rt.sessions) as session:
        page, total = MODEL_FILES.page(session, offset=offset, limit=limit, tenant=tenant)
        return [public(row) for row in page], total


def get_model(rt: Runtime, model_id: str, *, tenant: str | None) -> ModelFilePublic:
    """One model file; NotFound when ``tenant`` may not see it."""
    with session_scope(rt.sessions) as session:
        row = MODEL_FILES.find(session, model_id, tenant=tenant)
        if row is None:
            raise NotFound(model_id, "model")
        return public(row)


def delete_model(rt: Runtime, model_id: str, *, tenant: str | None) -> None:
    """Delete a model file and, once nothing holds them, its bytes. NotFound when ``tenant``
    may not see it; ``ModelInUse`` while a queued or running job trains it."""
    try:
        with session_scope(rt.sessions) as session:
            sha256 = MODEL_FILES.remove(session, model_id, tenant=tenant)
    except InUse as in_use:
        raise ModelInUse(f"model {model_id} is in use by queued or running jobs ({in_use}); "
                         "cancel them or wait for them to end") from None
    if sha256 is None:
        raise NotFound(model_id, "model")
    forget_bytes(rt, sha256)


def describe(rt: Runtime, spec: UploadedModelSpec, *, tenant: str) -> ModelDescription:
    """What a job's ``model: {id}`` names: a ready model file of the tenant; ``SpecRefused``
    (at ``model.id``) otherwise."""
    with session_scope(rt.sessions) as session:
        row = MODEL_FILES.find(session, spec.id, tenant=tenant)
        problem = _unusable(row, spec.id, tenant)
        if problem is not None or row is None:
            raise SpecRefused([(("model", "id"), problem or "")])
        found = ModelInspection.model_validate(row.inspection)
        return ModelDescription(
            source="file", name=row.name, id=row.id, sha256=row.sha256, kind="file",
            input_shape=found.input_shape, output_shape=found.output_shape,
            n_params=found.n_params, outputs=found.outputs)


def _unusable(row: ModelFileModel | None, model_id: str, tenant: str) -> str | None:
    if row is None:
        return f"no model {model_id} of tenant {tenant!r}: upload it with POST /v1/models"
    if row.status == "validating":
        return (f"model {model_id} is still being inspected by a worker; try again once "
                "GET /v1/models/{id} says ready")
    if row.status == "rejected":
        return f"model {model_id} was rejected: {row.reason}"
    return None


def hold(session: Session, model: ModelDescription, *, tenant: str) -> None:
    """In the transaction that stores a job on ``model``: keep an uploaded model file from
    being deleted until the job is stored; ``SpecRefused`` if it was deleted meanwhile."""
    if model.source == "file" and model.id is not None and MODEL_FILES.lock(
            session, model.id, tenant=tenant, exclusive=False) is None:
        raise SpecRefused([(("model", "id"), f"model {model.id} was deleted meanwhile")])
