"""``tuner token create/list/revoke`` against a real database, and ``tuner open``'s sign-in."""

from __future__ import annotations

import re
import webbrowser
from collections.abc import Iterator

import httpx
import pytest
from typer.testing import CliRunner

from tests.conftest import http_server, settings_env
from tuner_service.cli import app
from tuner_service.cli.common import console
from tuner_service.config import Settings

runner = CliRunner()


@pytest.fixture
def cli_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The CLI's environment names the test database (as an operator's shell would)."""
    for name, value in settings_env(settings).items():
        if name.startswith("TUNER_"):
            monkeypatch.setenv(name, value)
    monkeypatch.delenv("TUNER_TOKEN", raising=False)
    monkeypatch.setattr(console, "width", 200)  # a wide terminal: no cell is cut short
    return settings


def _create(*args: str) -> str:
    result = runner.invoke(app, ["token", "create", *args])
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()[-1]


def test_create_prints_the_token_once_on_its_own_last_line(cli_env: Settings) -> None:
    result = runner.invoke(app, ["token", "create", "--tenant", "vision", "--label", "ci"])
    assert result.exit_code == 0, result.output
    secret = result.stdout.splitlines()[-1]
    assert secret.startswith("tnr_") and len(secret) > 40 and " " not in secret
    assert result.stdout.count(secret) == 1 and "vision" in result.stderr
    listed = runner.invoke(app, ["token", "list"])
    assert listed.exit_code == 0 and "vision" in listed.stdout and "ci" in listed.stdout
    assert secret not in listed.stdout and "1 token(s)" in listed.stdout


def test_a_created_token_works_and_a_revoked_one_does_not(cli_env: Settings) -> None:
    secret = _create("--tenant", "vision")
    listed = runner.invoke(app, ["token", "list"]).stdout
    token_id = re.findall(r"\b[0-9a-f]{32}\b", listed)[0]
    with http_server(cli_env) as url:
        jobs = httpx.get(f"{url}/v1/jobs", headers={"Authorization": f"Bearer {secret}"})
        assert jobs.status_code == 200
        assert runner.invoke(app, ["token", "revoke", token_id]).exit_code == 0
        again = httpx.get(f"{url}/v1/jobs", headers={"Authorization": f"Bearer {secret}"})
        assert again.status_code == 401
    twice = runner.invoke(app, ["token", "revoke", token_id])
    assert twice.exit_code == 1 and "no live token" in twice.output


@pytest.mark.parametrize("tenant", ["Team A", "", "-x"])
def test_a_bad_tenant_name_is_a_message_and_exit_2(cli_env: Settings, tenant: str) -> None:
    result = runner.invoke(app, ["token", "create", "--tenant", tenant])
    assert result.exit_code == 2 and "tenant name" in result.output
    assert "0 token(s)" in runner.invoke(app, ["token", "list"]).stdout


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """What the CLI asked the browser to open (this machine has no desktop browser)."""
    urls: list[str] = []
    monkeypatch.setattr(webbrowser, "open", lambda url, *_a, **_k: urls.append(url) or True)
    yield urls


def test_tuner_open_signs_the_browser_in_with_a_one_time_link(
    cli_env: Settings, opened: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNER_TOKEN", _create("--tenant", "vision"))
    with http_server(cli_env) as url, httpx.Client(base_url=url) as browser:
        result = runner.invoke(app, ["open", "--url", url])
        assert result.exit_code == 0, result.output
        assert "code=" not in result.output  # the one-time code stays off the terminal
        landed = browser.get(opened[0], follow_redirects=True)
        assert landed.status_code == 200 and "tenant <b>vision</b>" in landed.text
        reused = httpx.get(opened[0])
        assert reused.status_code == 401


def test_report_open_signs_in_and_shows_the_report(cli_env: Settings, opened: list[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    secret = _create("--tenant", "vision")
    with http_server(cli_env) as url, httpx.Client(base_url=url) as browser:
        job = httpx.post(f"{url}/v1/jobs", headers={"Authorization": f"Bearer {secret}"},
                         json={"model": {"builtin": "logistic_regression"},
                               "dataset": {"builtin": "digits"}}).json()
        result = runner.invoke(app, ["report", job["id"], "--open", "--url", url,
                                     "--token", secret])
        assert result.exit_code == 0, result.output
        landed = browser.get(opened[0], follow_redirects=True)
        assert landed.status_code == 200
        assert str(landed.url).endswith(f"/v1/jobs/{job['id']}/report.html")
        unknown = runner.invoke(app, ["report", "f" * 32, "--open", "--url", url,
                                      "--token", secret])
        assert unknown.exit_code == 1 and "not found" in unknown.output


def test_an_admin_lists_every_tenants_jobs_with_their_tenant(cli_env: Settings) -> None:
    teams = {name: _create("--tenant", name) for name in ("vision", "speech")}
    admin = _create("--tenant", "ops", "--admin")
    spec = {"model": {"builtin": "logistic_regression"}, "dataset": {"builtin": "digits"}}
    with http_server(cli_env) as url:
        for secret in teams.values():
            httpx.post(f"{url}/v1/jobs", json=spec,
                       headers={"Authorization": f"Bearer {secret}"}).raise_for_status()
        every = runner.invoke(app, ["jobs", "--url", url, "--token", admin])
        own = runner.invoke(app, ["jobs", "--url", url, "--token", teams["vision"]])
    assert every.exit_code == 0 and "tenant" in every.stdout
    assert "vision" in every.stdout and "speech" in every.stdout and "2 job(s)" in every.stdout
    assert own.exit_code == 0 and "tenant" not in own.stdout and "1 job(s)" in own.stdout
