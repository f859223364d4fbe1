"""Legal but unusual jobs and hostile inputs never end in a 500 (SQLite and PostgreSQL).

Each case was a 500 or a wrong answer once (issue "Never a 500, never slow"): a job with every
Adam number fixed, a huge offset, loosely typed numbers, NUL bytes, a cancelled job that kept
a waiting trial.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.test_jobs_validation import GOOD
from tuner_service import job_status, trials
from tuner_service.db.repository import count_rows
from tuner_service.db.session import session_scope
from tuner_service.runtime import Runtime

CHOSEN = {"learning_rate": 0.01, "beta_1": 0.8, "beta_2": 0.99, "epsilon": 1e-7, "decay": 0.0}
DEFAULTS = {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-8,
            "decay": 0.0}
PAGES = ("", "/report", "/report.html", "/trials")


def _fixed_job(client: TestClient, numbers: dict[str, float], n_trials: int = 1) -> str:
    spec = {**GOOD, "search_space": numbers, "budget": {"n_trials": n_trials, "epochs": 2}}
    response = client.post("/v1/jobs", json=spec)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _run_slot(rt: Runtime, job_id: str, slot: int, value: float) -> trials.TrialTicket:
    ticket = trials.start_trial(rt, job_id, slot, f"task-{slot}")
    assert ticket is not None
    assert trials.report_epoch(rt, ticket, 1, value * 2) is None
    trials.finish_trial(rt, ticket, trials.TrialOutcome("complete", value))
    return ticket


def _every_page_answers(client: TestClient, job_id: str) -> None:
    for path in ("/", "/v1/jobs"):
        assert client.get(path).status_code == 200, path
    for suffix in PAGES:
        response = client.get(f"/v1/jobs/{job_id}{suffix}")
        assert response.status_code == 200, (suffix, response.text[:300])


def test_a_job_with_every_number_fixed_scores_exactly_that_configuration(
    client: TestClient, runtime: Runtime
) -> None:
    job_id = _fixed_job(client, CHOSEN)
    ticket = _run_slot(runtime, job_id, 0, 0.25)
    assert ticket.config.as_dict() == CHOSEN

    _every_page_answers(client, job_id)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded"
    assert job["best"] == {"trial_number": 0, "value": 0.25, "params": CHOSEN,
                           "hyperparameters": {}}
    assert job["trial_counts"]["complete"] == 1 and job["trial_counts"]["waiting"] == 0
    listed = client.get("/v1/jobs").json()["items"][0]
    assert listed["best"] == job["best"]
    report = client.get(f"/v1/jobs/{job_id}/report").json()
    assert report["best"]["params"] == CHOSEN and report["baseline"] is None
    assert "paper defaults lie outside the search space" in report["message"]
    assert all(p["fixed"] for p in report["parameters"])
    page = client.get(f"/v1/jobs/{job_id}/report.html").text
    assert "0.25" in page and "Not drawn yet" in page  # nothing searched: no importances
    cancel = client.post(f"/v1/jobs/{job_id}/cancel")
    assert cancel.status_code == 409 and "succeeded" in cancel.json()["detail"]


def test_a_job_fixed_at_the_paper_defaults_is_its_own_baseline(
    client: TestClient, runtime: Runtime
) -> None:
    job_id = _fixed_job(client, DEFAULTS)
    _run_slot(runtime, job_id, 0, 0.5)
    report = client.get(f"/v1/jobs/{job_id}/report").json()
    assert report["baseline"]["trial_number"] == report["best"]["trial_number"] == 0
    assert report["improvement"]["absolute"] == 0.0
    _every_page_answers(client, job_id)


def test_cancelling_a_fixed_job_answers_the_job_and_leaves_nothing_waiting(
    client: TestClient
) -> None:
    job_id = _fixed_job(client, DEFAULTS, n_trials=2)
    cancelled = client.post(f"/v1/jobs/{job_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    _every_page_answers(client, job_id)


@pytest.mark.parametrize("spec", [
    {"search_space": {"learning_rate": 0.01}},  # partly fixed, paper defaults outside
    {},
])
def test_an_ended_job_has_no_waiting_trials(client: TestClient, spec: dict[str, Any]) -> None:
    job_id = client.post("/v1/jobs", json={**GOOD, **spec}).json()["id"]
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["trial_counts"]["waiting"] == 0
    never_run = client.get(f"/v1/jobs/{job_id}/trials").json()["items"]
    assert all(t["state"] == "fail" and t["fail_reason"].startswith("never run")
               for t in never_run)
    report = client.get(f"/v1/jobs/{job_id}/report").json()
    assert report["trial_counts"]["waiting"] == 0


def test_a_job_that_fails_keeps_no_waiting_trials(client: TestClient, runtime: Runtime) -> None:
    job_id = client.post("/v1/jobs", json=GOOD).json()["id"]
    job_status.fail_job(runtime, job_id, "the data set cannot be loaded")
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "failed" and job["trial_counts"]["waiting"] == 0


@pytest.mark.parametrize("path", ["/v1/jobs", "/", "/v1/jobs/{id}/trials"])
@pytest.mark.parametrize("offset", ["9223372036854775808", "2147483648", "-1", "1e3"])
def test_offsets_out_of_range_are_refused_not_crashed(
    client: TestClient, path: str, offset: str
) -> None:
    job_id = client.post("/v1/jobs", json=GOOD).json()["id"]
    response = client.get(path.replace("{id}", job_id), params={"offset": offset})
    assert response.status_code == 422
    assert response.json()["detail"][0]["field"] == "query.offset"


def test_the_largest_offset_allowed_answers_an_empty_page(client: TestClient) -> None:
    response = client.get("/v1/jobs", params={"offset": 2**31 - 1})
    assert response.status_code == 200 and response.json()["items"] == []


@pytest.mark.parametrize(("path", "value"), [
    ("budget.n_trials", True),
    ("budget.n_trials", 2.0),
    ("budget.n_trials", "3"),
    ("budget.epochs", "yes"),
    ("search_space.learning_rate", "0.01"),
    ("search_space.learning_rate", True),
    ("search_space.beta_1.low", "0.5"),
    ("dataset.validation_split", "0.2"),
    ("seed", 1.0),
    ("name", 5),
])
def test_a_number_or_text_of_the_wrong_json_type_is_refused_by_field(
    client: TestClient, runtime: Runtime, path: str, value: Any
) -> None:
    spec: dict[str, Any] = {**GOOD, "budget": dict(GOOD["budget"])}
    *parents, last = path.split(".")
    node = spec
    for key in parents:
        node[key] = dict(node.get(key) or {"low": 0.5, "high": 0.99, "log": True})
        node = node[key]
    node[last] = value
    response = client.post("/v1/jobs", json=spec)
    assert response.status_code == 422, response.text
    assert any(e["field"] == path for e in response.json()["detail"]), response.json()
    with session_scope(runtime.sessions) as session:
        assert count_rows(session) == {"jobs": 0, "slots": 0}


@pytest.mark.parametrize("name", ["a\x00b", "tab\there", "bell\x07", "\x1b[31mred"])
def test_control_characters_in_a_name_are_refused(
    client: TestClient, runtime: Runtime, name: str
) -> None:
    response = client.post("/v1/jobs", json={**GOOD, "name": name})
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["field"] == "name" and "control characters" in detail["message"]
    with session_scope(runtime.sessions) as session:
        assert count_rows(session)["jobs"] == 0


def test_a_long_unicode_name_is_kept_as_given(client: TestClient) -> None:
    name = "Ünïcødé ✓ 调参 " * 12
    job = client.post("/v1/jobs", json={**GOOD, "name": name[:200]}).json()
    assert client.get(f"/v1/jobs/{job['id']}").json()["name"] == name[:200]


@pytest.mark.parametrize("job_id", ["%00", "abc%00def", "0" * 31 + "%00", "x" * 5000,
                                    "%E2%9C%93", "..%2F..%2Fetc"])
@pytest.mark.parametrize("suffix", PAGES)
def test_ids_that_cannot_be_jobs_are_not_found(
    client: TestClient, job_id: str, suffix: str
) -> None:
    response = client.get(f"/v1/jobs/{job_id}{suffix}")
    assert response.status_code == 404, response.text[:200]
    assert "not found" in response.json()["detail"].lower()


def test_cancelling_an_id_with_a_nul_byte_is_not_found(client: TestClient) -> None:
    assert client.post("/v1/jobs/%00abc/cancel").status_code == 404


def test_a_report_is_served_from_cache_until_the_job_changes(
    client: TestClient, runtime: Runtime
) -> None:
    job_id = client.post("/v1/jobs", json=GOOD).json()["id"]
    for path in (f"/v1/jobs/{job_id}/report.html", f"/v1/jobs/{job_id}/report"):
        first = client.get(path)
        tag = first.headers["etag"]
        again = client.get(path, headers={"If-None-Match": tag})
        assert again.status_code == 304 and again.content == b""
        assert client.get(path).headers["etag"] == tag
    before = {p: client.get(f"/v1/jobs/{job_id}/{p}").headers["etag"]
              for p in ("report", "report.html")}
    _run_slot(runtime, job_id, 0, 0.5)
    for page, tag in before.items():
        changed = client.get(f"/v1/jobs/{job_id}/{page}", headers={"If-None-Match": tag})
        assert changed.status_code == 200 and changed.headers["etag"] != tag
    assert client.get(f"/v1/jobs/{job_id}/report").json()["best"]["value"] == 0.5


def test_the_live_report_page_loads_cacheable_scripts_and_runs_none_inline(
    client: TestClient, runtime: Runtime
) -> None:
    job_id = client.post("/v1/jobs", json=GOOD).json()["id"]
    _run_slot(runtime, job_id, 0, 0.5)
    page = client.get(f"/v1/jobs/{job_id}/report.html").text
    sources = re.findall(r'<script src="([^"]+)"', page)
    assert len(sources) == 2 and all(s.startswith("/assets/") for s in sources)
    assert "<script>" not in page and "<script nonce" not in page
    assert 'type="application/json" data-plot="plot-history"' in page
    for source in sources:
        asset = client.get(source, headers={"Accept-Encoding": "gzip"})
        assert asset.status_code == 200 and "immutable" in asset.headers["cache-control"]
        assert asset.headers["content-encoding"] == "gzip"
        assert asset.headers["content-type"].startswith("text/javascript")
    assert client.get("/assets/nothing.js").status_code == 404
    standalone = client.get(f"/v1/jobs/{job_id}/report.html", params={"standalone": True})
    assert "<script src=" not in standalone.text and "Plotly" in standalone.text
    assert 'http-equiv="refresh"' not in standalone.text  # a saved file must not reload


def test_a_method_the_path_does_not_take_lists_every_method_it_does(client: TestClient) -> None:
    response = client.request("DELETE", "/v1/jobs")
    assert response.status_code == 405 and "detail" in response.json()
    assert set(response.headers["allow"].split(", ")) >= {"GET", "POST"}


def test_the_schema_documents_every_error_as_json(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    listed = paths["/v1/jobs"]["get"]["responses"]
    page = paths["/v1/jobs/{job_id}/report.html"]["get"]["responses"]
    for responses in (listed, page):
        assert "application/json" in responses["422"]["content"]
        assert "text/html" not in responses["422"]["content"]
    assert "application/json" in page["404"]["content"]
    submit = paths["/v1/jobs"]["post"]["responses"]
    assert {"403", "413", "415", "422"} <= set(submit)
