"""Tenants: no route shows or changes another tenant's job; limits per tenant answer 429.

Two tenants and an admin over one real database (SQLite and PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.test_jobs_validation import GOOD
from tests.conftest import bearer, new_token
from tuner_service.app import create_app
from tuner_service.config import Settings
from tuner_service.db import repository as repo
from tuner_service.db.session import make_engine, make_session_factory, session_scope

# Every route that names a job, with how it is called.
JOB_ROUTES = [("GET", "/v1/jobs/{id}"), ("GET", "/v1/jobs/{id}/trials"),
              ("GET", "/v1/jobs/{id}/report"), ("GET", "/v1/jobs/{id}/report.html"),
              ("POST", "/v1/jobs/{id}/cancel")]


class Tenants:
    """One app; a client per token."""

    def __init__(self, settings: Settings, app_client: TestClient) -> None:
        self.settings = settings
        self.http = app_client
        self.tokens = {"a": new_token(settings, "team-a"), "b": new_token(settings, "team-b"),
                       "admin": new_token(settings, "ops", admin=True)}

    def call(self, who: str, method: str, url: str, **kwargs: Any) -> Any:
        return self.http.request(method, url, headers=bearer(self.tokens[who]), **kwargs)

    def submit(self, who: str, **changes: Any) -> str:
        answer = self.call(who, "POST", "/v1/jobs", json={**GOOD, **changes})
        assert answer.status_code == 201, answer.text
        return str(answer.json()["id"])

    def rows(self) -> dict[str, Any]:
        engine = make_engine(self.settings)
        try:
            with session_scope(make_session_factory(engine)) as session:
                return repo.count_rows(session)
        finally:
            engine.dispose()


@pytest.fixture
def tenants(settings: Settings) -> Iterator[Tenants]:
    with TestClient(create_app(settings, recover_every_s=None)) as app_client:
        yield Tenants(settings, app_client)


def test_another_tenants_job_is_as_unknown_as_a_job_that_never_was(tenants: Tenants) -> None:
    mine, theirs = tenants.submit("a", name="a's job"), tenants.submit("b", name="b's job")
    never = "f" * 32
    for method, route in JOB_ROUTES:
        for job_id in (theirs, never):
            answer = tenants.call("a", method, route.format(id=job_id))
            assert answer.status_code == 404, (method, route, answer.text)
            assert answer.json() == {"detail": f"job {job_id} not found"}
        assert tenants.call("a", method, route.format(id=mine)).status_code == 200, route
    # a's cancel was its own; b's job is still queued
    assert tenants.call("b", "GET", f"/v1/jobs/{theirs}").json()["status"] == "queued"
    assert tenants.call("a", "GET", f"/v1/jobs/{mine}").json()["status"] == "cancelled"


def test_lists_show_only_the_callers_jobs_and_an_admin_sees_every_tenants(tenants: Tenants
                                                                          ) -> None:
    a1, a2 = tenants.submit("a", name="alpha-one"), tenants.submit("a", name="alpha-two")
    b1 = tenants.submit("b", name="beta-one")
    listed = tenants.call("a", "GET", "/v1/jobs").json()
    assert listed["total"] == 2 and {j["id"] for j in listed["items"]} == {a1, a2}
    assert {j["tenant"] for j in listed["items"]} == {"team-a"}
    past_the_end = tenants.call("b", "GET", "/v1/jobs", params={"offset": 5}).json()
    assert past_the_end == {"items": [], "total": 1}
    page = tenants.call("b", "GET", "/").text
    assert "beta-one" in page and "alpha-one" not in page and a1 not in page
    assert "<th>Tenant</th>" not in page
    every = tenants.call("admin", "GET", "/v1/jobs").json()
    assert every["total"] == 3 and {j["id"] for j in every["items"]} == {a1, a2, b1}
    admin_page = tenants.call("admin", "GET", "/").text
    assert "<th>Tenant</th>" in admin_page
    assert "alpha-one" in admin_page and "beta-one" in admin_page and "team-b" in admin_page
    for method, route in JOB_ROUTES[:-1]:
        assert tenants.call("admin", method, route.format(id=b1)).status_code == 200, route


def test_a_job_belongs_to_the_submitters_tenant_even_for_an_admin(tenants: Tenants) -> None:
    job_id = tenants.submit("admin")
    assert tenants.call("admin", "GET", f"/v1/jobs/{job_id}").json()["tenant"] == "ops"
    assert tenants.call("a", "GET", f"/v1/jobs/{job_id}").status_code == 404


def test_cancel_by_another_tenant_changes_nothing(tenants: Tenants) -> None:
    theirs = tenants.submit("b")
    before = tenants.call("b", "GET", f"/v1/jobs/{theirs}").json()
    assert tenants.call("a", "POST", f"/v1/jobs/{theirs}/cancel").status_code == 404
    assert tenants.call("b", "GET", f"/v1/jobs/{theirs}").json() == before


def test_warm_start_never_learns_from_another_tenant(tenants: Tenants) -> None:
    theirs = tenants.submit("b", warm_start="off")
    named = tenants.call("a", "POST", "/v1/jobs", json={**GOOD, "warm_start": [theirs]})
    assert named.status_code == 422
    assert named.json()["detail"][0]["field"] == "warm_start[0]"
    assert f"there is no job {theirs}" in named.json()["detail"][0]["message"]
    mine = tenants.submit("a")  # auto: the same task as b's job, but b's is not a's to use
    report = tenants.call("a", "GET", f"/v1/jobs/{mine}/report").json()
    assert report["warm_start"] == []


@pytest.fixture
def limited(settings: Settings) -> Iterator[Tenants]:
    small = settings.model_copy(update={"tenant_max_active_jobs": 2,
                                        "tenant_max_queued_trials": 5})
    with TestClient(create_app(small, recover_every_s=None)) as app_client:
        yield Tenants(small, app_client)


def test_over_a_tenants_job_limit_is_429_and_nothing_is_written(limited: Tenants) -> None:
    budget = {"n_trials": 2, "epochs": 1}
    limited.submit("a", budget=budget)
    limited.submit("a", budget=budget)
    before = limited.rows()
    refused = limited.call("a", "POST", "/v1/jobs", json={**GOOD, "budget": budget})
    assert refused.status_code == 429 and refused.headers["retry-after"] == "30"
    assert "TUNER_TENANT_MAX_ACTIVE_JOBS) is 2" in refused.json()["detail"]
    assert limited.rows() == before
    limited.submit("b", budget=budget)  # another tenant has its own limit
    # an admin is held to its own tenant's limits too (unless configured otherwise)
    limited.submit("admin", budget=budget)
    limited.submit("admin", budget=budget)
    assert limited.call("admin", "POST", "/v1/jobs", json={**GOOD, "budget": budget}
                        ).status_code == 429


def test_over_a_tenants_queued_trials_limit_is_429_and_nothing_is_written(limited: Tenants
                                                                          ) -> None:
    limited.submit("a", budget={"n_trials": 4, "epochs": 1})
    before = limited.rows()
    refused = limited.call("a", "POST", "/v1/jobs",
                           json={**GOOD, "budget": {"n_trials": 2, "epochs": 1}})
    assert refused.status_code == 429
    detail = refused.json()["detail"]
    assert "4 trials queued" in detail and "TUNER_TENANT_MAX_QUEUED_TRIALS) is 5" in detail
    assert limited.rows() == before
    limited.submit("a", budget={"n_trials": 1, "epochs": 1})  # fits exactly


def test_a_cancelled_job_frees_its_place(limited: Tenants) -> None:
    first = limited.submit("a", budget={"n_trials": 1, "epochs": 1})
    limited.submit("a", budget={"n_trials": 1, "epochs": 1})
    assert limited.call("a", "POST", "/v1/jobs", json=GOOD).status_code == 429
    limited.call("a", "POST", f"/v1/jobs/{first}/cancel")
    limited.submit("a", budget={"n_trials": 1, "epochs": 1})


def test_admins_may_be_exempted(settings: Settings) -> None:
    exempt = settings.model_copy(update={"tenant_max_active_jobs": 1,
                                         "admin_exempt_from_limits": True})
    with TestClient(create_app(exempt, recover_every_s=None)) as app_client:
        tenants = Tenants(exempt, app_client)
        for _ in range(3):
            tenants.submit("admin", budget={"n_trials": 1, "epochs": 1})
        tenants.submit("a", budget={"n_trials": 1, "epochs": 1})
        assert tenants.call("a", "POST", "/v1/jobs", json=GOOD).status_code == 429
