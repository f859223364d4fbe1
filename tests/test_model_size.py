"""Model size and training memory, by hand; and the API refuses jobs that cannot fit (422)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import make_settings, signed_in_client
from tuner_service.config import Settings
from tuner_service.datasets.catalog import BUILTINS
from tuner_service.db.migrate import upgrade
from tuner_service.model_size import (
    TrainingMemory,
    count_params,
    estimate_training_memory,
    format_bytes,
)
from tuner_service.schemas import JobCreate
from tuner_service.validation import Problem
from tuner_service.validation import spec_problems as spec_problems_on

PAPER_MLP: dict[str, Any] = {"builtin": "mlp", "hidden_units": [1000, 1000], "dropout": 0.5}
PAPER_CNN: dict[str, Any] = {"builtin": "cnn", "filters": [64, 64, 128], "kernel_size": 5,
                             "pool_size": 3, "dense_units": 1000, "dropout": 0.5}
LARGEST_MLP: dict[str, Any] = {"builtin": "mlp", "hidden_units": [8192] * 8}
# Every field at its maximum: about 640 M parameters on cifar10.
LARGEST_CNN: dict[str, Any] = {"builtin": "cnn", "filters": [1024] * 6, "kernel_size": 11,
                               "pool_size": 5, "dense_units": 8192}
# One convolution leaves 16 x 16 x 1024 values for the dense layer: the most parameters.
WIDEST_CNN: dict[str, Any] = {**LARGEST_CNN, "filters": [1024]}


def _job(model: dict[str, Any], dataset: str = "digits", batch_size: int = 32,
         **dataset_fields: Any) -> JobCreate:
    return JobCreate.model_validate({
        "model": model, "dataset": {"builtin": dataset, **dataset_fields},
        "budget": {"n_trials": 2, "epochs": 1, "batch_size": batch_size},
    })


def _params(model: dict[str, Any], dataset: str) -> int:
    job = _job(model, dataset)
    data = BUILTINS[dataset]
    return count_params(job.model, data.feature_shape, data.target.n_outputs)


def estimate(job: JobCreate) -> TrainingMemory:
    """The estimate for a job on its built-in data set."""
    return estimate_training_memory(job, BUILTINS[job.dataset.match[1]])


def spec_problems(job: JobCreate, settings: Settings) -> list[Problem]:
    """The problems of a job on its built-in data set."""
    return spec_problems_on(job, BUILTINS[job.dataset.match[1]], settings)


@pytest.mark.parametrize(("model", "dataset", "expected"), [
    ({"builtin": "logistic_regression"}, "digits", 64 * 10 + 10),
    ({"builtin": "logistic_regression"}, "cifar10", 3072 * 10 + 10),
    # 784 -> 1000 -> 1000 -> 10
    (PAPER_MLP, "mnist", 784 * 1000 + 1000 + 1000 * 1000 + 1000 + 1000 * 10 + 10),
    # 8x8x1: conv 3x3 (2 filters), pool to 4x4x2 = 32, dense 4, output 10
    ({"builtin": "cnn", "filters": [2], "kernel_size": 3, "dense_units": 4}, "digits",
     (9 * 1 * 2 + 2) + (32 * 4 + 4) + (4 * 10 + 10)),
    # 32x32x3 -> 16x16x64 -> 8x8x64 -> 4x4x128 = 2048 -> 1000 -> 10
    (PAPER_CNN, "cifar10", (25 * 3 * 64 + 64) + (25 * 64 * 64 + 64) + (25 * 64 * 128 + 128)
     + (2048 * 1000 + 1000) + (1000 * 10 + 10)),
    # 28 -> 14 -> 7 -> 4 (ceil): 4x4x3 = 48 values reach the dense layer
    ({"builtin": "cnn", "filters": [1, 2, 3], "kernel_size": 1, "dense_units": 5}, "mnist",
     (1 + 1) + (1 * 2 + 2) + (2 * 3 + 3) + (48 * 5 + 5) + (5 * 10 + 10)),
])
def test_parameter_counts_match_a_count_by_hand(model: dict[str, Any], dataset: str,
                                                expected: int) -> None:
    assert _params(model, dataset) == expected


def test_the_caps_allow_models_of_hundreds_of_millions_of_parameters() -> None:
    assert _params(LARGEST_MLP, "mnist") == (784 * 8192 + 8192 + 7 * (8192 * 8192 + 8192)
                                            + 8192 * 10 + 10) == 476_332_042
    assert 640_000_000 < _params(LARGEST_CNN, "cifar10") < 650_000_000
    assert _params(WIDEST_CNN, "cifar10") > 2_000_000_000


def test_memory_is_adam_state_plus_one_batch_of_activations_and_their_gradients() -> None:
    memory = estimate(_job({"builtin": "logistic_regression"}, batch_size=32))
    assert memory.params == 650
    assert memory.weights_bytes == 650 * 4 * 4  # weight, gradient, two moments; float32
    # Flatten (64) and Dense (10) outputs, each with its gradient, plus the 64-pixel input.
    assert memory.batch_bytes == ((64 + 10) * 2 + 64) * 32 * 4
    assert memory.total_bytes == 10_400 + 27_136


def test_memory_counts_every_layer_of_a_cnn() -> None:
    memory = estimate(_job(
        {"builtin": "cnn", "filters": [2], "kernel_size": 3, "dense_units": 4}, batch_size=10))
    # conv 8x8x2, pool 4x4x2, flatten 32, dense 4, dropout 4, output 10
    outputs = 128 + 32 + 32 + 4 + 4 + 10
    assert memory.batch_bytes == (outputs * 2 + 64) * 10 * 4


def test_a_batch_is_never_larger_than_the_data_set() -> None:
    whole = estimate(_job({"builtin": "logistic_regression"}, batch_size=65536))
    assert whole.batch_size == 1797
    sample = estimate(_job({"builtin": "logistic_regression"}, "cifar10",
                                           batch_size=65536, max_samples=500))
    assert sample.batch_size == 500


@pytest.mark.parametrize(("count", "text"), [
    (0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (2**20 - 1, "1 MiB"),
    (4 * 2**30, "4 GiB"), (int(37.24 * 2**30), "37.2 GiB"), (3 * 2**40, "3 TiB"),
])
def test_bytes_read_in_binary_units(count: int, text: str) -> None:
    assert format_bytes(count) == text


def test_every_built_in_data_set_has_a_shape() -> None:
    for name in ("digits", "mnist", "fashion_mnist", "cifar10"):
        assert BUILTINS[name].target.n_classes == 10


def test_lowering_the_parameter_cap_by_environment_refuses_a_small_model(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TUNER_MAX_MODEL_PARAMS", "1000")
    monkeypatch.setenv("TUNER_MAX_TRAINING_MEMORY", "16KiB")
    settings = Settings(home=tmp_path)
    small = _job({"builtin": "mlp", "hidden_units": [16]})  # 64*16+16 + 16*10+10 = 1210
    problems = dict(spec_problems(small, settings))
    assert "1,210 parameters" in problems[("model",)]
    assert "16 KiB" in problems[("budget", "batch_size")]
    assert spec_problems(_job({"builtin": "logistic_regression"}, batch_size=4), settings) == []


@pytest.mark.parametrize(("model", "dataset"), [(PAPER_MLP, "mnist"), (PAPER_CNN, "cifar10")])
def test_the_papers_models_fit_the_default_caps(model: dict[str, Any], dataset: str,
                                                tmp_path: Path) -> None:
    assert spec_problems(_job(model, dataset), Settings(home=tmp_path)) == []


# Through the API, on SQLite and PostgreSQL.

def _submit(client: TestClient, model: dict[str, Any], dataset: str,
            batch_size: int = 32) -> Any:
    return client.post("/v1/jobs", json={
        "model": model, "dataset": {"builtin": dataset},
        "budget": {"n_trials": 2, "epochs": 1, "batch_size": batch_size},
    })


def _refused(client: TestClient, model: dict[str, Any], dataset: str,
             batch_size: int = 32) -> dict[str, str]:
    response = _submit(client, model, dataset, batch_size)
    assert response.status_code == 422, response.text
    assert client.get("/v1/jobs").json()["total"] == 0
    return {error["field"]: error["message"] for error in response.json()["detail"]}


def test_the_largest_legal_mlp_is_refused_naming_its_size_and_the_limits(
        client: TestClient) -> None:
    messages = _refused(client, LARGEST_MLP, "mnist")
    assert "476,332,042 parameters" in messages["model"]
    assert "100,000,000" in messages["model"]
    assert "TUNER_MAX_MODEL_PARAMS" in messages["model"]
    assert "about 7.1 GiB" in messages["budget.batch_size"]
    assert "limit of 4 GiB" in messages["budget.batch_size"]
    assert "TUNER_MAX_TRAINING_MEMORY" in messages["budget.batch_size"]


@pytest.mark.parametrize("model", [LARGEST_CNN, WIDEST_CNN], ids=["largest", "widest"])
def test_the_largest_legal_cnns_are_refused(client: TestClient, model: dict[str, Any]) -> None:
    messages = _refused(client, model, "cifar10", batch_size=65536)
    expected = estimate(_job(model, "cifar10", batch_size=65536))
    assert f"{expected.params:,} parameters" in messages["model"]
    assert "TUNER_MAX_MODEL_PARAMS" in messages["model"]
    assert f"about {format_bytes(expected.total_bytes)}" in messages["budget.batch_size"]
    assert "TUNER_MAX_TRAINING_MEMORY" in messages["budget.batch_size"]


def test_a_huge_batch_of_cifar_images_is_refused_at_the_batch_size(client: TestClient) -> None:
    messages = _refused(client, PAPER_CNN, "cifar10", batch_size=65536)
    assert list(messages) == ["budget.batch_size"]  # the model itself is small
    assert "about 52.9 GiB" in messages["budget.batch_size"]
    assert "60,000 examples (the whole data set)" in messages["budget.batch_size"]


@pytest.mark.parametrize(("model", "dataset"), [(PAPER_MLP, "mnist"), (PAPER_CNN, "cifar10")],
                         ids=["mlp-mnist", "cnn-cifar10"])
def test_the_papers_models_are_accepted(client: TestClient, model: dict[str, Any],
                                        dataset: str) -> None:
    response = _submit(client, model, dataset)
    assert response.status_code == 201, response.text


def test_a_lower_parameter_cap_refuses_a_small_model_through_the_api(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    settings = make_settings(backend, tmp_path / "home", request, max_model_params=1000)
    upgrade(settings)
    with signed_in_client(settings) as client:
        messages = _refused(client, {"builtin": "mlp", "hidden_units": [16]}, "digits")
    assert "1,210 parameters exceed the limit of 1,000" in messages["model"]
