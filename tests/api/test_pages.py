"""The HTML pages over the API's own data, on SQLite and PostgreSQL (no workers: jobs stay
queued, which is exactly the state a first-time user sees)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.api.test_jobs_validation import GOOD


def test_the_jobs_page_says_how_to_start_when_there_are_none(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "No jobs yet" in page.text and "tuner submit" in page.text


def test_the_jobs_page_links_each_job_to_its_report_with_progress(client: TestClient) -> None:
    job_id = client.post("/v1/jobs", json={**GOOD, "name": "<b>mine</b>"}).json()["id"]
    page = client.get("/").text
    assert f'href="/v1/jobs/{job_id}/report.html"' in page
    assert "&lt;b&gt;mine&lt;/b&gt;" in page and "<b>mine</b>" not in page  # escaped
    assert '<progress max="3" value="0">' in page
    assert 'http-equiv="refresh"' in page  # a queued job: the page keeps itself current


def test_a_report_page_before_any_trial_is_marked_partial_and_draws_nothing_yet(
    client: TestClient
) -> None:
    job_id = client.post("/v1/jobs", json=GOOD).json()["id"]
    page = client.get(f"/v1/jobs/{job_id}/report.html")
    assert page.status_code == 200
    assert 'id="partial"' in page.text and "No trial has completed yet." in page.text
    assert page.text.count("Not drawn yet") == 6
    assert "keras.optimizers.Adam" not in page.text  # no winner, no snippet
    assert "n_trials: 3" in page.text  # the spec to run again is there from the start


def test_report_pages_of_unknown_jobs_and_bad_parameters_are_json_errors(
    client: TestClient
) -> None:
    missing = client.get("/v1/jobs/nope/report.html")
    assert missing.status_code == 404 and missing.json() == {"detail": "job nope not found"}
    job_id = client.post("/v1/jobs", json=GOOD).json()["id"]
    for path in (f"/v1/jobs/{job_id}/report.html", f"/v1/jobs/{job_id}/report"):
        bad = client.get(path, params={"top_k": 0})
        assert bad.status_code == 422
        assert bad.json()["detail"][0]["field"] == "query.top_k"
