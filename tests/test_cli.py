"""The ``tuner`` command against a real HTTP server (uvicorn on a loopback port)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import http_server, new_token, settings_env
from tests.servers import free_port
from tuner_service import jobs
from tuner_service.cli import EXAMPLE_SPEC, app, host_hint, load_yaml
from tuner_service.client import ApiError, TunerClient, parse_retry_after
from tuner_service.config import LOOPBACK_HOSTS, Settings
from tuner_service.embedded import WORKER_LOG_MAX_BYTES, open_worker_log
from tuner_service.runtime import Runtime
from tuner_service.schemas import JobCreate, JobPublic, JobsPublic, TrialCounts
from tuner_service.tenancy import LOCAL

runner = CliRunner()


@pytest.fixture
def server_url(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real server; the CLI finds a token of the tenant ``local`` in TUNER_TOKEN."""
    monkeypatch.setenv("TUNER_TOKEN", new_token(settings))
    with http_server(settings) as url:
        yield url


def _wait_healthy(url: str, timeout_s: float = 120.0) -> None:
    """Until the API of a starting ``tuner up`` answers its health check."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.3)
    raise AssertionError(f"{url} did not become healthy in {timeout_s} s")


def _spec_file(tmp_path: Path, **changes: object) -> Path:
    spec = {**yaml.safe_load(EXAMPLE_SPEC.read_text()), **changes}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_submit_and_inspect_a_job(server_url: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["submit", str(_spec_file(tmp_path)), "--url", server_url])
    assert result.exit_code == 0, result.output
    job_id = result.output.split("submitted job ")[1].split()[0]
    assert "No trial has completed yet" in runner.invoke(
        app, ["report", job_id, "--url", server_url]).output
    for command in (["jobs"], ["status", job_id], ["report", job_id],
                    ["status", job_id, "--json"], ["cancel", job_id]):
        outcome = runner.invoke(app, [*command, "--url", server_url])
        assert outcome.exit_code == 0, (command, outcome.output)
    assert job_id in runner.invoke(app, ["jobs", "--url", server_url]).output
    assert "cancelled" in runner.invoke(app, ["status", job_id, "--url", server_url]).output
    assert "No trial completed" in runner.invoke(
        app, ["report", job_id, "--url", server_url]).output


def test_an_invalid_spec_names_the_field_and_exits_2(server_url: str, tmp_path: Path) -> None:
    path = _spec_file(tmp_path, search_space={"beta_1": {"low": 0.9, "high": 1.2}})
    result = runner.invoke(app, ["submit", str(path), "--url", server_url])
    assert result.exit_code == 2
    assert "search_space.beta_1" in result.output and "[0, 1)" in result.output


@pytest.mark.parametrize(("content", "message"), [
    (None, "cannot read"), ("a: [1, 2", "not valid YAML"), ("- 1\n- 2\n", "must hold a mapping"),
])
def test_unreadable_spec_files_exit_2(tmp_path: Path, content: str | None,
                                      message: str) -> None:
    path = tmp_path / "job.yaml"
    if content is not None:
        path.write_text(content)
    result = runner.invoke(app, ["submit", str(path), "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 2 and message in result.output


def test_the_cli_sends_the_token_kept_in_tuner_home(server_url: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    token = os.environ["TUNER_TOKEN"]
    monkeypatch.delenv("TUNER_TOKEN")
    monkeypatch.setenv("TUNER_HOME", str(tmp_path))
    refused = runner.invoke(app, ["jobs", "--url", server_url])
    assert refused.exit_code == 1 and "missing or invalid API token" in refused.output
    (tmp_path / "token").write_text(token + "\n")
    assert runner.invoke(app, ["jobs", "--url", server_url]).exit_code == 0


def test_unknown_job_and_unreachable_server_exit_1(server_url: str) -> None:
    missing = runner.invoke(app, ["status", "nope", "--url", server_url])
    assert missing.exit_code == 1 and "not found" in missing.output
    down = runner.invoke(app, ["jobs", "--url", f"http://127.0.0.1:{free_port()}"])
    assert down.exit_code == 1 and "cannot reach the API" in down.output


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_tuner_up_runs_a_job_and_ctrl_c_stops_everything(settings: Settings,
                                                          tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = settings_env(settings)  # no token configured: tuner up makes the local one
    env.pop("TUNER_TOKEN", None)
    elsewhere = tmp_path / "cwd"  # everything must land in TUNER_HOME, nothing in the cwd
    elsewhere.mkdir()
    up = subprocess.Popen([sys.executable, "-m", "tuner_service.cli", "up", "--port",
                           str(port), "--workers", "1"], env=env, start_new_session=True,
                          cwd=elsewhere, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    try:
        _wait_healthy(url)
        spec = _spec_file(tmp_path, budget={"n_trials": 3, "epochs": 2})
        submit = subprocess.run(
            [sys.executable, "-m", "tuner_service.cli", "submit", str(spec), "--wait",
             "--url", url], env=env, capture_output=True, text=True, timeout=300)
        assert submit.returncode == 0, submit.stdout + submit.stderr
        assert "Best Adam configuration" in submit.stdout
        assert "improvement over the paper defaults" in submit.stdout
        assert httpx.get(f"{url}/v1/jobs").status_code == 401  # the API is not open
    finally:
        os.killpg(up.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        terminal, _ = up.communicate(timeout=60)
    leftovers = subprocess.run(["pgrep", "-s", str(up.pid)], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", "worker processes outlived tuner up"
    assert list(elsewhere.iterdir()) == []
    # The workers' output (Celery, TensorFlow) is in the log; the terminal names the log.
    log = (settings.home / "workers.log").resolve()
    assert "worker child ready; GPUs:" in log.read_text()
    assert "tuner.run_trial" in log.read_text()  # Celery's INFO lines of each task
    assert f"worker logs: {log}" in terminal
    assert "worker child ready" not in terminal and "celery" not in terminal.lower()
    token_file = settings.home / "token"
    assert "made an admin token" in terminal and "tuner open" in terminal
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert token_file.read_text().strip() not in terminal  # the secret stays in the file


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_sigterm_to_tuner_up_alone_stops_its_workers_too(settings: Settings) -> None:
    port = free_port()
    up = subprocess.Popen([sys.executable, "-m", "tuner_service.cli", "up", "--port",
                           str(port), "--workers", "1"], env=settings_env(settings),
                          start_new_session=True)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}")
        assert subprocess.run(["pgrep", "-s", str(up.pid)], capture_output=True,
                              text=True).stdout.count("\n") >= 2  # tuner up and a worker
    finally:
        up.send_signal(signal.SIGTERM)  # what docker stop or systemd sends: to this process
        assert up.wait(timeout=90) is not None
    leftovers = subprocess.run(["pgrep", "-s", str(up.pid)], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", "worker processes outlived tuner up"


@pytest.mark.parametrize(("text", "value"), [
    ("1e-5", 1e-5), ("1E+3", 1e3), (".5", 0.5), ("-2e-3", -2e-3), ("-.5", -0.5),
    ("+1.5e2", 150.0), ("1.0e-5", 1e-5), ("3.", 3.0),
])
def test_spec_files_read_yaml_1_2_floats_as_numbers(text: str, value: float) -> None:
    loaded = load_yaml(f"x: {text}")["x"]
    assert isinstance(loaded, float) and loaded == pytest.approx(value)


@pytest.mark.parametrize("text", [
    "12", "-3", "1_000", "0x1F", "1.5", ".inf", "true", "null", "'1e-5'", "1e", "e5", "1.2.3",
    "2024-01-02", "1:30",
])
def test_the_yaml_loader_reads_everything_else_as_pyyaml_does(text: str) -> None:
    loaded, expected = load_yaml(f"x: {text}")["x"], yaml.safe_load(f"x: {text}")["x"]
    assert loaded == expected and type(loaded) is type(expected)


def test_the_yaml_loader_leaves_pyyaml_itself_alone() -> None:
    assert load_yaml("x: 1e-5") == {"x": 1e-5}
    assert yaml.safe_load("x: 1e-5") == {"x": "1e-5"}
    assert yaml.safe_load("x: off") == {"x": False}


@pytest.mark.parametrize(("text", "value"), [
    ("off", "off"), ("on", "on"), ("yes", "yes"), ("No", "No"), ("true", True),
    ("False", False), ("TRUE", True),
])
def test_spec_files_read_yaml_1_2_booleans(text: str, value: object) -> None:
    assert load_yaml(f"x: {text}") == {"x": value}


def test_warm_start_and_staging_off_are_words_in_a_spec_file() -> None:
    spec = load_yaml(EXAMPLE_SPEC.read_text() + "\nwarm_start: off\nstaging: off\n")
    parsed = JobCreate.model_validate(spec)
    assert parsed.warm_start == "off" and parsed.staging == "off"


def _job_body() -> dict[str, Any]:
    """A cancelled job as the API sends it, built from the example spec."""
    spec = JobCreate.model_validate(load_yaml(EXAMPLE_SPEC.read_text()))
    now = datetime.now(UTC)
    return JobPublic(
        id="j1", name="digits", tenant="local", status="cancelled", error=None, created_at=now,
        started_at=None, finished_at=None, n_trials=4, trials_ended=0,
        trial_counts=TrialCounts(), best=None, spec=spec,
    ).model_dump(mode="json")


def _recording_client(seen: list[httpx.Request], **options: Any) -> TunerClient:
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith(".html"):
            return httpx.Response(200, text="<html></html>")
        if request.url.path == "/v1/jobs":
            return httpx.Response(200, json={"items": [_job_body()], "total": 1})
        return httpx.Response(200, json=_job_body())

    return TunerClient("http://tuner", transport=httpx.MockTransport(answer), **options)


def test_the_saved_report_page_asks_for_the_standalone_page() -> None:
    seen: list[httpx.Request] = []
    with _recording_client(seen) as client:
        assert client.report_html("j1") == "<html></html>"
    assert seen[0].url.path == "/v1/jobs/j1/report.html"
    assert seen[0].url.params["standalone"] == "true"


def test_cancel_sends_no_body_and_no_content_type() -> None:
    seen: list[httpx.Request] = []
    with _recording_client(seen) as client:
        assert client.cancel("j1").status == "cancelled"
    assert seen[0].method == "POST" and seen[0].content == b""
    assert "content-type" not in seen[0].headers


def test_the_client_answers_with_the_api_models() -> None:
    with _recording_client([]) as client:
        job, page = client.job("j1"), client.jobs()
    assert isinstance(job, JobPublic) and job.spec.budget.n_trials > 0
    assert isinstance(page, JobsPublic) and page.total == 1 and page.items[0].id == "j1"


def test_a_token_goes_as_a_bearer_header_on_every_request() -> None:
    seen: list[httpx.Request] = []
    with _recording_client(seen, token="s3cret") as client:
        client.job("j1")
        client.cancel("j1")
        client.report_html("j1")
        assert client.healthy()
    assert [r.headers["authorization"] for r in seen] == ["Bearer s3cret"] * 4


def test_without_a_token_no_authorization_header_is_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TUNER_TOKEN", raising=False)
    monkeypatch.setenv("TUNER_HOME", str(tmp_path))  # no token file there
    seen: list[httpx.Request] = []
    with _recording_client(seen) as client:
        client.job("j1")
    assert "authorization" not in seen[0].headers


def test_the_client_finds_its_token_as_the_cli_does(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TUNER_TOKEN", raising=False)
    monkeypatch.setenv("TUNER_HOME", str(tmp_path))
    (tmp_path / "token").write_text("from-the-file\n")
    seen: list[httpx.Request] = []
    with _recording_client(seen) as client:
        client.job("j1")
    monkeypatch.setenv("TUNER_TOKEN", "from-the-environment")
    with _recording_client(seen) as client:
        client.job("j1")
    with _recording_client(seen, token="given") as client:
        client.job("j1")
    assert [r.headers["authorization"] for r in seen] == [
        "Bearer from-the-file", "Bearer from-the-environment", "Bearer given"]


def test_any_httpx_auth_can_be_passed_but_not_with_a_token() -> None:
    seen: list[httpx.Request] = []
    with _recording_client(seen, auth=httpx.BasicAuth("ann", "pw")) as client:
        client.job("j1")
    assert seen[0].headers["authorization"].startswith("Basic ")
    with pytest.raises(ValueError, match="not both"):
        TunerClient("http://tuner", token="t", auth=httpx.BasicAuth("ann", "pw"))


def _refusing_client(status: int, detail: object, headers: dict[str, str] | None = None
                     ) -> TunerClient:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"detail": detail}, headers=headers)

    return TunerClient("http://tuner", transport=httpx.MockTransport(answer))


def _refusal(status: int, detail: object, headers: dict[str, str] | None = None) -> ApiError:
    with _refusing_client(status, detail, headers) as client, pytest.raises(ApiError) as caught:
        client.job("j1")
    return caught.value


@pytest.mark.parametrize(("header", "seconds"), [
    ("7", 7.0), ("0.5", 0.5), ("-3", 0.0), (None, None), ("soon", None),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # a date in the past: retry now
])
def test_retry_after_is_read_in_seconds(header: str | None, seconds: float | None) -> None:
    error = _refusal(429, "slow down", {"Retry-After": header} if header else None)
    assert error.status_code == 429 and error.detail == "slow down"
    assert error.retry_after == seconds


def test_a_retry_after_date_counts_from_now() -> None:
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    retry_after = parse_retry_after(later)
    assert retry_after is not None and 100 < retry_after <= 120


def test_refusals_say_what_happened_and_what_to_do() -> None:
    unauthorised = str(_refusal(401, "invalid token"))
    assert "missing or invalid" in unauthorised and "invalid token" in unauthorised
    assert "--token" in unauthorised and "TUNER_TOKEN" in unauthorised
    assert "$TUNER_HOME/token" in unauthorised
    assert str(_refusal(404, "job j1 not found")) == "job j1 not found"
    assert str(_refusal(404, "no asset 'x'")) == "not found: no asset 'x'"
    limited = str(_refusal(429, "too many jobs", {"Retry-After": "30"}))
    assert "too many jobs" in limited and "retry after 30 s" in limited


def test_an_answer_of_another_shape_is_a_message_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    from tuner_service.cli import common

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"id": "j1"})

    monkeypatch.setattr(common, "client_for", lambda url, token=None: TunerClient(
        "http://tuner", transport=httpx.MockTransport(answer)))
    result = runner.invoke(app, ["status", "j1"])
    assert result.exit_code == 1 and "same version" in result.output


def test_a_sign_in_redirect_is_a_refusal_not_an_empty_page() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(303, headers={"Location": "/signin?next=/v1/jobs/j1/report.html"})

    with TunerClient("http://tuner", transport=httpx.MockTransport(answer)) as client, \
            pytest.raises(ApiError) as caught:
        client.report_html("j1")
    assert caught.value.status_code == 303 and "/signin?next=" in str(caught.value)
    assert "TUNER_TOKEN" in str(caught.value)


@pytest.mark.parametrize(("status", "headers", "message"), [
    (401, None, "TUNER_TOKEN"), (404, None, "j1 not found"),
    (429, {"Retry-After": "5"}, "retry after 5 s"),
])
def test_the_cli_exits_1_with_the_message_on_refusals(
    monkeypatch: pytest.MonkeyPatch, status: int, headers: dict[str, str] | None, message: str
) -> None:
    from tuner_service.cli import common

    detail = "job j1 not found" if status == 404 else "refused"
    monkeypatch.setattr(common, "client_for",
                        lambda url, token=None: _refusing_client(status, detail, headers))
    for command in (["status", "j1"], ["jobs"], ["cancel", "j1"], ["report", "j1"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 1 and message in result.output, (command, result.output)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"])
def test_no_host_hint_on_loopback(host: str) -> None:
    assert host_hint(host, list(LOOPBACK_HOSTS)) is None


def test_a_public_address_with_loopback_allowed_hosts_gets_one_hint() -> None:
    hint = host_hint("0.0.0.0", list(LOOPBACK_HOSTS))
    assert hint is not None and "TUNER_ALLOWED_HOSTS" in hint and "\n" not in hint
    assert host_hint("10.1.2.3", ["localhost"]) is not None


@pytest.mark.parametrize("allowed", [["tuner.example.com"], ["*"], [*LOOPBACK_HOSTS, "10.0.0.5"]])
def test_no_host_hint_once_allowed_hosts_are_configured(allowed: list[str]) -> None:
    assert host_hint("0.0.0.0", allowed) is None


def test_tuner_api_prints_the_hint_before_serving(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    import uvicorn

    import tuner_service.app

    monkeypatch.setenv("TUNER_HOME", str(tmp_path))
    monkeypatch.delenv("TUNER_ALLOWED_HOSTS", raising=False)
    monkeypatch.setattr(tuner_service.app, "create_app", lambda settings: "the app")
    served: list[tuple[object, str]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port: served.append((app, host)))
    result = runner.invoke(app, ["api", "--host", "0.0.0.0"])
    assert result.exit_code == 0, result.output
    assert served == [("the app", "0.0.0.0")]
    assert result.output.count("TUNER_ALLOWED_HOSTS") == 1


def test_the_worker_log_is_appended_to_and_rotated_when_large(tmp_path: Path) -> None:
    path = tmp_path / "home" / "workers.log"
    for _ in range(2):
        with open_worker_log(path) as log:
            log.write(b"a worker line\n")
    assert path.read_text().count("--- tuner up, ") == 2
    path.write_bytes(b"x" * (WORKER_LOG_MAX_BYTES + 1))
    with open_worker_log(path):
        pass
    assert path.with_name("workers.log.1").stat().st_size == WORKER_LOG_MAX_BYTES + 1
    assert path.read_text().startswith("--- tuner up, ")


def test_status_and_report_show_the_confirmation(server_url: str, runtime: Runtime) -> None:
    from tests.test_confirmation import _run, _search, _spec

    spec = _spec(confirm={"top_k": 1, "seeds": 2})
    job_id = jobs.submit_job(runtime, spec, caller=LOCAL).id
    _search(runtime, job_id, [0.9, 0.3, 0.2, 0.5])
    status = runner.invoke(app, ["status", job_id, "--url", server_url])
    assert status.exit_code == 0 and "0/4 confirmation runs ended" in status.output
    for slot, value in zip(range(4, 8), [0.21, 0.23, 0.9, 0.92], strict=True):
        _run(runtime, job_id, slot, value)
    report = runner.invoke(app, ["report", job_id, "--url", server_url])
    assert report.exit_code == 0, report.output
    text = " ".join(report.output.split())  # rich wraps at the terminal's width
    assert "recommended" in text and "(confirmed)" in text and "0.22 ±" in text
    assert "Welch's t-test: p =" in text and "larger than the seed noise" in text
    assert "improvement over the paper defaults (confirmed means)" in text
    assert "re-run it with another seed" not in text  # the service did
    # The snippet is printed unwrapped, so that it pastes as it is.
    assert "decay_steps=1, decay_rate=" in report.output
