"""The jobs API contract, on SQLite and PostgreSQL (no worker: nothing runs the trials)."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.api.test_jobs_validation import GOOD


def _submit(client: TestClient, **changes: Any) -> dict[str, Any]:
    response = client.post("/v1/jobs", json={**GOOD, **changes})
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_submit_returns_the_queued_job(client: TestClient) -> None:
    job = _submit(client, name="first")
    assert job["status"] == "queued" and job["name"] == "first" and len(job["id"]) == 32
    assert job["n_trials"] == 3 and job["trials_ended"] == 0 and job["best"] is None
    # The paper defaults wait as trial 0.
    assert job["trial_counts"]["waiting"] == 1
    assert job["spec"]["search_space"]["decay"]["include_zero"] is True
    assert job["spec"]["objective"]["direction"] == "minimize"


def test_get_and_list_newest_first_with_pages(client: TestClient) -> None:
    ids = [_submit(client, name=f"job-{i}")["id"] for i in range(3)]
    assert client.get(f"/v1/jobs/{ids[0]}").json()["name"] == "job-0"
    page = client.get("/v1/jobs", params={"limit": 2}).json()
    assert page["total"] == 3
    assert [job["id"] for job in page["items"]] == [ids[2], ids[1]]
    rest = client.get("/v1/jobs", params={"offset": 2, "limit": 2}).json()
    assert [job["id"] for job in rest["items"]] == [ids[0]]


def test_unknown_job_is_404_everywhere(client: TestClient) -> None:
    for method, path in [("get", ""), ("get", "/trials"), ("get", "/report"),
                         ("post", "/cancel")]:
        response = getattr(client, method)(f"/v1/jobs/nope{path}")
        assert response.status_code == 404, path
        assert "not found" in response.json()["detail"]


def test_trials_lists_the_waiting_paper_defaults_with_all_five_params(
    client: TestClient,
) -> None:
    job = _submit(client, search_space={"learning_rate": 0.001, "epsilon": 1e-8})
    trials = client.get(f"/v1/jobs/{job['id']}/trials").json()
    assert trials["total"] == 1
    (trial,) = trials["items"]
    assert trial["state"] == "waiting" and trial["is_baseline"] is True
    assert trial["params"] == {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999,
                               "epsilon": 1e-8, "decay": 0.0}
    assert client.get(f"/v1/jobs/{job['id']}/trials", params={"state": "complete"}
                      ).json()["total"] == 0


def test_no_baseline_when_the_defaults_lie_outside_the_space(client: TestClient) -> None:
    job = _submit(client, search_space={"learning_rate": {"low": 0.01, "high": 0.1}})
    assert job["trial_counts"]["waiting"] == 0


def test_enqueued_configs_wait_after_the_baseline(client: TestClient) -> None:
    job = _submit(client, enqueue=[{"learning_rate": 0.05}])
    trials = client.get(f"/v1/jobs/{job['id']}/trials").json()["items"]
    assert [t["is_baseline"] for t in trials] == [True, False]
    assert trials[1]["params"] is None  # its other numbers are sampled when it starts


def test_report_before_any_trial_says_so(client: TestClient) -> None:
    job = _submit(client)
    report = client.get(f"/v1/jobs/{job['id']}/report").json()
    assert report["partial"] is True and report["best"] is None
    assert report["message"] == "No trial has completed yet."
    assert report["baseline"]["state"] == "waiting" and report["improvement"] is None


def test_cancel_is_idempotent_and_a_finished_job_cannot_be_cancelled(
    client: TestClient,
) -> None:
    job = _submit(client)
    first = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert first.status_code == 200 and first.json()["status"] == "cancelled"
    assert first.json()["finished_at"] is not None
    assert first.json()["trials_ended"] == 3  # queued slots end as cancelled
    again = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "cancelled"


def test_healthz_and_openapi(client: TestClient) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    schema = client.get("/openapi.json").json()
    assert "/v1/jobs/{job_id}/report" in schema["paths"]
    assert client.get("/docs").status_code == 200
