"""Tokens: every route but the open ones needs one; the pages need a browser session.

Real app, real database (SQLite and PostgreSQL); tokens made as ``tuner token create`` makes
them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import inspect, text

from tests.api.test_jobs_validation import GOOD
from tests.conftest import bearer, new_token
from tuner_service import auth
from tuner_service.api import docs
from tuner_service.api.routes import datasets, health, jobs, models, pages, signin
from tuner_service.app import create_app
from tuner_service.config import Settings
from tuner_service.db.session import make_engine, make_session_factory

# Routes anyone may call: the liveness probe, the API docs, and the sign-in pages themselves.
OPEN = {"/healthz", "/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect", "/signin",
        "/signin/link", "/signout"}
PAGES = {"/", "/v1/jobs/{job_id}/report.html"}
SAME_SITE = {"Origin": "http://testserver"}


@pytest.fixture
def anonymous(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings, recover_every_s=None), follow_redirects=False) as c:
        yield c


def _guarded_routes(_client: TestClient) -> list[tuple[str, str]]:
    """(method, path) of every route of every router the app includes, but the open ones."""
    routes = []
    for router in (health.router, jobs.router, datasets.router, models.router, pages.router,
                   signin.router, docs.router):
        for route in router.routes:
            if isinstance(route, APIRoute) and route.path not in OPEN:
                routes += [(method, route.path) for method in sorted(route.methods or ())]
    return routes


def _call(client: TestClient, method: str, path: str, job_id: str, **kwargs: Any) -> Any:
    url = (path.replace("{job_id}", job_id).replace("{dataset_id}", job_id)
           .replace("{model_id}", job_id)
           .replace("{name}", "pages.js"))
    body = {"json": GOOD} if method == "POST" and path == "/v1/jobs" else {}
    return client.request(method, url, **body, **kwargs)


def test_the_guarded_routes_are_the_api_the_pages_and_the_assets(anonymous: TestClient
                                                                  ) -> None:
    paths = {path for _, path in _guarded_routes(anonymous)}
    documented = set(anonymous.get("/openapi.json").json()["paths"])
    assert documented - OPEN <= paths  # no router of the app was left out above
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/trials",
            "/v1/jobs/{job_id}/report", "/v1/jobs/{job_id}/cancel", "/readyz",
            "/assets/{name}", "/v1/me", "/v1/auth/signin-links", "/v1/datasets",
            "/v1/datasets/{dataset_id}", *PAGES} <= paths


@pytest.mark.parametrize("header", [
    None, "Bearer", "Bearer ", "Basic dXNlcjpwdw==", "Token abc", "Bearer a b",
    "Bearer tnr_unknown-token",
])
def test_no_malformed_or_unknown_token_gets_past_any_route(
    client: TestClient, anonymous: TestClient, header: str | None
) -> None:
    job_id = client.post("/v1/jobs", json=GOOD).json()["id"]  # a real job to ask for
    headers = {"Authorization": header} if header is not None else {}
    for method, path in _guarded_routes(anonymous):
        answer = _call(anonymous, method, path, job_id, headers=headers)
        if path in PAGES and header is None:
            assert answer.status_code == 303, (method, path)
            assert answer.headers["location"].startswith("/signin?next=")
            continue
        if path in PAGES:  # a page asked for with a bad header: sign in too
            assert answer.status_code == 303, (method, path, header)
            continue
        assert answer.status_code == 401, (method, path, header, answer.text)
        assert answer.headers["www-authenticate"].startswith("Bearer"), (method, path)
        assert answer.json()["detail"], (method, path)
    assert client.get("/v1/jobs").json()["total"] == 1  # nothing else was written


def test_a_revoked_token_is_refused_everywhere(settings: Settings, anonymous: TestClient
                                               ) -> None:
    engine = make_engine(settings)
    sessions = make_session_factory(engine)
    try:
        token, secret = auth.create_token(sessions, tenant="team-a", label="ci")
        assert anonymous.get("/v1/jobs", headers=bearer(secret)).status_code == 200
        assert auth.revoke_token(sessions, token.id)
        assert not auth.revoke_token(sessions, token.id)  # revoked once
        for method, path in _guarded_routes(anonymous):
            answer = _call(anonymous, method, path, "0" * 32, headers=bearer(secret))
            assert answer.status_code in ((303,) if path in PAGES else (401,)), (method, path)
        listed = {t.id: t for t in auth.list_tokens(sessions)}[token.id]
        assert listed.revoked_at is not None and listed.last_used_at is not None
    finally:
        engine.dispose()


def test_the_database_holds_no_secret_in_clear(settings: Settings, anonymous: TestClient
                                               ) -> None:
    secret = new_token(settings, "team-a")
    link = anonymous.post("/v1/auth/signin-links", headers=bearer(secret)).json()["url"]
    cookie = _sign_in_by_link(anonymous, link)
    engine = make_engine(settings)
    try:
        with engine.connect() as connection:
            for table in inspect(engine).get_table_names():
                for row in connection.execute(text(f'SELECT * FROM "{table}"')):
                    dumped = repr(tuple(row))
                    for clear in (secret, cookie, link.split("code=")[1].split("&")[0]):
                        assert clear not in dumped, table
    finally:
        engine.dispose()


def _sign_in_by_link(client: TestClient, url: str) -> str:
    answer = client.get(url)
    assert answer.status_code == 303, answer.text
    cookie = client.cookies.get("tuner_session")
    assert cookie
    return str(cookie)


def test_the_sign_in_form_gives_a_strict_http_only_cookie_and_sign_out_ends_it(
    settings: Settings, anonymous: TestClient
) -> None:
    secret = new_token(settings, "team-a")
    page = anonymous.get("/", follow_redirects=True)
    assert page.status_code == 200 and 'name="token"' in page.text
    wrong = anonymous.post("/signin", data={"token": "tnr_nope", "next": "/"},
                           headers=SAME_SITE)
    assert wrong.status_code == 401 and "Unknown or revoked token" in wrong.text
    signed = anonymous.post("/signin", data={"token": secret, "next": "/v1/jobs?limit=5"},
                            headers=SAME_SITE)
    assert signed.status_code == 303 and signed.headers["location"] == "/v1/jobs?limit=5"
    set_cookie = signed.headers["set-cookie"].lower()
    assert "httponly" in set_cookie and "samesite=strict" in set_cookie
    assert "secure" not in set_cookie  # plain http on loopback
    assert anonymous.get("/").status_code == 200
    assert anonymous.get("/v1/jobs").status_code == 200  # the JSON API reads with the cookie
    # ... but a cookie alone never writes: no cross-site request can submit or cancel
    refused = anonymous.post("/v1/jobs", json=GOOD)
    assert refused.status_code == 401 and "does not authorise a POST" in refused.json()["detail"]
    out = anonymous.post("/signout", headers=SAME_SITE)
    assert out.status_code == 303 and out.headers["location"] == "/signin"
    assert anonymous.get("/").status_code == 303


def test_behind_https_the_cookie_is_secure(settings: Settings, anonymous: TestClient) -> None:
    secret = new_token(settings, "team-a")
    signed = anonymous.post("/signin", data={"token": secret},
                            headers={**SAME_SITE, "X-Forwarded-Proto": "https"})
    assert "secure" in signed.headers["set-cookie"].lower()


def test_a_sign_in_form_from_another_site_is_refused(settings: Settings,
                                                     anonymous: TestClient) -> None:
    secret = new_token(settings, "team-a")
    for headers in ({}, {"Origin": "http://evil.example"}, {"Origin": "null"},
                    {"Origin": "null", "Sec-Fetch-Site": "cross-site"},
                    {"Origin": "http://evil.example", "Sec-Fetch-Site": "same-origin"},
                    {"Sec-Fetch-Site": "same-site"}):
        answer = anonymous.post("/signin", data={"token": secret}, headers=headers)
        assert answer.status_code == 403, headers
    assert "tuner_session" not in anonymous.cookies
    # what a browser sends from our own page, whose referrer policy hides its origin
    ours = anonymous.post("/signin", data={"token": secret},
                          headers={"Origin": "null", "Sec-Fetch-Site": "same-origin"})
    assert ours.status_code == 303


def test_a_sign_in_link_works_once_and_only_inside_this_site(settings: Settings,
                                                             anonymous: TestClient) -> None:
    secret = new_token(settings, "team-a")
    made = anonymous.post("/v1/auth/signin-links", params={"next": "//evil.example/x"},
                          headers=bearer(secret))
    assert made.status_code == 201 and made.json()["expires_in_s"] == 60
    url = made.json()["url"]
    answer = anonymous.get(url)
    assert answer.status_code == 303 and answer.headers["location"] == "/"  # not off-site
    assert anonymous.get("/v1/me").json()["tenant"] == "team-a"
    anonymous.cookies.clear()
    again = anonymous.get(url)
    assert again.status_code == 401 and "expired or was used already" in again.text


def test_a_cookie_cannot_make_a_sign_in_link(settings: Settings, anonymous: TestClient) -> None:
    secret = new_token(settings, "team-a")
    anonymous.post("/signin", data={"token": secret}, headers=SAME_SITE)
    assert anonymous.post("/v1/auth/signin-links").status_code == 401


def test_revoking_a_token_signs_its_browsers_out(settings: Settings, anonymous: TestClient
                                                 ) -> None:
    engine = make_engine(settings)
    sessions = make_session_factory(engine)
    try:
        token, secret = auth.create_token(sessions, tenant="team-a")
        anonymous.post("/signin", data={"token": secret}, headers=SAME_SITE)
        assert anonymous.get("/").status_code == 200
        auth.revoke_token(sessions, token.id)
        assert anonymous.get("/").status_code == 303
    finally:
        engine.dispose()


def test_tenant_names_are_checked(settings: Settings) -> None:
    engine = make_engine(settings)
    try:
        for bad in ("", "Team A", "-x", "a" * 65, "é"):
            with pytest.raises(auth.TokenRefused, match="tenant name"):
                auth.create_token(make_session_factory(engine), tenant=bad)
        assert auth.list_tokens(make_session_factory(engine)) == []
    finally:
        engine.dispose()


def test_the_docs_show_the_bearer_scheme(anonymous: TestClient) -> None:
    schema = anonymous.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["token"] == {
        "type": "http", "scheme": "bearer", "description": schema["components"][
            "securitySchemes"]["token"]["description"]}
    submit = schema["paths"]["/v1/jobs"]["post"]
    assert submit["security"] == [{"token": []}] and "401" in submit["responses"]
    assert "security" not in schema["paths"]["/healthz"]["get"]
    assert anonymous.get("/docs").status_code == 200
