"""The ``tuner`` command against a real HTTP server (uvicorn on a loopback port)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import http_server, settings_env
from tests.servers import free_port
from tuner_service.cli import EXAMPLE_SPEC, app
from tuner_service.config import Settings

runner = CliRunner()


@pytest.fixture
def server_url(settings: Settings) -> Iterator[str]:
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
    env = settings_env(settings)
    elsewhere = tmp_path / "cwd"  # everything must land in TUNER_HOME, nothing in the cwd
    elsewhere.mkdir()
    up = subprocess.Popen([sys.executable, "-m", "tuner_service.cli", "up", "--port",
                           str(port), "--workers", "1"], env=env, start_new_session=True,
                          cwd=elsewhere)
    try:
        _wait_healthy(url)
        spec = _spec_file(tmp_path, budget={"n_trials": 3, "epochs": 2})
        submit = subprocess.run(
            [sys.executable, "-m", "tuner_service.cli", "submit", str(spec), "--wait",
             "--url", url], env=env, capture_output=True, text=True, timeout=300)
        assert submit.returncode == 0, submit.stdout + submit.stderr
        assert "Best Adam configuration" in submit.stdout
        assert "improvement over the paper defaults" in submit.stdout
    finally:
        os.killpg(up.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        assert up.wait(timeout=60) is not None
    leftovers = subprocess.run(["pgrep", "-s", str(up.pid)], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", "worker processes outlived tuner up"
    assert list(elsewhere.iterdir()) == []


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
