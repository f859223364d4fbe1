"""Commands that run the service: migrate, api, worker, up, and the self-contained demo."""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from tuner_service.cli.common import call, client_for, console, errors, fail
from tuner_service.cli.jobs import read_spec, wait_for
from tuner_service.cli.rendering import print_report
from tuner_service.config import LOOPBACK_HOSTS, Settings

EXAMPLE_SPEC = Path(__file__).parent.parent / "examples" / "digits-logreg.yaml"


def migrate() -> None:
    """Create or upgrade the database (our tables and Optuna's)."""
    from tuner_service.db.migrate import upgrade

    settings = Settings()
    upgrade(settings)
    console.print(f"database ready: {_safe_url(settings.resolved_database_url)}")


def api(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the HTTP API server."""
    import uvicorn

    from tuner_service.app import create_app

    settings = Settings()
    _print_host_hint(host, settings)
    uvicorn.run(create_app(settings), host=host, port=port)


def worker(
    concurrency: Annotated[int, typer.Option(help="Pool processes (use 1 per GPU)")] = 1,
    gpu: Annotated[str | None, typer.Option(help="Pin to this GPU index")] = None,
    loglevel: str = "INFO",
) -> None:
    """Run a Celery worker that trains trials (TensorFlow loads in its pool children)."""
    from tuner_service.embedded import worker_command, worker_env

    command = worker_command(Settings(), concurrency=concurrency, loglevel=loglevel)
    os.execvpe(command[0], command, worker_env(gpu))


def up(
    port: int = 8000,
    host: str = "127.0.0.1",
    workers: Annotated[int, typer.Option(help="Worker processes")] = 1,
    gpus: Annotated[str | None, typer.Option(help="Comma-separated GPU indices")] = None,
) -> None:
    """Run everything on this machine: migrate, N workers and the API (Ctrl-C stops all)."""
    import uvicorn

    from tuner_service.app import create_app
    from tuner_service.db.migrate import upgrade
    from tuner_service.embedded import (
        open_worker_log,
        start_workers,
        stop_workers,
        worker_log_path,
    )

    settings = Settings()
    upgrade(settings)
    created = _local_token(settings)
    log_path = worker_log_path(settings)
    with open_worker_log(log_path) as log:
        processes = start_workers(settings, workers, gpus.split(",") if gpus else None,
                                  output=log)
    console.print(f"tuner-service on http://{host}:{port} with {workers} worker(s); "
                  f"data in {settings.home.resolve()}", soft_wrap=True, highlight=False)
    console.print(f"worker logs: {log_path}", soft_wrap=True, highlight=False)
    made = "made an" if created else "using the"
    console.print(f"{made} admin token of tenant 'local' in {settings.token_file.resolve()} "
                  "(the CLI finds it there); sign the browser in with `tuner open`",
                  soft_wrap=True, highlight=False)
    _print_host_hint(host, settings)
    # uvicorn shuts down on SIGTERM, then re-raises it; with the default handler that kills
    # this process before ``finally`` stops the workers (docker stop, systemd, kill).
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        # "warning": the API's own warnings and errors stay on the terminal, access lines don't.
        uvicorn.run(create_app(settings), host=host, port=port, log_level="warning")
    finally:
        stop_workers(processes)


def _local_token(settings: Settings) -> bool:
    """Make sure ``$TUNER_HOME/token`` holds a working admin token (before the API answers,
    so that a client that saw /healthz finds it); True when it was made now."""
    from tuner_service.auth import ensure_local_token
    from tuner_service.db.session import make_engine

    engine = make_engine(settings)
    try:
        return ensure_local_token(engine, settings)[1]
    finally:
        engine.dispose()


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def demo(
    workers: Annotated[int, typer.Option(help="Worker processes")] = 1,
    port: Annotated[int | None, typer.Option(help="Port of the temporary server "
                                                  "(default: a free one)")] = None,
    trials: Annotated[int | None, typer.Option(help="Override n_trials")] = None,
) -> None:
    """Start the embedded service, tune the built-in digits example, print its report, stop."""
    spec = read_spec(EXAMPLE_SPEC)
    if trials is not None:
        spec["budget"]["n_trials"] = trials
    port = port or _free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "tuner_service.cli", "up", "--port",
                               str(port), "--workers", str(workers)])
    try:
        _wait_healthy(url, server)
        # The embedded service's own token (tuner up wrote it before answering), whatever
        # TUNER_TOKEN may name for another server.
        token = Settings().saved_token
        job = call(url, lambda client: client.submit(spec), token)
        console.print(f"demo job {job.id}: {job.n_trials} trials of "
                      f"{spec['name']} ({spec['budget']['epochs']} epochs each)")
        final = wait_for(url, job.id, token=token)
        print_report(call(url, lambda client: client.report(job.id), token))
        page = Settings().home / "demo-report.html"
        page.write_text(call(url, lambda client: client.report_html(job.id), token),
                        encoding="utf-8")
        console.print("\nThe report page, plots and all (open it in a browser):")
        console.print(str(page), soft_wrap=True, highlight=False)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait()
    if final.status != "succeeded":
        from tuner_service.embedded import worker_log_path

        reason = f": {final.error}" if final.error else ""
        raise fail(f"demo job {final.status}{reason} "
                   f"(worker logs: {worker_log_path(Settings())})")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_healthy(url: str, server: subprocess.Popen[bytes], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    with client_for(url) as client:
        while not client.healthy():
            if server.poll() is not None:
                raise fail("the embedded service did not start (see the messages above)")
            if time.monotonic() > deadline:
                raise fail(f"the embedded service did not answer within {timeout_s:.0f} s")
            time.sleep(0.3)


def host_hint(host: str, allowed_hosts: list[str]) -> str | None:
    """A warning when the API listens beyond loopback but answers only loopback Host names."""
    if _is_loopback(host) or not set(allowed_hosts) <= set(LOOPBACK_HOSTS):
        return None
    return (f"listening on {host}, but requests are refused unless their Host is one of "
            f"{', '.join(allowed_hosts)}: set TUNER_ALLOWED_HOSTS to the names clients use "
            "(comma-separated, '*' for any)")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower() == "localhost"


def _print_host_hint(host: str, settings: Settings) -> None:
    hint = host_hint(host, settings.allowed_hosts)
    if hint:
        errors.print(f"[yellow]note:[/yellow] {hint}", highlight=False, soft_wrap=True)


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
