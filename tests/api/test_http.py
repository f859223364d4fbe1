"""The HTTP layer: JSON errors with request ids, body limits, cross-site refusals, security
headers and the offline API docs. Rules that touch the database run on SQLite and PostgreSQL;
a refused request must have written nothing.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.testclient import TestClient
from plotly.offline import get_plotlyjs

import tests.conftest as conftest
from tests.api.test_jobs_validation import GOOD
from tests.conftest import bearer, http_server, make_settings, new_token
from tests.web.test_report_pages import CHROMIUM, _playwright_or_skip
from tuner_service.api.crosssite import AllowedHosts, host_name
from tuner_service.app import create_app
from tuner_service.client import TunerClient
from tuner_service.config import Settings
from tuner_service.db.migrate import upgrade

SECURITY_HEADERS = {"x-content-type-options": "nosniff", "x-frame-options": "DENY",
                    "referrer-policy": "no-referrer"}
FOREIGN = "http://evil.example"
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
PARCOORDS = """Plotly.newPlot("plot", [{type: "parcoords", line: {color: [1, 2, 3]},
    dimensions: [{label: "a", values: [1, 2, 3]}, {label: "b", values: [3, 1, 2]}]}]);"""
# Some CSP refusals (a blocked eval) reach no console: the page's own listener sees them all.
WATCH_CSP = """window.violations = [];
document.addEventListener("securitypolicyviolation",
    e => window.violations.push(e.effectiveDirective + " " + e.blockedURI));"""


def with_test_routes(app: FastAPI) -> FastAPI:
    """``create_app``'s app plus test-only routes: one fails, one shows the CSP nonce, and one
    draws plotly's parcoords (the trace that needs 'unsafe-eval') from nonce-tagged scripts."""

    @app.get("/test/boom")
    def boom() -> None:
        raise RuntimeError("boom for the test")

    @app.get("/test/nonce", response_class=HTMLResponse)
    def nonce(request: Request) -> HTMLResponse:
        return HTMLResponse(f"<p>{request.state.csp_nonce}</p>")

    @app.get("/test/plotly", response_class=HTMLResponse)
    def plot(request: Request) -> HTMLResponse:
        tag = f'<script nonce="{request.state.csp_nonce}">'
        return HTMLResponse(
            f'<!doctype html><link rel="icon" href="data:,">{tag}{get_plotlyjs()}</script>'
            f'<div id="plot"></div>{tag}{PARCOORDS}</script>'
            "<script>window.injected = true</script>")  # no nonce: must not run

    return app


@pytest.fixture
def served_with_test_routes(monkeypatch: pytest.MonkeyPatch) -> None:
    """``http_server`` serves ``with_test_routes(create_app(...))``."""
    monkeypatch.setattr(conftest, "create_app",
                        lambda *args, **kwargs: with_test_routes(create_app(*args, **kwargs)))


@pytest.fixture
def sqlite_settings(tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """For the rules that never reach the database: SQLite only."""
    settings = make_settings("sqlite", tmp_path / "home", request)
    upgrade(settings)
    return settings


@pytest.fixture
def app_client(sqlite_settings: Settings) -> Iterator[TestClient]:
    with TestClient(with_test_routes(create_app(sqlite_settings, recover_every_s=None))) as c:
        yield c


def _total(client: TestClient | httpx.Client) -> int:
    return int(client.get("/v1/jobs").json()["total"])


def _job(client: TestClient) -> str:
    response = client.post("/v1/jobs", json=GOOD)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


# --- unexpected errors and request ids --------------------------------------------------------

@pytest.mark.usefixtures("served_with_test_routes")
def test_an_unhandled_error_is_json_500_logged_with_its_id_and_the_connection_lives_on(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    headers = bearer(new_token(settings))
    with http_server(settings) as url, httpx.Client(base_url=url, headers=headers) as http:
        failed = http.get("/test/boom")
        after = http.get("/v1/jobs")
        ports = {_local_port(failed), _local_port(after)}

    assert failed.status_code == 500
    assert failed.headers["content-type"] == "application/json"
    request_id = failed.json()["request_id"]
    assert failed.json() == {"detail": "internal server error", "request_id": request_id}
    assert failed.headers["x-request-id"] == request_id
    assert after.status_code == 200 and after.json()["total"] == 0
    # Same keep-alive connection: the server did not drop it after the error.
    assert len(ports) == 1
    logged = [r for r in caplog.records if request_id in r.getMessage()]
    assert logged and logged[0].exc_info is not None
    assert "boom for the test" in str(logged[0].exc_info[1])


def _local_port(response: httpx.Response) -> int:
    return int(response.extensions["network_stream"].get_extra_info("client_addr")[1])


def test_a_sane_request_id_is_kept_and_any_other_replaced(app_client: TestClient) -> None:
    assert app_client.get("/healthz", headers={"x-request-id": "abc-1.2_3"}
                           ).headers["x-request-id"] == "abc-1.2_3"
    for insane in ("x" * 65, "a b", "<script>", ""):
        given = app_client.get("/healthz", headers={"x-request-id": insane})
        assert re.fullmatch(r"[0-9a-f]{32}", given.headers["x-request-id"]), insane
    first, second = (app_client.get("/healthz").headers["x-request-id"] for _ in range(2))
    assert first != second


# --- request bodies ---------------------------------------------------------------------------

def _chunks(size: int) -> Iterator[bytes]:
    """A JSON body of ``size`` bytes sent chunked (no Content-Length)."""
    yield b'{"name": "'
    for _ in range((size - 12) // 1000):
        yield b"x" * 1000
    yield b'"}'


def test_a_chunked_body_over_the_cap_is_413_and_writes_nothing(
    client: TestClient, settings: Settings
) -> None:
    response = client.post("/v1/jobs", content=_chunks(settings.max_request_bytes + 10_000),
                           headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert "larger than" in response.json()["detail"]
    assert "TUNER_MAX_REQUEST_BYTES" in response.json()["detail"]
    assert _total(client) == 0


def test_a_chunked_body_is_replayed_to_the_app_over_a_real_server(settings: Settings) -> None:
    small = settings.model_copy(update={"max_request_bytes": 5_000})
    headers = bearer(new_token(settings))
    with http_server(small) as url, httpx.Client(base_url=url, headers=headers) as http:
        spec = httpx.Request("POST", "/", json=GOOD).content
        accepted = http.post("/v1/jobs", content=iter([spec[:10], spec[10:]]),
                             headers={"content-type": "application/json"})
        refused = http.post("/v1/jobs", content=_chunks(6_000),
                            headers={"content-type": "application/json"})
        total = http.get("/v1/jobs").json()["total"]
    assert accepted.status_code == 201, accepted.text
    assert refused.status_code == 413 and "larger than 5000" in refused.json()["detail"]
    assert total == 1


@pytest.mark.parametrize("length", ["abc", "-1", "1.5", "+3", "0x10"])
def test_a_content_length_that_is_not_a_plain_integer_is_400(
    client: TestClient, length: str
) -> None:
    response = client.post("/v1/jobs", content=b"{}", headers={
        "content-type": "application/json", "content-length": length})
    assert response.status_code == 400
    assert "Content-Length" in response.json()["detail"]
    assert _total(client) == 0


def test_a_json_syntax_error_is_reported_against_the_body_with_where_it_is(
    client: TestClient
) -> None:
    response = client.post("/v1/jobs", content=b'{\n  "name": "x",\n  oops}',
                           headers={"content-type": "application/json"})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["field"] == "body" and error["type"] == "json_invalid"
    assert "line 3, column 3" in error["message"], error
    assert _total(client) == 0


# --- cross-site requests ----------------------------------------------------------------------

@pytest.mark.parametrize(("header", "name"), [
    ("localhost:8000", "localhost"), ("LOCALHOST", "localhost"), ("[::1]:8000", "::1"),
    ("[::1]", "::1"), ("::1", "::1"), ("127.0.0.1:80", "127.0.0.1"),
    ("example.org.", "example.org"), ("[::1", ""), ("", ""),
])
def test_host_names_lose_their_port_and_brackets(header: str, name: str) -> None:
    assert host_name(header) == name


def test_allowed_hosts_match_exactly_by_subdomain_or_anything() -> None:
    hosts = AllowedHosts(["localhost", "[::1]", "*.example.org"])
    assert hosts.allows("localhost") and hosts.allows("::1") and hosts.allows("a.example.org")
    assert not hosts.allows("example.org") and not hosts.allows("evil.example")
    assert not hosts.allows("")
    anything = AllowedHosts(["*"])
    assert anything.allows("evil.example") and not anything.named("evil.example")


def test_a_host_not_allowed_is_400_naming_it_except_for_probes(client: TestClient) -> None:
    refused = client.post("/v1/jobs", json=GOOD, headers={"host": "rebound.evil.example:8000"})
    assert refused.status_code == 400
    assert "rebound.evil.example:8000" in refused.json()["detail"]
    assert "TUNER_ALLOWED_HOSTS" in refused.json()["detail"]
    assert refused.headers["x-request-id"]
    assert client.get("/", headers={"host": "rebound.evil.example"}).status_code == 400
    assert client.get("/healthz", headers={"host": "10.0.0.7:8000"}).status_code == 200
    for allowed in ("localhost:8000", "[::1]:8000", "127.0.0.1", "testserver"):
        assert client.get("/v1/jobs", headers={"host": allowed}).status_code == 200, allowed
    assert _total(client) == 0


def test_allowed_hosts_star_answers_any_host_but_not_a_foreign_origin(
    sqlite_settings: Settings
) -> None:
    anything = sqlite_settings.model_copy(update={"allowed_hosts": ["*"]})
    headers = bearer(new_token(sqlite_settings))
    with TestClient(create_app(anything, recover_every_s=None), headers=headers) as client:
        assert client.get("/v1/jobs", headers={"host": "api.internal"}).status_code == 200
        same = client.post("/v1/jobs", json=GOOD, headers={
            "host": "api.internal", "origin": "https://api.internal"})
        foreign = client.post("/v1/jobs", json=GOOD, headers={
            "host": "api.internal", "origin": FOREIGN})
        assert same.status_code == 201 and foreign.status_code == 403
        assert _total(client) == 1


@pytest.mark.parametrize("origin", [FOREIGN, "null", "http://[::1", "http://127.0.0.1.evil.example"])
def test_a_cross_origin_write_is_403_and_writes_nothing(client: TestClient, origin: str) -> None:
    response = client.post("/v1/jobs", json=GOOD, headers={"origin": origin})
    assert response.status_code == 403
    assert "Origin" in response.json()["detail"]
    assert _total(client) == 0


def test_same_site_origins_may_write(client: TestClient) -> None:
    for origin in ("http://testserver", "http://localhost:5173", "http://[::1]:8000"):
        response = client.post("/v1/jobs", json=GOOD, headers={"origin": origin})
        assert response.status_code == 201, (origin, response.text)
    assert _total(client) == 3


@pytest.mark.parametrize(("kind", "body"), [
    ("application/x-www-form-urlencoded", b"name=x"),
    ("multipart/form-data; boundary=b", b"--b--"),
    ("text/plain", b'{"model": {}}'),
    (None, b'{"model": {}}'),
])
def test_a_write_that_is_not_json_is_415_and_writes_nothing(
    client: TestClient, kind: str | None, body: bytes
) -> None:
    headers = {"content-type": kind} if kind else {}
    response = client.post("/v1/jobs", content=body, headers=headers)
    assert response.status_code == 415, response.text
    assert "application/json" in response.json()["detail"]
    assert _total(client) == 0


def test_json_media_types_with_parameters_or_a_suffix_are_json(client: TestClient) -> None:
    body = httpx.Request("POST", "/", json=GOOD).content
    for kind in ("application/json; charset=utf-8", "Application/JSON"):
        response = client.post("/v1/jobs", content=body, headers={"content-type": kind})
        assert response.status_code == 201, (kind, response.text)
    suffixed = client.post("/v1/jobs", content=body,
                           headers={"content-type": "application/vnd.tuner+json"})
    assert suffixed.status_code != 415


def test_a_cross_site_form_post_cannot_cancel_a_job(client: TestClient) -> None:
    job_id = _job(client)
    form = {"content-type": "application/x-www-form-urlencoded"}
    with_origin = client.post(f"/v1/jobs/{job_id}/cancel", content=b"",
                              headers={**form, "origin": FOREIGN})
    without_origin = client.post(f"/v1/jobs/{job_id}/cancel", content=b"x=1", headers=form)
    no_cors_fetch = client.post(f"/v1/jobs/{job_id}/cancel", headers={"origin": "null"})
    assert [with_origin.status_code, without_origin.status_code, no_cors_fetch.status_code
            ] == [403, 415, 403]
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
    # The CLI's cancel sends no body and no Content-Type: still allowed.
    assert client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"


def test_the_cli_client_submits_and_cancels_over_a_real_server(settings: Settings) -> None:
    with http_server(settings) as url, TunerClient(url, token=new_token(settings)) as api:
        job = api.submit(GOOD)
        assert api.cancel(job.id).status == "cancelled"
        assert api.jobs().total == 1 and api.healthy()
        assert api.me().tenant == "local" and not api.me().is_admin


# --- security headers and the CSP -------------------------------------------------------------

def _nonce(csp: str) -> str:
    found = re.search(r"'nonce-([A-Za-z0-9_-]{16,})'", csp)
    assert found, csp
    return found.group(1)


def test_every_answer_has_the_security_headers_and_html_a_csp(client: TestClient) -> None:
    answers = [client.get("/"), client.get("/v1/jobs"), client.get("/v1/jobs/nope"),
               client.post("/v1/jobs", json={}), client.get("/openapi.json")]
    for answer in answers:
        assert {k: answer.headers.get(k) for k in SECURITY_HEADERS} == SECURITY_HEADERS
        assert answer.headers["x-request-id"]
        is_html = answer.headers["content-type"].startswith("text/html")
        assert ("content-security-policy" in answer.headers) == is_html, answer.request.url
    csp = answers[0].headers["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0]


def test_routes_read_the_csp_nonce_and_it_is_fresh_per_request(app_client: TestClient) -> None:
    pages = [app_client.get("/test/nonce") for _ in range(2)]
    nonces = [_nonce(page.headers["content-security-policy"]) for page in pages]
    assert [page.text for page in pages] == [f"<p>{nonce}</p>" for nonce in nonces]
    assert nonces[0] != nonces[1]


def test_gzip_still_compresses_large_answers(app_client: TestClient) -> None:
    asset = app_client.get("/static/docs/swagger-ui-bundle.js",
                            headers={"accept-encoding": "gzip"})
    assert asset.headers["content-encoding"] == "gzip"


# --- API docs from our own origin -------------------------------------------------------------

@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_load_nothing_from_another_origin(
    app_client: TestClient, page: str
) -> None:
    answer = app_client.get(page)
    assert answer.status_code == 200
    assert re.findall(r"(?:src|href)=\"(https?:)?//", answer.text) == []
    assert "cdn" not in answer.text.lower() and "fonts.googleapis" not in answer.text
    nonce = _nonce(answer.headers["content-security-policy"])
    inline = re.findall(r"<script(?![^>]*\bsrc=)([^>]*)>", answer.text)
    assert all(f'nonce="{nonce}"' in attributes for attributes in inline), inline
    paths = app_client.get("/openapi.json").json()["paths"]
    assert not any(p.startswith(("/docs", "/redoc", "/static")) for p in paths)


@pytest.mark.parametrize("asset", ["swagger-ui-bundle.js", "redoc.standalone.js",
                                   "swagger-ui.css", "favicon.png"])
def test_the_docs_assets_are_served_here(app_client: TestClient, asset: str) -> None:
    answer = app_client.get(f"/static/docs/{asset}")
    assert answer.status_code == 200 and len(answer.content) > 1000
    kind = answer.headers["content-type"]
    if asset.endswith(".js"):
        assert kind.split(";")[0] in ("text/javascript", "application/javascript")
    assert answer.headers["x-content-type-options"] == "nosniff"


@contextlib.contextmanager
def chromium(settings: Settings) -> Iterator[tuple[str, Any, list[str]]]:
    """A real server and a Chromium page; yields the URL, the page and its problems (errors,
    failed requests; CSP refusals are in ``window.violations``)."""
    sync_api = _playwright_or_skip()
    with http_server(settings) as url, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu",
                                                 "--disable-dev-shm-usage"])
        page = browser.new_page()
        page.add_init_script(WATCH_CSP)
        problems: list[str] = []
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("requestfailed", lambda r: problems.append(f"failed: {r.url} {r.failure}"))
        try:
            yield url, page, problems
        finally:
            browser.close()


def test_swagger_ui_and_redoc_render_in_chromium_under_the_csp(sqlite_settings: Settings) -> None:
    with chromium(sqlite_settings) as (url, page, problems):
        schema = httpx.get(f"{url}/openapi.json").json()
        page.goto(f"{url}/docs")
        page.wait_for_selector(".opblock", timeout=30_000)
        shown = page.locator(".opblock").count()
        swagger_problems = [*problems, *page.evaluate("window.violations")]

        page.goto(f"{url}/redoc")
        page.wait_for_selector("[data-section-id*='operation/']", state="attached",
                               timeout=30_000)
        page.wait_for_timeout(500)  # ReDoc starts its search worker after the first render
        redoc_problems = [*problems[len(swagger_problems):], *page.evaluate("window.violations")]

        # A same-origin write from our page (what "Try it out" sends) passes the guards: to
        # the token check without one, to validation with one.
        post = """token => fetch('/v1/jobs', {method: 'POST', headers: Object.assign(
            {'content-type': 'application/json'},
            token ? {'authorization': 'Bearer ' + token} : {}), body: '{}'})
            .then(r => r.text().then(() => r.status))"""
        statuses = [page.evaluate(post, token) for token in ("", new_token(sqlite_settings))]

    assert swagger_problems == [], "\n".join(swagger_problems)
    assert shown == sum(len(operations) for operations in schema["paths"].values())
    # ReDoc's "API docs by Redocly" link shows a logo from cdn.redoc.ly, hard-coded: our CSP
    # blocks it (no request leaves for another site) and ReDoc hides the image. Nothing else.
    assert redoc_problems and all(REDOC_LOGO in p for p in redoc_problems), redoc_problems
    assert statuses == [401, 422]


@pytest.mark.usefixtures("served_with_test_routes")
def test_plotly_parcoords_draws_from_nonce_scripts_and_other_inline_scripts_do_not_run(
    sqlite_settings: Settings
) -> None:
    with chromium(sqlite_settings) as (url, page, problems):
        page.goto(f"{url}/test/plotly")
        page.wait_for_selector("#plot .main-svg", timeout=30_000)
        page.wait_for_timeout(500)
        drawn = page.inner_text("#plot")
        injected = page.evaluate("window.injected === true")
        violations = page.evaluate("window.violations")

    # Without 'unsafe-eval' regl's compiled draw calls are refused and plotly, silently,
    # writes this message where the plot should be.
    assert "WebGL is not supported" not in drawn and "a" in drawn.split()
    assert not injected
    assert violations == ["script-src-elem inline"]
    assert len(problems) == 1 and "Content Security Policy" in problems[0], problems


def test_a_page_of_another_local_server_cannot_cancel_a_job(client: TestClient) -> None:
    job_id = client.post("/v1/jobs", json=GOOD).json()["id"]
    host = {"host": "127.0.0.1:8000"}
    other_port = client.post(f"/v1/jobs/{job_id}/cancel",
                             headers={**host, "origin": "http://localhost:3000"})
    assert other_port.status_code == 403
    assert client.get(f"/v1/jobs/{job_id}", headers=host).json()["status"] == "queued"
    for origin in ("http://127.0.0.1:8000", "http://localhost:8000"):
        same = client.post(f"/v1/jobs/{job_id}/cancel", headers={**host, "origin": origin})
        assert same.status_code == 200, (origin, same.text)
