"""Every bad job spec answers 422 naming the field, and nothing is written (SQLite and PG)."""

from __future__ import annotations

import copy
from typing import Any

import optuna
import pytest
from fastapi.testclient import TestClient

from tuner_service.config import Settings
from tuner_service.db.repository import count_rows
from tuner_service.db.session import session_scope
from tuner_service.runtime import Runtime

GOOD: dict[str, Any] = {
    "model": {"builtin": "logistic_regression"},
    "dataset": {"builtin": "digits"},
    "budget": {"n_trials": 3, "epochs": 2},
}


def _with(path: str, value: Any) -> dict[str, Any]:
    spec = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node = spec
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return spec


BAD_SPECS = [
    (_with("search_space.learning_rate", {"low": 0.1, "high": 0.001}),
     "search_space.learning_rate"),
    (_with("search_space.learning_rate", {"low": 0, "high": 0.1, "log": True}),
     "search_space.learning_rate"),
    (_with("search_space.beta_1", {"low": 0.5, "high": 1.0}), "search_space.beta_1"),
    (_with("search_space.beta_2", 1.5), "search_space.beta_2"),
    (_with("search_space.epsilon", 0), "search_space.epsilon"),
    (_with("search_space.epsilon", "NaN"), "search_space.epsilon"),
    (_with("search_space.decay", -0.5), "search_space.decay"),
    (_with("search_space.momentum", 0.9), "search_space.momentum"),
    (_with("model.builtin", "resnet50"), "model"),
    (_with("model.hidden_units", [10]), "model.logistic_regression.hidden_units"),
    (_with("dataset.builtin", "imagenet"), "dataset.builtin"),
    (_with("dataset.validation_split", 1.0), "dataset.validation_split"),
    (_with("budget.n_trials", 0), "budget.n_trials"),
    (_with("budget.n_trials", 5000), "budget.n_trials"),
    (_with("budget.epochs", 100000), "budget.epochs"),
    (_with("budget.max_trial_epochs", 0), "budget.max_trial_epochs"),
    (_with("budget.batch_size", 10**7), "budget.batch_size"),
    (_with("objective.metric", "val_auc"), "objective.metric"),
    (_with("objective.direction", "maximize"), "objective"),
    (_with("sampler", "grid"), "sampler"),
    (_with("pruner", "patient"), "pruner"),
    (_with("seed", -1), "seed"),
    (_with("enqueue", [{"learning_rate": 5.0}]), "enqueue[0].learning_rate"),
    (_with("enqueue", [{"learning_rate": 0.01}] * 3), "enqueue"),
    (_with("surprise", True), "surprise"),
    ({"dataset": {"builtin": "digits"}}, "model"),
]


def _rows(runtime: Runtime) -> tuple[dict[str, Any], int]:
    with session_scope(runtime.sessions) as session:
        ours = count_rows(session)
    return ours, len(optuna.get_all_study_names(storage=runtime.studies.storage))


@pytest.mark.parametrize(("spec", "field"), BAD_SPECS, ids=[f for _, f in BAD_SPECS])
def test_bad_spec_is_422_naming_the_field_and_writes_nothing(
    client: TestClient, runtime: Runtime, spec: dict[str, Any], field: str
) -> None:
    before = _rows(runtime)
    response = client.post("/v1/jobs", json=spec)
    assert response.status_code == 422, response.text
    fields = [error["field"] for error in response.json()["detail"]]
    assert any(f == field or f.startswith(field + ".") for f in fields), fields
    assert _rows(runtime) == before


def test_body_that_is_not_json_is_422(client: TestClient, runtime: Runtime) -> None:
    before = _rows(runtime)
    response = client.post("/v1/jobs", content=b"{not json",
                           headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert _rows(runtime) == before


def test_oversized_body_is_413_and_writes_nothing(client: TestClient, runtime: Runtime,
                                                  settings: Settings) -> None:
    before = _rows(runtime)
    padding = "x" * (settings.max_request_bytes + 1)
    response = client.post("/v1/jobs", json={**GOOD, "name": padding})
    assert response.status_code == 413
    assert "larger than" in response.json()["detail"]
    assert _rows(runtime) == before


def test_a_good_spec_writes_one_job_and_one_study(client: TestClient, runtime: Runtime) -> None:
    before_ours, before_studies = _rows(runtime)
    assert client.post("/v1/jobs", json=GOOD).status_code == 201
    ours, studies = _rows(runtime)
    assert ours == {"jobs": before_ours["jobs"] + 1, "slots": before_ours["slots"] + 3}
    assert studies == before_studies + 1
