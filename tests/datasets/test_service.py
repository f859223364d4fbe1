"""Deleting a data set and storing a job on it cannot slip past each other (PostgreSQL row
locks; SQLite has one writer): whichever comes second sees what the first did."""

from __future__ import annotations

import hashlib
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest

from tuner_service.datasets import service as datasets
from tuner_service.db.models import JobModel, utcnow
from tuner_service.runtime import Runtime
from tuner_service.schemas import DataDescription, UploadedDatasetSpec
from tuner_service.validation import SpecRefused

pytestmark = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)


def _dataset(rt: Runtime, tmp_path: Path) -> DataDescription:
    path = tmp_path / "mine.npz"
    np.savez(path, x=np.random.default_rng(0).normal(size=(20, 2)), y=np.arange(20) % 2)
    upload = datasets.Upload(path, path.name, path.stat().st_size,
                             hashlib.sha256(path.read_bytes()).hexdigest())
    dataset, _ = datasets.register_upload(rt, upload, datasets.UploadOptions(), tenant="local")
    return datasets.describe(rt, UploadedDatasetSpec(id=dataset.id), tenant="local")


def _job_on(data: DataDescription) -> JobModel:
    job_id = uuid.uuid4().hex
    return JobModel(id=job_id, name="j", status="queued", spec={}, study_name=f"s-{job_id}",
                    tenant="local", n_trials=0, dataset_id=data.id,
                    dataset=data.model_dump(mode="json"), created_at=utcnow())


def test_a_delete_waits_for_a_job_being_stored_and_then_refuses(runtime: Runtime,
                                                                tmp_path: Path) -> None:
    data = _dataset(runtime, tmp_path)
    assert data.id is not None
    outcome: dict[str, str] = {}

    def delete() -> None:
        try:
            datasets.delete_dataset(runtime, data.id or "", tenant="local")
            outcome["deleted"] = "yes"
        except datasets.DatasetInUse as conflict:
            outcome["conflict"] = str(conflict)

    with runtime.sessions() as submitting:
        datasets.hold(submitting, data, tenant="local")  # a submit, between check and commit
        deleter = threading.Thread(target=delete)
        deleter.start()
        deleter.join(timeout=1.5)
        assert deleter.is_alive(), "the delete did not wait for the job being stored"
        job = _job_on(data)
        submitting.add(job)
        submitting.commit()
    deleter.join(timeout=30)
    assert job.id in outcome.get("conflict", ""), outcome


def test_a_job_stored_while_its_data_set_is_deleted_is_refused(runtime: Runtime,
                                                               tmp_path: Path) -> None:
    data = _dataset(runtime, tmp_path)
    refused: list[BaseException] = []

    def submit() -> None:
        with runtime.sessions() as submitting:
            try:
                datasets.hold(submitting, data, tenant="local")
            except SpecRefused as error:
                refused.append(error)

    from tuner_service.db.owned_rows import DATASETS

    with runtime.sessions() as deleting:
        row = DATASETS.lock(deleting, data.id or "", tenant="local", exclusive=True)
        assert row is not None
        submitter = threading.Thread(target=submit)
        submitter.start()
        submitter.join(timeout=1.5)
        assert submitter.is_alive(), "storing the job did not wait for the deletion"
        deleting.delete(row)
        deleting.commit()
    submitter.join(timeout=30)
    assert refused and "deleted meanwhile" in str(refused[0])
