"""Models over HTTP without workers: uploads of .keras files (their archive checked at once,
nothing stored when refused), the list of built-ins, plugins and files, another tenant's file
a 404, and every way a job's ``model`` can be refused at submit with its field named.

Plugins come from the real registry (rows a worker would write, with descriptions a worker's
discovery would make); inspection by a real worker is tested in tests/test_models_end_to_end.py.
Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import io
import json
import zipfile
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from tests.conftest import bearer, new_token
from tuner_service.config import Settings
from tuner_service.db.models import BlobModel, ModelFileModel, WorkerModel, utcnow
from tuner_service.db.session import make_engine
from tuner_service.model_sources import registry
from tuner_service.model_sources.types import HyperParameter, PluginDescription, PluginOption
from tuner_service.runtime import Runtime

CONFIG = {"class_name": "Functional", "module": "keras", "config": {"layers": []}}


def keras_zip(config: dict[str, Any] | None = None, *, extra: str | None = None) -> bytes:
    """A zip shaped like a .keras archive (its content is only checked by a worker)."""
    buffer = io.BytesIO()
    members = [("config.json", json.dumps(config or CONFIG).encode()),
               ("metadata.json", json.dumps({"keras_version": "3.15.1"}).encode()),
               ("model.weights.h5", b"\x89HDF\r\n"), *([(extra, b"x")] if extra else [])]
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in members:
            # A fixed time: the same content makes the same bytes, whenever it is zipped.
            archive.writestr(zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0)), content)
    return buffer.getvalue()


def upload(client: TestClient, filename: str, content: bytes, **fields: str) -> Any:
    return client.post("/v1/models", files={"file": (filename, content)}, data=fields)


def rows(settings: Settings) -> tuple[int, int]:
    engine = make_engine(settings)
    try:
        with engine.connect() as connection:
            models = connection.scalar(select(func.count()).select_from(ModelFileModel))
            blobs = connection.scalar(select(func.count()).select_from(BlobModel))
    finally:
        engine.dispose()
    files = (sum(1 for p in settings.dataset_folder.rglob("*") if p.is_file())
             if settings.dataset_folder.exists() else 0)
    return models or 0, (blobs or 0) + files


def job(model: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {"model": model, "dataset": {"builtin": "digits"},
            "budget": {"n_trials": 2, "epochs": 1}, **changes}


def field_errors(response: Any) -> dict[str, str]:
    assert response.status_code == 422, response.text
    return {e["field"]: e["message"] for e in response.json()["detail"]}


def test_an_upload_is_validating_listed_read_and_deduplicated(client: TestClient,
                                                             settings: Settings) -> None:
    response = upload(client, "net.keras", keras_zip(), name="my net")
    assert response.status_code == 201, response.text
    model = response.json()
    assert (model["name"], model["status"], model["reason"]) == ("my net", "validating", None)
    assert model["input_shape"] is None and model["n_params"] is None
    assert client.get(f"/v1/models/{model['id']}").json() == model
    again = upload(client, "other-name.keras", keras_zip())
    assert again.status_code == 200 and again.json()["id"] == model["id"]
    listed = client.get("/v1/models").json()
    assert listed["files"] == [model] and listed["total_files"] == 1
    assert [b["builtin"] for b in listed["builtins"]] == ["logistic_regression", "mlp", "cnn"]
    assert listed["builtins"][1]["options"] == {"hidden_units": [1000, 1000], "dropout": 0.5}
    assert listed["plugins"] == []
    assert rows(settings) == (1, 1)


@pytest.mark.parametrize(("filename", "content", "status", "says"), [
    ("net.h5", keras_zip(), 422, "must be a Keras .keras archive"),
    ("net.keras", b"not a zip at all", 422, "zip"),
    ("net.keras", keras_zip()[:200], 422, "zip"),
    ("net.keras", keras_zip(extra="../evil.py"), 422, "../evil.py"),
    ("net.keras", keras_zip(extra="assets/run.sh"), 422, "assets/run.sh"),
    ("net.keras", keras_zip({"no": "class"}), 422, "config.json"),
])
def test_a_bad_file_is_refused_at_once_and_nothing_is_stored(
        client: TestClient, settings: Settings, filename: str, content: bytes, status: int,
        says: str) -> None:
    response = upload(client, filename, content)
    assert response.status_code == status, response.text
    [error] = response.json()["detail"]
    assert error["field"] == "file" and says in error["message"], error
    assert rows(settings) == (0, 0)
    assert client.get("/v1/models").json()["files"] == []


def test_an_upload_over_the_size_limit_is_413_naming_the_setting(settings: Settings) -> None:
    from tests.conftest import signed_in_client

    small = settings.model_copy(update={"max_model_bytes": 1000})
    with signed_in_client(small) as client:
        response = upload(client, "net.keras", keras_zip() + bytes(2000))
    assert response.status_code == 413
    assert "TUNER_MAX_MODEL_BYTES" in response.json()["detail"][0]["message"]


def test_another_tenants_file_is_a_404_and_delete_removes_the_bytes(
        client: TestClient, settings: Settings) -> None:
    model = upload(client, "net.keras", keras_zip()).json()
    other = bearer(new_token(settings, tenant="other"))
    assert client.get(f"/v1/models/{model['id']}", headers=other).status_code == 404
    assert client.delete(f"/v1/models/{model['id']}", headers=other).status_code == 404
    assert client.get("/v1/models", headers=other).json()["files"] == []
    refused = client.post("/v1/jobs", json=job({"id": model["id"]}), headers=other)
    assert f"no model {model['id']} of tenant 'other'" in field_errors(refused)["model.id"]
    assert client.delete(f"/v1/models/{model['id']}").status_code == 204
    assert client.get(f"/v1/models/{model['id']}").status_code == 404
    assert rows(settings) == (0, 0)


def test_a_file_still_being_inspected_or_rejected_cannot_be_tuned(
        client: TestClient, runtime: Runtime) -> None:
    model = upload(client, "net.keras", keras_zip()).json()
    refused = client.post("/v1/jobs", json=job({"id": model["id"]}))
    assert "still being inspected" in field_errors(refused)["model.id"]
    from tuner_service.model_sources import files

    # What a worker's inspection task does: one claim wins however often it is delivered.
    assert files.claim_inspection(runtime, model["id"]) is not None
    assert files.claim_inspection(runtime, model["id"]) is None
    assert files.resend_lost_inspections(runtime) == 0  # claimed just now
    files.record_inspection(runtime, model["id"], None, "layer 'x': Lambda is not allowed")
    assert files.claim_inspection(runtime, model["id"]) is None
    rejected = client.post("/v1/jobs", json=job({"id": model["id"], "weights": "file"}))
    assert "was rejected: layer 'x': Lambda" in field_errors(rejected)["model.id"]
    assert client.get(f"/v1/models/{model['id']}").json()["status"] == "rejected"
    # Uploaded again, a rejected file is inspected again (its reason may have passed).
    again = upload(client, "net.keras", keras_zip())
    assert again.status_code == 200
    assert (again.json()["id"], again.json()["status"], again.json()["reason"]) == (
        model["id"], "validating", None)
    assert files.claim_inspection(runtime, model["id"]) is not None


def test_a_model_spec_names_its_field_when_malformed(client: TestClient) -> None:
    assert "model.id" in field_errors(client.post("/v1/jobs", json=job({"id": "nope"})))
    assert "model.weights" in field_errors(client.post(
        "/v1/jobs", json=job({"id": "a" * 32, "weights": "random"})))
    assert "model.mlp.hidden_units" in field_errors(client.post(
        "/v1/jobs", json=job({"builtin": "mlp", "hidden_units": "wide"})))
    assert "model.plugin" in field_errors(client.post(
        "/v1/jobs", json=job({"plugin": "has spaces"})))
    assert "model.surprise" in field_errors(client.post(
        "/v1/jobs", json=job({"plugin": "x", "surprise": 1})))


TINY = PluginDescription(
    name="tiny", package="acme-models", version="1.2.0", kind="build",
    options=(PluginOption(name="units", required=False, default=16, type="int"),
             PluginOption(name="depth", required=True, type="int")))
HYPER = PluginDescription(
    name="hyper", package="acme-models", version="1.2.0", kind="hypermodel",
    hyperparameters=(HyperParameter(name="units", kind="int", default=32, min_value=8,
                                    max_value=64, step=8),),
    input_shape=(64,), output_shape=(10,), n_params=2410)
BROKEN = PluginDescription(name="broken", kind="build", error="AttributeError: nope")


@pytest.fixture
def worker(runtime: Runtime) -> str:
    registry.register(runtime, "host-a:1", host="host-a", pid=1, version="0.1.0",
                      plugins=[TINY, HYPER, BROKEN])
    return "host-a:1"


def test_plugins_of_live_workers_are_listed_with_their_worker_count(
        client: TestClient, runtime: Runtime, worker: str) -> None:
    registry.register(runtime, "host-b:2", host="host-b", pid=2, version="0.1.0",
                      plugins=[TINY])
    plugins = {p["name"]: p for p in client.get("/v1/models").json()["plugins"]}
    assert {name: p["workers"] for name, p in plugins.items()} == {
        "broken": 0, "hyper": 1, "tiny": 2}
    assert plugins["tiny"]["options"][1] == {"name": "depth", "required": True,
                                             "default": None, "type": "int"}
    assert plugins["hyper"]["hyperparameters"][0]["max_value"] == 64
    assert plugins["broken"]["error"] == "AttributeError: nope"
    _silence(runtime, "host-b:2")
    plugins = {p["name"]: p for p in client.get("/v1/models").json()["plugins"]}
    assert plugins["tiny"]["workers"] == 1
    _silence(runtime, worker)
    assert client.get("/v1/models").json()["plugins"] == []


def _silence(runtime: Runtime, worker_id: str) -> None:
    lost = utcnow() - timedelta(seconds=runtime.settings.worker_lost_after_s + 1)
    with runtime.sessions() as session, session.begin():
        session.execute(update(WorkerModel).where(WorkerModel.id == worker_id)
                        .values(heartbeat_at=lost))


def test_a_plugin_job_is_refused_when_no_live_worker_offers_it(
        client: TestClient, runtime: Runtime, worker: str) -> None:
    errors = field_errors(client.post("/v1/jobs", json=job({"plugin": "missing"})))
    assert "no live worker offers plugin 'missing' (offered now: hyper, tiny)" in \
        errors["model.plugin"]
    assert "no live worker offers plugin 'broken'" in field_errors(
        client.post("/v1/jobs", json=job({"plugin": "broken"})))["model.plugin"]
    _silence(runtime, worker)
    assert "offered now: none" in field_errors(
        client.post("/v1/jobs", json=job({"plugin": "tiny", "options": {"depth": 1}})))[
        "model.plugin"]


def test_plugin_options_and_hyperparameter_search_are_checked_at_submit(
        client: TestClient, worker: str) -> None:
    errors = field_errors(client.post("/v1/jobs", json=job(
        {"plugin": "tiny", "options": {"units": "many", "colour": "red"},
         "search_hyperparameters": True})))
    assert errors["model.options.units"].startswith("must be of type int")
    assert "takes no option 'colour' (it takes: units, depth)" in errors["model.options.colour"]
    assert "needs option 'depth'" in errors["model.options.depth"]
    assert "only a KerasTuner HyperModel" in errors["model.search_hyperparameters"]
    assert "takes no options" in field_errors(client.post("/v1/jobs", json=job(
        {"plugin": "hyper", "options": {"units": 8}})))["model.options"]


def test_a_hypermodel_whose_shapes_do_not_fit_the_data_is_refused_naming_both(
        client: TestClient, worker: str) -> None:
    message = field_errors(client.post("/v1/jobs", json=job({"plugin": "hyper"})))["model"]
    assert "'hyper' takes inputs shaped [64]" in message
    assert "'digits' has feature_shape [8, 8, 1]" in message


def test_a_searched_hypermodel_job_stores_its_space(client: TestClient, runtime: Runtime,
                                                    worker: str) -> None:
    spec = job({"plugin": "hyper", "search_hyperparameters": True})
    registry.register(runtime, worker, host="host-a", pid=1, version="0.1.0", plugins=[
        HYPER.model_copy(update={"input_shape": (8, 8, 1)})])
    response = client.post("/v1/jobs", json=spec)
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    with runtime.sessions() as session:
        from tuner_service.db.models import JobModel

        stamped = session.get(JobModel, job_id)
        assert stamped is not None and stamped.model is not None
        assert stamped.model["searched"] is True
        assert stamped.model["package"] == "acme-models"
        assert stamped.model["hyperparameters"][0]["name"] == "units"
    refused = client.post("/v1/jobs", json={**spec, "warm_start": [job_id]})
    assert "cannot warm-start" in field_errors(refused)["warm_start"]
