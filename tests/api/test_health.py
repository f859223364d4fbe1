"""Liveness and readiness: cheap, one word per dependency, never the driver's error text."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.conftest import bearer, new_token
from tests.servers import free_port
from tuner_service.app import create_app
from tuner_service.config import Settings


def test_both_probes_answer_when_everything_is_up(client: TestClient) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "database": "ok", "broker": "ok"}


def _down(settings: Settings, **changes: str) -> Settings:
    return settings.model_copy(update=changes)


@pytest.mark.parametrize("broken", ["database", "broker"])
def test_readiness_names_what_is_down_and_leaks_nothing(
    settings: Settings, tmp_path: Path, broken: str
) -> None:
    port = free_port()  # nothing listens there
    if broken == "database":
        bad = _down(settings, database_url=f"postgresql+psycopg://tuner:pw@127.0.0.1:{port}/x")
    else:
        bad = _down(settings, broker_url=f"redis://127.0.0.1:{port}/0")
    headers = bearer(new_token(settings))  # made while the database is up
    with TestClient(create_app(bad, recover_every_s=None), headers=headers) as client:
        assert client.get("/healthz").status_code == 200  # liveness: the process is fine
        ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.headers["retry-after"] == "5"
    assert str(port) not in ready.text and "127.0.0.1" not in ready.text
    body = ready.json()
    if broken == "database":  # the token cannot even be checked: the same 503, any body
        assert "database is unavailable" in body["detail"]
        return
    assert body["status"] == "unavailable" and body[broken] == "unreachable"
    assert body["database"] == "ok"


def test_readiness_needs_a_token_liveness_does_not(settings: Settings) -> None:
    with TestClient(create_app(settings, recover_every_s=None)) as anonymous:
        assert anonymous.get("/healthz").status_code == 200
        refused = anonymous.get("/readyz")
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
