"""Uploaded data sets over HTTP: upload, list, read, delete; every bad upload refused with its
problem named and nothing left behind; another tenant's data set is a 404 everywhere.

Runs on SQLite (bytes in files under TUNER_HOME) and PostgreSQL (bytes in the database).
"""

from __future__ import annotations

import csv
import io
import pickle
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from tests.conftest import bearer, make_settings, new_token, signed_in_client
from tuner_service.config import Settings
from tuner_service.db.migrate import upgrade
from tuner_service.db.models import BlobModel, DatasetModel
from tuner_service.db.session import make_engine

RNG = np.random.default_rng(0)


def npz_bytes(**arrays: Any) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def classification_npz(n: int = 60, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    return npz_bytes(x=x, y=(x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0))


def diabetes_csv() -> bytes:
    from sklearn.datasets import load_diabetes

    bunch: Any = load_diabetes()
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow([*bunch.feature_names, "progression"])
    writer.writerows([*row, target] for row, target in zip(bunch.data, bunch.target,
                                                           strict=True))
    return text.getvalue().encode()


def upload(client: TestClient, filename: str, content: bytes, **fields: str) -> Any:
    return client.post("/v1/datasets", files={"file": (filename, content)}, data=fields)


def stored(settings: Settings) -> tuple[int, int, int, int]:
    """Data set rows, blob rows, files in the file store, files left in the upload folder."""
    engine = make_engine(settings)
    try:
        with engine.connect() as connection:
            rows = connection.scalar(select(func.count()).select_from(DatasetModel))
            blobs = connection.scalar(select(func.count()).select_from(BlobModel))
    finally:
        engine.dispose()

    def files(folder: Path) -> int:
        return sum(1 for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0

    return rows or 0, blobs or 0, files(settings.dataset_folder), files(settings.upload_folder)


def test_an_npz_upload_is_described_listed_and_read_back(client: TestClient,
                                                         settings: Settings) -> None:
    content = classification_npz()
    response = upload(client, "mine.npz", content)
    assert response.status_code == 201, response.text
    dataset = response.json()
    import hashlib

    assert dataset["sha256"] == hashlib.sha256(content).hexdigest()
    assert dataset["size_bytes"] == len(content) and dataset["format"] == "npz"
    assert dataset["name"] == "mine" and dataset["n_examples"] == 60
    assert dataset["feature_shape"] == [4] and dataset["splits"] == {"all": 60}
    assert dataset["target"] == {"kind": "classes", "n_classes": 3, "n_outputs": 3}
    assert client.get(f"/v1/datasets/{dataset['id']}").json() == dataset
    again = upload(client, "same-bytes-other-name.npz", content)
    assert again.status_code == 200 and again.json()["id"] == dataset["id"]
    listed = client.get("/v1/datasets").json()
    assert listed["total"] == 1 and listed["items"] == [dataset]
    rows, blobs, _, uploads = stored(settings)
    assert (rows, uploads) == (1, 0)
    assert blobs == (1 if settings.uses_database_store else 0)


def test_a_csv_regression_set_and_an_own_split(client: TestClient) -> None:
    regression = upload(client, "diabetes.csv", diabetes_csv(), label_column="progression",
                        name="diabetes")
    assert regression.status_code == 201, regression.text
    assert regression.json()["target"] == {"kind": "values", "n_classes": None,
                                           "n_outputs": 1}
    assert regression.json()["feature_shape"] == [10]
    assert regression.json()["n_examples"] == 442
    x, y = RNG.normal(size=(50, 3)), RNG.integers(0, 2, size=50)
    split = upload(client, "split.npz", npz_bytes(x_train=x[:40], y_train=y[:40],
                                                  x_val=x[40:], y_val=y[40:]))
    assert split.status_code == 201, split.text
    assert split.json()["splits"] == {"train": 40, "validation": 10}
    page = client.get("/v1/datasets", params={"limit": 1}).json()
    assert page["total"] == 2 and [d["name"] for d in page["items"]] == ["split"]


def _zip_bomb() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                      "shape": (100_000, 1000)})
        with archive.open("x.npy", "w", force_zip64=True) as member:
            member.write(header.getvalue())
            zeros = bytes(2**22)
            for _ in range(100):  # 400 MB of zeros, a few hundred KB compressed
                member.write(zeros)
        archive.writestr("y.npy", b"")
    return buffer.getvalue()


class Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (open, ("/tmp/tuner-pickle-marker", "w"))


def _pickled() -> bytes:
    array = np.empty(12, dtype=object)
    array[:] = [Evil() for _ in range(12)]
    buffer = io.BytesIO()
    np.savez(buffer, x=array, y=np.zeros(12, dtype=np.int64))
    return buffer.getvalue()


BAD_UPLOADS: list[tuple[str, str, bytes, dict[str, str], int, str, str]] = [
    # (id, file name, content, fields, status, field, words in the message)
    ("unsupported-format", "data.xlsx", b"a,b\n1,2\n", {}, 415, "file", ".xlsx"),
    ("npz-not-a-zip", "data.npz", b"x,y\n1,2\n" * 10, {}, 422, "file", "zip"),
    ("parquet-not-parquet", "data.parquet", b"x,y\n1,2\n" * 10, {"label_column": "y"}, 422,
     "file", "parquet"),
    ("csv-binary-garbage", "data.csv", bytes(range(256)) * 8, {"label_column": "y"}, 422,
     "file", ""),
    ("pickled-object-array", "data.npz", _pickled(), {}, 422, "file", "numeric"),
    ("nan-features", "data.npz", npz_bytes(x=np.full((12, 2), np.nan), y=np.arange(12) % 2),
     {}, 422, "file", "NaN"),
    ("infinite-target", "data.npz", npz_bytes(x=np.ones((12, 2)),
                                              y=np.array([np.inf] + [1.0] * 11)),
     {}, 422, "file", "infinite"),
    ("lengths-differ", "data.npz", npz_bytes(x=np.ones((12, 2)), y=np.arange(11) % 2), {},
     422, "file", "12"),
    ("nine-examples", "data.npz", npz_bytes(x=np.ones((9, 2)), y=np.arange(9) % 2), {}, 422,
     "file", "10"),
    ("classes-not-from-zero", "data.npz", npz_bytes(x=np.ones((12, 2)), y=np.arange(12) % 3
                                                    + 1), {}, 422, "file", "0"),
    ("negative-class", "data.npz", npz_bytes(x=np.ones((12, 2)), y=np.arange(12) % 3 - 1),
     {}, 422, "file", ""),
    ("too-many-classes", "data.npz", npz_bytes(x=np.ones((30, 2)), y=np.arange(30)), {}, 422,
     "file", "TUNER_MAX_CLASSES"),
    ("missing-label-column", "data.csv", b"a,b,c\n" + b"1,2,3\n" * 12,
     {"label_column": "target"}, 422, "label_column", "target"),
    ("no-label-column-given", "data.csv", b"a,b,c\n" + b"1,2,3\n" * 12, {}, 422,
     "label_column", "label_column"),
    ("non-numeric-feature", "data.csv", b"a,b,y\n" + b"1,red,0\n2,blue,1\n" * 6,
     {"label_column": "y"}, 422, "file", "b"),
    ("zip-bomb", "data.npz", _zip_bomb(), {}, 413, "file", ""),
    ("bad-task", "data.npz", classification_npz(), {"task": "clustering"}, 422, "task",
     "classes"),
    ("truncated-npz", "data.npz", classification_npz(200)[:900], {}, 422, "file", ""),
    ("label-column-for-npz", "data.npz", classification_npz(), {"label_column": "y"}, 422,
     "label_column", "CSV"),
    ("huge-label-column", "data.csv", b"a,b\n1,2\n", {"label_column": "c" * 300}, 422,
     "label_column", "200"),
    ("name-with-control-characters", "data.npz", classification_npz(),
     {"name": "bad\x07name"}, 422, "name", "printable"),
    ("unknown-form-field", "data.npz", classification_npz(), {"labels": "y"}, 422, "labels",
     "unknown"),
]


@pytest.fixture
def small_limits_client(backend: str, tmp_path: Path, request: pytest.FixtureRequest
                        ) -> Iterator[tuple[TestClient, Settings]]:
    settings = make_settings(backend, tmp_path, request, max_classes=20,
                             max_inflated_bytes=50 * 2**20, max_upload_bytes=2 * 2**20)
    upgrade(settings)
    with signed_in_client(settings) as client:
        yield client, settings


@pytest.mark.parametrize(("filename", "content", "fields", "status", "field", "words"),
                         [case[1:] for case in BAD_UPLOADS], ids=[c[0] for c in BAD_UPLOADS])
def test_a_bad_upload_is_refused_naming_the_problem_and_leaves_nothing(
        small_limits_client: tuple[TestClient, Settings], filename: str, content: bytes,
        fields: dict[str, str], status: int, field: str, words: str) -> None:
    client, settings = small_limits_client
    assert upload(client, "good.npz", classification_npz()).status_code == 201
    before = stored(settings)
    response = upload(client, filename, content, **fields)
    assert response.status_code == status, response.text
    (problem,) = response.json()["detail"]
    assert problem["field"] == field and words in problem["message"], problem
    assert stored(settings) == before
    assert not Path("/tmp/tuner-pickle-marker").exists()


def test_an_over_size_stream_is_refused_while_it_streams(
        small_limits_client: tuple[TestClient, Settings]) -> None:
    client, settings = small_limits_client
    before = stored(settings)
    big = npz_bytes(x=np.zeros((3 * 2**20 // 8, 1)), y=np.zeros(3 * 2**20 // 8, np.int64))

    def chunks() -> Iterator[bytes]:  # no Content-Length: only the stream can tell
        boundary = b"--b0undary"
        yield (boundary + b'\r\nContent-Disposition: form-data; name="file"; '
               b'filename="big.npz"\r\n\r\n')
        for start in range(0, len(big), 65536):
            yield big[start:start + 65536]
        yield b"\r\n" + boundary + b"--\r\n"

    response = client.post("/v1/datasets", content=chunks(),
                           headers={"Content-Type": "multipart/form-data; boundary=b0undary"})
    assert response.status_code == 413, response.text
    assert "TUNER_MAX_UPLOAD_BYTES" in response.json()["detail"][0]["message"]
    assert stored(settings) == before


def test_another_tenants_data_set_is_not_found_anywhere(client: TestClient,
                                                        settings: Settings) -> None:
    mine = upload(client, "mine.npz", classification_npz()).json()
    other = bearer(new_token(settings, "acme"))
    assert client.get(f"/v1/datasets/{mine['id']}", headers=other).status_code == 404
    assert client.delete(f"/v1/datasets/{mine['id']}", headers=other).status_code == 404
    assert client.get("/v1/datasets", headers=other).json() == {"items": [], "total": 0}
    job = client.post("/v1/jobs", headers=other, json={
        "model": {"builtin": "logistic_regression"}, "dataset": {"id": mine["id"]}})
    assert job.status_code == 422
    assert job.json()["detail"][0]["field"] == "dataset.id"
    # The same bytes uploaded by the other tenant are its own data set; deleting it keeps ours.
    theirs = client.post("/v1/datasets", headers=other,
                         files={"file": ("x.npz", classification_npz())}).json()
    assert theirs["id"] != mine["id"] and theirs["sha256"] == mine["sha256"]
    assert client.delete(f"/v1/datasets/{theirs['id']}", headers=other).status_code == 204
    assert client.get(f"/v1/datasets/{mine['id']}").status_code == 200
    assert stored(settings)[:1] == (1,)


def test_a_job_must_fit_its_data_set(client: TestClient) -> None:
    diabetes = upload(client, "diabetes.csv", diabetes_csv(), label_column="progression")
    dataset_id = diabetes.json()["id"]

    def submit(**changes: Any) -> Any:
        return client.post("/v1/jobs", json={"model": {"builtin": "mlp", "hidden_units": [8]},
                                             "dataset": {"id": dataset_id}, **changes})

    accuracy = submit(objective={"metric": "val_accuracy"})
    assert accuracy.status_code == 422
    (problem,) = accuracy.json()["detail"]
    assert problem["field"] == "objective.metric"
    assert "val_mean_absolute_error" in problem["message"]
    cnn = submit(model={"builtin": "cnn"})
    assert cnn.status_code == 422 and cnn.json()["detail"][0]["field"] == "model"
    assert "[10]" in cnn.json()["detail"][0]["message"]
    builtin = client.post("/v1/jobs", json={"model": {"builtin": "logistic_regression"},
                                            "dataset": {"builtin": "digits"},
                                            "objective": {"metric": "val_mean_absolute_error"}})
    assert builtin.status_code == 422
    assert builtin.json()["detail"][0]["field"] == "objective.metric"
    job = submit(objective={"metric": "val_mean_absolute_error"}, budget={"n_trials": 2})
    assert job.status_code == 201, job.text
    assert job.json()["name"] == "mlp-diabetes"


def test_a_data_set_in_use_cannot_be_deleted(client: TestClient, settings: Settings) -> None:
    dataset = upload(client, "mine.npz", classification_npz()).json()
    job = client.post("/v1/jobs", json={"model": {"builtin": "logistic_regression"},
                                        "dataset": {"id": dataset["id"]},
                                        "budget": {"n_trials": 2}}).json()
    refused = client.delete(f"/v1/datasets/{dataset['id']}")
    assert refused.status_code == 409 and job["id"] in refused.json()["detail"]
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
    assert client.delete(f"/v1/datasets/{dataset['id']}").status_code == 204
    assert client.get(f"/v1/datasets/{dataset['id']}").status_code == 404
    assert stored(settings)[:3] == (0, 0, 0)
    # The ended job still says what it trained on.
    report = client.get(f"/v1/jobs/{job['id']}/report").json()
    assert report["dataset"]["sha256"] == dataset["sha256"]
    assert report["dataset"]["name"] == "mine"


def test_the_same_file_with_another_label_column_is_a_conflict(client: TestClient) -> None:
    content = b"a,b,c\n" + b"".join(b"%d,%d,%d\n" % (i, i % 2, i % 3) for i in range(30))
    assert upload(client, "t.csv", content, label_column="b").status_code == 201
    conflict = upload(client, "t.csv", content, label_column="c")
    assert conflict.status_code == 409 and "label_column" in conflict.json()["detail"]


def test_uploads_need_a_token_and_multipart(settings: Settings, client: TestClient) -> None:
    assert client.post("/v1/datasets", json={"file": "x"}).status_code == 415
    from tuner_service.app import create_app

    with TestClient(create_app(settings, recover_every_s=None)) as anonymous:
        refused = anonymous.post("/v1/datasets", files={"file": ("a.npz", b"x")})
        assert refused.status_code == 401


def test_pickle_marker_check_is_real() -> None:
    # The refused-pickle case above asserts a marker never appears; make sure unpickling the
    # same payload would have made it, so that assertion can fail.
    marker = Path("/tmp/tuner-pickle-marker")
    marker.unlink(missing_ok=True)
    pickle.loads(pickle.dumps(Evil())).close()
    assert marker.exists()
    marker.unlink()
