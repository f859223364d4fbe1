"""Property-based fuzzing of the HTTP API with schemathesis, driven by the app's OpenAPI schema.

Each operation gets schemathesis's three phases: the schema's examples, coverage (boundary values,
type mutations, unexpected methods) and fuzzing, with valid (positive) and invalid (negative)
data. A stateful run then chains real jobs through the links schemathesis infers from the schema
(submit -> get, trials, report, report.html, cancel). Both run once on SQLite with the folder
broker and once on PostgreSQL with Redis, each over a fresh database; accepted jobs queue tasks
that nobody consumes.

Every response is checked for: no 5xx, a documented status code, content type, headers and body
schema, invalid data refused, valid data accepted. Hypothesis is derandomized, so CI sees the same
cases on every run; a failure prints the curl command that reproduces it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from fastapi import FastAPI
from schemathesis.python import asgi

from tests.api.test_jobs_validation import GOOD
from tests.conftest import bearer, new_token
from tuner_service.app import create_app
from tuner_service.config import Settings

# Values that break storage layers rather than validation: 64-bit overflow and control
# characters (PostgreSQL refuses NUL in text). Mixed into generated data, valid ones into
# valid requests and invalid ones into invalid requests.
EDGE_VALUES: dict[str, Any] = {
    "int64-edges": {"values": [2**31, 2**63 - 1, 2**63, 2**64]},
    "control-characters": {"values": ["\x00", "job\x00name", "\x1b[31m", "a\nb", "\u202e"]},
}
FUZZ_CONFIG: dict[str, Any] = {
    "generation": {
        "mode": "all",  # positive and negative data
        "max-examples": 50,  # per operation, for the fuzzing phase; coverage adds its own cases
        "deterministic": True,  # Hypothesis's derandomize: the same cases on every run
        "database": "none",  # nothing replayed from earlier runs, so CI and laptops agree
        "dictionaries": {  # query and path parameters
            "integer": {"dictionary": "int64-edges", "probability": 0.2},
            "string": {"dictionary": "control-characters", "probability": 0.2},
        },
    },
    "dictionaries": EDGE_VALUES,
    "parameters": {
        "body.name": {"dictionary": "control-characters", "probability": 0.3},
        "body.budget.max_trial_epochs": {"dictionary": "int64-edges", "probability": 0.3},
        "body.dataset.max_samples": {"dictionary": "int64-edges", "probability": 0.3},
    },
    "operations": [
        {
            # A job spec has rules a JSON schema cannot state (low < high, a log range needs
            # low > 0, the server's budget and model-size caps), so a schema-valid spec may
            # rightly get its documented 422.
            "include-method": "POST",
            "include-path": "/v1/jobs",
            "checks": {"positive_data_acceptance": {"enabled": False}},
        },
    ],
}
WORKFLOW_SETTINGS = hypothesis.settings(
    max_examples=40,
    stateful_step_count=6,
    derandomize=True,
    deadline=None,
    database=None,
    phases=[hypothesis.Phase.generate],
    suppress_health_check=list(hypothesis.HealthCheck),
)


def _app_openapi() -> dict[str, Any]:
    """The schema the app serves at /openapi.json (no database is touched to build it)."""
    with tempfile.TemporaryDirectory() as home:
        app = create_app(Settings(home=Path(home), database_url=None, broker_url=None),
                         recover_every_s=None)
        try:
            return app.openapi()
        finally:
            app.state.runtime.close()


# Built at import because schemathesis turns each operation into a test at collection time.
schema = schemathesis.openapi.from_dict(
    _app_openapi(), config=schemathesis.Config.from_dict(FUZZ_CONFIG)
)
# The token of the database under test now (each fuzz_app makes one); read at every request.
CURRENT_TOKEN: dict[str, str] = {}


@schema.auth(refresh_interval=None)
class FuzzToken:
    """Sends the fuzzed app's token on every request schemathesis does not mean to send
    without one (it still probes each operation without it: each must answer 401)."""

    def get(self, case: schemathesis.Case, context: Any) -> str:
        return CURRENT_TOKEN.get("secret", "")  # none yet while tests are collected

    def set(self, case: schemathesis.Case, data: str, context: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


# Chains of real jobs along the links schemathesis infers (submit -> get, trials, report, cancel).
# The job list is left out: what it answers depends on every earlier scenario's jobs, and
# Hypothesis needs a scenario to play out the same way when it replays it.
WORKFLOWS = schema.exclude(method="GET", path="/v1/jobs").as_state_machine()


@pytest.fixture
def fuzz_app(settings: Settings) -> Iterator[FastAPI]:
    """The real app over a fresh database of ``backend``, with two jobs to list.

    schemathesis sends ``Host: testserver``, which the ``settings`` fixture allows.
    """
    app = create_app(settings, recover_every_s=None)
    CURRENT_TOKEN["secret"] = new_token(settings)  # a tenant's token, not an admin's
    try:
        # The client starts the app's lifespan; schemathesis keeps it running for its requests.
        with asgi.get_client(app) as client:
            client.headers.update(bearer(CURRENT_TOKEN["secret"]))
            for name in ("fuzz-queued", "fuzz-cancelled"):
                response = client.post("/v1/jobs", json={**GOOD, "name": name})
                assert response.status_code == 201, response.text
            assert client.post(f"/v1/jobs/{response.json()['id']}/cancel").status_code == 200
        yield app
    finally:
        asgi.shutdown_lifespans()  # ends the lifespan, which closes the app's runtime


@schema.parametrize()
# One app and database serve all of an operation's examples, as one server serves all clients.
@hypothesis.settings(suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
def test_every_operation_answers_as_documented(case: schemathesis.Case, fuzz_app: FastAPI
                                               ) -> None:
    # The app also answers the probes schemathesis sends without the token (its
    # ignored_auth check: each must be refused).
    case.operation.app = case.operation.schema.app = fuzz_app
    case.call_and_validate(app=fuzz_app)


def test_job_workflows_answer_as_documented(fuzz_app: FastAPI) -> None:
    class Workflows(WORKFLOWS):
        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
            case.operation.app = case.operation.schema.app = fuzz_app
            return {"app": fuzz_app}

    Workflows.run(settings=WORKFLOW_SETTINGS)
