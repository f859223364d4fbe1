"""Your own model through a real worker, on both backends: a .keras file built here is
inspected by the worker, then tuned with fresh and with the file's weights; a file that does
not fit the data is refused at submit naming both shapes; a file that would run code is
rejected and runs nothing; the test plugin package's build function and KerasTuner HyperModel
are offered by the live worker and tuned, the HyperModel with its hyperparameters fixed at
their defaults and searched with Adam's numbers."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import WorkerStack

pytestmark = pytest.mark.slow

DIGITS = (8, 8, 1)


def save_model(path: Path, input_shape: tuple[int, ...], outputs: int, *,
               lambda_marker: Path | None = None) -> bytes:
    """A small functional model saved as .keras; with ``lambda_marker``, a Lambda layer whose
    Python code creates that file whenever the layer is rebuilt and called."""
    import keras

    inputs = keras.Input(shape=input_shape)
    hidden = keras.layers.Flatten()(inputs)
    if lambda_marker is not None:
        marker = str(lambda_marker)
        hidden = keras.layers.Lambda(
            lambda x: (open(marker, "w").close(), x)[1], name="evil")(hidden)  # noqa: SIM115
    hidden = keras.layers.Dense(12, activation="relu", name="hidden")(hidden)
    model = keras.Model(inputs, keras.layers.Dense(outputs, name="logits")(hidden))
    model.save(path)
    if lambda_marker is not None:
        lambda_marker.unlink()  # building the model here ran the Lambda once
    return path.read_bytes()


def upload_model(stack: WorkerStack, name: str, content: bytes) -> dict[str, Any]:
    response = stack.client.post("/v1/models", files={"file": (f"{name}.keras", content)})
    assert response.status_code == 201, response.text
    return dict(response.json())


def inspected(stack: WorkerStack, model_id: str, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        model = stack.client.get(f"/v1/models/{model_id}").json()
        if model["status"] != "validating":
            return dict(model)
        time.sleep(0.3)
    raise AssertionError(f"model {model_id} not inspected\n" + stack.log.read_text()[-3000:])


def tune(stack: WorkerStack, model: dict[str, Any], **changes: Any) -> dict[str, Any]:
    job_id = stack.submit({"model": model, "dataset": {"builtin": "digits"}, "pruner": "none",
                           "budget": {"n_trials": 2, "epochs": 1, "batch_size": 64},
                           "confirm": False, **changes})
    job = stack.wait(job_id)
    assert job["status"] == "succeeded", (job, stack.log.read_text()[-3000:])
    report = dict(stack.client.get(f"/v1/jobs/{job_id}/report").json())
    report["trials"] = stack.client.get(f"/v1/jobs/{job_id}/trials").json()["items"]
    report["job"] = job
    return report


def test_a_keras_file_is_inspected_then_tuned_from_fresh_and_from_its_own_weights(
        stack: WorkerStack, tmp_path: Path) -> None:
    model = upload_model(stack, "digits-net", save_model(tmp_path / "a.keras", DIGITS, 10))
    assert model["status"] == "validating"
    model = inspected(stack, model["id"])
    assert model["status"] == "ready", model
    assert (model["input_shape"], model["output_shape"]) == ([8, 8, 1], [10])
    assert model["n_params"] == 64 * 12 + 12 + 12 * 10 + 10
    assert model["outputs"] == "logits" and model["keras_version"]

    fresh = tune(stack, {"id": model["id"]})
    assert fresh["model"]["source"] == "file" and fresh["model"]["sha256"] == model["sha256"]
    assert "keras.saving.load_model('digits-net.keras')" in fresh["keras_snippet"]
    assert fresh["trial_counts"]["complete"] == 2
    tuned = tune(stack, {"id": model["id"], "weights": "file"})
    assert tuned["trial_counts"]["complete"] == 2
    # Other weights, other values: the same configuration (the paper defaults, trial 0)
    # scores differently when it starts from the file's weights rather than fresh ones.
    assert fresh["trials"][0]["value"] != tuned["trials"][0]["value"]


def test_a_file_that_does_not_fit_the_data_is_refused_at_submit_naming_both_shapes(
        stack: WorkerStack, tmp_path: Path) -> None:
    flat = upload_model(stack, "flat", save_model(tmp_path / "flat.keras", (64,), 10))
    three = upload_model(stack, "three", save_model(tmp_path / "three.keras", DIGITS, 3))
    assert inspected(stack, flat["id"])["status"] == "ready"
    assert inspected(stack, three["id"])["status"] == "ready"
    spec = {"dataset": {"builtin": "digits"}, "budget": {"n_trials": 1, "epochs": 1}}
    response = stack.client.post("/v1/jobs", json={"model": {"id": flat["id"]}, **spec})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["field"] == "model"
    assert "takes inputs shaped [64]" in error["message"]
    assert "feature_shape [8, 8, 1]" in error["message"]
    response = stack.client.post("/v1/jobs", json={"model": {"id": three["id"]}, **spec})
    assert response.status_code == 422
    assert "outputs shape [3]" in response.text and "10 classes" in response.text


def test_a_file_that_would_run_code_is_rejected_by_the_worker_and_runs_nothing(
        stack: WorkerStack, tmp_path: Path) -> None:
    marker = tmp_path / "lambda-ran"
    content = save_model(tmp_path / "evil.keras", DIGITS, 10, lambda_marker=marker)
    assert not marker.exists()
    model = inspected(stack, upload_model(stack, "evil", content)["id"])
    assert model["status"] == "rejected"
    assert "Lambda" in model["reason"]
    assert model["input_shape"] is None
    response = stack.client.post("/v1/jobs", json={
        "model": {"id": model["id"]}, "dataset": {"builtin": "digits"}})
    assert response.status_code == 422 and "was rejected" in response.text
    assert not marker.exists()


def offered(stack: WorkerStack, timeout_s: float = 60) -> dict[str, dict[str, Any]]:
    """The plugins the stack's worker registered (it does once its child has started)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        plugins = {p["name"]: p for p in stack.client.get("/v1/models").json()["plugins"]}
        if plugins.get("tiny_mlp", {}).get("workers"):
            return plugins
        time.sleep(0.3)
    raise AssertionError("the worker never registered\n" + stack.log.read_text()[-3000:])


def test_a_build_function_plugin_is_offered_and_tuned(stack: WorkerStack) -> None:
    plugins = offered(stack)
    assert plugins["tiny_mlp"]["package"] == "tuner-test-plugins"
    assert plugins["tiny_mlp"]["version"] == "0.3.1"
    assert plugins["broken"]["workers"] == 0 and "AttributeError" in plugins["broken"]["error"]
    report = tune(stack, {"plugin": "tiny_mlp", "options": {"units": 8}})
    assert report["model"]["source"] == "plugin" and report["model"]["kind"] == "build"
    assert report["trials"][0]["hyperparameters"] == {}
    # An operator's model packs like a built-in: both trials trained in one pass.
    assert report["job"]["packing"]["size"] == 2
    assert [t["pack_size"] for t in report["trials"]] == [2, 2]


def test_a_hypermodel_is_tuned_with_its_hyperparameters_at_their_defaults(
        stack: WorkerStack) -> None:
    offered(stack)
    report = tune(stack, {"plugin": "kt_digits"})
    assert report["model"]["kind"] == "hypermodel" and report["model"]["searched"] is False
    assert all(trial["hyperparameters"] == {} for trial in report["trials"])
    snippet = report["keras_snippet"]
    assert "hp.Fixed('units', 32)" in snippet and "hp.Fixed('activation', 'relu')" in snippet


def test_a_hypermodel_is_tuned_with_its_hyperparameters_searched_with_adams(
        stack: WorkerStack) -> None:
    offered(stack)
    report = tune(stack, {"plugin": "kt_digits", "search_hyperparameters": True},
                  budget={"n_trials": 5, "epochs": 1, "batch_size": 64},
                  sampler="random")
    trials = report["trials"]
    assert all(set(t["hyperparameters"]) == {"units", "activation", "extra_layer", "dropout"}
               for t in trials)
    # The paper-defaults trial keeps the HyperModel's defaults too.
    assert trials[0]["hyperparameters"]["units"] == 32
    assert len({t["hyperparameters"]["units"] for t in trials}) > 1
    assert all(t["hyperparameters"]["units"] in range(8, 65, 8) for t in trials)
    # Each trial builds another model: they cannot share a pass, and the job says so.
    assert all(t["pack_size"] == 1 for t in trials)
    assert "searched hyperparameters" in report["job"]["packing"]["reason"]
    best = report["best"]
    assert best["hyperparameters"] == trials[best["trial_number"]]["hyperparameters"]
    assert f"hp.Fixed('units', {best['hyperparameters']['units']})" in report["keras_snippet"]
