"""Shared fixtures: real SQLite / PostgreSQL databases, a real Redis, real worker processes.

Contract tests take the ``backend`` fixture and so run once on SQLite with the embedded folder
broker and once on PostgreSQL with Redis. ``.ci/run`` sets TUNER_TEST_REQUIRE_SERVERS=1 so a
missing server fails the run instead of skipping those tests.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient

from tests.servers import PostgresServer, RedisServer, free_port
from tuner_service import auth
from tuner_service.app import create_app
from tuner_service.config import LOOPBACK_HOSTS, Settings
from tuner_service.db.migrate import upgrade
from tuner_service.db.session import make_engine, make_session_factory
from tuner_service.embedded import stop_workers, worker_command
from tuner_service.runtime import Runtime, build_runtime

BACKENDS = ["sqlite", "postgresql"]
REQUIRE_SERVERS = os.environ.get("TUNER_TEST_REQUIRE_SERVERS") == "1"
TERMINAL = {"succeeded", "failed", "cancelled"}


def _start_or_skip(start: Any) -> Any:
    try:
        return start()
    except FileNotFoundError as missing:
        if REQUIRE_SERVERS:
            raise
        pytest.skip(f"{missing} is not installed (CI installs it)")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = _start_or_skip(PostgresServer.start)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    folder = tmp_path_factory.mktemp("redis")
    server = _start_or_skip(lambda: RedisServer.start(folder))
    yield server
    server.stop()


def make_settings(backend: str, home: Path, request: pytest.FixtureRequest,
                  **overrides: Any) -> Settings:
    """Isolated settings: a new SQLite file or PostgreSQL database, and a queue of its own."""
    values: dict[str, Any] = {"home": home, "queue_name": f"tuner.test.{uuid.uuid4().hex[:8]}",
                              # Starlette's TestClient sends "Host: testserver".
                              "allowed_hosts": [*LOOPBACK_HOSTS, "testserver"]}
    if backend == "postgresql":
        postgres: PostgresServer = request.getfixturevalue("postgres_server")
        redis: RedisServer = request.getfixturevalue("redis_server")
        values["database_url"] = postgres.create_database(f"t_{uuid.uuid4().hex[:12]}")
        values["broker_url"] = redis.url()
    return Settings(**{**values, **overrides})


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes another process build the same Settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNER_")}
    for name, value in settings.model_dump().items():
        if isinstance(value, list):
            env[f"TUNER_{name.upper()}"] = ",".join(value)
        elif value is not None:
            env[f"TUNER_{name.upper()}"] = str(value)
    return env


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    settings = make_settings(backend, tmp_path / "home", request)
    upgrade(settings)
    return settings


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    rt = build_runtime(settings)
    yield rt
    rt.close()


def new_token(settings: Settings, tenant: str = "local", *, admin: bool = False) -> str:
    """A fresh API token's secret, made as ``tuner token create`` makes one."""
    engine = make_engine(settings)
    try:
        return auth.create_token(make_session_factory(engine), tenant=tenant, admin=admin)[1]
    finally:
        engine.dispose()


def bearer(token: str) -> dict[str, str]:
    """The header that carries a token."""
    return {"Authorization": f"Bearer {token}"}


def signed_in_client(settings: Settings, **app_options: Any) -> TestClient:
    """A test client of a fresh app that sends an admin token of the tenant ``local`` (what
    ``tuner up`` makes for the embedded default) with every request."""
    app = create_app(settings, **{"recover_every_s": None, **app_options})
    return TestClient(app, headers=bearer(new_token(settings, admin=True)))


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with signed_in_client(settings) as test_client:
        yield test_client


class WorkerStack:
    """Settings, an API client and real Celery worker processes over one database."""

    def __init__(self, settings: Settings, client: TestClient) -> None:
        self.settings = settings
        self.client = client
        self.workers: list[subprocess.Popen[bytes]] = []
        settings.home.mkdir(parents=True, exist_ok=True)
        self.log = settings.home / "workers.log"

    def start_worker(self, concurrency: int = 1) -> subprocess.Popen[bytes]:
        command = worker_command(self.settings, concurrency=concurrency,
                                 name=f"test-{len(self.workers)}", loglevel="INFO")
        with self.log.open("ab") as log:
            process = subprocess.Popen(command, env=settings_env(self.settings),
                                       stdout=log, stderr=subprocess.STDOUT)
        self.workers.append(process)
        return process

    def submit(self, spec: dict[str, Any]) -> str:
        response = self.client.post("/v1/jobs", json=spec)
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def wait(self, job_id: str, until: Any = None, timeout_s: float = 240.0) -> dict[str, Any]:
        """Poll the job until ``until(job)`` (default: a terminal status)."""
        done = until or (lambda job: job["status"] in TERMINAL)
        deadline = time.monotonic() + timeout_s
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            response = self.client.get(f"/v1/jobs/{job_id}")
            if response.status_code == 503:  # the database is restarting under a fault test
                time.sleep(0.5)
                continue
            job = response.json()
            if done(job):
                return dict(job)
            time.sleep(0.25)
        raise AssertionError(f"job {job_id} not done in {timeout_s} s: {job}\n"
                             + self.log.read_text()[-3000:])

    def close(self) -> None:
        stop_workers(self.workers)


@contextlib.contextmanager
def running_stack(settings: Settings) -> Iterator[WorkerStack]:
    """Migrate, then an API client (recovery loop every 2 s) and one real worker process."""
    upgrade(settings)
    with signed_in_client(settings, recover_every_s=2) as test_client:
        stack = WorkerStack(settings, test_client)
        stack.start_worker()
        try:
            yield stack
        finally:
            stack.close()


@pytest.fixture(scope="module", params=BACKENDS)
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[WorkerStack]:
    """One database and one real worker process per backend, shared by a test module."""
    home = tmp_path_factory.mktemp(f"stack-{request.param}")
    with running_stack(make_settings(request.param, home, request, stale_after_s=20)) as stack:
        yield stack


@contextlib.contextmanager
def http_server(settings: Settings) -> Iterator[str]:
    """A real HTTP server (uvicorn on a loopback port) over ``settings``; yields its URL."""
    with serve(create_app(settings, recover_every_s=None)) as url:
        yield url


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    """Any ASGI app under a real uvicorn on a loopback port; yields its URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
