"""Fault tests on PostgreSQL + Redis: servers restart under a running job, nothing is lost.

"Nothing lost": every slot ends once, the job finishes, and its trial counts add up.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import WorkerStack, make_settings, running_stack
from tests.servers import PostgresServer, RedisServer

pytestmark = pytest.mark.slow
# One trial per pass: the restart must fall while some trials have ended and one is training
# (a pack of five trains all of them in about a second; lost packs are tests/test_packs.py's
# and test_end_to_end's).
JOB = {"model": {"builtin": "logistic_regression"}, "dataset": {"builtin": "digits"},
       "budget": {"n_trials": 5, "epochs": 12, "pack": 1}, "pruner": "none"}


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer.start(tmp_path, persistent=True)
    yield server
    server.stop()


@pytest.fixture
def fault_stack(request: pytest.FixtureRequest, tmp_path: Path, own_redis: RedisServer
                ) -> Iterator[WorkerStack]:
    settings = make_settings("postgresql", tmp_path / "home", request,
                             broker_url=own_redis.url(), stale_after_s=20)
    with running_stack(settings) as stack:
        yield stack


def _running_with_progress(stack: WorkerStack, job_id: str) -> Any:
    def check(job: dict[str, Any]) -> bool:
        trials = stack.client.get(f"/v1/jobs/{job_id}/trials").json()["items"]
        return job["trials_ended"] >= 1 and any(
            t["state"] == "running" and len(t["intermediate_values"]) >= 2 for t in trials)
    return check


def _assert_nothing_lost(stack: WorkerStack, job_id: str) -> list[dict[str, Any]]:
    job = stack.wait(job_id, timeout_s=300)
    assert job["status"] == "succeeded", job
    assert job["trials_ended"] == JOB["budget"]["n_trials"]  # type: ignore[index]
    trials = stack.client.get(f"/v1/jobs/{job_id}/trials").json()["items"]
    assert not any(t["state"] in ("running", "waiting") for t in trials)
    assert sum(t["state"] == "complete" for t in trials) == 5
    counts = job["trial_counts"]
    assert sum(counts.values()) == len(trials)
    return list(trials)


def test_a_postgres_restart_mid_job_loses_nothing(fault_stack: WorkerStack,
                                                  postgres_server: PostgresServer) -> None:
    job_id = fault_stack.submit(JOB)
    fault_stack.wait(job_id, until=_running_with_progress(fault_stack, job_id))
    postgres_server.restart()
    trials = _assert_nothing_lost(fault_stack, job_id)
    interrupted = [t for t in trials if t["state"] == "fail"]
    assert all(t["fail_reason"].startswith("interrupted") for t in interrupted)


def test_a_redis_restart_with_jobs_queued_and_running_loses_nothing(
    fault_stack: WorkerStack, own_redis: RedisServer
) -> None:
    job_id = fault_stack.submit(JOB)
    fault_stack.wait(job_id, until=_running_with_progress(fault_stack, job_id))
    own_redis.restart()
    _assert_nothing_lost(fault_stack, job_id)
